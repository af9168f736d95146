"""`netwarden grafana access`: the workspace's ClickHouse user reads only the workspace's flows.

Enforced by ClickHouse itself: chDB has no writable user storage (CREATE USER answers "no writeable access
storage") and no way to act as another user (EXECUTE AS needs a server setting chDB does not read), so the
generated user is loaded the other way ClickHouse accepts users, as users.d XML, and made chDB's `default`
user in a child process over a copy of the demo traffic: every query there runs under the user's grants,
readonly profile and row filters. The row conditions are the same strings as in the SQL statements, which
the engine's parser checks (formatQuery); CREATE USER/GRANT/CREATE ROW POLICY executing on a server is not
exercised here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from netwarden.cli import main
from netwarden.grafana import queries as q
from netwarden.grafana.access import AccessError, grafana_user, workspace_scope
from netwarden.grafana.dashboards import DASHBOARDS, NAMESPACE
from netwarden.grafana.macros import ALL, QueryContext, TemplateVariable, expand
from policy_engine.tenancy import Tenancy
from schemas.clickhouse import CATALOG_TABLE, CONVERSATIONS_1H, ROLLUP_TABLES, TALKERS_1M, hourly
from tests.grafana.conftest import CLUSTERS, EAST, PER_CLUSTER, T_END, T_START, WORKSPACE

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"


def ownership(control_plane_dir: Path) -> Any:
    tenancy = Tenancy.open(control_plane_dir)
    try:
        return tenancy.ownership()
    finally:
        tenancy.close()


def child(*args: str, stdin: str = "") -> Any:
    done = subprocess.run([sys.executable, "-m", "tests.grafana.row_policy_child", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def chdb_config(tmp_path: Path, users_xml: str) -> Path:
    """A chDB configuration whose users are users.xml (quotas only) + users.d/netwarden.xml (the generated user)."""
    (tmp_path / "users.d").mkdir(parents=True)
    (tmp_path / "users.d" / "netwarden.xml").write_text(users_xml)
    (tmp_path / "users.xml").write_text("<clickhouse><quotas><default/></quotas></clickhouse>\n")
    config = tmp_path / "config.xml"
    config.write_text("<clickhouse><user_directories><users_xml><path>users.xml</path></users_xml>"
                      "</user_directories></clickhouse>\n")
    return config


def panel_queries(ctx_for: dict[str, QueryContext]) -> dict[str, str]:
    out = {}
    for dashboard in DASHBOARDS:
        ctx = ctx_for["namespace" if dashboard is NAMESPACE else "fleet"]
        for panel in dashboard.panels:
            for query in panel.queries:
                if query.source == "clickhouse":
                    out[f"panel {dashboard.uid} / {panel.title}"] = expand(query.expr, ctx)
    return out


def test_workspace_user_reads_only_the_workspace(tmp_path: Path, control_plane_dir: Path, flow_client: Any) -> None:
    data_dir = tmp_path / "data"
    assert child("write", str(data_dir), str(control_plane_dir)) == {c: PER_CLUSTER for c in CLUSTERS}

    owned = ownership(control_plane_dir)
    # The same traffic in this process's store: what the API's rule lets the workspace see.
    where, params = workspace_scope(owned, WORKSPACE).sql_where()
    clusters = ", ".join(f"'{c}'" for c in CLUSTERS)
    visible = flow_client.query(f"SELECT count() FROM flows AS f WHERE f.cluster IN ({clusters}) AND {where}",
                                parameters=params).result_rows[0][0]
    assert 0 < visible < 2 * PER_CLUSTER

    user = grafana_user(owned, WORKSPACE, name="default")  # chDB's session user, so ClickHouse applies it
    # chDB logs in with no password, and cannot switch on the server setting the max_execution_time
    # constraint needs: both left out here, the rest (grants, profile, filters) is the generated user's.
    config = chdb_config(tmp_path / "config", user.users_xml("", changeable_in_readonly=()))
    fleet = QueryContext(T_START, T_END, 60, {"cluster": TemplateVariable("cluster", [ALL], list(CLUSTERS))})
    ns = QueryContext(T_START, T_END, 60, {"cluster": TemplateVariable("cluster", EAST),
                                          "namespace": TemplateVariable("namespace", [ALL], ["shop", "data"])})
    foreign = QueryContext(T_START, T_END, 60, {"cluster": TemplateVariable("cluster", EAST),
                                               "namespace": TemplateVariable("namespace", ["data"], ["data"])})
    place = "if({0}_cluster_name != '', {0}_cluster_name, cluster), {0}_namespace"
    queries = {
        "flows": "SELECT count() FROM flows",
        "places": f"SELECT DISTINCT {place.format('src')}, {place.format('dst')} FROM flows",
        "talkers": f"SELECT sum(flows) FROM {TALKERS_1M}",
        "talkers hourly": f"SELECT sum(flows) FROM {hourly(TALKERS_1M)}",
        "conversations": f"SELECT sum(flows) FROM {CONVERSATIONS_1H}",
        "rollup places": " UNION ALL ".join(
            f"SELECT DISTINCT src_cluster, src_namespace, dst_cluster, dst_namespace FROM {t}"
            for t in (*ROLLUP_TABLES, CONVERSATIONS_1H)),
        "catalog": f"SELECT DISTINCT namespace_cluster, namespace FROM {CATALOG_TABLE}",
        "fleet total": expand(q.FLEET_TOTAL_FLOWS, fleet),
        "foreign namespace sources": expand(q.NS_TOP_SOURCES, foreign),
        "insert": "INSERT INTO flows (cluster) VALUES ('x')",
        "ungranted table": "SELECT count() FROM schema_migrations",
        "locked setting": "SELECT 1 SETTINGS max_threads = 1",
        **panel_queries({"fleet": fleet, "namespace": ns}),
    }
    got = child("read", str(data_dir), str(config), stdin=json.dumps(queries))

    assert got["flows"] == [[visible]]
    shop = (EAST, "shop")
    assert got["places"] and all(tuple(r[:2]) == shop or tuple(r[2:]) == shop for r in got["places"])
    assert got["talkers"] == got["talkers hourly"] == got["conversations"] == got["fleet total"] == [[visible]]
    assert got["rollup places"] and all(tuple(r[:2]) == shop or tuple(r[2:]) == shop for r in got["rollup places"])
    assert got["catalog"] == [list(shop)]
    # data's traffic as the shop team sees it: only what comes from shop
    assert got["foreign namespace sources"]
    assert all(r[0].startswith(f"{EAST}/shop/") for r in got["foreign namespace sources"])
    assert "ACCESS_DENIED" in got["insert"]["error"]
    assert "ACCESS_DENIED" in got["ungranted table"]["error"]
    assert "readonly" in got["locked setting"]["error"].lower()
    for name, rows in got.items():
        if name.startswith("panel "):
            assert not isinstance(rows, dict), f"{name}: {rows['error']}"


def test_statements_parse_and_carry_the_rule(flow_client: Any, control_plane_dir: Path) -> None:
    user = grafana_user(ownership(control_plane_dir), WORKSPACE)
    statements = user.statements(PASSWORD)
    assert statements[0].startswith("CREATE USER OR REPLACE `grafana_grafana_shop_team` IDENTIFIED WITH sha256_hash")
    assert PASSWORD not in " ".join(statements)
    assert "readonly = 1" in statements[0]
    for statement in statements:  # the engine's own parser
        flow_client.query("SELECT formatQuery({s:String})", parameters={"s": statement})
    policies = [s for s in statements if s.startswith("CREATE ROW POLICY")]
    assert len(policies) == len(user.conditions) == len(ROLLUP_TABLES) + 3
    # Each condition, as a WHERE on this process's store, selects exactly what the API's rule selects.
    where, params = workspace_scope(ownership(control_plane_dir), WORKSPACE).sql_where()
    window = f"f.time >= toDateTime64({T_START.timestamp()}, 9) AND f.time < toDateTime64({T_END.timestamp()}, 9)"
    rule = flow_client.query(f"SELECT count() FROM flows AS f WHERE {window} AND {where}", parameters=params)
    policy = flow_client.query(f"SELECT count() FROM flows AS f WHERE {window} AND {user.conditions['flows']}")
    assert rule.result_rows == policy.result_rows and rule.result_rows[0][0] > 0


def test_unknown_or_empty_workspace_is_refused(control_plane_dir: Path) -> None:
    owned = ownership(control_plane_dir)
    with pytest.raises(AccessError, match="--workspace: no workspace 'nope' .*grafana-shop-team"):
        grafana_user(owned, "nope")
    with pytest.raises(AccessError, match="--user: 'x-y' is not a plain identifier"):
        grafana_user(owned, WORKSPACE, name="x-y")


def test_cli_prints_statements_and_instructions(control_plane_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grafana", "access", "--workspace", WORKSPACE, "--data-dir", str(control_plane_dir),
                 "--print-sql", "--password", PASSWORD]) == 0
    printed = capsys.readouterr()  # statements on stdout (pipe them to clickhouse-client), the how-to on stderr
    assert "CREATE ROW POLICY OR REPLACE `netwarden_grafana_grafana_shop_team` ON `default`.`flows`" in printed.out
    assert "grafana-clickhouse-datasource" in printed.err and "netwarden-clickhouse" in printed.err
    assert main(["grafana", "access", "--workspace", "nope", "--data-dir", str(control_plane_dir),
                 "--print-sql"]) == 2
    assert "--workspace: no workspace 'nope'" in capsys.readouterr().err
    # Grafana cannot reach the embedded chDB: without a server the command says so and creates nothing.
    assert main(["grafana", "access", "--workspace", WORKSPACE, "--data-dir", str(control_plane_dir),
                 "--clickhouse", ""]) == 2
    assert "ClickHouse server" in capsys.readouterr().err


def test_cli_reports_a_server_refusal(control_plane_dir: Path, chdb_dsn: str, flow_client: Any,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """chDB stands in for a server that refuses user management: one line naming the statement, exit 2."""
    assert main(["grafana", "access", "--workspace", WORKSPACE, "--data-dir", str(control_plane_dir),
                 "--clickhouse", chdb_dsn]) == 2
    err = capsys.readouterr().err
    assert "the server refused CREATE USER OR REPLACE `grafana_grafana_shop_team`: Code: 497" in err, err
    assert "sha256" not in err

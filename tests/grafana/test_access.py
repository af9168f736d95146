"""`netwarden grafana access`: the workspace's ClickHouse user reads only the workspace's flows, with the
peer outside the workspace redacted as the API redacts it.

Enforced by ClickHouse itself, in chDB child processes over a copy of the demo traffic. chDB has no writable
user storage (CREATE USER answers "no writeable access storage") and cannot act as another user (EXECUTE AS
needs a server setting chDB does not read), so users come from users.d XML: an admin process (`default` may
manage access, `nw_admin` reads everything) runs the generated view statements with `nw_admin` as definer;
a reader process makes the generated user (its users.xml rendering: grant, readonly profile, row filters on
the views) chDB's `default` user, so every query there runs as that user. Not exercised: CREATE USER, GRANT
and CREATE ROW POLICY executing on a server (their text is checked by the engine's parser, formatQuery, and
the row conditions are the same strings as the XML filters), and password authentication (chDB logs in
with an empty password; the user's SHA-256 is rendered for "").
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


ADMIN_XML = """<clickhouse><users><nw_admin><password></password><profile>default</profile><quota>default</quota>
<networks><ip>::/0</ip></networks><grants><query>GRANT SELECT ON *.*</query></grants></nw_admin>{default}</users>
<profiles><default/></profiles></clickhouse>
"""
MANAGER = ("<default><password></password><profile>default</profile><quota>default</quota>"
           "<networks><ip>::/0</ip></networks><access_management>1</access_management></default>")


def chdb_config(path: Path, *users_d: str) -> Path:
    """A chDB configuration whose users are users.xml (quotas only) + users.d/*.xml."""
    (path / "users.d").mkdir(parents=True)
    for i, text in enumerate(users_d):
        (path / "users.d" / f"{i}.xml").write_text(text)
    (path / "users.xml").write_text("<clickhouse><quotas><default/></quotas></clickhouse>\n")
    config = path / "config.xml"
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


def rows_as_json(rows: Any) -> list[list[Any]]:
    return [[v if isinstance(v, int | float) else str(v) for v in row] for row in rows]


PEERS = ("SELECT src_namespace, src_pod, toString(ip_src), arrayStringConcat(src_labels, ','), dst_namespace, "
         "dst_pod, toString(ip_dst), arrayStringConcat(dst_labels, ','), count() FROM {source} GROUP BY ALL ORDER BY ALL")


def test_workspace_user_reads_only_the_workspace_redacted(tmp_path: Path, control_plane_dir: Path,
                                                           flow_client: Any) -> None:
    data_dir = tmp_path / "data"
    assert child("write", str(data_dir), str(control_plane_dir)) == {c: PER_CLUSTER for c in CLUSTERS}

    owned = ownership(control_plane_dir)
    # The same traffic in this process's store, through the API's rule: what the workspace may see, redacted.
    scope = workspace_scope(owned, WORKSPACE)
    where, params = scope.sql_where()
    clusters = ", ".join(f"'{c}'" for c in CLUSTERS)
    api_rows = f"(SELECT {', '.join(scope.redacted_select())} FROM flows AS f WHERE f.cluster IN ({clusters}) AND {where})"
    api = rows_as_json(flow_client.query(PEERS.format(source=api_rows), parameters=params).result_rows)
    visible = sum(r[-1] for r in api)
    assert 0 < visible < 2 * PER_CLUSTER

    # The admin creates the views (owned by nw_admin, who reads every table).
    user = grafana_user(owned, WORKSPACE, name="default")  # chDB's session user, so ClickHouse applies it
    admin = chdb_config(tmp_path / "admin", ADMIN_XML.format(default=MANAGER))
    made = child("sql", str(data_dir), str(admin),
                 stdin=json.dumps({str(i): s for i, s in enumerate(user.view_statements("nw_admin"))}))
    assert not [r for r in made.values() if isinstance(r, dict)], made

    # chDB logs in with no password and cannot switch on the server setting the max_execution_time constraint
    # needs: both left out here; grants, profile and filters are the generated user's.
    reader = chdb_config(tmp_path / "reader", ADMIN_XML.format(default=""),
                         user.users_xml("", changeable_in_readonly=()))
    fleet = QueryContext(T_START, T_END, 60, {"cluster": TemplateVariable("cluster", [ALL], list(CLUSTERS))})
    ns = QueryContext(T_START, T_END, 60, {"cluster": TemplateVariable("cluster", EAST),
                                          "namespace": TemplateVariable("namespace", [ALL], ["shop", "data"])})
    foreign = QueryContext(T_START, T_END, 60, {"cluster": TemplateVariable("cluster", EAST),
                                               "namespace": TemplateVariable("namespace", ["data"], ["data"])})
    place = "if({0}_cluster_name != '', {0}_cluster_name, cluster), {0}_namespace"
    shop_side = "({0}_cluster = 'grafana-east' AND {0}_namespace = 'shop')"
    queries = {
        "database": "SELECT currentDatabase()",
        "flows": "SELECT count() FROM flows",
        "peers": PEERS.format(source="flows"),
        "places": f"SELECT DISTINCT {place.format('src')}, {place.format('dst')} FROM flows",
        "talkers": f"SELECT sum(flows) FROM {TALKERS_1M}",
        "talkers hourly": f"SELECT sum(flows) FROM {hourly(TALKERS_1M)}",
        "conversations": f"SELECT sum(flows) FROM {CONVERSATIONS_1H}",
        "rollup places": " UNION ALL ".join(
            f"SELECT DISTINCT src_cluster, src_namespace, dst_cluster, dst_namespace FROM {t}"
            for t in (*ROLLUP_TABLES, CONVERSATIONS_1H)),
        "own workloads": f"SELECT DISTINCT src_workload FROM {TALKERS_1M} WHERE {shop_side.format('src')}",
        "peer workloads": f"SELECT DISTINCT dst_workload FROM {TALKERS_1M} WHERE NOT {shop_side.format('dst')}",
        "peer conversations": f"SELECT DISTINCT dst_workload, dst_workload_kind, toString(dst_ip), "
                              f"arrayStringConcat(dst_labels, ',') FROM {CONVERSATIONS_1H} WHERE NOT {shop_side.format('dst')}",
        "catalog": f"SELECT DISTINCT namespace_cluster, namespace FROM {CATALOG_TABLE}",
        "fleet total": expand(q.FLEET_TOTAL_FLOWS, fleet),
        "foreign namespace sources": expand(q.NS_TOP_SOURCES, foreign),
        "insert": "INSERT INTO flows (cluster) VALUES ('x')",
        "base table": "SELECT count() FROM default.flows",
        "locked setting": "SELECT 1 SETTINGS max_threads = 1",
        **panel_queries({"fleet": fleet, "namespace": ns}),
    }
    # chDB does not apply a user's default database to its session; Grafana's datasource names it anyway.
    got = child("sql", str(data_dir), str(reader), user.views_database, stdin=json.dumps(queries))

    assert got["database"] == [[user.views_database]]  # unqualified names in the dashboards reach the views
    assert got["flows"] == [[visible]]
    assert got["peers"] == api  # rows and redaction exactly the API's
    shop = (EAST, "shop")
    assert got["places"] and all(tuple(r[:2]) == shop or tuple(r[2:]) == shop for r in got["places"])
    assert got["talkers"] == got["talkers hourly"] == got["conversations"] == got["fleet total"] == [[visible]]
    assert got["rollup places"] and all(tuple(r[:2]) == shop or tuple(r[2:]) == shop for r in got["rollup places"])
    assert {"frontend", "cart"} <= {r[0] for r in got["own workloads"]}
    assert got["peer workloads"] and all(r[0] == "" or r[0].startswith("reserved:") for r in got["peer workloads"])
    assert got["peer conversations"]
    for workload, kind, ip, labels in got["peer conversations"]:
        assert workload == kind == "" and ip == "::" and all(lb.startswith("reserved:") for lb in labels.split(",") if lb)
    assert got["catalog"] == [list(shop)]
    # data's traffic as the shop team sees it: only what comes from shop
    assert got["foreign namespace sources"]
    assert all(r[0].startswith(f"{EAST}/shop/") for r in got["foreign namespace sources"])
    assert "ACCESS_DENIED" in got["insert"]["error"]
    assert "ACCESS_DENIED" in got["base table"]["error"]  # no way around the views
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
    assert f"ALTER USER `grafana_grafana_shop_team` DEFAULT DATABASE `{user.views_database}`" in statements
    assert f"GRANT SELECT ON `{user.views_database}`.* TO `grafana_grafana_shop_team`" in statements
    assert not [s for s in statements if s.startswith("GRANT") and "`default`" in s]  # never the tables
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
    assert ("CREATE ROW POLICY OR REPLACE `netwarden_grafana_grafana_shop_team` ON "
            "`netwarden_grafana_grafana_shop_team`.`flows`") in printed.out
    assert ("CREATE OR REPLACE VIEW `netwarden_grafana_grafana_shop_team`.`flows` DEFINER = CURRENT_USER "
            "SQL SECURITY DEFINER AS SELECT * REPLACE (") in printed.out
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
    """chDB stands in for a server that refuses user management: one line naming the statement, exit 2,
    and nothing created (the user is the first statement)."""
    assert main(["grafana", "access", "--workspace", WORKSPACE, "--data-dir", str(control_plane_dir),
                 "--clickhouse", chdb_dsn]) == 2
    err = capsys.readouterr().err
    assert "the server refused CREATE USER OR REPLACE `grafana_grafana_shop_team`: Code: 497" in err, err
    assert "sha256" not in err
    assert not flow_client.query("SELECT name FROM system.databases WHERE name LIKE 'netwarden_grafana%'").result_rows

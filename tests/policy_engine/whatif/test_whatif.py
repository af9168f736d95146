"""What-if over stored history: a change that denies observed traffic lists exactly what history shows for it
(compared with a direct count of the flows) and exits 3; one that denies nothing exits 0; role rules."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from netwarden.cli import CommandError, main
from netwarden.commands.policy_traffic import refuse_if_denies_observed
from policy_engine.gitops import GitOpsErrors, apply_documents
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.whatif import parse_documents
from query_api.policy_traffic_routes import Window, what_if
from query_api.store import FlowStore
from tests.policy_engine.whatif.conftest import admin, new_store, store_demo_traffic

CLUSTER = "wi-east"
OTHER = "wi-west"
FLOWS = 4_000


def deny_port(port: int, blueprint: str = "wi-guard", cluster: str = CLUSTER) -> list[dict[str, Any]]:
    """A cluster-wide policy denying every pod's egress to `port`, in a blueprint assigned to `cluster` (default
    deny off: in Cilium a deny section alone would isolate every pod)."""
    ports = [{"port": str(port), "protocol": "UDP"}, {"port": str(port), "protocol": "TCP"}]
    return [
        {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": f"deny-egress-{port}"},
         "spec": {"scope": "cluster", "rules": [{"name": "deny", "cilium": {
             "endpointSelector": {}, "enableDefaultDeny": {"egress": False},
             "egressDeny": [{"toEntities": ["all"], "toPorts": [{"ports": ports}]}]}}]}},
        {"apiVersion": "netwarden.io/v1", "kind": "Blueprint", "metadata": {"name": blueprint},
         "spec": {"clusterPolicies": [f"deny-egress-{port}"]}},
        {"apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": blueprint},
         "spec": {"blueprint": blueprint, "clusters": [cluster]}},
    ]


@pytest.fixture(scope="module")
def history(flows: FlowStore) -> Window:
    since, until = store_demo_traffic(flows, CLUSTER, FLOWS, seed=1)
    store_demo_traffic(flows, OTHER, 1_000, seed=2)
    return Window(since, until)


@pytest.fixture
def store(tmp_path: Path) -> ControlPlaneStore:
    s = new_store(tmp_path, CLUSTER, OTHER)
    yield s
    s.close()


def dns_flows(flows: FlowStore, window: Window) -> int:
    """Direct count: flows of pod clients to port 53 (requests and their replies) that Hubble did not drop."""
    rows = flows.client.query(
        "SELECT count() FROM flows WHERE cluster = {c:String} AND time >= {s:DateTime64(9)} AND time < {u:DateTime64(9)}"
        " AND l4_protocol IN (1, 2) AND verdict != 2 AND if(is_reply, src_port, dst_port) = 53"
        " AND if(is_reply, dst_namespace, src_namespace) != ''",
        parameters={"c": CLUSTER, "s": window.since, "u": window.until},
    ).result_rows
    return int(rows[0][0])


def org_admin() -> Principal:
    return Principal.with_role("org-admin", name="ci")


def test_a_change_denying_dns_lists_exactly_the_dns_history(
    flows: FlowStore, history: Window, store: ControlPlaneStore
) -> None:
    docs = parse_documents(deny_port(53), "request")
    report = what_if(flows.client, store, org_admin(), docs, history)
    assert [c.cluster for c in report.clusters] == [CLUSTER]  # the blueprint reaches only its cluster
    denied = report.clusters[0].newly_denied
    assert denied and report.denies_observed
    assert {(g.port, g.protocol) for g in denied} <= {(53, "UDP"), (53, "TCP")}
    assert sum(g.flows for g in denied) == dns_flows(flows, history) > 0
    assert not report.clusters[0].newly_allowed
    for g in denied:
        assert history.since <= g.first_seen <= g.last_seen < history.until
    # Nothing was written: the store still has no such policy.
    assert store.get_policy("deny-egress-53") is None


def test_a_change_denying_nothing_observed(flows: FlowStore, history: Window, store: ControlPlaneStore) -> None:
    report = what_if(flows.client, store, org_admin(), parse_documents(deny_port(9), "request"), history)
    assert [c.cluster for c in report.clusters] == [CLUSTER]
    assert not report.denies_observed and not report.clusters[0].newly_allowed


def test_removing_the_deny_newly_allows_what_it_denied(
    flows: FlowStore, history: Window, store: ControlPlaneStore
) -> None:
    apply_documents(admin(store), parse_documents(deny_port(53), "setup"))
    undo = [{"apiVersion": "netwarden.io/v1", "kind": "Blueprint", "metadata": {"name": "wi-guard"},
             "spec": {"clusterPolicies": []}}]
    report = what_if(flows.client, store, org_admin(), parse_documents(undo, "request"), history)
    allowed = report.clusters[0].newly_allowed
    assert not report.denies_observed
    assert sum(g.flows for g in allowed) == dns_flows(flows, history)


def test_a_caller_may_only_what_if_what_it_could_write(
    flows: FlowStore, history: Window, store: ControlPlaneStore
) -> None:
    someone = Principal.with_role("workspace-admin", "nobody-ws", name="wendy")
    with pytest.raises(GitOpsErrors, match="permission denied"):
        what_if(flows.client, store, someone, parse_documents(deny_port(53), "request"), history)


def test_documents_given_as_data_may_not_read_files() -> None:
    doc = {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "p"},
           "spec": {"scope": "namespace", "rules": [{"fromFile": "/etc/passwd"}]}}
    with pytest.raises(GitOpsErrors, match="fromFile is not accepted"):
        parse_documents([doc], "request")


@pytest.fixture
def local_mode(chdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CLI local mode: the control plane in a fresh data dir, the history in the session's chDB."""
    monkeypatch.setenv("NETWARDEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NETWARDEN_CLICKHOUSE", chdb_dsn)
    monkeypatch.delenv("NETWARDEN_SERVER", raising=False)
    new_store(tmp_path / "data", CLUSTER, OTHER).close()
    return tmp_path / "data"


def test_cli_exit_codes_and_json(
    flows: FlowStore, history: Window, local_mode: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    denying, harmless = tmp_path / "deny53.yaml", tmp_path / "deny9.yaml"
    denying.write_text(yaml.safe_dump_all(deny_port(53)))
    harmless.write_text(yaml.safe_dump_all(deny_port(9)))
    base = ["policy", "what-if", "--since", "2h", "--cluster", CLUSTER]
    assert main([*base, "-f", str(denying), "-o", "json"]) == 3
    data = json.loads(capsys.readouterr().out)
    (cluster,) = data["clusters"]
    assert cluster["cluster"] == CLUSTER and cluster["newly_allowed"] == []
    group = cluster["newly_denied"][0]
    assert set(group) == {"source", "destination", "port", "protocol", "flows", "first_seen", "last_seen"}
    assert set(group["source"]) == {"namespace", "workload"} and group["port"] == 53
    assert sum(g["flows"] for g in cluster["newly_denied"]) == dns_flows(flows, history)
    assert main([*base, "-f", str(harmless)]) == 0
    assert "no observed conversation changes verdict" in capsys.readouterr().out


def check_args(**extra: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"data_dir": None, "as_role": None, "scope": None, "check_history": "2h",
                                 "force": False, **extra})


def test_apply_check_history_refuses_unless_forced(
    history: Window, local_mode: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CommandError, match=r"would deny \d+ conversation group\(s\) observed in the last 2h") as err:
        refuse_if_denies_observed(check_args(filename="."), deny_port(53))
    assert " 53/UDP (" in str(err.value) and "--force" in str(err.value)
    refuse_if_denies_observed(check_args(filename="."), deny_port(9))  # nothing observed is denied
    refuse_if_denies_observed(check_args(filename=".", force=True), deny_port(53))
    assert "warning: the change would deny" in capsys.readouterr().err


def test_sync_check_history_compares_the_current_set_with_what_hubble_saw(history: Window, local_mode: Path) -> None:
    refuse_if_denies_observed(check_args(), None)  # no policies: nothing Hubble forwarded is denied
    with ControlPlaneStore.open(local_mode) as store:
        apply_documents(admin(store), parse_documents(deny_port(53), "setup"))
    with pytest.raises(CommandError, match="53/UDP"):
        refuse_if_denies_observed(check_args(), None, [CLUSTER])
    refuse_if_denies_observed(check_args(), None, [OTHER])  # the blueprint is not on the other cluster


def test_a_blueprint_change_reaches_every_cluster_it_is_assigned_to(
    flows: FlowStore, history: Window, store: ControlPlaneStore
) -> None:
    apply_documents(admin(store), parse_documents([{
        "apiVersion": "netwarden.io/v1", "kind": "Blueprint", "metadata": {"name": "wi-shared"},
        "spec": {"clusterPolicies": []}}, {
        "apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": "wi-shared"},
        "spec": {"blueprint": "wi-shared", "clusters": [CLUSTER, OTHER]}}], "setup"))
    policy, blueprint, _ = deny_port(53, blueprint="wi-shared")
    report = what_if(flows.client, store, org_admin(), parse_documents([policy, blueprint], "request"), history)
    assert [c.cluster for c in report.clusters] == [CLUSTER, OTHER]
    assert all(c.newly_denied for c in report.clusters)

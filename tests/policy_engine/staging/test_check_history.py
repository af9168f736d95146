"""`netwarden apply/sync --check-history`: a change that would deny observed traffic is refused before anything is
written or reaches a cluster, unless --force; staging the same policy is never refused (it enforces nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from netwarden.cli import main
from policy_engine.model import Cluster
from policy_engine.store import ControlPlaneStore
from query_api.store import FlowStore, open_clickhouse
from tests.kube_api_stub import KubeApiStub
from tests.policy_engine.whatif.conftest import admin, store_demo_traffic

CLUSTER = "stg-hist-east"  # own name: the chDB data dir is shared by the test process


def deny_dns(cluster: str) -> list[dict[str, Any]]:
    """Every pod's egress to port 53 denied, through a blueprint on `cluster`."""
    ports = [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}]
    return [
        {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "stg-deny-dns"},
         "spec": {"scope": "cluster", "rules": [{"name": "deny", "cilium": {
             "endpointSelector": {}, "enableDefaultDeny": {"egress": False},
             "egressDeny": [{"toEntities": ["all"], "toPorts": [{"ports": ports}]}]}}]}},
        {"apiVersion": "netwarden.io/v1", "kind": "Blueprint", "metadata": {"name": "stg-guard"},
         "spec": {"clusterPolicies": ["stg-deny-dns"]}},
        {"apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": "stg-guard"},
         "spec": {"blueprint": "stg-guard", "clusters": [cluster]}},
    ]


@pytest.fixture(scope="module")
def history(chdb_dsn: str) -> None:
    flows = FlowStore(open_clickhouse(None, chdb_dsn))
    flows.ensure_schema()
    store_demo_traffic(flows, CLUSTER, 1500, seed=5)


@pytest.fixture
def data(history: None, chdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local mode: the control plane in a fresh data dir, the history in the session's chDB."""
    monkeypatch.setenv("NETWARDEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NETWARDEN_CLICKHOUSE", chdb_dsn)
    monkeypatch.delenv("NETWARDEN_SERVER", raising=False)
    return tmp_path / "data"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_apply_and_sync_refuse_what_would_deny_observed_traffic(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with KubeApiStub(cilium=True, namespaces=("kube-system", "shop", "data", "monitoring")) as kube:
        with ControlPlaneStore.open(data) as store, store.transaction():
            admin(store).put_cluster(Cluster(CLUSTER, "upstream", "cilium", api_server=kube.url,
                                             namespaces=("shop", "data", "monitoring", "kube-system")))
        docs = deny_dns(CLUSTER)
        change = tmp_path / "deny-dns.yaml"
        change.write_text(yaml.safe_dump_all(docs))

        code, _, err = run(capsys, "apply", "-f", str(change), "--check-history", "2h")
        assert code == 2 and "would deny" in err and "observed in the last 2h" in err and " 53/UDP (" in err
        with ControlPlaneStore.open(data) as store:
            assert store.get_policy("stg-deny-dns") is None  # nothing written

        # Staged, the same policy enforces nothing: no refusal.
        staged = [{**docs[0], "spec": {**docs[0]["spec"], "mode": "staged"}}, *docs[1:]]
        change.write_text(yaml.safe_dump_all(staged))
        code, out, err = run(capsys, "apply", "-f", str(change), "--check-history", "2h")
        assert code == 0, err
        assert "stage     Policy stg-deny-dns (staged version 1)" in out

        # Enforced with --force: written, with the warning.
        change.write_text(yaml.safe_dump_all(docs))
        code, out, err = run(capsys, "apply", "-f", str(change), "--check-history", "2h", "--force")
        assert code == 0 and "warning: the change would deny" in err and "(--force: going ahead)" in err
        assert "unstage   Policy stg-deny-dns (staged version 1)" in out

        # sync compares the desired set with what Hubble saw, before anything reaches the cluster.
        code, out, err = run(capsys, "sync", "--cluster", CLUSTER, "--check-history", "2h")
        assert code == 2 and " 53/UDP (" in err and "use --force" in err
        assert kube.objects("CiliumClusterwideNetworkPolicy") == [] and kube.requests_for() == []


def test_the_history_check_can_ask_an_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While `netwarden up` holds the data dir's flow store, --server reads history through its API; an API
    that cannot be reached stops the apply before anything is written."""
    from netwarden.broker import free_port

    data = tmp_path / "data"
    with ControlPlaneStore.open(data) as store, store.transaction():
        admin(store).put_cluster(Cluster(CLUSTER, "upstream", "cilium"))
    change = tmp_path / "deny-dns.yaml"
    change.write_text(yaml.safe_dump_all(deny_dns(CLUSTER)))
    server = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "apply", "-f", str(change), "--data-dir", str(data), "--check-history", "1h",
                       "--server", server, "--token", "t")
    assert code == 2 and f"--server {server}" in err
    with ControlPlaneStore.open(data) as store:
        assert store.get_policy("stg-deny-dns") is None

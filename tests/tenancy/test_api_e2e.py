"""The demo organization end to end over HTTP: `seed_demo` users and their real API tokens, the
Authenticator, the query API app, and demo traffic stored in the real ClickHouse engine (chDB).

The acceptance of issue 3 at the API level: the demo workspace-admin token sees only flows touching
its workspace (peers redacted), project tokens see their project's cluster, org tokens see all.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from netwarden.demo_seed import seed_demo
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy
from query_api.auth import Authenticator

traffic = pytest.importorskip("collectors.traffic")

# A window of our own: the chDB directory is shared by the whole test process.
T0_NS = (int(time.time()) - 3 * 3600) * 1_000_000_000 + 123_456_789
PER_CLUSTER = 400


def _rfc3339(ns: int) -> str:
    s, rest = divmod(ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:09d}Z"


@pytest.fixture(scope="module")
def flow_store(chdb_dsn: str) -> Any:
    from query_api.store import FlowStore, open_clickhouse
    from streams.decode import FlowDecoder
    from streams.sink import ClickHouseSink

    store = FlowStore(open_clickhouse(None, chdb_dsn))
    store.ensure_schema()
    decoder = FlowDecoder()
    for i, cluster in enumerate(traffic.DEMO_CLUSTERS):
        entries = traffic.DemoTraffic(cluster, seed=70 + i).serialized(PER_CLUSTER, now_ns=T0_NS, spacing_ns=1_000_003)
        decoded = decoder.decode(cluster, [data for _, _, data in entries])
        assert not decoded.rejected
        ClickHouseSink(store.client).insert(decoded.table)
    return store


@pytest.fixture
def api(tmp_path: Path, flow_store: Any) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], Tenancy]]:
    from query_api.app import create_app

    with ControlPlaneStore.open(tmp_path) as store:
        entries = seed_demo(store, tmp_path)
    tenancy = Tenancy.open(tmp_path)
    app = create_app(flow_store, CollectorRegistry(), authenticator=Authenticator(tenancy),
                     ownership=tenancy.ownership)
    try:
        yield TestClient(app), {e["role"]: e for e in entries}, tenancy
    finally:
        tenancy.close()


def _flows(client: TestClient, token: str) -> list[dict[str, Any]]:
    r = client.get("/api/v1/flows", headers={"Authorization": f"Bearer {token}"},
                   params={"since": _rfc3339(T0_NS - 2_000_000_000), "until": _rfc3339(T0_NS), "limit": 10_000})
    assert r.status_code == 200, r.text
    return [item["flow"] for item in r.json()["flows"]]


def _place(flow: dict[str, Any], side: str) -> tuple[str, str]:
    endpoint = flow.get(side, {})
    cluster = endpoint.get("cluster_name") or flow["node_name"].split("/")[0]
    return cluster, endpoint.get("namespace", "")


def test_demo_tokens_scope_flow_history(api: tuple[TestClient, dict[str, dict[str, str]], Tenancy]) -> None:
    client, users, _ = api
    everything = _flows(client, users["org-admin"]["token"])
    assert len(everything) == 2 * PER_CLUSTER
    assert len(_flows(client, users["org-read-only"]["token"])) == 2 * PER_CLUSTER

    # Project roles: their project's cluster (storefront = demo-east, platform = demo-west).
    for role, cluster in (("infra-admin", "demo-east"), ("project-admin", "demo-east"),
                          ("project-read-only", "demo-west")):
        seen = _flows(client, users[role]["token"])
        expected = [f for f in everything if cluster in (_place(f, "source")[0], _place(f, "destination")[0])]
        assert len(seen) == len(expected) > 0, role

    # Workspace roles: flows touching demo-east/shop, and nothing identifying about the other side.
    shop = ("demo-east", "shop")
    expected = [f for f in everything if shop in (_place(f, "source"), _place(f, "destination"))]
    for role in ("workspace-admin", "workspace-read-only"):
        seen = _flows(client, users[role]["token"])
        assert len(seen) == len(expected) > 0, role
        redacted_peers = 0
        for flow in seen:
            inside = {side: _place(flow, side) == shop for side in ("source", "destination")}
            assert any(inside.values())
            for side, mine in inside.items():
                if not mine:
                    peer = flow.get(side, {})
                    assert not peer.get("pod_name") and not peer.get("workloads"), flow
                    redacted_peers += 1
        assert redacted_peers > 0  # the shop talks to data and kube-dns: peers exist and are redacted


def test_demo_tokens_list_what_they_may_see(api: tuple[TestClient, dict[str, dict[str, str]], Tenancy]) -> None:
    client, users, _ = api

    def workspaces(role: str) -> list[str]:
        r = client.get("/api/v1/workspaces", headers={"Authorization": f"Bearer {users[role]['token']}"})
        assert r.status_code == 200, r.text
        return [w["name"] for w in r.json()["workspaces"]]

    assert workspaces("org-admin") == ["data-team", "observability", "shop-team"]
    assert workspaces("project-admin") == ["data-team", "shop-team"]
    assert workspaces("project-read-only") == ["observability"]
    assert workspaces("workspace-admin") == ["shop-team"]


def test_api_refuses_bad_and_revoked_tokens(api: tuple[TestClient, dict[str, dict[str, str]], Tenancy]) -> None:
    client, users, tenancy = api
    assert client.get("/healthz").status_code == 200
    r = client.get("/api/v1/flows")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "detail" in r.json()
    token = users["workspace-admin"]["token"]
    assert client.get("/api/v1/clusters", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    [row] = [t for t in tenancy.list_tokens(users["workspace-admin"]["name"]) if t.revoked_at is None]
    tenancy.revoke_token(row.id)
    r = client.get("/api/v1/clusters", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json() == {"detail": "invalid token: API token revoked"}

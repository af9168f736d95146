"""PolicyEnricher behind the real sink (ClickHouse decodes, keys and joins; chDB): every stored flow carries
the enrichment the reference keying (tests/enrichment/flowkeys.py) gives it."""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.traffic import DemoTraffic
from policy_engine.inventory import all_messages
from policy_engine.model import (
    Assignment,
    AssignmentTarget,
    Cluster,
    NamespaceRef,
    PolicyRule,
    PolicySpec,
    Project,
    Workspace,
)
from policy_engine.store import ControlPlaneStore
from query_api.store import FlowStore, open_clickhouse
from schemas.flow_record import ENRICHMENT_COLUMNS
from streams.inventory import InventoryView
from streams.sink import ClickHouseSink, Part
from streams.verdicts import PolicyEnricher
from tests.enrichment.conftest import CART_ALLOW_V1, SHOP_EGRESS, admin
from tests.enrichment.flowkeys import enrich_flows, flow_key

CLUSTER = "enrich-e2e-east"  # own name: the chDB data dir is shared by the test process
NAMES = [c.name for c in ENRICHMENT_COLUMNS]


@pytest.fixture(scope="module")
def client(chdb_dsn: str) -> Iterator[Any]:
    store = FlowStore(open_clickhouse(None, chdb_dsn))
    store.ensure_schema()
    yield store.client


@pytest.fixture
def view(tmp_path: Path) -> InventoryView:
    with ControlPlaneStore.open(tmp_path) as store, store.transaction():
        cp = admin(store)
        cp.put_cluster(Cluster(CLUSTER, "upstream", "cilium", namespaces=("shop", "data", "monitoring", "kube-system")))
        cp.put_project(Project("e2e", (CLUSTER,)))
        cp.put_workspace(Workspace("e2e-shop", "e2e", (NamespaceRef(CLUSTER, "shop"),)))
        cp.put_assignment(Assignment("e2e-day0", blueprint="zero-trust-day0", clusters=(CLUSTER,)))
        for name, spec in (("e2e-cart", CART_ALLOW_V1), ("e2e-egress", SHOP_EGRESS)):
            cp.put_policy(PolicySpec(name, "namespace", (PolicyRule(name, "cilium", spec),)))
            cp.put_assignment(Assignment(name, policy=name, targets=(AssignmentTarget(workspace="e2e-shop"),)))
    with ControlPlaneStore.open(tmp_path) as store:
        view = InventoryView()
        for message in all_messages(store):
            view.apply(message.key, message.value)
    return view


def stored_and_expected(client: Any, view: InventoryView, n: int) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
    responses = DemoTraffic(CLUSTER, seed=7).flows(n)
    sink = ClickHouseSink(client, PolicyEnricher(view))
    try:
        result = sink.store([Part(CLUSTER, "test[0]@0", [r.SerializeToString() for r in responses])], want_rows=True)
    finally:
        sink.close()
    assert not result.refused and result.stored == n
    stored = {bytes(r["uuid"]): r for t in result.tables for r in t.to_pylist()}
    keys = [flow_key(CLUSTER, r.flow) for r in responses]
    expected = enrich_flows(PolicyEnricher(view), keys)
    out = []
    for response, want, key in zip(responses, expected, keys, strict=True):
        got = stored[uuid_module.UUID(response.flow.uuid).bytes]
        out.append(({k: got[k] for k in NAMES}, {k: want[k] for k in NAMES}, key))
    return out


def test_stored_requests_carry_the_enrichment_of_their_key(client: Any, view: InventoryView) -> None:
    rows = stored_and_expected(client, view, 3000)
    requests = [(got, want) for got, want, key in rows if not key.is_reply and key.verdict in (0, 1, 2)]
    assert len(requests) > 1000
    for got, want in requests:
        assert got == want
    assert {got["src_workspace"] for got, _ in requests} >= {"e2e-shop"}
    assert {got["desired_verdict"] for got, _ in requests} >= {1, 2}


def test_stored_replies_carry_their_connections_verdict(client: Any, view: InventoryView) -> None:
    rows = stored_and_expected(client, view, 3000)
    replies = [(got, want) for got, want, key in rows if key.is_reply]
    assert replies
    for got, want in replies:
        assert got == want

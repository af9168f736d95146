"""The stream fills the staged verdict columns: a version staged with the real CLI reaches the worker's inventory
through a real Tansu broker, and the flows the real sink then stores (chDB) carry the staged set's verdicts
next to the desired set's; once promoted, the desired set decides as the staged one did and nothing is staged."""

from __future__ import annotations

import asyncio
import uuid as uuid_module
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from collectors.traffic import DemoTraffic
from netwarden.cli import main as cli_main
from policy_engine.inventory_publisher import InventoryPublisher
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
from schemas.inventory import ClusterInventory
from streams.inventory import start_inventory
from streams.sink import ClickHouseSink, Part
from streams.verdicts import PolicyEnricher
from tests.enrichment.conftest import CART_ALLOW_V1, CART_ALLOW_V2, MONITORING_SCRAPE, admin
from tests.enrichment.flowkeys import enrich_flows, flow_key
from tests.enrichment.test_inventory_topic import ensure_inventory_topic

CLUSTER = "staging-e2e"  # own name: the chDB data dir is shared by the test process
CART = "CiliumNetworkPolicy/shop/cart-allow"
TIMEOUT = 30
SET_FIELDS = ("verdict", "drop_reason", "egress_verdict", "egress_policy", "egress_rule", "egress_version",
              "ingress_verdict", "ingress_policy", "ingress_rule", "ingress_version")


def seeded(data: Path) -> None:
    with ControlPlaneStore.open(data) as store, store.transaction():
        cp = admin(store)
        cp.put_cluster(Cluster(CLUSTER, "upstream", "cilium", namespaces=("shop", "data", "monitoring", "kube-system")))
        cp.put_project(Project("staging", (CLUSTER,)))
        cp.put_workspace(Workspace("staging-shop", "staging", (NamespaceRef(CLUSTER, "shop"),)))
        cp.put_assignment(Assignment("staging-day0", blueprint="zero-trust-day0", clusters=(CLUSTER,)))
        for name, spec, target in (
            ("cart-allow", CART_ALLOW_V1, AssignmentTarget(workspace="staging-shop")),
            ("scrape", MONITORING_SCRAPE, AssignmentTarget(cluster=CLUSTER, namespace="monitoring")),
        ):
            cp.put_policy(PolicySpec(name, "namespace", (PolicyRule(name, "cilium", spec),)))
            cp.put_assignment(Assignment(name, policy=name, targets=(target,)))


def store_batch(client: Any, enricher: PolicyEnricher, seed: int) -> list[tuple[Any, dict[str, Any]]]:
    """Demo flows through the real sink; (key, stored enrichment columns) per flow."""
    responses = DemoTraffic(CLUSTER, seed=seed).flows(1500)
    sink = ClickHouseSink(client, enricher)
    try:
        result = sink.store([Part(CLUSTER, f"staging[0]@{seed}", [r.SerializeToString() for r in responses])],
                            want_rows=True)
    finally:
        sink.close()
    assert not result.refused and result.stored == len(responses)
    stored = {bytes(r["uuid"]): r for t in result.tables for r in t.to_pylist()}
    return [(flow_key(CLUSTER, r.flow), stored[uuid_module.UUID(r.flow.uuid).bytes]) for r in responses]


def columns(row: Mapping[str, Any], prefix: str) -> list[Any]:
    return [row[f"{prefix}_{f}"] for f in SET_FIELDS]


def is_monitoring_to_cart(key: Any) -> bool:
    return key.src_namespace == "monitoring" and "k8s:app=cart" in key.dst_labels and not key.is_reply


async def test_the_stream_fills_staged_columns_and_promotion_makes_them_desired(
    tansu: object, tmp_path: Path, chdb_dsn: str
) -> None:
    bootstrap = tansu.bootstrap  # type: ignore[attr-defined]
    data = tmp_path / "data"
    seeded(data)
    client = FlowStore(open_clickhouse(None, chdb_dsn))
    client.ensure_schema()
    await ensure_inventory_topic(bootstrap)
    stop = asyncio.Event()
    publisher = InventoryPublisher(lambda: ControlPlaneStore.open(data), bootstrap, poll_seconds=0.1,
                                   ensure_topic=ensure_inventory_topic)
    task = asyncio.create_task(publisher.run(stop))
    feed = await start_inventory(bootstrap)
    try:
        view = feed.view
        await view.wait_for(lambda s: CLUSTER in s, TIMEOUT)
        enricher = PolicyEnricher(view)

        staged_file = tmp_path / "cart-v2.yaml"
        staged_file.write_text(yaml.safe_dump({
            "apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "cart-allow"},
            "spec": {"scope": "namespace", "rules": [{"name": "cart-allow", "cilium": CART_ALLOW_V2}]}}))
        assert await asyncio.to_thread(cli_main, ["policy", "stage", "-f", str(staged_file), "--data-dir", str(data)]) == 0

        def staged_v2(s: Mapping[str, ClusterInventory]) -> bool:
            staged = s[CLUSTER].staged
            return staged is not None and [v.version for v in staged.staged_versions] == [2]

        await view.wait_for(staged_v2, TIMEOUT)
        rows = store_batch(client.client, enricher, 2)
        # Every stored flow carries what the reference enricher says for its key, staged columns included.
        reference = enrich_flows(PolicyEnricher(view), [k for k, _ in rows])
        for (key, row), want in zip(rows, reference, strict=True):
            if not key.is_reply:
                assert columns(row, "staged") == [want[f"staged_{f}"] for f in SET_FIELDS], key
        newly_allowed = [(key, row) for key, row in rows if is_monitoring_to_cart(key)]
        assert {key.traffic_direction for key, _ in newly_allowed} >= {1}
        for key, row in newly_allowed:
            assert (row["desired_ingress_verdict"], row["desired_ingress_rule"]) == (2, "default-deny")
            assert (row["staged_ingress_verdict"], row["staged_ingress_policy"], row["staged_ingress_rule"],
                    row["staged_ingress_version"]) == (1, CART, "ingress[1]", 2)
            if key.traffic_direction == 1:  # seen where cart's ingress policy applies: the flow's verdict flips
                assert (row["desired_verdict"], row["desired_drop_reason"], row["staged_verdict"]) == (2, 133, 1)
        frontend_to_cart = [row for key, row in rows if "k8s:app=cart" in key.dst_labels and key.src_namespace == "shop"
                            and not key.is_reply and key.traffic_direction == 1]
        assert frontend_to_cart and all(
            (r["desired_ingress_version"], r["staged_ingress_version"]) == (1, 2) for r in frontend_to_cart)
        # Connections to other servers than cart (a reply's server is its source) are judged alike by both sets.
        untouched = [row for key, row in rows if "k8s:app=cart" not in (key.src_labels if key.is_reply else key.dst_labels)]
        assert untouched and all(columns(r, "staged") == columns(r, "desired") for r in untouched)

        # Promoted: version 3 is enforced, the desired set decides as the staged one did; nothing is staged, so
        # the staged columns are the desired ones (under the staged set's own revision).
        assert await asyncio.to_thread(cli_main, ["policy", "promote", "cart-allow", "--data-dir", str(data)]) == 0
        await view.wait_for(lambda s: not s[CLUSTER].staged.staged_versions  # type: ignore[union-attr]
                            and s[CLUSTER].desired.rendered_from[CART].version == 3, TIMEOUT)  # type: ignore[union-attr]
        rows = store_batch(client.client, enricher, 2)
        promoted = [row for key, row in rows if is_monitoring_to_cart(key)]
        assert promoted and all(
            (r["desired_verdict"], r["desired_ingress_verdict"], r["desired_ingress_version"]) == (1, 1, 3)
            for r in promoted)
        assert all(columns(row, "staged") == columns(row, "desired") and row["staged_revision"] > 0 for _, row in rows)
    finally:
        await feed.stop()
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)

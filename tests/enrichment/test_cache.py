"""Per-key caches: a key seen at the same revision never re-runs the evaluator; a new policy revision does;
an ownership change re-reads ownership but keeps the verdicts. The inventory reaches the enricher as topic
records (the outbox's messages applied to an InventoryView), without a broker."""

from __future__ import annotations

import dataclasses

import pytest

from collectors.traffic import DemoTraffic
from policy_engine.inventory import all_messages
from policy_engine.model import PolicyRule, PolicySpec
from policy_engine.store import ControlPlaneStore
from schemas.inventory import InventoryFormatError, cluster_key
from streams.verdicts import PolicyEnricher
from tests.enrichment.conftest import CART_ALLOW_V2, admin
from tests.enrichment.flowkeys import enrich_flows, flow_key, key_table
from tests.enrichment.inventory_helpers import inventory_view, move_namespace


def east_keys(n: int = 3000) -> list:
    return [flow_key("demo-east", r.flow) for r in DemoTraffic("demo-east").flows(n)]


def test_a_seen_key_is_not_evaluated_again_at_the_same_revision(demo_store: ControlPlaneStore) -> None:
    enricher = PolicyEnricher(inventory_view(demo_store))
    keys = east_keys()
    table = key_table(keys)
    first = enricher.enrich_keys(table)
    evaluations, built = enricher.evaluations, enricher.evaluators_built
    assert evaluations > 0 and built == 1
    second = enricher.enrich_keys(table)
    assert second.equals(first)
    assert enricher.evaluations == evaluations and enricher.row_hits == table.num_rows
    # The same connections seen with Hubble's other verdict are new keys, but not new evaluations.
    flipped = [dataclasses.replace(k, verdict=3 - k.verdict) for k in keys if k.verdict in (1, 2)]
    rows = enrich_flows(enricher, flipped)
    assert enricher.evaluations == evaluations and enricher.evaluators_built == built
    assert all(r["verdict_mismatch"] == (k.verdict != r["desired_verdict"]) for k, r in zip(flipped, rows, strict=True)
               if r["desired_verdict"])


def test_a_new_policy_revision_re_evaluates_and_an_ownership_change_does_not(demo_store: ControlPlaneStore) -> None:
    view = inventory_view(demo_store)
    enricher = PolicyEnricher(view)
    keys = east_keys()
    before = enrich_flows(enricher, keys)
    evaluations = enricher.evaluations
    policy_revision = view.get("demo-east").desired.revision  # type: ignore[union-attr]
    # Ownership only: data moves to another workspace; the desired set keeps its revision.
    move_namespace(demo_store, "demo-east", "data", "storage-team", "storefront")
    inventory_view(demo_store, view)
    assert view.get("demo-east").desired.revision == policy_revision  # type: ignore[union-attr]
    moved = enrich_flows(enricher, keys)
    assert enricher.evaluations == evaluations
    assert {r["dst_workspace"] for k, r in zip(keys, moved, strict=True) if k.dst_namespace == "data"} == {"storage-team"}
    assert [r["desired_verdict"] for r in moved] == [r["desired_verdict"] for r in before]
    # A policy change: new revision, the evaluator is rebuilt and keys are judged again.
    with demo_store.transaction():
        cp = admin(demo_store)
        spec = {**CART_ALLOW_V2, "ingress": CART_ALLOW_V2["ingress"][:1]}
        cp.put_policy(PolicySpec("cart-allow", "namespace", (PolicyRule("cart-allow", "cilium", spec),)))
    inventory_view(demo_store, view)
    assert view.get("demo-east").desired.revision == policy_revision + 1  # type: ignore[union-attr]
    after = enrich_flows(enricher, keys)
    assert enricher.evaluators_built == 2 and enricher.evaluations > evaluations
    assert {r["desired_revision"] for r in after} == {policy_revision + 1}
    versions = {r["desired_ingress_version"] for r in after if r["desired_ingress_policy"].endswith("/cart-allow")}
    assert versions == {3}


def test_the_view_keeps_the_newest_state_per_cluster_and_refuses_bad_records(demo_store: ControlPlaneStore) -> None:
    view = inventory_view(demo_store)
    east = view.get("demo-east")
    assert east is not None
    [message] = [m for m in all_messages(demo_store) if m.cluster == "demo-east"]
    older = dataclasses.replace(east, revision=0).to_json()
    view.apply(message.key, older)  # a replayed old state does not win
    assert view.get("demo-east") == east
    view.apply(cluster_key("demo-east"), None)  # tombstone: the cluster was deleted
    assert view.get("demo-east") is None and view.get("demo-west") is not None
    with pytest.raises(InventoryFormatError, match="key"):
        view.apply(b"demo-east", message.value)
    with pytest.raises(InventoryFormatError, match="does not match the key"):
        view.apply(cluster_key("demo-west"), message.value)
    with pytest.raises(InventoryFormatError, match="format"):
        view.apply(message.key, b'{"format": 99}')
    with pytest.raises(InventoryFormatError, match="not JSON"):
        view.apply(message.key, b"\xff")

"""Enrichment of demo traffic and of every reference capture, keyed as the sink keys them: ownership equals the
control plane's, and each key's verdict equals `netwarden policy check` on the same connection."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from collectors.jsonl import read_capture
from collectors.traffic import DemoTraffic
from netwarden.commands.policy_check import check_probes
from policy_engine.inventory import latest_inventory
from policy_engine.model import Cluster, NamespaceRef, Project, Workspace
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy
from schemas.inventory import ClusterInventory
from streams.verdicts import PolicyEnricher
from tests.conftest import CAPTURES
from tests.enrichment.conftest import add_demo_policies, admin
from tests.enrichment.flowkeys import (
    FlowKey,
    enrich_flows,
    expected_owner,
    flow_key,
    key_table,
    policy_check_document,
)


class RecordedInventory:
    """The inventory exactly as the control plane recorded it for the topic (the outbox's latest messages)."""

    def __init__(self, store: ControlPlaneStore) -> None:
        self.clusters = latest_inventory(store)

    def snapshot(self) -> Mapping[str, ClusterInventory]:
        return self.clusters


def assert_ownership(store: ControlPlaneStore, keys: Sequence[FlowKey], rows: Sequence[dict[str, Any]]) -> None:
    index = Tenancy(store).ownership_index()  # what the query API scopes with
    projects = {c.name: ",".join(sorted(p for p, cs in index.ownership.project_clusters.items() if c.name in cs))
                for c in store.list_clusters()}
    for key, row in zip(keys, rows, strict=True):
        for side in ("src", "dst"):
            want = expected_owner(index, projects, key.cluster, getattr(key, f"{side}_namespace"),
                                  getattr(key, f"{side}_labels"), getattr(key, f"{side}_identity"))
            assert (row[f"{side}_project"], row[f"{side}_workspace"]) == want, (key, side)


def assert_verdicts_match_policy_check(
    inventory: Mapping[str, ClusterInventory], keys: Sequence[FlowKey], rows: Sequence[dict[str, Any]]
) -> int:
    """Each evaluable key against `policy check` on its connection; returns how many keys were compared."""
    by_key = dict(zip(keys, rows, strict=True))
    compared = 0
    for cluster, inv in inventory.items():
        doc, asked = policy_check_document(inv, [k for k in by_key if k.cluster == cluster])
        if not asked:
            continue
        for key, result in zip(asked, check_probes(doc), strict=True):
            row = by_key[key]
            where = f"{key} -> {result['reason']}"
            egress, ingress = result["egress"], result["ingress"]
            assert row["desired_revision"] == inv.desired.revision
            assert row["desired_egress_verdict"] == (1 if egress["allowed"] else 2), where
            assert (row["desired_egress_policy"], row["desired_egress_rule"]) == (egress["policy"], egress["rule"]), where
            if ingress is not None:  # policy check stops at an egress drop
                assert row["desired_ingress_verdict"] == (1 if ingress["allowed"] else 2), where
                assert (row["desired_ingress_policy"], row["desired_ingress_rule"]) == (ingress["policy"], ingress["rule"]), where
            connection_allowed = row["desired_egress_verdict"] == 1 and row["desired_ingress_verdict"] == 1
            assert connection_allowed == result["allowed"], where
            # The flow's verdict: at an EGRESS observation of a request, egress alone; else the connection's.
            if key.traffic_direction == 2 and not key.is_reply:
                assert row["desired_verdict"] == row["desired_egress_verdict"], where
            else:
                assert row["desired_verdict"] == (1 if result["allowed"] else 2), where
                assert row["desired_drop_reason"] == result["drop_reason"], where
            for direction in ("egress", "ingress"):
                policy = row[f"desired_{direction}_policy"]
                origin = inv.desired.rendered_from.get(policy)
                assert row[f"desired_{direction}_version"] == (origin.version if origin else 0)
            hubble = key.verdict
            assert row["verdict_mismatch"] == (hubble in (1, 2) and hubble != row["desired_verdict"]), where
            compared += 1
    for key, row in by_key.items():
        if key.l4_protocol not in (1, 2, 3, 4, 5):
            assert row["desired_verdict"] == 0 and not row["verdict_mismatch"]
        # Nothing staged: the staged set is the desired set, under its own revision.
        inv = inventory.get(key.cluster)
        assert inv is not None and inv.staged is not None and not inv.staged.staged_versions
        assert row["staged_revision"] == inv.staged.revision > 0
        assert [row[f"staged_{c}"] for c in SET_FIELDS] == [row[f"desired_{c}"] for c in SET_FIELDS], key
    return compared


SET_FIELDS = ("verdict", "drop_reason", "egress_verdict", "egress_policy", "egress_rule", "egress_version",
              "ingress_verdict", "ingress_policy", "ingress_rule", "ingress_version")


def demo_keys(flows_per_cluster: int) -> list[FlowKey]:
    return [flow_key(c, r.flow) for c in ("demo-east", "demo-west") for r in DemoTraffic(c).flows(flows_per_cluster)]


def test_demo_traffic_is_enriched_as_the_control_plane_and_policy_check_say(demo_store: ControlPlaneStore) -> None:
    keys = demo_keys(6000)
    inventory = RecordedInventory(demo_store)
    enricher = PolicyEnricher(inventory)
    rows = enrich_flows(enricher, keys)
    assert_ownership(demo_store, keys, rows)
    compared = assert_verdicts_match_policy_check(inventory.clusters, keys, rows)
    assert compared > 50
    east = [r for k, r in zip(keys, rows, strict=True) if k.cluster == "demo-east"]
    # Workspaces show up, and demo-east's policies decide with attribution down to the rule and version.
    assert {r["src_workspace"] for r in east} >= {"shop-team", "data-team"}
    assert Counter(r["desired_verdict"] for r in east).keys() >= {1, 2}
    rules = {(r["desired_ingress_policy"], r["desired_ingress_rule"], r["desired_ingress_version"]) for r in east}
    assert ("CiliumNetworkPolicy/shop/cart-allow", "ingress[0]", 2) in rules
    assert ("CiliumNetworkPolicy/data/redis-deny-monitoring", "ingressDeny[0]", 1) in rules
    deny_drops = {r["desired_drop_reason"] for r in east if r["desired_verdict"] == 2}
    assert deny_drops == {133, 181}
    assert ("CiliumClusterwideNetworkPolicy//zero-trust-day0-default-deny", "default-deny") in {
        (r["desired_egress_policy"], r["desired_egress_rule"]) for r in east}
    # demo-west has no policies: everything evaluable is allowed.
    west = [r for k, r in zip(keys, rows, strict=True) if k.cluster == "demo-west" and k.l4_protocol in (1, 2)]
    assert west and {r["desired_verdict"] for r in west} == {1}


def test_unknown_cluster_is_not_evaluated_and_unowned(demo_store: ControlPlaneStore) -> None:
    keys = [flow_key("elsewhere", r.flow) for r in DemoTraffic("demo-east").flows(300)]
    rows = enrich_flows(PolicyEnricher(RecordedInventory(demo_store)), keys)
    for row in rows:
        assert row["desired_verdict"] == 0 and row["desired_revision"] == 0 and not row["verdict_mismatch"]
        assert row["src_project"] == row["src_workspace"] == row["dst_project"] == row["dst_workspace"] == ""


def _capture_store(tmp_path: Path, captures: Sequence[Path]) -> tuple[ControlPlaneStore, dict[str, list[FlowKey]]]:
    """One cluster per capture, in a project with a workspace over its first namespace, under day-0 zero
    trust, so the captures' flows meet both allows and default-deny drops."""
    from policy_engine.model import Assignment

    store = ControlPlaneStore.open(tmp_path)
    keys: dict[str, list[FlowKey]] = {}
    for i, path in enumerate(captures):
        cluster = f"capture-{i}"
        keys[cluster] = [flow_key(cluster, line.response.flow) for line in read_capture(path)
                         if line.response is not None and line.response.HasField("flow")]
    with store.transaction():
        cp = admin(store)
        for cluster, cluster_keys in keys.items():
            namespaces = sorted({k.src_namespace for k in cluster_keys} | {k.dst_namespace for k in cluster_keys} - {""})
            cp.put_cluster(Cluster(cluster, "upstream", "cilium", namespaces=tuple(namespaces)))
            cp.put_project(Project(f"p-{cluster}", (cluster,)))
            if namespaces:
                cp.put_workspace(Workspace(f"w-{cluster}", f"p-{cluster}", (NamespaceRef(cluster, namespaces[0]),)))
        cp.put_assignment(Assignment("day0", blueprint="zero-trust-day0", clusters=tuple(keys)))
    return store, keys


@pytest.mark.skipif(not CAPTURES, reason="reference captures not found")
def test_every_reference_capture_is_enriched_as_policy_check_says(tmp_path: Path) -> None:
    store, keys_by_cluster = _capture_store(tmp_path, CAPTURES)
    try:
        inventory = RecordedInventory(store)
        enricher = PolicyEnricher(inventory)
        total = 0
        for cluster, keys in keys_by_cluster.items():
            assert keys, f"{cluster}: capture without flows"
            rows = enrich_flows(enricher, keys)
            assert_ownership(store, keys, rows)
            compared = assert_verdicts_match_policy_check({cluster: inventory.clusters[cluster]}, keys, rows)
            if any(k.l4_protocol in (1, 2) for k in keys):
                assert compared, f"{cluster}: no key compared"
            total += compared
            assert {r["src_project"] for r in rows} | {r["dst_project"] for r in rows} >= {f"p-{cluster}"}
            assert {r["desired_verdict"] for r in rows if r["desired_verdict"]} <= {1, 2}
        assert total > 50
    finally:
        store.close()


def test_one_row_per_key_in_key_order(demo_store: ControlPlaneStore) -> None:
    table = key_table(demo_keys(500))
    result = PolicyEnricher(RecordedInventory(demo_store)).enrich_keys(table)
    assert result.column("ekey").to_pylist() == table.column("ekey").to_pylist()
    empty = PolicyEnricher(RecordedInventory(demo_store)).enrich_keys(table.slice(0, 0))
    assert empty.num_rows == 0 and empty.schema == result.schema


def test_addition_of_demo_policies_to_a_fresh_store(tmp_path: Path) -> None:
    """The fixture's writes go through the engine API and the outbox numbers the revisions."""
    with ControlPlaneStore.open(tmp_path) as store:
        from netwarden.demo_seed import seed_demo

        seed_demo(store, tmp_path)
        before = latest_inventory(store)["demo-east"]
        add_demo_policies(store)
        after = latest_inventory(store)["demo-east"]
        assert after.revision > before.revision and after.desired.revision > before.desired.revision
        assert latest_inventory(store)["demo-west"].revision == 1  # untouched cluster, untouched message


def test_the_policy_check_cli_answers_the_same_for_demo_keys(
    demo_store: ControlPlaneStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The comparisons above call the CLI's own function; here the command itself, on a file, once."""
    import json

    from netwarden.cli import main

    inventory = RecordedInventory(demo_store)
    keys = demo_keys(1500)
    rows = dict(zip(keys, enrich_flows(PolicyEnricher(inventory), keys), strict=True))
    doc, asked = policy_check_document(inventory.clusters["demo-east"], [k for k in keys if k.cluster == "demo-east"])
    path = tmp_path / "check.json"
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["policy", "check", str(path)]) == 0
    probes = json.loads(capsys.readouterr().out)["probes"]
    assert len(probes) == len(asked) > 10
    for key, probe in zip(asked, probes, strict=True):
        row = rows[key]
        assert probe["allowed"] == (row["desired_egress_verdict"] == 1 and row["desired_ingress_verdict"] == 1)
        assert probe["egress"]["rule"] == row["desired_egress_rule"]

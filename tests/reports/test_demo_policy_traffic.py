"""Issue 8's acceptance on the demo as `netwarden up` seeds it, with the CLI a user runs (local mode on the demo's
data dir; the world is built once in a process of its own: tests/reports/conftest.py, demo_world.py):

- what-if of a cluster-wide policy denying egress to port 53 added to the demo blueprint lists exactly the
  conversations the flows table shows for it in the same window, and exits 3; a change that denies nothing
  observed exits 0;
- `recommend` for every demo namespace of both clusters, what-if of the recommendation: zero newly denied;
  the recommendation staged (reaches no cluster), then promoted and synced to the demo's kube stand-ins: the
  demo's enforcement (netwarden.demo.enforcement.StandInJudge) decides every demo connection as before.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from netwarden.demo_seed import DEMO_NAMESPACES

CLUSTERS = ("demo-east", "demo-west")
DRIFTED = "demo-east shop/checkout"  # netwarden.demo.faults.plant_drift: checkout's egress to redis, by hand


@pytest.fixture(scope="module")
def outcome(demo_outcome: dict[str, Any]) -> dict[str, Any]:
    return demo_outcome["policy_traffic"]


def test_what_if_of_a_dns_deny_lists_what_the_flows_show_and_exits_3(outcome: dict[str, Any]) -> None:
    deny = outcome["deny_dns"]
    assert deny["exit"] == 3
    clusters = deny["what_if"]["clusters"]
    assert [c["cluster"] for c in clusters] == list(CLUSTERS)  # the demo blueprint is on both
    listed: Counter[tuple[str, str, str, str]] = Counter()
    for c in clusters:
        assert c["newly_allowed"] == []
        for g in c["newly_denied"]:
            assert g["port"] == 53
            listed[(c["cluster"], g["source"]["namespace"], g["destination"]["namespace"], g["protocol"])] += g["flows"]
    # The direct count: every pod's flow to port 53 in the window (the demo's policies allow them all today).
    direct = Counter({(c, client, server, proto): n for c, client, server, proto, n in outcome["dns_flows"]})
    assert listed == direct and sum(direct.values()) > 0
    # Per workload too: the app pods' lookups and coredns' own upstream queries.
    east = {(g["source"]["workload"], g["destination"]["workload"]) for g in clusters[0]["newly_denied"]}
    assert {("frontend", "coredns"), ("coredns", "reserved:world")} <= east


def test_what_if_of_a_change_denying_nothing_observed_exits_0(outcome: dict[str, Any]) -> None:
    harmless = outcome["deny_unused"]
    assert harmless["exit"] == 0
    assert all(not c["newly_denied"] for c in harmless["what_if"]["clusters"])


def test_recommendation_of_every_namespace_denies_nothing_observed(outcome: dict[str, Any]) -> None:
    recommended = {(_cluster_of(p), _namespace_of(p)) for p in outcome["recommended_policies"]}
    assert recommended == {(c, ns) for c in CLUSTERS for ns in DEMO_NAMESPACES}
    what_if = outcome["recommendation_what_if"]
    assert what_if["exit"] == 0
    assert [c["cluster"] for c in what_if["what_if"]["clusters"]] == list(CLUSTERS)
    assert all(c["newly_denied"] == [] for c in what_if["what_if"]["clusters"])


def _cluster_of(policy: str) -> str:
    return next(c for c in CLUSTERS if policy.endswith(f"-{c}"))


def _namespace_of(policy: str) -> str:
    return policy.removeprefix("recommended-").removesuffix(f"-{_cluster_of(policy)}")


def test_recommendation_staged_then_promoted_changes_nothing_in_the_demo_traffic(outcome: dict[str, Any]) -> None:
    before, after = outcome["before"], outcome["after"]
    assert set(before) == set(after)
    verdicts = Counter(v.split()[0] for v in before.values())
    assert verdicts["FORWARDED"] and verdicts["DROPPED"]  # the planted faults drop some connections
    assert after == before
    # Staged, the recommendation reached no cluster: the sync only repaired the planted drift, so checkout's
    # connection to redis, which only the hand edit let through, was dropped until the promotion.
    assert not any("recommended-" in text for text in outcome["staged_sync_output"])
    changed = {k: (before[k], v) for k, v in outcome["staged_enforced"].items() if before[k] != v}
    assert changed and all(k.startswith(DRIFTED) and k.endswith("6379/TCP") for k in changed), changed
    assert all(v == ("FORWARDED", "DROPPED 133") for v in changed.values())
    # Promoted: synced to the stand-ins.
    for cluster, text in zip(CLUSTERS, outcome["sync_output"], strict=True):
        assert f"created CiliumNetworkPolicy shop/recommended-shop-{cluster}-frontend" in text

"""Acceptance on the demo as `netwarden up` seeds it (netwarden/demo/FAULTS.md): each planted fault lands in its
list of the validation report, and the workspace admin's report covers only its workspace. The demo world and
its flows are built once in a process of their own (tests/reports/conftest.py, demo_world.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest


@pytest.fixture(scope="module")
def reports(demo_outcome: dict[str, Any]) -> dict[str, Any]:
    return demo_outcome["report"]


def _cluster(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["clusters"] if c["cluster"] == name)


def test_each_planted_fault_in_its_list(reports: dict[str, Any]) -> None:
    east, west = _cluster(reports["org"], "demo-east"), _cluster(reports["org"], "demo-west")
    groups = {(g["namespace"], g["workload"]): g for g in east["not_in_effect"]}
    # 2: data/redis's pods started before Cilium: monitoring's scrapes pass although redis-deny-monitoring denies
    redis = groups[("data", "redis")]
    assert redis["cause"] == "unmanaged-pods" and redis["policy"] == "redis-deny-monitoring"
    assert redis["causes"][0]["fix"] == "netwarden sync --cluster demo-east --restart-unmanaged"
    assert redis["causes"][0]["pods"] and all(p["name"].startswith("redis") for p in redis["causes"][0]["pods"])
    # 3: checkout-egress edited on the cluster: checkout -> redis passes
    assert groups[("shop", "checkout")]["cause"] == "drifted"
    assert "CiliumNetworkPolicy/shop/checkout-egress" in groups[("shop", "checkout")]["causes"][0]["objects"]
    assert west["not_in_effect"] == []  # demo-west carries only the policy's own faults
    # coverage: the kube API's pods name the same workloads as Hubble (Deployments through their ReplicaSets)
    shop = next(n for n in east["namespaces"] if n["namespace"] == "shop")
    assert {w["workload"]: w["seen_in"] for w in shop["workloads"]} == {
        name: ["flows", "kube"] for name in ("cart", "checkout", "frontend", "payments")}
    assert shop["default_deny"] == {"ingress": True, "egress": True}
    for cluster in (east, west):
        # 1: payments -> Stripe dropped by default deny, and the desired set drops it too
        stripe = [t for t in cluster["drops"]["top_conversations"]
                  if t["source"]["workload"] == "payments" and t["port"] == 443]
        assert stripe and stripe[0]["desired"] == "DROPPED" and stripe[0]["drop_reason"] == "POLICY_DENIED"
        assert cluster["unexpected_drops"] == []
        # 4: the pgadmin rule never matches
        assert ("postgres-allow-payments", "ingress[1]") in {(r["policy"], r["rule"]) for r in cluster["unused_rules"]}
        # 5: the staged frontend-egress would newly deny the CDN
        (staged,) = cluster["staged"]
        assert staged["policy"] == "frontend-egress" and staged["newly_denied_flows"] > 0
        assert {(d["source"]["workload"], d["port"]) for d in staged["newly_denied"]} == {("frontend", 443)}


def test_workspace_admin_report_covers_its_workspace(reports: dict[str, Any]) -> None:
    ws = reports["workspace"]
    assert [c["cluster"] for c in ws["clusters"]] == ["demo-east"]
    (east,) = ws["clusters"]
    assert {n["workspace"] for n in east["namespaces"]} == {reports["workspace_scope"]}
    assert [g["namespace"] for g in east["not_in_effect"]] == ["shop"]
    text = json.dumps(ws)
    assert "redis-0" not in text  # pods of other workspaces are not named
    # Every conversation shown touches the workspace; a peer in another namespace is shown redacted, as in flows.
    shown = [c for g in east["not_in_effect"] for c in g["conversations"]] + east["drops"]["top_conversations"]
    shown += [c for s in east["staged"] for c in (*s["newly_denied"], *s["newly_allowed"])]
    assert shown and all("shop" in (c["source"]["namespace"], c["destination"]["namespace"]) for c in shown)
    peers = [side for c in shown for side in (c["source"], c["destination"]) if side["namespace"] not in ("shop", "")]
    assert peers and all(side["workload"] == "" for side in peers)
    # Rules: the workspace's own policies and the cluster-wide ones, not other teams' namespace policies.
    assert {r["object"].split("/")[1] for r in east["rules"]} == {"", "shop"}
    org_east = _cluster(reports["org"], "demo-east")
    assert east["conversations"] < org_east["conversations"] and east["flows"] < org_east["flows"]

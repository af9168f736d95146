"""A control-plane store holding the demo organization plus policies, so demo traffic meets real verdicts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netwarden.demo_seed import seed_demo
from policy_engine.control_plane import ControlPlane
from policy_engine.model import Assignment, AssignmentTarget, PolicyRule, PolicySpec
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore

CART_ALLOW_V1 = {
    "endpointSelector": {"matchLabels": {"app": "cart"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                 "toPorts": [{"ports": [{"port": "7070", "protocol": "TCP"}]}]}],
}
CART_ALLOW_V2 = {
    "endpointSelector": {"matchLabels": {"app": "cart"}},
    "ingress": [
        {"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
         "toPorts": [{"ports": [{"port": "7070", "protocol": "TCP"}]}]},
        {"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "monitoring"}}]},
    ],
}
REDIS_DENY_MONITORING = {
    "endpointSelector": {"matchLabels": {"app": "redis"}},
    "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "monitoring"}}]}],
}
SHOP_EGRESS = {  # everything of shop may talk to the shop, the data namespace and the world on 443
    "endpointSelector": {},
    "egress": [
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "shop"}}]},
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "data"}}],
         "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}]},
        {"toEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
    ],
}

MONITORING_SCRAPE = {  # prometheus may reach every pod of the cluster
    "endpointSelector": {},
    "egress": [{"toEntities": ["cluster"]}],
}


def admin(store: ControlPlaneStore) -> ControlPlane:
    return ControlPlane(store, Principal.with_role("org-admin", name="test"))


def add_demo_policies(store: ControlPlaneStore) -> None:
    """demo-east: the built-in zero-trust-day0 blueprint plus namespace policies (one at version 2);
    demo-west: no policies at all (everything allowed)."""
    with store.transaction():
        cp = admin(store)
        cp.put_assignment(Assignment("east-day0", blueprint="zero-trust-day0", clusters=("demo-east",)))
        for name, spec in (("cart-allow", CART_ALLOW_V1), ("redis-deny-monitoring", REDIS_DENY_MONITORING),
                           ("shop-egress", SHOP_EGRESS), ("monitoring-scrape", MONITORING_SCRAPE)):
            cp.put_policy(PolicySpec(name, "namespace", (PolicyRule(name, "cilium", spec),)))
        cp.put_policy(PolicySpec("cart-allow", "namespace", (PolicyRule("cart-allow", "cilium", CART_ALLOW_V2),)))
        cp.put_assignment(Assignment("shop-policies", policy="cart-allow",
                                     targets=(AssignmentTarget(workspace="shop-team"),)))
        cp.put_assignment(Assignment("shop-egress", policy="shop-egress",
                                     targets=(AssignmentTarget(workspace="shop-team"),)))
        cp.put_assignment(Assignment("scrape", policy="monitoring-scrape",
                                     targets=(AssignmentTarget(cluster="demo-east", namespace="monitoring"),)))
        cp.put_assignment(Assignment("data-deny", policy="redis-deny-monitoring",
                                     targets=(AssignmentTarget(cluster="demo-east", namespace="data"),)))


@pytest.fixture
def demo_store(tmp_path: Path) -> Iterator[ControlPlaneStore]:
    store = ControlPlaneStore.open(tmp_path)
    seed_demo(store, tmp_path)
    add_demo_policies(store)
    try:
        yield store
    finally:
        store.close()

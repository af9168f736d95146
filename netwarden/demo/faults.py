"""The faults `netwarden up` plants in its demo (described for users in FAULTS.md next to this file).

Three are in the demo's policy documents (policies.yaml, applied by netwarden.demo_seed: a missing rule, a rule
that matches nothing, a staged version); the others are put on the cluster when its stand-in is first built:
pods that predate Cilium (`UNMANAGED`, no CiliumEndpoint) and a hand edit after the first sync (`plant_drift`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from netwarden.demo.world import DemoCluster

FAULTY_CLUSTER = "demo-east"
# Pods of these workloads started before Cilium was chained: no CiliumEndpoint, policies not enforced.
UNMANAGED = {FAULTY_CLUSTER: ("data/redis",)}
# Someone `kubectl edit`ed this object after the sync: checkout may now reach redis.
DRIFTED = ("CiliumNetworkPolicy", "checkout-egress", "shop")


async def sync_cluster(data_dir: Path, cluster: str) -> tuple[bool, str]:
    """`netwarden sync --cluster NAME` as the operator runs it (org admin), in a thread: the sync's lines are
    returned, not printed; returns (ok, its output)."""
    return await asyncio.to_thread(_sync, data_dir, cluster)


def _sync(data_dir: Path, name: str) -> tuple[bool, str]:
    from netwarden.commands.gitops import sync_cluster as sync
    from policy_engine.control_plane import ControlPlane
    from policy_engine.roles import Principal
    from policy_engine.store import ControlPlaneStore

    with ControlPlaneStore.open(data_dir) as store:
        cp = ControlPlane(store, Principal.with_role("org-admin", name="netwarden-demo"))
        cp.require_sync(name)
        cluster = store.get_cluster(name)
        if cluster is None:
            return False, f"cluster {name}: not in the control plane"
        ok, lines = sync(cp, cluster)
    return ok, "\n".join(lines)


def plant_drift(cluster: DemoCluster) -> str | None:
    """The hand edit on the faulty cluster: an egress rule to redis added to checkout's policy."""
    if cluster.name != FAULTY_CLUSTER:
        return None
    kind, name, namespace = DRIFTED

    def widen(obj: dict[str, Any]) -> None:
        obj["spec"].setdefault("egress", []).append({
            "toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "data", "app": "redis"}}],
            "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}],
        })

    cluster.stub.edit(kind, name, namespace, widen, manager="kubectl-edit")
    return f"{kind} {namespace}/{name} edited by hand (egress to data/redis:6379 added)"

"""The faults `netwarden up` plants in its demo (described for users in FAULTS.md next to this file).

Two are in the demo's policy documents (policies.yaml: a missing rule, a rule that matches nothing); the others
are put on the cluster when its stand-in is first built: pods that predate Cilium (`UNMANAGED`, no
CiliumEndpoint) and a hand edit after the first sync (`plant_drift`), and one policy version is staged
(`STAGED`, applied by netwarden.demo_seed).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from netwarden.demo.world import DemoCluster
from policy_engine.control_plane import ControlPlane
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore

FAULTY_CLUSTER = "demo-east"
# Pods of these workloads started before Cilium was chained: no CiliumEndpoint, policies not enforced.
UNMANAGED = {FAULTY_CLUSTER: ("data/redis",)}
# Someone `kubectl edit`ed this object after the sync: checkout may now reach redis.
DRIFTED = ("CiliumNetworkPolicy", "checkout-egress", "shop")


def sync_cluster(store: ControlPlaneStore, cluster: DemoCluster) -> tuple[bool, str]:
    """`netwarden sync --cluster NAME`, the same code path (render, drift, server-side apply, prune, the
    pods Cilium does not manage); returns (ok, its output)."""
    from netwarden.commands.gitops import _sync_cluster

    cp = ControlPlane(store, Principal.with_role("org-admin", name="netwarden-demo"))
    registered = store.get_cluster(cluster.name)
    assert registered is not None and registered.api_server == cluster.url, "register the stand-in first"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        failures = _sync_cluster(cp, registered, restart_unmanaged=False)
    return failures == 0, out.getvalue()


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

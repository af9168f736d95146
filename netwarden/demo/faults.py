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
from netwarden.supervise import python_argv

FAULTY_CLUSTER = "demo-east"
# Pods of these workloads started before Cilium was chained: no CiliumEndpoint, policies not enforced.
UNMANAGED = {FAULTY_CLUSTER: ("data/redis",)}
# Someone `kubectl edit`ed this object after the sync: checkout may now reach redis.
DRIFTED = ("CiliumNetworkPolicy", "checkout-egress", "shop")


async def sync_cluster(data_dir: Path, cluster: str) -> tuple[bool, str]:
    """`netwarden sync --cluster NAME` as the operator runs it, in its own process (its output stays its own,
    and the kube client is not loaded into `up`); returns (ok, its output)."""
    proc = await asyncio.create_subprocess_exec(
        *python_argv("-m", "netwarden", "sync", "--cluster", cluster, "--data-dir", str(data_dir),
                     "--as-role", "org-admin"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode == 0, out.decode(errors="replace")


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

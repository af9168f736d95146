"""Sync of one cluster as data: what `netwarden sync` prints and `POST /api/v1/clusters/{name}/sync` answers
come from the same `ClusterSync` (so the CLI over HTTP prints exactly what it prints locally).

`sync_cluster(cp, cluster, apply=False)` is the read-only status: drift against the rendered desired objects,
the held-back notes and the pods Cilium does not enforce; `apply=True` also server-side applies and prunes
(and with `restart_unmanaged`, restarts those pods' workloads). The caller checks `cp.require_sync` first.
An error of the cluster's own API is part of the result (one unreachable cluster must not stop the fleet);
the control plane's errors (store, render, permission) are raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from policy_engine.control_plane import ControlPlane
from policy_engine.model import Cluster
from policy_engine.render import RenderedCluster, RenderError
from policy_engine.roles import PermissionDenied
from policy_engine.store import StoreError


@dataclass
class ClusterSync:
    cluster: str
    applied: bool = False
    engine: str = ""
    objects: int = 0
    notes: list[str] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    sync: dict[str, Any] | None = None  # policy_engine.kube.SyncReport.to_dict() plus "summary"
    unmanaged_pods: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def status(self) -> str:
        """synced | errors | drifted | in-sync | error"""
        if self.error:
            return "error"
        if self.sync is not None:
            return "errors" if self.sync["errors"] else "synced"
        return "drifted" if self.drift else "in-sync"

    @property
    def ok(self) -> bool:
        return self.status in ("synced", "in-sync", "drifted")

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "status": self.status, "applied": self.applied, "engine": self.engine,
                "objects": self.objects, "notes": self.notes, "drift": self.drift, "sync": self.sync,
                "unmanaged_pods": self.unmanaged_pods, "restarted": self.restarted, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterSync:
        return cls(d["cluster"], d["applied"], d["engine"], d["objects"], list(d["notes"]), list(d["drift"]),
                   d["sync"], list(d["unmanaged_pods"]), list(d["restarted"]), d["error"])

    def lines(self) -> list[str]:
        """The lines `netwarden sync` prints for this cluster."""
        out = [f"cluster {self.cluster}:"]
        if self.engine:
            out.append(f"  engine {self.engine}: {self.objects} desired object(s)")
        out += [f"  note: {note}" for note in self.notes]
        out += [f"  drift: {_drift_text(d)}" for d in self.drift]
        if self.sync is not None:
            out.append(f"  sync: {self.sync['summary']}")
            out += [f"    created {ref}" for ref in self.sync["created"]]
            out += [f"    updated {ref}" for ref in self.sync["updated"]]
            out += [f"    pruned  {ref}" for ref in self.sync["pruned"]]
            out += [f"    error   {error}" for error in self.sync["errors"]]
        if self.unmanaged_pods:
            out.append(f"  {len(self.unmanaged_pods)} pod(s) started before Cilium are not enforced until restarted:")
            out += [f"    {pod}" for pod in self.unmanaged_pods]
            out += [f"    restarted {workload}" for workload in self.restarted]
        out.append(f"  status: error: {self.error}" if self.error else f"  status: {self.status}")
        return out


def _drift_text(d: dict[str, Any]) -> str:
    return f"{d['object']}: {d['drift']}" + (f" ({'; '.join(d['details'])})" if d["details"] else "")


def desired_live(cp: ControlPlane, cluster: Cluster, kube: Any) -> RenderedCluster:
    """Rendered with the cluster's live namespaces; objects of namespaces it does not have are held back."""
    from policy_engine.kube import deliverable

    live = kube.namespaces()
    return deliverable(cp.render(cluster.name, live_namespaces=live), live)


def sync_cluster(cp: ControlPlane, cluster: Cluster, *, apply: bool = True,
                 restart_unmanaged: bool = False) -> ClusterSync:
    """Drift (and with `apply`, server-side apply + prune) of one cluster; see the module's docstring."""
    from policy_engine.kube import KubeCluster, reachable

    result = ClusterSync(cluster.name, applied=apply)
    if not reachable(cluster):
        result.error = "no kubeContext, kubeconfig or apiServer to reach it"
        return result
    try:
        kube = KubeCluster.of(cluster)
        rendered = desired_live(cp, cluster, kube)
        objects = list(rendered.objects)
        result.engine, result.objects, result.notes = rendered.engine, len(objects), list(rendered.notes)
        result.drift = [d.to_dict() for d in kube.drift(objects)]
        if apply:
            report = kube.apply(objects, prune=True)
            result.sync = {**report.to_dict(), "summary": report.summary()}
        if rendered.engine == "cilium-chaining":
            pods = kube.unmanaged_pods()
            result.unmanaged_pods = [str(p) for p in pods]
            if apply and restart_unmanaged and pods:
                result.restarted = list(kube.restart_workloads(pods))
    except (StoreError, RenderError, PermissionDenied):
        raise
    except Exception as exc:  # the cluster's API: reported, the next cluster is synced
        result.error = str(exc) or type(exc).__name__
    return result


def live_diff(cp: ControlPlane, docs: Any, name: str, *, prune: bool) -> dict[str, Any] | None:
    """What a sync after applying `docs` would change on the live cluster `name` (nothing is written):
    `{"notes": [held-back notes], "drift": [DriftItem dicts]}`, `{"error": text}` when its API fails, None when
    the cluster cannot be reached at all."""
    from policy_engine.gitops import apply_documents
    from policy_engine.kube import KubeCluster, reachable

    try:
        with cp.store.transaction(rollback=True):
            apply_documents(cp, docs, prune=prune)
            cluster = cp.store.get_cluster(name)
            if cluster is None or not reachable(cluster):
                return None
            kube = KubeCluster.of(cluster)
            rendered = desired_live(cp, cluster, kube)
        drift = kube.drift(list(rendered.objects))
    except (StoreError, RenderError, PermissionDenied, ValueError):
        raise
    except Exception as exc:  # any transport error: reported, the other clusters are diffed
        return {"error": str(exc) or type(exc).__name__}
    return {"notes": [n for n in rendered.notes if "held back" in n], "drift": [d.to_dict() for d in drift]}


def live_diff_lines(name: str, live: dict[str, Any]) -> list[str]:
    """`netwarden diff`'s lines for one cluster's live state."""
    if live.get("error"):  # the API's answer spells "no error" as null
        return [f"  live state unavailable: {live['error']}"]
    drift = [f"  {_drift_text(d)}" for d in live["drift"]] or ["  nothing"]
    return [f"cluster {name}: what sync would change on the live cluster", *(f"  note: {n}" for n in live["notes"]),
            *drift]


def rendered_view(rendered: RenderedCluster) -> dict[str, Any]:
    return {"cluster": rendered.cluster, "engine": rendered.engine, "notes": list(rendered.notes),
            "objects": list(rendered.objects)}


def rendered_text(view: dict[str, Any]) -> str:
    """`netwarden render`'s output: the objects as YAML, notes as comments."""
    import yaml

    objects = view["objects"]
    header = f"# cluster {view['cluster']}, engine {view['engine']}: {len(objects)} object(s)\n"
    notes = "".join(f"# note: {n}\n" for n in view["notes"])
    return header + notes + (yaml.safe_dump_all(objects, sort_keys=False) if objects else "")


class InstallUnsupported(ValueError):
    """The engine cannot run on the cluster: the support matrix's refusal, with its recommendation."""


def install_profile_view(cp: ControlPlane, cluster_name: str, engine: str | None = None) -> dict[str, Any]:
    """Cilium's Helm values and CNI chaining objects for the cluster's blueprint (or `engine`)."""
    from policy_engine import install_profile
    from policy_engine.blueprints import effective_engine

    policy_set = cp.policy_set(cluster_name)
    cluster = policy_set.cluster
    profile = policy_set.blueprint.spec.install_profile if policy_set.blueprint else None
    chosen = engine or effective_engine(cluster, profile)
    try:
        plan = install_profile.render_install(
            cluster.name, cluster.cluster_type, cluster.primary_cni, engine=chosen,
            policy_enforcement_mode=profile.policy_enforcement_mode if profile else "default",
            audit_mode=profile.audit_mode if profile else False,
        )
    except install_profile.UnsupportedCombination as exc:
        raise InstallUnsupported(f"cluster {cluster.name}: {exc}") from None
    return {"cluster": cluster.name, "type": cluster.cluster_type, "primary_cni": cluster.primary_cni,
            "engine": chosen, "notes": list(plan.notes), "installs_nothing": plan.installs_nothing,
            "helm_values": plan.helm_values, "objects": list(plan.objects)}


def install_profile_text(view: dict[str, Any]) -> str:
    """`netwarden install-profile`'s output."""
    import yaml

    header = [f"# cluster {view['cluster']}: {view['type']}, primary CNI {view['primary_cni']}, engine {view['engine']}"]
    header += [f"# note: {n}" for n in view["notes"]]
    if view["installs_nothing"]:
        return "\n".join([*header, "# nothing to install"]) + "\n"
    docs: list[Any] = [{"helmValues": view["helm_values"]}, *view["objects"]]
    return "\n".join(header) + "\n" + yaml.safe_dump_all(docs, sort_keys=False)

"""The demo clusters' kube API: a stand-in (netwarden.kube_standin) holding what the traffic generator's
cluster runs (collectors.traffic.DemoTraffic: namespaces, workloads, pods with labels, IPs, nodes and start
times, the Cilium agents, and a CiliumEndpoint for every pod Cilium manages), served by `netwarden up` on
127.0.0.1 and registered as the cluster's `apiServer`, so `netwarden sync`, drift and
`sync --restart-unmanaged` reach it as they reach a real cluster.

The stand-in plays two controllers:
- rollout restart (`kubectl rollout restart`, what `sync --restart-unmanaged` sends: a pod-template
  annotation): the workload's pods are replaced, started now, each with a CiliumEndpoint (now enforced).
  Pods keep their names, so the generator's flows keep naming the pods the stand-in lists;
- nothing else: policies, drift and deletions stay as written, as on a cluster without netwarden.

Its state is kept in DATA_DIR/demo-clusters/<cluster>.json (saved while `up` runs and at exit), so a restarted
`up` finds the cluster as it was left: synced or not, drifted or repaired.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from collectors.traffic import WORKLOADS, DemoTraffic, Pod, WorkloadSpec
from netwarden.kube_standin import KubeApiStub

log = logging.getLogger("netwarden.demo.world")

STATE_DIR = "demo-clusters"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
_WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
_HIDDEN_LABEL_PREFIXES = ("io.cilium.", "io.kubernetes.pod.namespace")


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_labels(pod: Pod) -> dict[str, str]:
    """The Kubernetes labels behind Hubble's `k8s:` identity labels (Cilium adds the io.* ones itself)."""
    out = {}
    for label in pod.endpoint.labels:
        if not label.startswith("k8s:"):
            continue
        key, _, value = label[len("k8s:"):].partition("=")
        if not key.startswith(_HIDDEN_LABEL_PREFIXES):
            out[key] = value
    return out


def _selector(spec: WorkloadSpec) -> dict[str, str]:
    key, value = spec.app_label
    return {key: value or spec.name}


def _template_hash(pod_name: str) -> str:
    return pod_name.rsplit("-", 2)[1]


def cluster_objects(traffic: DemoTraffic, *, cilium_started: datetime,
                    unmanaged: Collection[str] = ()) -> list[dict[str, Any]]:
    """Everything the demo cluster's API holds before netwarden syncs anything.

    `unmanaged`: "namespace/workload" whose pods started before Cilium (no CiliumEndpoint)."""
    objects: list[dict[str, Any]] = []
    namespaces = sorted({spec.namespace for spec in WORKLOADS} | {"default"})
    for ns in namespaces:
        objects.append({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
    for node_i, node in enumerate(traffic.nodes):
        name = f"cilium-{('qx7k2', 'm4vtp', 'z9hwc', 'r2dl8')[node_i % 4]}"
        objects.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "kube-system",
                         "labels": {"k8s-app": "cilium", "app.kubernetes.io/part-of": "cilium"}},
            "spec": {"nodeName": node, "hostNetwork": True,
                     "containers": [{"name": "cilium-agent", "image": "quay.io/cilium/cilium:v1.19.4"}]},
            "status": {"phase": "Running", "startTime": _ts(cilium_started)},
        })
    for spec in WORKLOADS:
        ref = f"{spec.namespace}/{spec.name}"
        pods = traffic.pods[ref]
        match = _selector(spec)
        labels = pod_labels(pods[0])
        ports = [{"containerPort": p} for p in _ports(spec)]
        template = {"metadata": {"labels": labels},
                    "spec": {"serviceAccountName": spec.name,
                             "containers": [{"name": spec.name, "image": f"demo/{spec.name}:1.0", "ports": ports}]}}
        objects.append({
            "apiVersion": "apps/v1", "kind": spec.kind,
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": match},
            "spec": {"replicas": spec.replicas, "selector": {"matchLabels": match}, "template": template},
        })
        owner_kind, owner_name = spec.kind, spec.name
        if spec.kind == "Deployment":
            # The Deployment controller labels its ReplicaSet and pods with the template's hash (Cilium leaves
            # it out of identities, so Hubble's labels do not show it).
            template_hash = _template_hash(pods[0].endpoint.pod_name)
            rs = f"{spec.name}-{template_hash}"
            labels = {**labels, "pod-template-hash": template_hash}
            rs_template = {**template, "metadata": {"labels": labels}}
            objects.append({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs, "namespace": spec.namespace, "labels": labels,
                             "ownerReferences": [_owner("Deployment", spec.name)]},
                "spec": {"replicas": spec.replicas, "selector": {"matchLabels": {**match, "pod-template-hash": template_hash}},
                         "template": rs_template},
            })
            owner_kind, owner_name = "ReplicaSet", rs
        before = ref in unmanaged
        started = cilium_started - timedelta(days=2) if before else cilium_started + timedelta(minutes=3)
        for pod in pods:
            objects.append(_pod(spec, pod, labels, template, owner_kind, owner_name, started))
            if not before:
                objects.append(_endpoint(pod))
    return objects


def _ports(spec: WorkloadSpec) -> list[int]:
    return {"frontend": [8080], "cart": [7070], "checkout": [5050], "payments": [8443], "postgres": [5432],
            "redis": [6379], "prometheus": [9090], "coredns": [53]}.get(spec.name, [])


def _owner(kind: str, name: str) -> dict[str, Any]:
    api = "apps/v1"
    return {"apiVersion": api, "kind": kind, "name": name, "uid": f"{kind.lower()}-{name}", "controller": True}


def _pod(spec: WorkloadSpec, pod: Pod, labels: dict[str, str], template: dict[str, Any], owner_kind: str,
         owner_name: str, started: datetime) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.endpoint.pod_name, "namespace": spec.namespace, "labels": dict(labels),
                     "ownerReferences": [_owner(owner_kind, owner_name)]},
        "spec": {"nodeName": pod.node, **template["spec"]},
        "status": {"phase": "Running", "podIP": pod.ip, "startTime": _ts(started)},
    }


def _endpoint(pod: Pod) -> dict[str, Any]:
    ep = pod.endpoint
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": ep.pod_name, "namespace": ep.namespace},
        "status": {"id": ep.ID, "identity": {"id": ep.identity, "labels": list(ep.labels)},
                   "networking": {"addressing": [{"ipv4": pod.ip}], "node": pod.node}, "state": "ready"},
    }


class RolloutController:
    """`kubectl rollout restart` on the stand-in: a changed pod template replaces the workload's pods (same
    names, started now) and Cilium, running now, manages the new ones (a CiliumEndpoint each)."""

    def __init__(self, stub: KubeApiStub, traffic: DemoTraffic) -> None:
        self.stub, self.traffic = stub, traffic
        stub.listeners.append(self._changed)

    def _changed(self, kind: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        if kind not in _WORKLOAD_KINDS or before is None or after is None:
            return
        if (before.get("spec") or {}).get("template") == (after.get("spec") or {}).get("template"):
            return
        ns, name = after["metadata"]["namespace"], after["metadata"]["name"]
        now = datetime.now(UTC)
        for pod in self.traffic.pods.get(f"{ns}/{name}", []):
            live = self.stub.get("Pod", pod.endpoint.pod_name, ns)
            if live is None:
                continue
            self.stub.delete("Pod", pod.endpoint.pod_name, ns)
            for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
                live["metadata"].pop(key, None)
            live["status"]["startTime"] = _ts(now)
            self.stub.put(live, manager="kube-controller-manager")
            if self.stub.get("CiliumEndpoint", pod.endpoint.pod_name, ns) is None:
                self.stub.put(_endpoint(pod), manager="cilium-agent")
        log.info("rollout restart of %s %s/%s: pods replaced, now managed by Cilium", kind, ns, name)


@dataclass
class DemoCluster:
    """One demo cluster's API stand-in, served on 127.0.0.1 while `up` runs, its state in the data dir."""

    name: str
    stub: KubeApiStub
    traffic: DemoTraffic
    state_path: Path
    fresh: bool  # built now (not restored): `up` syncs it and plants the demo's faults
    _saved_revision: int = -1

    @property
    def url(self) -> str:
        return self.stub.url

    @classmethod
    def open(cls, data_dir: Path, name: str, *, unmanaged: Collection[str] = (), seed: int = 0) -> DemoCluster:
        """Restore the cluster from the data dir, or build it; then serve it (the same port as last time
        when it is free: the control plane's apiServer stays right)."""
        traffic = DemoTraffic(name, seed=seed)
        path = data_dir / STATE_DIR / f"{name}.json"
        stub = KubeApiStub(record_requests=False, namespaces=())
        saved: dict[str, Any] | None = None
        try:
            saved = json.loads(path.read_text())
            stub.restore(saved["store"])
        except OSError:
            saved = None  # first start
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable (%s); building demo cluster %s afresh", path, exc, name)
            saved, stub = None, KubeApiStub(record_requests=False, namespaces=())
        if saved is None:
            # Cilium was installed (chained) an hour ago; everything but `unmanaged` was restarted since.
            started = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
            for obj in cluster_objects(traffic, cilium_started=started, unmanaged=unmanaged):
                stub.put(obj, manager="kube-controller-manager")
        RolloutController(stub, traffic)
        port = int(saved.get("port", 0)) if saved else 0
        try:
            stub.start(port)
        except OSError:
            stub.start(0)
        cluster = cls(name, stub, traffic, path, fresh=saved is None)
        cluster.save()
        return cluster

    def save(self) -> None:
        """Write the state if anything changed since the last save (atomic replace, owner-only)."""
        revision = self.stub.revision
        if revision == self._saved_revision:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        port = int(self.url.rsplit(":", 1)[1])
        tmp = self.state_path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"cluster": self.name, "port": port, "store": self.stub.snapshot()}, f)
        os.replace(tmp, self.state_path)
        self._saved_revision = revision

    def close(self) -> None:
        self.save()
        self.stub.stop()

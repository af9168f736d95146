"""Applying rendered objects to a cluster with the official kubernetes client, and reading drift.

Every request goes through `kubernetes.client.ApiClient` (its auth, TLS and HTTP pool), as raw API
paths resolved by discovery, so one code path serves built-in kinds and the Cilium CRDs alike.

- apply: server-side apply (PATCH application/apply-patch+yaml, fieldManager=netwarden, force=true).
  Server-side apply keeps fields another manager set (say `kubectl edit` added an egress rule): when
  the result still differs from the desired content, the content is replaced with a PUT guarded by
  resourceVersion, so a sync always converges on what netwarden renders.
- prune: objects labelled app.kubernetes.io/managed-by=<owner> of the managed kinds that are not in
  the desired set are deleted. `apply` must therefore be given the complete desired set of a cluster.
- drift: desired objects changed or deleted by hand, and managed objects no longer desired.
- unmanaged pods: pods Cilium does not enforce because they started before it (see unmanaged_pods).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from policy_engine.model import Cluster
from policy_engine.render import RenderedCluster
from policy_engine.validation import PolicyValidationError, validate_object

__all__ = [
    "FIELD_MANAGER",
    "MANAGED_BY_LABEL",
    "MANAGED_KINDS",
    "DriftItem",
    "KubeApiError",
    "KubeCluster",
    "ObjectRef",
    "PodRef",
    "SyncError",
    "SyncReport",
    "deliverable",
    "reachable",
]

log = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
FIELD_MANAGER = "netwarden"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
KUBE_TOKEN_ENV = "NETWARDEN_KUBE_TOKEN"
# Kinds netwarden applies and prunes, as (apiVersion, kind).
MANAGED_KINDS: tuple[tuple[str, str], ...] = (
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("cilium.io/v2", "CiliumNetworkPolicy"),
    ("cilium.io/v2", "CiliumClusterwideNetworkPolicy"),
    ("v1", "ConfigMap"),
    ("apps/v1", "DaemonSet"),
)
_POLICY_KINDS = {"NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"}
# Kinds whose whole content is ours: compared exactly (after server defaults). Others (DaemonSet) get
# many server defaults, so only the fields we set are compared.
_EXACT_KINDS = _POLICY_KINDS | {"ConfigMap"}
_NOT_CONTENT = ("apiVersion", "kind", "metadata", "status")
_RESTARTABLE = {"Deployment", "StatefulSet", "DaemonSet"}


class KubeApiError(Exception):
    """A failed API call, with the Status the server returned."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: str
    namespace: str | None
    name: str
    api_version: str = field(default="", compare=False)

    @classmethod
    def of(cls, obj: dict[str, Any]) -> ObjectRef:
        meta = obj.get("metadata") or {}
        if not obj.get("kind") or not meta.get("name"):
            raise ValueError(f"object needs kind and metadata.name: {json.dumps(obj)[:120]}")
        return cls(obj["kind"], meta.get("namespace") or None, meta["name"], obj.get("apiVersion", ""))

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass
class SyncError:
    ref: ObjectRef | None
    message: str
    status: int | None = None

    def __str__(self) -> str:
        return f"{self.ref}: {self.message}" if self.ref else self.message


@dataclass
class SyncReport:
    """Outcome of one apply on one cluster, per object."""

    cluster: str
    created: list[ObjectRef] = field(default_factory=list)
    updated: list[ObjectRef] = field(default_factory=list)
    unchanged: list[ObjectRef] = field(default_factory=list)
    pruned: list[ObjectRef] = field(default_factory=list)
    errors: list[SyncError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.pruned)

    def summary(self) -> str:
        return (
            f"{self.cluster}: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.pruned)} pruned, {len(self.errors)} errors"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "created": [str(r) for r in self.created],
            "updated": [str(r) for r in self.updated],
            "unchanged": [str(r) for r in self.unchanged],
            "pruned": [str(r) for r in self.pruned],
            "errors": [str(e) for e in self.errors],
        }


@dataclass
class DriftItem:
    """One difference between what netwarden wants and what the cluster has.

    drift: "changed" (edited by hand), "missing" (deleted by hand or never applied), "extra" (managed
    by netwarden but no longer desired: the next sync prunes it)."""

    ref: ObjectRef
    drift: str
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.ref}: {self.drift}" + (f" ({'; '.join(self.details)})" if self.details else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": str(self.ref),
            "kind": self.ref.kind,
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "drift": self.drift,
            "details": list(self.details),
        }


@dataclass(frozen=True)
class PodRef:
    """A pod Cilium does not enforce, and the workload that owns it."""

    namespace: str
    name: str
    node: str | None
    started: str | None
    owner_kind: str | None
    owner_name: str | None
    reason: str

    def __str__(self) -> str:
        owner = f" of {self.owner_kind} {self.owner_name}" if self.owner_kind else ""
        return f"Pod {self.namespace}/{self.name}{owner}: {self.reason}"


@dataclass(frozen=True)
class _Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


class KubeCluster:
    """One cluster's API, through a kubernetes.client.ApiClient."""

    def __init__(
        self, api_client: k8s_client.ApiClient, *, name: str | None = None, timeout: float = 30.0
    ) -> None:
        self.api = api_client
        self.name = name or api_client.configuration.host
        self.timeout = timeout
        self._discovery: dict[str, dict[str, _Resource] | None] = {}

    @classmethod
    def from_kubeconfig(
        cls, path: str | None = None, context: str | None = None, *, timeout: float = 30.0, retries: bool = True
    ) -> KubeCluster:
        """`retries=False`: no urllib3 retries with backoff (its default is 3), for callers that report an
        unreachable cluster rather than wait for it."""
        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
        if not retries:
            configuration.retries = False
        return cls(k8s_client.ApiClient(configuration), name=context or configuration.host, timeout=timeout)

    @classmethod
    def from_url(
        cls, url: str, token: str | None = None, *, timeout: float = 30.0, retries: bool = True
    ) -> KubeCluster:
        configuration = k8s_client.Configuration(host=url.rstrip("/"))
        if token:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        if not retries:
            configuration.retries = False
        return cls(k8s_client.ApiClient(configuration), name=url, timeout=timeout)

    @classmethod
    def of(cls, cluster: Cluster, *, timeout: float = 30.0, retries: bool = True) -> KubeCluster:
        """A store Cluster's API as every command reaches it: its apiServer (bearer token from the environment's
        NETWARDEN_KUBE_TOKEN), else its kubeconfig and context (see `reachable`)."""
        if cluster.api_server:
            return cls.from_url(cluster.api_server, token=os.environ.get(KUBE_TOKEN_ENV), timeout=timeout,
                                retries=retries)
        return cls.from_kubeconfig(cluster.kubeconfig, cluster.kube_context, timeout=timeout, retries=retries)

    # ------------------------------------------------------------------ reading

    def objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (raw JSON: the client's models refuse objects lacking fields they require)."""
        return self._list(self._resource(api_version, kind), namespace=namespace)

    def namespaces(self) -> dict[str, dict[str, str]]:
        """name -> labels of every namespace of the cluster."""
        return {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in self.objects("v1", "Namespace")}

    # ------------------------------------------------------------------ HTTP through the client

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        request = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(*request, _request_timeout=self.timeout)
        except k8s_client.ApiException as exc:  # transport-level failures (TLS)
            raise KubeApiError(exc.status or 0, "TransportError", str(exc.reason)) from exc
        except Exception as exc:  # urllib3 connection errors and the like
            raise KubeApiError(0, "Unreachable", f"{self.name}: {exc}") from exc
        response.read()
        data = response.data or b""
        try:
            payload = json.loads(data) if data else None
        except ValueError:
            payload = None
        if not 200 <= response.status <= 299:
            if isinstance(payload, dict) and payload.get("kind") == "Status":
                raise KubeApiError(response.status, payload.get("reason", ""), payload.get("message", ""))
            raise KubeApiError(response.status, response.reason or "", data.decode(errors="replace")[:300])
        return payload

    def _resource(self, api_version: str, kind: str) -> _Resource:
        """Resolve (apiVersion, kind) with the server's discovery (cached per group-version)."""
        if api_version not in self._discovery:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            try:
                listing = self._call("GET", path)
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
                listing = None
            self._discovery[api_version] = (
                None
                if listing is None
                else {
                    r["kind"]: _Resource(api_version, r["kind"], r["name"], bool(r.get("namespaced")))
                    for r in listing.get("resources", [])
                    if "/" not in r["name"]
                }
            )
        kinds = self._discovery[api_version]
        if kinds is None:
            hint = " (Cilium CRDs not installed?)" if api_version.startswith("cilium.io/") else ""
            raise KubeApiError(404, "NotFound", f"{self.name} does not serve {api_version}{hint}")
        if kind not in kinds:
            raise KubeApiError(404, "NotFound", f"{self.name} does not serve {kind} in {api_version}")
        return kinds[kind]

    def _served(self, api_version: str, kind: str) -> _Resource | None:
        try:
            return self._resource(api_version, kind)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _get(self, res: _Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", res.path(namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _list(
        self,
        res: _Resource,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        query = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        listing = self._call("GET", res.path(namespace), query=query)
        items = listing.get("items") or []
        for item in items:  # built-in lists omit per-item TypeMeta
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        return items

    # ------------------------------------------------------------------ apply / prune / drift

    def apply(
        self, desired: list[dict[str, Any]], *, prune: bool = True, owner: str = FIELD_MANAGER
    ) -> SyncReport:
        """Server-side apply every desired object, then (prune) delete managed objects not desired."""
        report = SyncReport(cluster=self.name)
        wanted: set[ObjectRef] = set()
        for raw in desired:
            ref: ObjectRef | None = None
            try:
                ref = ObjectRef.of(raw)
                if ref in wanted:
                    raise ValueError("appears twice in the desired set")
                wanted.add(ref)
                body = _owned(raw, owner)
                if ref.kind in _POLICY_KINDS:
                    validate_object(body)
                res = self._resource(body.get("apiVersion", ""), ref.kind)
                if res.namespaced and not ref.namespace:
                    raise ValueError(f"metadata.namespace is required: {ref.kind} is namespaced")
                live = self._get(res, ref.namespace, ref.name)
                # Always apply: a no-op apply leaves resourceVersion alone, and an apply is the only
                # way fields we dropped since the last sync get removed.
                after = self._call(
                    "PATCH",
                    res.path(ref.namespace, ref.name),
                    query=[("fieldManager", owner), ("force", "true")],
                    body=body,
                    content_type="application/apply-patch+yaml",
                )
                if _differences(body, after):
                    self._replace_content(res, ref, body, after, owner)
                elif live is not None and _rv(after) == _rv(live):
                    report.unchanged.append(ref)
                    continue
                (report.created if live is None else report.updated).append(ref)
            except PolicyValidationError as exc:
                report.errors.append(SyncError(ref, f"refused before sending: {exc}", 422))
            except KubeApiError as exc:
                report.errors.append(SyncError(ref, exc.message or exc.reason, exc.status))
            except ValueError as exc:
                report.errors.append(SyncError(ref, str(exc)))
        if prune:
            try:
                for live in self._managed_objects(owner):
                    ref = ObjectRef.of(live)
                    if ref in wanted:
                        continue
                    try:
                        res = self._resource(live["apiVersion"], ref.kind)
                        self._call("DELETE", res.path(ref.namespace, ref.name))
                        report.pruned.append(ref)
                    except KubeApiError as exc:
                        if exc.status != 404:  # already gone is what we wanted
                            report.errors.append(SyncError(ref, f"prune failed: {exc.message}", exc.status))
            except KubeApiError as exc:
                report.errors.append(
                    SyncError(None, f"listing managed objects failed: {exc.message}", exc.status)
                )
        for bucket in (report.created, report.updated, report.unchanged, report.pruned):
            bucket.sort()
        return report

    def _replace_content(
        self, res: _Resource, ref: ObjectRef, body: dict[str, Any], live: dict[str, Any], owner: str
    ) -> None:
        """Fields set by another manager survive server-side apply; overwrite the content wholesale."""
        replacement = copy.deepcopy(live)
        for key in [k for k in replacement if k not in _NOT_CONTENT]:
            del replacement[key]
        replacement.update({k: copy.deepcopy(v) for k, v in body.items() if k not in _NOT_CONTENT})
        meta = replacement.setdefault("metadata", {})
        for part in ("labels", "annotations"):
            if body.get("metadata", {}).get(part):
                meta.setdefault(part, {}).update(body["metadata"][part])
        self._call(
            "PUT", res.path(ref.namespace, ref.name), query=[("fieldManager", owner)], body=replacement
        )

    def _managed_objects(self, owner: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for api_version, kind in MANAGED_KINDS:
            res = self._served(api_version, kind)
            if res is not None:
                out.extend(self._list(res, label_selector=f"{MANAGED_BY_LABEL}={owner}"))
        return out

    def drift(self, desired: list[dict[str, Any]], *, owner: str = FIELD_MANAGER) -> list[DriftItem]:
        """Desired objects changed or deleted by hand, and managed objects that are no longer desired."""
        items: list[DriftItem] = []
        wanted: set[ObjectRef] = set()
        for raw in desired:
            ref = ObjectRef.of(raw)
            wanted.add(ref)
            body = _owned(raw, owner)
            res = self._served(body.get("apiVersion", ""), ref.kind)
            live = self._get(res, ref.namespace, ref.name) if res is not None else None
            if live is None:
                why = "not served by the cluster" if res is None else "deleted by hand or never applied"
                items.append(DriftItem(ref, "missing", [why]))
                continue
            diffs = _differences(body, live)
            if diffs:
                items.append(DriftItem(ref, "changed", diffs))
        for live in self._managed_objects(owner):
            ref = ObjectRef.of(live)
            if ref not in wanted:
                items.append(
                    DriftItem(
                        ref, "extra", [f"labelled {MANAGED_BY_LABEL}={owner} but not desired; sync prunes it"]
                    )
                )
        return sorted(items, key=lambda d: (d.ref, d.drift))

    # ------------------------------------------------------------------ pods Cilium does not enforce

    def unmanaged_pods(self) -> list[PodRef]:
        """Pods that Cilium does not enforce policy on because they started before Cilium.

        Criterion, in order of preference:
        1. Cilium creates a CiliumEndpoint (same namespace and name) for every pod it manages; the
           upstream aws-cni guide lists pods without one as those to restart. Used when the cluster
           serves cilium.io/v2 ciliumendpoints.
        2. Otherwise: the pod started before the Cilium agent pod (kube-system, k8s-app=cilium) on its
           node (or before the earliest agent when the node has none).
        Pods on the host network (Cilium never manages them), finished pods, and the Cilium pods
        themselves are left out. Without Cilium agent pods nothing is listed: restarting would not
        bring a pod under Cilium.
        """
        pods_res = self._resource("v1", "Pod")
        agents = self._list(pods_res, namespace="kube-system", label_selector="k8s-app=cilium")
        if not agents:
            return []
        agent_start = {
            a.get("spec", {}).get("nodeName"): _start_time(a) for a in agents if _start_time(a) is not None
        }
        earliest = min((t for t in agent_start.values() if t), default=None)
        cep_res = self._served("cilium.io/v2", "CiliumEndpoint")
        endpoints = (
            {(e["metadata"].get("namespace"), e["metadata"]["name"]) for e in self._list(cep_res)}
            if cep_res
            else None
        )
        out: list[PodRef] = []
        owners: dict[tuple[str, str, str], tuple[str | None, str | None]] = {}
        for pod in self._list(pods_res):
            meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
            ns, name = meta.get("namespace", ""), meta["name"]
            if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            if ns == "kube-system" and (meta.get("labels") or {}).get("k8s-app") in (
                "cilium",
                "cilium-operator",
            ):
                continue
            node, started = spec.get("nodeName"), _start_time(pod)
            if endpoints is not None:
                if (ns, name) in endpoints:
                    continue
                reason = "no CiliumEndpoint: started before Cilium, not enforced until restarted"
            else:
                reference = agent_start.get(node) or earliest
                if started is None or reference is None or started >= reference:
                    continue
                reason = f"started {_fmt_time(started)}, before the Cilium agent on {node or 'its node'} ({_fmt_time(reference)})"
            owner_kind, owner_name = self._workload_of(pod, owners)
            out.append(
                PodRef(
                    ns, name, node, _fmt_time(started) if started else None, owner_kind, owner_name, reason
                )
            )
        return sorted(out, key=lambda p: (p.namespace, p.name))

    def _workload_of(
        self, pod: dict[str, Any], cache: dict[tuple[str, str, str], tuple[str | None, str | None]]
    ) -> tuple[str | None, str | None]:
        """The controller to restart: Deployment (through its ReplicaSet), StatefulSet or DaemonSet."""
        ns = pod["metadata"].get("namespace", "")
        ref = _controller(pod)
        if ref is None:
            return None, None
        kind, name = ref
        if kind != "ReplicaSet":
            return kind, name
        key = (ns, kind, name)
        if key not in cache:
            rs = self._get(self._resource("apps/v1", "ReplicaSet"), ns, name)
            parent = _controller(rs) if rs else None
            cache[key] = parent if parent else ("ReplicaSet", name)
        return cache[key]

    def restart_workloads(self, pods: Iterable[PodRef]) -> list[str]:
        """Rollout-restart each owning Deployment/StatefulSet/DaemonSet once, as `kubectl rollout restart`
        does (a pod-template annotation patch). Returns "Kind namespace/name" of each workload restarted;
        pods without such an owner (bare pods, Jobs) are skipped with a warning."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
        done: list[str] = []
        seen: set[tuple[str, str, str]] = set()
        for pod in pods:
            if pod.owner_kind not in _RESTARTABLE or not pod.owner_name:
                log.warning(
                    "cannot restart %s/%s: owned by %s, not a Deployment/StatefulSet/DaemonSet",
                    pod.namespace,
                    pod.name,
                    pod.owner_kind or "nothing",
                )
                continue
            key = (pod.owner_kind, pod.namespace, pod.owner_name)
            if key in seen:
                continue
            seen.add(key)
            res = self._resource("apps/v1", pod.owner_kind)
            self._call(
                "PATCH",
                res.path(pod.namespace, pod.owner_name),
                query=[("fieldManager", FIELD_MANAGER)],
                body=patch,
                content_type="application/strategic-merge-patch+json",
            )
            done.append(f"{pod.owner_kind} {pod.namespace}/{pod.owner_name}")
        return done


# ---------------------------------------------------------------------- a store Cluster and its API


def reachable(cluster: Cluster) -> bool:
    """Whether the store says how to reach the cluster's API (apiServer, kubeContext or kubeconfig)."""
    return bool(cluster.api_server or cluster.kube_context or cluster.kubeconfig)


def deliverable(rendered: RenderedCluster, live_namespaces: Iterable[str]) -> RenderedCluster:
    """The objects a sync applies: cluster-wide ones and those of namespaces the cluster has. Objects of the
    others are held back (a namespace created later gets them at the next sync), said in a note; nor are
    they drift."""
    live = set(live_namespaces)
    objects = tuple(o for o in rendered.objects if o["metadata"].get("namespace") in (None, *live))
    held = sorted({o["metadata"]["namespace"] for o in rendered.objects if o["metadata"].get("namespace") not in (None, *live)})
    notes = list(rendered.notes)
    if held:
        notes.append(f"namespace(s) {', '.join(held)} do not exist on the cluster: their objects are held back")
    return RenderedCluster(rendered.cluster, rendered.engine, objects, tuple(notes))


# ---------------------------------------------------------------------- pure helpers


def _owned(obj: dict[str, Any], owner: str) -> dict[str, Any]:
    """A copy carrying the managed-by label, without server-populated metadata."""
    body = copy.deepcopy(obj)
    meta = body.setdefault("metadata", {})
    for f in ("resourceVersion", "uid", "generation", "creationTimestamp", "managedFields", "selfLink"):
        meta.pop(f, None)
    body.pop("status", None)
    meta.setdefault("labels", {})[MANAGED_BY_LABEL] = owner
    return body


def _differences(desired: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """What in `live` differs from `desired`: the labels/annotations we set, and the content (exactly
    for kinds we own wholly, after the server's defaults; field by field for the others)."""
    diffs: list[str] = []
    for part in ("labels", "annotations"):
        want = (desired.get("metadata") or {}).get(part) or {}
        have = (live.get("metadata") or {}).get(part) or {}
        for key, value in want.items():
            if have.get(key) != value:
                diffs.append(
                    f"metadata.{part}[{key}]: want {json.dumps(value)}, found {json.dumps(have.get(key))}"
                )
    kind = desired.get("kind", "")
    want_content = _normalized(kind, {k: v for k, v in desired.items() if k not in _NOT_CONTENT})
    have_content = _normalized(kind, {k: v for k, v in live.items() if k not in _NOT_CONTENT})
    _diff(want_content, have_content, "", diffs, exact=kind in _EXACT_KINDS)
    return diffs


def _diff(want: Any, have: Any, path: str, out: list[str], *, exact: bool) -> None:
    if isinstance(want, dict) and isinstance(have, dict):
        for key in want:
            _diff(want[key], have.get(key), f"{path}.{key}" if path else key, out, exact=exact)
        if exact:
            for key in have:
                if key not in want:
                    out.append(f"{path + '.' if path else ''}{key}: not desired, found {_short(have[key])}")
        return
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            _diff(w, h, f"{path}[{i}]", out, exact=exact)
        return
    if want != have:
        if have is None:
            out.append(f"{path}: missing, want {_short(want)}")
        else:
            out.append(f"{path}: want {_short(want)}, found {_short(have)}")


def _normalized(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    """Content with the server's defaults filled in and empty values dropped, so that what a real API
    server returns for an unchanged object compares equal to what we sent."""
    out = _drop_empty(copy.deepcopy(content))
    spec = out.get("spec")
    if kind == "NetworkPolicy" and isinstance(spec, dict):
        spec.setdefault("podSelector", {})
        if not spec.get("policyTypes"):  # SetDefaults_NetworkPolicy
            spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
        for direction in ("ingress", "egress"):
            for rule in spec.get(direction) or []:
                for port in rule.get("ports") or []:
                    port.setdefault("protocol", "TCP")
    if kind in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"):
        for icmp_field in _find_icmp_fields(out):
            icmp_field.setdefault("family", "IPv4")  # the CRD's default
    return out


def _find_icmp_fields(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "icmps" and isinstance(value, list):
                for icmp in value:
                    found.extend(f for f in (icmp or {}).get("fields") or [] if isinstance(f, dict))
            else:
                found.extend(_find_icmp_fields(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_find_icmp_fields(value))
    return found


def _drop_empty(node: Any) -> Any:
    """Drop nulls and empty lists (omitempty on the server); keep empty maps, which mean "select all"."""
    if isinstance(node, dict):
        return {k: _drop_empty(v) for k, v in node.items() if v is not None and v != []}
    if isinstance(node, list):
        return [_drop_empty(v) for v in node]
    return node


def _rv(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _controller(obj: dict[str, Any]) -> tuple[str, str] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref["kind"], ref["name"]
    return None


def _start_time(pod: dict[str, Any]) -> datetime | None:
    text = (pod.get("status") or {}).get("startTime") or (pod.get("metadata") or {}).get("creationTimestamp")
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _fmt_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

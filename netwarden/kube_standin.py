"""A small local stand-in for the Kubernetes API server, speaking the subset netwarden uses.

No kube-apiserver can run on these machines, so tests talk real HTTP (through the official kubernetes
client) to this server on 127.0.0.1 with a random port, and `netwarden up` serves one per demo cluster as
that cluster's API (netwarden.demo.world: its pods, workloads and CiliumEndpoints; `sync`, drift and
`--restart-unmanaged` reach it like a real cluster's API):

- discovery: /version, /api, /apis, /api/v1, /apis/<group>/<version>;
- GET (object and list, with labelSelector `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
  and fieldSelector on metadata.name / metadata.namespace / spec.nodeName / status.phase), POST, PUT
  (optimistic concurrency on resourceVersion), DELETE (namespace deletion cascades);
- PATCH: server-side apply (application/apply-patch+yaml; fieldManager required; dryRun=All) and
  JSON merge / strategic merge (maps merged, lists replaced: enough for annotation patches);
- NetworkPolicy defaulting (ports[].protocol TCP, policyTypes), as the real server does on write;
- resourceVersion (one counter for the whole store, as etcd's revision), generation bumped when
  anything outside metadata/status changes, uid, creationTimestamp, managedFields (manager names);
- errors as real Status objects: 400, 401, 404, 405, 409 (AlreadyExists, Conflict), 415, 422 (Invalid,
  with causes; NetworkPolicy/CNP/CCNP are validated with policy_engine.validation, as the real server
  validates against the same schemas).

Server-side apply is modelled per field manager the way it matters here: the fields a manager applied
last time and omits now are removed, the fields it gives replace what is there (lists atomically), and
fields set by others are kept. Ownership conflicts are not modelled (netwarden always forces).

Tests change objects "by hand" (drift) with put/edit/delete, which act like `kubectl edit/delete`:

    with KubeApiStub() as stub:
        cluster = KubeCluster(stub.api_client())
        stub.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        stub.edit("NetworkPolicy", "allow-web", "shop", lambda o: o["spec"].update(ingress=[]))
        stub.objects("NetworkPolicy", namespace="shop")
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

__all__ = ["RESOURCE_TYPES", "KubeApiStub", "RecordedRequest", "ResourceType", "StubError"]


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def qualified(self) -> str:  # what error messages call it: networkpolicies.networking.k8s.io
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",)),
    ResourceType("", "v1", "pods", "Pod", True, ("po",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("deploy",)),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",)),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",)),
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",)),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    ResourceType(
        "cilium.io", "v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", True, ("cnp", "ciliumnp")
    ),
    ResourceType(
        "cilium.io",
        "v2",
        "ciliumclusterwidenetworkpolicies",
        "CiliumClusterwideNetworkPolicy",
        False,
        ("ccnp",),
    ),
    ResourceType("cilium.io", "v2", "ciliumendpoints", "CiliumEndpoint", True, ("cep",)),
)
_VALIDATED_KINDS = {"NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"}
_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any = None


class StubError(Exception):
    """An API error as a Status object (raised inside the handler, also by the hand-editing helpers)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclass
class _Injected:
    method: str
    kind: str
    name: str | None
    error: StubError
    times: int


@dataclass
class _Stored:
    obj: dict[str, Any]
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)  # field manager -> last applied config
    managers: dict[str, str] = field(default_factory=dict)  # field manager -> Apply | Update


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeApiStub:
    """The stand-in API server. Use as a context manager; `url` and `api_client()` connect to it."""

    def __init__(
        self,
        *,
        cilium: bool = True,
        token: str | None = None,
        namespaces: tuple[str, ...] = ("default", "kube-system"),
        record_requests: bool = True,
    ) -> None:
        self.token = token
        self.types = tuple(t for t in RESOURCE_TYPES if cilium or t.group != "cilium.io")
        self.requests: list[RecordedRequest] = []
        self.record_requests = record_requests  # off for long-running stand-ins (the demo): it grows
        # Called under the store's lock after every stored change with (kind, before, after); None = absent.
        # A listener may write through put/edit/delete (a controller: the demo's rollout restarts).
        self.listeners: list[Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]] = []
        self._lock = threading.RLock()
        self._store: dict[tuple[str, str, str, str], _Stored] = {}
        self._rv = 0
        self._injected: list[_Injected] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for ns in namespaces:
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> KubeApiStub:
        stub = self

        class Handler(_Handler):
            pass

        Handler.stub = stub
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="kube-api-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KubeApiStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "stub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self, token: str | None = None) -> Any:
        """A kubernetes.client.ApiClient pointed at this stub (with the stub's token unless given)."""
        from kubernetes import client

        config = client.Configuration(host=self.url)
        bearer = token if token is not None else self.token
        if bearer:
            config.api_key = {"BearerToken": bearer}
            config.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(config)

    @property
    def revision(self) -> int:
        """The store's resourceVersion counter (etcd's revision): changes whenever any object does."""
        return self._rv

    def snapshot(self) -> dict[str, Any]:
        """Everything stored, as JSON-ready data (`restore` reads it back: a stand-in that outlives restarts)."""
        with self._lock:
            return copy.deepcopy({
                "resourceVersion": self._rv,
                "objects": [
                    {"object": s.obj, "applied": s.applied, "managers": s.managers} for s in self._store.values()
                ],
            })

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the store with a `snapshot` (objects keep their uid, resourceVersion and managers)."""
        with self._lock:
            self._store.clear()
            for entry in snapshot["objects"]:
                obj = copy.deepcopy(entry["object"])
                rtype = self.type_for(obj["kind"])
                key = self._key(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                self._store[key] = _Stored(obj, copy.deepcopy(entry["applied"]), dict(entry["managers"]))
            self._rv = int(snapshot["resourceVersion"])

    def _changed(self, kind: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        for listener in self.listeners:
            listener(kind, before, after)

    # ------------------------------------------------------------------ hand edits (tests' view)

    def type_for(self, kind: str) -> ResourceType:
        for t in self.types:
            if kind in (t.kind, t.plural) or kind.lower() in t.short_names:
                return t
        raise KeyError(f"kind {kind!r} is not served by this stub")

    def put(self, obj: dict[str, Any], *, manager: str = "kubectl-edit") -> dict[str, Any]:
        """Create or replace an object by hand (no resourceVersion check); returns the stored copy."""
        with self._lock:
            rtype = self.type_for(obj["kind"])
            meta = obj.get("metadata", {})
            key = self._key(rtype, meta.get("namespace"), meta["name"])
            stored = self._store.get(key)
            new = copy.deepcopy(obj)
            new.setdefault("apiVersion", rtype.api_version)
            if stored is None:
                return copy.deepcopy(self._create(rtype, new, manager, "Update"))
            return copy.deepcopy(self._write(rtype, stored, new, manager, "Update"))

    def edit(
        self,
        kind: str,
        name: str,
        namespace: str | None = None,
        change: Callable[[dict[str, Any]], Any] | None = None,
        *,
        manager: str = "kubectl-edit",
    ) -> dict[str, Any]:
        """`kubectl edit`: let `change` mutate a copy of the object, store it (bumps resourceVersion)."""
        with self._lock:
            rtype = self.type_for(kind)
            stored = self._store.get(self._key(rtype, namespace, name))
            if stored is None:
                raise KeyError(f"{kind} {namespace}/{name} not found")
            new = copy.deepcopy(stored.obj)
            if change is not None:
                change(new)
            return copy.deepcopy(self._write(rtype, stored, new, manager, "Update"))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            rtype = self.type_for(kind)
            stored = self._store.get(self._key(rtype, namespace, name))
            return copy.deepcopy(stored.obj) if stored else None

    def objects(
        self, kind: str | None = None, namespace: str | None = None, *, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Stored objects (deep copies), optionally of one kind / namespace / with these labels."""
        with self._lock:
            kinds = {self.type_for(kind).kind} if kind else None
            out = []
            for (_, _, ns, _), stored in sorted(self._store.items()):
                obj = stored.obj
                if kinds and obj["kind"] not in kinds:
                    continue
                if namespace is not None and ns != namespace:
                    continue
                if labels and any(obj["metadata"].get("labels", {}).get(k) != v for k, v in labels.items()):
                    continue
                out.append(copy.deepcopy(obj))
            return out

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        with self._lock:
            rtype = self.type_for(kind)
            key = self._key(rtype, namespace, name)
            if key not in self._store:
                return False
            self._remove(rtype, key)
            return True

    def fail(
        self,
        method: str,
        kind: str,
        *,
        name: str | None = None,
        code: int = 500,
        reason: str = "InternalError",
        message: str = "injected failure",
        times: int = 1,
    ) -> None:
        """Make the next `times` requests of `method` on `kind` (and `name`) fail with this Status."""
        with self._lock:
            self._injected.append(
                _Injected(
                    method.upper(), self.type_for(kind).kind, name, StubError(code, reason, message), times
                )
            )

    def requests_for(self, method: str | None = None, path_contains: str = "") -> list[RecordedRequest]:
        return [
            r for r in self.requests if (method is None or r.method == method) and path_contains in r.path
        ]

    # ------------------------------------------------------------------ store internals

    def _key(self, rtype: ResourceType, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return (rtype.group, rtype.plural, (namespace or "") if rtype.namespaced else "", name)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(
        self,
        rtype: ResourceType,
        obj: dict[str, Any],
        manager: str,
        operation: str,
        *,
        dry_run: bool = False,
        applied: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise StubError(
                422, "Invalid", f"{rtype.kind} is invalid: metadata.name: Required value: name is required"
            )
        if rtype.namespaced:
            ns = meta.get("namespace") or "default"
            meta["namespace"] = ns
            if not dry_run and self._key(self.type_for("Namespace"), None, ns) not in self._store:
                raise StubError(
                    404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
                )
        else:
            meta.pop("namespace", None)
        for f in _SERVER_FIELDS:
            meta.pop(f, None)
        obj["kind"] = rtype.kind
        self._validate(rtype, obj)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if rtype.kind in ("Pod", "Namespace", "ConfigMap"):
            meta.pop("generation")  # these kinds carry no generation
        stored = _Stored(obj)
        stored.managers[manager] = operation
        if applied is not None:
            stored.applied[manager] = applied
        meta["managedFields"] = self._managed_fields(rtype, stored)
        if dry_run:
            meta["resourceVersion"] = str(self._rv + 1)
            return obj
        meta["resourceVersion"] = self._next_rv()
        self._store[self._key(rtype, meta.get("namespace"), name)] = stored
        self._changed(rtype.kind, None, obj)
        return obj

    def _write(
        self,
        rtype: ResourceType,
        stored: _Stored,
        new: dict[str, Any],
        manager: str,
        operation: str,
        *,
        dry_run: bool = False,
        applied: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        old = stored.obj
        meta = new.setdefault("metadata", {})
        for f in ("uid", "creationTimestamp", "name", "namespace"):
            if f in old["metadata"]:
                meta[f] = old["metadata"][f]
        if rtype.namespaced is False:
            meta.pop("namespace", None)
        new["kind"], new["apiVersion"] = rtype.kind, rtype.api_version
        self._validate(rtype, new)
        if _without_server_fields(new) == _without_server_fields(old):
            # A no-op write: etcd is not touched, resourceVersion stays (as the real server does).
            if not dry_run and applied is not None:
                stored.applied[manager] = applied
                stored.managers[manager] = operation
            return old
        body_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }
        if "generation" in old["metadata"]:
            meta["generation"] = old["metadata"]["generation"] + (1 if body_changed else 0)
        managers = dict(stored.managers)
        managers[manager] = operation
        meta["managedFields"] = self._managed_fields(rtype, _Stored(new, managers=managers))
        if dry_run:
            meta["resourceVersion"] = str(self._rv + 1)
            return new
        meta["resourceVersion"] = self._next_rv()
        stored.obj = new
        stored.managers = managers
        if applied is not None:
            stored.applied[manager] = applied
        self._changed(rtype.kind, old, new)
        return new

    def _remove(self, rtype: ResourceType, key: tuple[str, str, str, str]) -> None:
        old = self._store.pop(key).obj
        self._next_rv()
        if rtype.kind == "Namespace":  # namespace deletion takes its contents along
            for other in [k for k in self._store if k[2] == key[3] and k[1] != "namespaces"]:
                del self._store[other]
        self._changed(rtype.kind, old, None)

    def _managed_fields(self, rtype: ResourceType, stored: _Stored) -> list[dict[str, Any]]:
        return [
            {
                "manager": m,
                "operation": op,
                "apiVersion": rtype.api_version,
                "fieldsType": "FieldsV1",
                "time": _now(),
            }
            for m, op in sorted(stored.managers.items())
        ]

    def _default(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        """The defaulting the real server does on every write of these kinds."""
        spec = obj.get("spec")
        if rtype.kind == "NetworkPolicy" and isinstance(spec, dict):
            for direction in ("ingress", "egress"):
                for rule in spec.get(direction) or []:
                    for port in (rule or {}).get("ports") or []:
                        if isinstance(port, dict):
                            port.setdefault("protocol", "TCP")
            if not spec.get("policyTypes"):  # SetDefaults_NetworkPolicy
                spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])

    def _validate(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        self._default(rtype, obj)
        if rtype.kind not in _VALIDATED_KINDS:
            return
        from policy_engine.validation import validation_errors

        candidate = copy.deepcopy(obj)
        for f in _SERVER_FIELDS:
            candidate.get("metadata", {}).pop(f, None)
        errors = validation_errors(candidate)
        if errors:
            name = obj.get("metadata", {}).get("name", "")
            causes = [{"reason": "FieldValueInvalid", "message": e.message, "field": e.path} for e in errors]
            text = "; ".join(f"{e.path}: {e.message}" for e in errors)
            raise StubError(
                422,
                "Invalid",
                f'{rtype.kind}.{rtype.group or "core"} "{name}" is invalid: {text}',
                {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": causes},
            )

    def _apply(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        manager: str,
        dry_run: bool,
    ) -> tuple[int, dict[str, Any]]:
        if body.get("kind") != rtype.kind or body.get("apiVersion") != rtype.api_version:
            raise StubError(
                400,
                "BadRequest",
                f"apply body is {body.get('apiVersion')}/{body.get('kind')}, the URL is {rtype.api_version}/{rtype.kind}",
            )
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            raise StubError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})",
            )
        if rtype.namespaced and meta.get("namespace") not in (None, namespace):
            raise StubError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        config = copy.deepcopy(body)
        config.setdefault("metadata", {})
        if rtype.namespaced:
            config["metadata"]["namespace"] = namespace
        stored = self._store.get(self._key(rtype, namespace, name))
        if stored is None:
            return 201, self._create(
                rtype, copy.deepcopy(config), manager, "Apply", dry_run=dry_run, applied=config
            )
        merged = copy.deepcopy(stored.obj)
        previous = stored.applied.get(manager)
        if previous is not None:
            for path in _leaf_paths(previous) - _leaf_paths(config):
                _remove_path(merged, path)
        _merge_into(merged, config)
        return 200, self._write(rtype, stored, merged, manager, "Apply", dry_run=dry_run, applied=config)

    def _check_injected(self, method: str, rtype: ResourceType, name: str | None) -> None:
        for inj in self._injected:
            if inj.times > 0 and inj.method == method and inj.kind == rtype.kind and inj.name in (None, name):
                inj.times -= 1
                raise inj.error

    # ------------------------------------------------------------------ request handling

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body_bytes: bytes
    ) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        ctype = headers.get("content-type", "").split(";")[0].strip()
        body: Any = None
        if body_bytes:
            try:
                body = (
                    yaml.safe_load(body_bytes.decode("utf-8")) if "yaml" in ctype else json.loads(body_bytes)
                )
            except (ValueError, yaml.YAMLError) as exc:
                raise StubError(400, "BadRequest", f"error decoding body: {exc}") from exc
        with self._lock:
            if self.record_requests:
                self.requests.append(RecordedRequest(method, parts.path, query, ctype, body))
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                raise StubError(401, "Unauthorized", "Unauthorized")
            return self._route(method, parts.path, query, ctype, body)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], ctype: str, body: Any
    ) -> tuple[int, Any]:
        segs = [s for s in path.split("/") if s]
        if method == "GET" and segs == ["version"]:
            return 200, {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-netwarden-stub",
                "platform": "linux/amd64",
            }
        if method == "GET" and segs == ["api"]:
            return 200, {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }
        if method == "GET" and segs == ["apis"]:
            return 200, self._group_list()
        if segs[:1] == ["api"] and len(segs) >= 2:
            group, version, rest = "", segs[1], segs[2:]
        elif segs[:1] == ["apis"] and len(segs) >= 3:
            group, version, rest = segs[1], segs[2], segs[3:]
        elif segs[:1] == ["apis"] and len(segs) == 2 and method == "GET":
            groups = [g for g in self._group_list()["groups"] if g["name"] == segs[1]]
            if groups:
                return 200, {"kind": "APIGroup", "apiVersion": "v1", **groups[0]}
            raise StubError(404, "NotFound", "the server could not find the requested resource")
        else:
            raise StubError(404, "NotFound", "the server could not find the requested resource")
        served = [t for t in self.types if t.group == group and t.version == version]
        if not served:
            raise StubError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            if method != "GET":
                raise StubError(405, "MethodNotAllowed", f"{method} is not supported on discovery")
            return 200, self._resource_list(group, version, served)
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        if len(rest) > 2:
            raise StubError(404, "NotFound", f"subresource {rest[2]!r} is not served by this stub")
        rtype = next((t for t in served if t.plural == plural), None)
        if rtype is None or (namespace is not None and not rtype.namespaced):
            raise StubError(404, "NotFound", "the server could not find the requested resource")
        self._check_injected(method, rtype, name)
        if name is None:
            if method == "GET":
                if query.get("watch", ["false"])[0] in ("true", "1"):
                    raise StubError(405, "MethodNotAllowed", "watch is not supported by this stub")
                return 200, self._list(rtype, namespace, query)
            if method == "POST":
                return self._post(rtype, namespace, body)
            raise StubError(
                405, "MethodNotAllowed", f"{method} on a collection is not supported by this stub"
            )
        key = self._key(rtype, namespace, name)
        stored = self._store.get(key)
        dry_run = "All" in query.get("dryRun", [])
        if method == "GET":
            if stored is None:
                raise self._not_found(rtype, name)
            return 200, copy.deepcopy(stored.obj)
        if method == "DELETE":
            if stored is None:
                raise self._not_found(rtype, name)
            if not dry_run:
                self._remove(rtype, key)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": rtype.group,
                    "kind": rtype.plural,
                    "uid": stored.obj["metadata"].get("uid"),
                },
            }
        if method == "PUT":
            if stored is None:
                raise self._not_found(rtype, name)
            if not isinstance(body, dict) or body.get("metadata", {}).get("name") != name:
                raise StubError(
                    400, "BadRequest", "the name of the object does not match the name on the URL"
                )
            rv = body.get("metadata", {}).get("resourceVersion")
            if rv and rv != stored.obj["metadata"]["resourceVersion"]:
                raise self._conflict(rtype, name)
            manager = query.get("fieldManager", ["kubectl-replace"])[0]
            return 200, copy.deepcopy(
                self._write(rtype, stored, copy.deepcopy(body), manager, "Update", dry_run=dry_run)
            )
        if method == "PATCH":
            if not isinstance(body, dict):
                raise StubError(400, "BadRequest", "patch body must be an object")
            if ctype == "application/apply-patch+yaml":
                manager = query.get("fieldManager", [""])[0]
                if not manager:
                    raise StubError(400, "BadRequest", "PATCH with apply requires fieldManager")
                code, obj = self._apply(rtype, namespace, name, body, manager, dry_run)
                return code, copy.deepcopy(obj)
            if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if stored is None:
                    raise self._not_found(rtype, name)
                new = copy.deepcopy(stored.obj)
                _merge_patch(new, body)
                manager = query.get("fieldManager", ["kubectl-patch"])[0]
                return 200, copy.deepcopy(self._write(rtype, stored, new, manager, "Update", dry_run=dry_run))
            raise StubError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml, application/merge-patch+json, application/strategic-merge-patch+json (got {ctype!r})",
            )
        raise StubError(405, "MethodNotAllowed", f"{method} is not supported by this stub")

    def _post(self, rtype: ResourceType, namespace: str | None, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise StubError(400, "BadRequest", "body must be an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            if meta.get("namespace") not in (None, namespace):
                raise StubError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace
        if meta.get("name") and self._key(rtype, namespace, meta["name"]) in self._store:
            raise StubError(
                409,
                "AlreadyExists",
                f'{rtype.qualified} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": rtype.group, "kind": rtype.plural},
            )
        return 201, copy.deepcopy(self._create(rtype, obj, "kubectl-create", "Update"))

    def _list(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, list[str]]
    ) -> dict[str, Any]:
        selector = _parse_label_selector(query.get("labelSelector", [""])[0])
        fields = _parse_field_selector(query.get("fieldSelector", [""])[0])
        items = []
        for (group, plural, ns, _), stored in sorted(self._store.items()):
            if (group, plural) != (rtype.group, rtype.plural) or (namespace is not None and ns != namespace):
                continue
            obj = stored.obj
            if not all(req(obj["metadata"].get("labels") or {}) for req in selector):
                continue
            if not all(check(obj) for check in fields):
                continue
            item = copy.deepcopy(obj)
            if rtype.group != "cilium.io":  # built-in lists carry no per-item TypeMeta
                item.pop("apiVersion", None)
                item.pop("kind", None)
            items.append(item)
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _group_list(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for t in self.types:
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in groups.items()
            ],
        }

    def _resource_list(self, group: str, version: str, served: list[ResourceType]) -> dict[str, Any]:
        verbs = ["create", "delete", "get", "list", "patch", "update"]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [
                {
                    "name": t.plural,
                    "singularName": t.kind.lower(),
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": verbs,
                    "shortNames": list(t.short_names),
                }
                for t in served
            ],
        }

    def _not_found(self, rtype: ResourceType, name: str) -> StubError:
        return StubError(
            404,
            "NotFound",
            f'{rtype.qualified} "{name}" not found',
            {"name": name, "group": rtype.group, "kind": rtype.plural},
        )

    def _conflict(self, rtype: ResourceType, name: str) -> StubError:
        return StubError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {rtype.qualified} "{name}": the object has been modified; please apply your changes to the latest version and try again',
            {"name": name, "group": rtype.group, "kind": rtype.plural},
        )


class _Handler(BaseHTTPRequestHandler):
    stub: KubeApiStub
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3 pools connections

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK cost 40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            code, payload = self.stub.handle(self.command, self.path, headers, body)
        except StubError as err:
            code, payload = err.code, err.status()
        except Exception as exc:  # a bug in the stub must surface as a 500, not a hung client
            code, payload = 500, StubError(500, "InternalError", f"stub error: {exc!r}").status()
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


# ---------------------------------------------------------------------- merge helpers


def _without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for f in _SERVER_FIELDS:
        out.get("metadata", {}).pop(f, None)
    return out


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths a config sets; lists are atomic (one leaf), as in most of these schemas."""
    if isinstance(obj, dict) and obj:
        out: set[tuple[str, ...]] = set()
        for k, v in obj.items():
            out |= _leaf_paths(v, prefix + (k,))
        return out
    return {prefix} if prefix else set()


def _remove_path(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = obj
    for k in path[:-1]:
        node = node.get(k) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _merge_into(target: dict[str, Any], config: dict[str, Any]) -> None:
    for k, v in config.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict) and v:
            _merge_into(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


def _merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch (null deletes)."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge_patch(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


# ---------------------------------------------------------------------- selectors

_SET_REQ = re.compile(
    r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)|(==|=|!=)\s*([A-Za-z0-9_.-]*))?\s*$"
)


def _split_selector(text: str) -> Iterator[str]:
    depth, current = 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            yield current
            current = ""
        else:
            current += ch
    if current.strip():
        yield current


def _parse_label_selector(text: str) -> list[Callable[[dict[str, str]], bool]]:
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for part in _split_selector(text):
        m = _SET_REQ.match(part)
        if not m:
            raise StubError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, set_op, values, op, value = m.groups()
        if set_op:
            vals = {v.strip() for v in values.split(",") if v.strip()}
            if set_op == "in":
                reqs.append(lambda labels, k=key, vs=vals: labels.get(k) in vs)
            else:
                reqs.append(lambda labels, k=key, vs=vals: labels.get(k) not in vs)
        elif op:
            if neg:
                raise StubError(400, "BadRequest", f"unable to parse requirement: {part!r}")
            if op == "!=":
                reqs.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                reqs.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif neg:
            reqs.append(lambda labels, k=key: k not in labels)
        else:
            reqs.append(lambda labels, k=key: k in labels)
    return reqs


_FIELD_PATHS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "spec.nodeName": ("spec", "nodeName"),
    "status.phase": ("status", "phase"),
}


def _parse_field_selector(text: str) -> list[Callable[[dict[str, Any]], bool]]:
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for part in (p for p in text.split(",") if p.strip()):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m or m.group(1) not in _FIELD_PATHS:
            raise StubError(400, "BadRequest", f'field label not supported: "{part}"')
        path, op, value = _FIELD_PATHS[m.group(1)], m.group(2), m.group(3)

        def check(
            obj: dict[str, Any], path: tuple[str, str] = path, op: str = op, value: str = value
        ) -> bool:
            actual = (obj.get(path[0]) or {}).get(path[1]) or ""
            return (actual == value) if op != "!=" else (actual != value)

        checks.append(check)
    return checks

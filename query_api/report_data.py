"""Gathering for the validation report: one function that the API route, the CLI's local mode and benches call.

`validation_report(flows, control_plane_store, principal, params)` reads what policy_engine.traffic_report
assembles: the window's conversations (one GROUP BY over the hourly conversation table, scoped in SQL, read
unredacted so they can be judged again and redacted for display), each cluster's desired and staged sets (the
recorded inventory, i.e. what the stream enriched with), the drop rollups of the report's scope (query_api.summary,
one summary however many clusters) and, unless
`live=False`, what each cluster's kube API says: its pods, the pods Cilium does not enforce and the drift of the
rendered objects (policy_engine.kube, the same calls `netwarden sync` and `diff` make).

Scope: the principal's ScopeFilter (query_api.scope); `--workspace W` / `--namespace NS` narrow it. A workspace
or namespace the caller cannot see is refused (403), an unknown one too (422, naming it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.traffic_report import (
    ClusterFacts,
    Decider,
    DropRollups,
    KubeFacts,
    KubePod,
    ObjectDrift,
    ReportView,
    UnmanagedPod,
)
from policy_engine.traffic_report import validation_report as assemble
from query_api.conversations import (
    HistoryParamError,
    history_window,
    read_conversations,
    redact_conversation,
    unix_ns,
)
from query_api.flow_query import FlowFilter
from query_api.scope import ScopeFilter
from query_api.store import FlowStore
from query_api.summary import parse_window, rfc3339, summarize
from schemas.clickhouse import LOST_RANGES_TABLE
from schemas.conversation import Conversation
from schemas.inventory import ClusterInventory

log = logging.getLogger("netwarden.query_api.report")

DEFAULT_SINCE = "24h"
KUBE_TIMEOUT_S = 5.0  # a report must not hang on one unreachable cluster
KUBE_PARALLEL = 8  # clusters' APIs asked at once


# A bad parameter, named (422 / CLI exit 2): the history questions' one error.
ReportParamError = HistoryParamError


@dataclass(frozen=True)
class ReportParams:
    cluster: str | None = None
    namespace: str | None = None
    workspace: str | None = None
    since: str | None = None  # RFC 3339 or a duration ago; default 24h
    until: str | None = None  # default now
    live: bool = True  # ask the clusters' kube APIs (pods, drift)


def _window(params: ReportParams, now_ns: int) -> tuple[int, int]:
    """[since, until) in ns. The history questions' one reading of a window (query_api.conversations,
    shared with what-if, recommend and why): a duration ago is widened to whole hours, so only the hourly
    conversation table is read; RFC 3339 times stay exact."""
    window = history_window(params.since, params.until, now_ns, default_since=DEFAULT_SINCE)
    return unix_ns(window.since), unix_ns(window.until)


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _inventories(store: ControlPlaneStore) -> dict[str, ClusterInventory]:
    from policy_engine.inventory import cluster_inventory, latest_inventory

    recorded = latest_inventory(store)
    for cluster in store.list_clusters():  # a cluster written before the outbox existed: render it now
        if cluster.name not in recorded:
            recorded[cluster.name] = cluster_inventory(store, cluster.name)
    return recorded


def _selection(
    store: ControlPlaneStore, index: Any, scope: ScopeFilter, principal: Principal, params: ReportParams
) -> set[tuple[str, str]] | None:
    """(cluster, namespace) places of --workspace (None without it), refused when the caller sees none."""
    if params.namespace is not None and (not params.namespace or "/" in params.namespace):
        raise ReportParamError("namespace", params.namespace, f"invalid namespace {params.namespace!r}")
    if params.namespace and params.workspace:
        raise ReportParamError("workspace", params.workspace, "give --namespace or --workspace, not both")
    if params.workspace is None:
        clusters = [params.cluster] if params.cluster else sorted(scope.clusters | {c for c, _ in scope.namespaces})
        visible = scope.everything or any(scope.can_see_namespace(c, params.namespace or "") for c in clusters)
        if params.namespace and not visible:
            raise PermissionDenied(
                f"reporting on namespace {params.namespace}" + (f" of {params.cluster}" if params.cluster else ""),
                "a role whose scope includes that namespace", principal,
            )
        return None
    refs = index.workspace_namespaces(params.workspace)
    if store.get_workspace(params.workspace) is None and not refs:
        raise ReportParamError("workspace", params.workspace, f"unknown workspace {params.workspace!r}")
    places = {(r.cluster, r.namespace) for r in refs if params.cluster in (None, r.cluster)}
    if refs and not any(scope.can_see_namespace(*p) for p in places or {(r.cluster, r.namespace) for r in refs}):
        raise PermissionDenied(
            f"reporting on workspace {params.workspace}", f"a role whose scope includes workspace "
            f"{params.workspace}", principal,
        )
    return {p for p in places if scope.can_see_namespace(*p)}


def validation_report(
    flows: FlowStore,
    control_plane_store: ControlPlaneStore,
    principal: Principal,
    params: ReportParams,
    *,
    now_ns: int | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The validation report document (policy_engine.traffic_report) for what `principal` may see."""
    from policy_engine.tenancy import ownership_index_of

    now_ns = time.time_ns() if now_ns is None else now_ns
    since_ns, until_ns = _window(params, now_ns)
    index = ownership_index_of(control_plane_store)
    scope = ScopeFilter.for_principal(principal, index.merged_ownership())
    if scope.empty:
        raise PermissionDenied("reading the validation report", "any role binding", principal)
    places = _selection(control_plane_store, index, scope, principal, params)
    declared = {c.name: c for c in control_plane_store.list_clusters()}
    if params.cluster and params.cluster in declared and not scope.can_see_cluster(params.cluster):
        raise PermissionDenied(f"reporting on cluster {params.cluster}", "a role whose scope includes it", principal)

    def in_report(cluster: str, namespace: str) -> bool:
        if not scope.can_see_namespace(cluster, namespace):
            return False
        if params.namespace is not None and namespace != params.namespace:
            return False
        return places is None or (cluster, namespace) in places

    clock = time.perf_counter()
    conversations = read_conversations(
        flows,
        since=_dt(since_ns),
        until=_dt(until_ns),
        clusters=[params.cluster] if params.cluster else None,
        scope=scope,
        namespace=params.namespace,
        places=places,
        redact=False,
    )
    t_conv = time.perf_counter() - clock
    by_cluster: dict[str, list[Conversation]] = {}
    for conv in conversations:
        by_cluster.setdefault(conv.cluster, []).append(conv)
    if params.cluster and params.cluster not in declared and params.cluster not in by_cluster:
        # Neither declared nor seen (in the caller's scope) in the window: most likely a typo.
        raise ReportParamError("cluster", params.cluster, f"unknown cluster {params.cluster!r}")
    inventories = _inventories(control_plane_store)
    names = {c for c in declared if scope.can_see_cluster(c)} | set(by_cluster)
    if params.cluster:
        names &= {params.cluster}
    if places is not None:
        names &= {c for c, _ in places} | set(by_cluster)
    owners = index.entries()

    clock = time.perf_counter()
    rollups = _rollups(flows, scope, params, places, since_ns, until_ns, now_ns)
    t_roll = time.perf_counter() - clock
    clock = time.perf_counter()
    # The kube client is loaded only for a live report.
    from policy_engine.kube import reachable as kube_reachable

    reachable = [declared[name] for name in sorted(names) if params.live and name in declared
                 and kube_reachable(declared[name])]
    kube: dict[str, KubeFacts | None] = dict.fromkeys(names)
    if reachable:
        # The clusters' APIs are asked at once: a fleet report waits for the slowest, not for the sum.
        lock = threading.Lock()
        with ThreadPoolExecutor(max_workers=min(KUBE_PARALLEL, len(reachable))) as pool:
            for cluster, found in zip(
                reachable, pool.map(lambda c: kube_facts(control_plane_store, c, store_lock=lock), reachable),
                strict=True,
            ):
                kube[cluster.name] = found
    t_kube = time.perf_counter() - clock

    lost = lost_ranges_by_cluster(flows, sorted(names), since_ns, until_ns)
    facts = []
    for name in sorted(names):
        inventory = inventories.get(name)
        desired = inventory.desired if inventory is not None else None
        known = set(declared[name].namespaces) if name in declared else set()
        known |= {ns for (c, ns) in owners if c == name}
        facts.append(
            ClusterFacts(
                cluster=name,
                conversations=by_cluster.get(name, []),
                desired=desired,
                staged=inventory.staged if inventory is not None else None,
                namespace_workspaces={ns: e.workspace for (c, ns), e in owners.items() if c == name},
                known_namespaces=sorted(known),
                kube=kube[name],
                lost_ranges=tuple(lost.get(name, ())),
            )
        )
    clock = time.perf_counter()
    view = ReportView(in_report=in_report, redact=lambda c: redact_conversation(c, scope))
    report = assemble(_dt(since_ns), _dt(until_ns), facts, view, Decider(), rollups)
    t_assemble = time.perf_counter() - clock
    if timings is not None:
        timings.update(conversations_s=t_conv, rollups_s=t_roll, kube_s=t_kube, assemble_s=t_assemble,
                       conversations=len(conversations))
    return report


def lost_ranges_by_cluster(flows: FlowStore, clusters: list[str], since_ns: int, until_ns: int) -> dict[str, list[dict[str, Any]]]:
    """Per cluster, the lost ranges (collector gaps) overlapping the window, oldest first."""
    if not clusters:
        return {}
    rows = flows.client.query(
        f"SELECT cluster, node, after, before FROM {LOST_RANGES_TABLE} FINAL WHERE cluster IN {{c:Array(String)}} "
        "AND before >= fromUnixTimestamp64Nano({s:Int64}, 'UTC') AND after <= fromUnixTimestamp64Nano({u:Int64}, 'UTC') "
        "ORDER BY cluster, after",
        parameters={"c": clusters, "s": since_ns, "u": until_ns},
    ).result_rows
    out: dict[str, list[dict[str, Any]]] = {}
    for cluster, node, after, before in rows:
        out.setdefault(str(cluster), []).append({
            "node": node,
            "since": after.isoformat(),
            "until": before.isoformat(),
            "seconds": round((before - after).total_seconds(), 3),
            "what": f"node {node}: flows Hubble no longer held when the collector resumed (possibly lost)",
        })
    return out


def _rollups(
    flows: FlowStore,
    scope: ScopeFilter,
    params: ReportParams,
    places: set[tuple[str, str]] | None,
    since_ns: int,
    until_ns: int,
    now_ns: int,
) -> DropRollups:
    """Drops by reason and policy, and verdicts over time, from the rollups (query_api.summary)."""
    narrowed = scope
    if places is not None:  # a workspace: its visible namespaces are the scope of the summary
        narrowed = ScopeFilter(namespaces=frozenset(places))
    window = parse_window(rfc3339(since_ns), rfc3339(until_ns), None, now_ns)
    flt = FlowFilter(cluster=params.cluster, namespace=params.namespace)
    doc = summarize(flows, flt, window, None if narrowed.everything else narrowed, top=0, max_edges=0)
    return DropRollups(
        by_reason=tuple(doc["drops_by_reason"]),
        by_policy=tuple(doc["drops_by_policy"]),
        buckets=tuple(doc["buckets"]),
    )


# -- the clusters' kube APIs ------------------------------------------------------------------------------


def _kube_client(cluster: Any) -> Any:
    """A store Cluster's API as `netwarden sync` reaches it, without retries with backoff: an unreachable
    cluster is reported, not waited for."""
    from policy_engine.kube import KubeCluster

    return KubeCluster.of(cluster, timeout=KUBE_TIMEOUT_S, retries=False)


def kube_facts(
    store: ControlPlaneStore,
    cluster: Any,
    connect: Callable[[Any], Any] = _kube_client,
    store_lock: AbstractContextManager[Any] | None = None,
) -> KubeFacts:
    """Pods, pods Cilium does not enforce and drift of the desired objects, from one cluster's API; a
    cluster that cannot be reached gives KubeFacts(reachable=False, error=...). `store_lock` serializes the
    store's use when several clusters are asked from threads."""
    from policy_engine.control_plane import resolve_policy_set
    from policy_engine.kube import deliverable
    from policy_engine.render import render_cluster

    try:
        kube = connect(cluster)
        live = kube.namespaces()
        with store_lock or nullcontext():
            policy_set = resolve_policy_set(store, cluster.name, live)
        objects = list(deliverable(render_cluster(policy_set), live).objects)  # as sync applies them
        drift = tuple(
            ObjectDrift(f"{d.ref.kind}/{d.ref.namespace or ''}/{d.ref.name}", d.drift, tuple(d.details))
            for d in kube.drift(objects)
        )
        unmanaged = tuple(
            UnmanagedPod(p.namespace, p.name, p.owner_kind or "", p.owner_name or "", p.reason)
            for p in kube.unmanaged_pods()
        )
        deployments = {
            (rs["metadata"].get("namespace", ""), rs["metadata"]["name"]): owner
            for rs in kube.objects("apps/v1", "ReplicaSet")
            if (owner := _controller(rs)) is not None
        }
        pods = tuple(pod for item in kube.objects("v1", "Pod") if (pod := _kube_pod(item, deployments)) is not None)
    except Exception as exc:  # one unreachable or broken cluster must not fail the report
        log.warning("cluster %s: kube API not usable for the report: %s", cluster.name, exc)
        return KubeFacts(reachable=False, error=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    return KubeFacts(True, "", pods, unmanaged, drift, len(objects))


def _controller(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    ref = next((r for r in (obj.get("metadata") or {}).get("ownerReferences") or () if r.get("controller")), None)
    return (str(ref["kind"]), str(ref["name"])) if ref is not None else None


def _kube_pod(item: Mapping[str, Any], replica_set_owners: Mapping[tuple[str, str], tuple[str, str]]) -> KubePod | None:
    """A pod and its workload: the controller, through its ReplicaSet to the Deployment."""
    meta, spec, status = item.get("metadata") or {}, item.get("spec") or {}, item.get("status") or {}
    if spec.get("hostNetwork"):
        return None  # Cilium never manages host-network pods
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    namespace, name = meta.get("namespace") or "", meta.get("name", "")
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    kind, workload = _controller(item) or ("", name)
    if kind == "ReplicaSet":
        owner = replica_set_owners.get((namespace, workload))
        template_hash = labels.get("pod-template-hash")
        if owner is not None:
            kind, workload = owner
        elif template_hash and workload.endswith(f"-{template_hash}"):  # the ReplicaSet is not listed (yet)
            kind, workload = "Deployment", workload[: -len(template_hash) - 1]
    return KubePod(namespace, name, labels, workload, kind)


__all__ = [
    "DEFAULT_SINCE",
    "ReportParamError",
    "ReportParams",
    "kube_facts",
    "validation_report",
]

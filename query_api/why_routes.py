"""GET /api/v1/why and the gathering behind `netwarden why`: one pair's history, verdicts and fix.

The answer is assembled by policy_engine.why (pure); this module reads what it needs: the pair's
conversations (query_api.conversations, one GROUP BY over the hourly table, scoped in SQL, read unredacted
because the sides' labels decide the verdicts, then redacted by why's own rule), which workload a pod name or
pod IP belongs to (one small lookup in `flows`), the cluster's desired and staged policy sets (the recorded
inventory, as the stream enriches with), ownership (scope and who may write) and each policy's scope.

Any role binding may ask, about a pair with at least one side in its scope (403 otherwise); the side
outside the scope is shown as flows show it (namespace, reserved identity).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.why import (
    PEER_FORMS,
    PeerSpec,
    WhyInputError,
    WhyQuery,
    explain,
    pair_conversations,
    parse_query,
)
from query_api.conversations import (
    HistoryParamError,
    history_window,
    read_conversations,
)
from query_api.report_routes import HistoryRouteDeps, answer, control_plane_of, history_refusals
from query_api.scope import ScopeFilter
from query_api.store import FlowStore
from schemas.clickhouse import FLOWS_TABLE

DEFAULT_SINCE = "24h"


@dataclass(frozen=True)
class WhyParams:
    cluster: str | None
    source: str | None
    destination: str | None
    port: int | None = None
    protocol: str | None = None
    since: str | None = None  # RFC 3339 or a duration ago; default 24h
    until: str | None = None


def _window(params: WhyParams, now_ns: int) -> tuple[datetime, datetime]:
    """The history questions' one reading of a window (query_api.conversations.history_window)."""
    try:
        window = history_window(params.since, params.until, now_ns, default_since=DEFAULT_SINCE)
    except HistoryParamError as exc:
        raise WhyInputError(exc.parameter, exc.value, exc.reason) from None
    return window.since, window.until


def _window_sql(window: tuple[datetime, datetime]) -> tuple[str, dict[str, Any]]:
    return (
        "time >= fromUnixTimestamp64Nano({w_since:Int64}) AND time < fromUnixTimestamp64Nano({w_until:Int64})",
        {"w_since": int(window[0].timestamp() * 1e9), "w_until": int(window[1].timestamp() * 1e9)},
    )


def resolve_peer(flows: FlowStore, cluster: str, spec: PeerSpec, window: tuple[datetime, datetime]) -> tuple[PeerSpec, str]:
    """(spec, workload): a pod IP becomes NS/POD; a pod name gets the workload Hubble named for it ("" when
    the name is no pod seen in the window, e.g. already a workload name). One LIMIT 1 lookup per side."""
    cond, params = _window_sql(window)
    params["cluster"] = cluster
    if spec.ip:
        params["ip"] = spec.ip
        rows = _first_on_either_side(
            flows,
            lambda s: f"{s}_namespace AS ns, {s}_pod AS pod, {_workload_sql(s)}",
            lambda s: f"cluster = {{cluster:String}} AND {cond} AND ip_{s} = toIPv6({{ip:String}}) "
            f"AND {s}_namespace != '' AND {s}_pod != ''",
            params,
        )
        if not rows:
            return spec, ""
        namespace, pod, workload = rows[0]["ns"], rows[0]["pod"], rows[0]["workload"]
        return PeerSpec(spec.text, namespace=namespace, name=pod), workload
    params.update(ns=spec.namespace, pod=spec.name)
    rows = _first_on_either_side(
        flows,
        _workload_sql,
        lambda s: f"cluster = {{cluster:String}} AND {s}_namespace = {{ns:String}} AND {s}_pod = {{pod:String}} "
        f"AND {cond}",
        params,
    )
    return spec, (rows[0]["workload"] if rows else "")


def _workload_sql(side: str) -> str:
    """The workload Hubble named for the side's pod, else the pod name."""
    return f"if(notEmpty({side}_workload_names), {side}_workload_names[1], {side}_pod) AS workload"


def _first_on_either_side(
    flows: FlowStore, select: Callable[[str], str], where: Callable[[str], str], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The first matching flow's columns per side (src, then dst): one LIMIT 1 lookup per side."""
    sql = " UNION ALL ".join(
        f"(SELECT {select(s)} FROM {FLOWS_TABLE} WHERE {where(s)} LIMIT 1)" for s in ("src", "dst")
    )
    return flows.run(sql, params)


def why_report(
    flows: FlowStore,
    control: ControlPlaneStore,
    principal: Principal,
    params: WhyParams,
    *,
    now_ns: int | None = None,
) -> dict[str, Any]:
    """The why document (policy_engine.why.explain) for what `principal` may see."""
    import time

    from policy_engine.inventory import cluster_inventory, latest_inventory
    from policy_engine.tenancy import ownership_index_of
    from policy_engine.validation import validate_object

    window = _window(params, time.time_ns() if now_ns is None else now_ns)
    query = parse_query(params.cluster, params.source, params.destination, params.port, params.protocol)
    ownership = ownership_index_of(control).merged_ownership()
    scope = ScopeFilter.for_principal(principal, ownership)
    if scope.empty:
        raise PermissionDenied("asking why", "any role binding", principal)
    # Through the FlowStore: its queries are serialized (chDB's client is not thread-safe).
    source, source_workload = resolve_peer(flows, query.cluster, query.source, window)
    destination, destination_workload = resolve_peer(flows, query.cluster, query.destination, window)
    query = WhyQuery(query.cluster, source, destination, query.port, query.protocol)
    if not (scope.can_see_namespace(query.cluster, source.namespace)
            or scope.can_see_namespace(query.cluster, destination.namespace)):
        raise PermissionDenied(
            f"asking why about {query.source.text} -> {query.destination.text} in cluster {query.cluster}",
            "a role whose scope includes one of the two sides", principal,
        )
    places = {(query.cluster, s.namespace) for s in (source, destination) if s.namespace}
    conversations = read_conversations(
        flows, since=window[0], until=window[1], clusters=[query.cluster], scope=scope,
        places=places or None, port=query.port, protocol=query.protocol, redact=False,
    )
    workloads = {s.name: w for s, w in ((source, source_workload), (destination, destination_workload)) if w}
    if not pair_conversations(conversations, query, workloads) and places:
        # No history of the pair: read the sides' other conversations for their labels.
        conversations = read_conversations(
            flows, since=window[0], until=window[1], clusters=[query.cluster], scope=scope, places=places,
            redact=False,
        )
    inventory = latest_inventory(control).get(query.cluster)
    if inventory is None and control.get_cluster(query.cluster) is not None:
        inventory = cluster_inventory(control, query.cluster)
    if inventory is None and not conversations:
        raise WhyInputError("cluster", query.cluster, f"unknown cluster {query.cluster!r}")

    def policy_scope(name: str) -> str:
        version = control.get_policy(name)
        return version.spec.scope if version is not None else ""

    return explain(
        query, conversations, inventory.desired if inventory else None, inventory.staged if inventory else None,
        window=window, visible=scope.can_see_namespace, ownership=ownership, workloads=workloads,
        policy_scope=policy_scope, validate=validate_object,
        existing_policies={pv.name for pv in control.list_policies()},
    )


# ---- the route ---------------------------------------------------------------------------------------------


class WhyDirection(BaseModel):
    verdict: str
    policy: str = Field(description="deciding rendered object, Kind/namespace/name")
    rule: str = Field(description='deciding rule: "ingress[0]", "egressDeny[1]", "default-deny", ...')
    netwarden_policy: str
    netwarden_rule: str
    version: int


class WhyDecision(BaseModel):
    verdict: str = Field(description="FORWARDED, DROPPED or NOT_EVALUATED (the connection's: egress, then ingress)")
    drop_reason: str
    revision: int
    egress: WhyDirection
    ingress: WhyDirection
    differs: bool | None = Field(None, description="staged only: the staged verdict differs from the desired one")
    staged_versions: list[dict[str, Any]] | None = None


class WhyFix(BaseModel):
    directions: list[dict[str, Any]] = Field(
        description="per denied direction: where it is enforced, the action, the policy to apply or the deny "
        "rule in the way, and the roles that may write there"
    )
    documents: list[dict[str, Any]] = Field(description="netwarden.io/v1 Policy and Assignment documents")
    yaml: str = Field(description="the documents as YAML, for `netwarden apply -f`")
    verified: bool | None = Field(description="the desired set with the documents added allows the pair")
    notes: list[str]


class WhyAnswer(BaseModel):
    query: dict[str, Any]
    window: dict[str, Any]
    source: dict[str, Any]
    destination: dict[str, Any]
    observed: dict[str, Any] = Field(description="what Hubble saw: flows per verdict, drop reason, attribution")
    desired: WhyDecision | None
    staged: WhyDecision | None
    fix: WhyFix | None
    notes: list[str]


WhyRouteDeps = HistoryRouteDeps


def router(deps: WhyRouteDeps) -> APIRouter:
    api = APIRouter()

    @api.get(
        "/api/v1/why",
        response_model=WhyAnswer,
        responses=history_refusals("neither side of the pair is in the caller's scope"),
    )
    async def get_why(
        cluster: str = Query(..., description="the cluster the pair lives in"),
        source: str = Query(..., alias="from", description=PEER_FORMS),
        destination: str = Query(..., alias="to", description=PEER_FORMS),
        port: int | None = Query(None, description="server port; for ICMP the type (default echo request)"),
        protocol: str = Query("TCP", description="TCP, UDP, SCTP, ICMP or ICMPv6"),
        since: str | None = Query(None, description="RFC 3339 or a duration ago (default 24h)"),
        until: str | None = Query(None, description="RFC 3339 or a duration ago (default now)"),
        principal: Principal = Depends(deps.current_principal),
    ) -> Any:
        params = WhyParams(cluster, source, destination, port, protocol, since, until)
        return await answer(deps, principal, "asking why",
                            lambda control: why_report(deps.store, control, principal, params))

    return api


def app_router(store: FlowStore, current_principal: Callable[..., Any], authenticator: Any) -> APIRouter:
    """The route as create_app wires it: the control-plane store is the authenticator's tenancy store."""
    tenancy = getattr(authenticator, "tenancy", None)
    if tenancy is None:
        return APIRouter()  # no control plane (e.g. a test app): no policy sets to explain with
    return router(WhyRouteDeps(store, current_principal, control_plane_of(tenancy.store)))


__all__ = ["WhyParams", "WhyRouteDeps", "app_router", "resolve_peer", "router", "why_report"]

"""The flow filters as query parameters (FastAPI dependency), one declaration for every route that takes them:
GET /api/v1/flows, its summary, and the live stream (query_api.live). Meanings: query_api.flow_query."""

from __future__ import annotations

from fastapi import Query

from query_api.flow_query import FlowFilter


async def flow_filter(  # async: no I/O, so FastAPI need not hop to a worker thread
    cluster: str | None = Query(None, description="cluster the flow was collected from"),
    namespace: str | None = Query(None, description="source or destination namespace"),
    pod: str | None = Query(None, description="[namespace/]pod-name prefix, either side"),
    workload: str | None = Query(None, description="[kind/]workload name, either side"),
    label: list[str] = Query(
        [], description="k=v or source:k=v, repeatable (any of them, as hubble), either side"
    ),
    verdict: str | None = Query(None, description="FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, ..."),
    drop_reason: str | None = Query(None, description="DropReason name (POLICY_DENIED, ...) or number"),
    protocol: str | None = Query(None, description="tcp, udp, sctp, icmp, icmpv4, icmpv6"),
    port: int | None = Query(None, ge=0, le=65535, description="source or destination port"),
    direction: str | None = Query(None, description="traffic direction: INGRESS or EGRESS"),
    l7_type: str | None = Query(None, description="L7 flow type: REQUEST, RESPONSE or SAMPLE"),
    ip: str | None = Query(None, description="source or destination IP address or CIDR"),
    since: str | None = Query(None, description="RFC 3339 or a duration ago (5m, 2h, 1d)"),
    until: str | None = Query(None, description="RFC 3339 or a duration ago"),
) -> FlowFilter:
    return FlowFilter(
        cluster=cluster,
        namespace=namespace,
        pod=pod,
        workload=workload,
        labels=tuple(label),
        verdict=verdict,
        drop_reason=drop_reason,
        protocol=protocol,
        port=port,
        direction=direction,
        l7_type=l7_type,
        ip=ip,
        since=since,
        until=until,
    )

"""The live flow stream: `GET /api/v1/flows/stream` as WebSocket and as Server-Sent Events.

This module holds the routes and re-exports the names callers use; the parts live beside it: live_filter
(filters and scope), live_rows (rows of a stored table), live_hub (hub and dispatcher
thread), live_feed (flows.enriched).

Feed. A `LiveHub` receives every stored batch as an Arrow table: in embedded mode the pipeline calls
`LiveHub.publish_table` right after the ClickHouse insert (netwarden.embedded wires it); in scale mode
an `EnrichedTopicFeed` consumes `flows.enriched`, where the stream workers publish what they stored
(value: one Arrow IPC stream of record rows, see streams.app).

Back-pressure. The pipeline never waits for a client. `publish_table` only queues the table for the
hub's dispatcher thread (and does nothing when nobody listens). The dispatcher converts the table to
rows once, then offers each row to every subscription: the subscription's filter and scope decide, and
an accepted row goes into that subscription's bounded queue. A full queue drops the row and counts it;
the client then receives `{"missed": N}` at the place in the stream where the gap is. A stored row comes
with its jsonpb text rendered by ClickHouse in the read-back (streams.jsonpb_sql; ~20 us of ClickHouse CPU
instead of ~170 us of Python per flow) and is read column by column (StoredRow); a row without that text, or
a redacted copy, is rendered in the client's own task, so that cost follows what a client actually reads.

Messages. Each flow is one hubble jsonpb `GetFlowsResponse` (schemas.flow_render.row_to_jsonpb): one WebSocket text
message, or one SSE `data:` event. A gap is `{"missed": N}`: a WebSocket text message, or an SSE event
named `missed` (so `EventSource.onmessage` sees only flows).

Filters and scope. The stream takes the filters of `/api/v1/flows` (cluster, namespace, pod, verdict,
protocol, port, since, until) with the same meanings: `flow_predicate` is the Python twin of
`query_api.flow_query.filter_conditions`, and a test checks both agree on the same rows. The caller's
scope (`ScopeFilter.visible` / `.redact`) applies first; the filters then see the redacted row, so a
filter can never probe fields the caller is not allowed to see (e.g. the pod name of a hidden peer).

Authentication. The principal dependency is the same as for the other routes; it must read the header
through parameters that exist on WebSocket connections too (`Header(...)`, `HTTPConnection`). Browsers
cannot set headers on a WebSocket or an EventSource: both routes are marked `accepts_stream_tickets`, so
query_api.auth takes a single-use `?ticket=` from POST /api/v1/stream-tickets there. No token in a URL.
While a stream runs, its access is re-checked (query_api.stream_access): a revoked token or a narrowed
scope ends it with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import HTTPConnection

from query_api.auth import accepts_stream_tickets, reauthenticator
from query_api.flow_params import flow_filter
from query_api.flow_query import FilterValueError, FlowFilter
from query_api.live_feed import EnrichedTopicFeed, decode_enriched
from query_api.live_filter import (
    Row,
    RowScope,
    flow_predicate,
    given_filters,
    live_flow_filter,
    subscription_filter,
)
from query_api.live_hub import DEFAULT_QUEUE_FLOWS, SENT, LiveHub, LiveMessage, LiveSubscription, Missed
from query_api.live_rows import StoredRow, stored_rows, table_rows
from query_api.stream_access import WS_POLICY_VIOLATION, StreamAccess, StreamEnd, recheck_period

log = logging.getLogger("netwarden.query_api.live")

STREAM_PATH = "/api/v1/flows/stream"
SSE_KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream


def _unprocessable(parameter: str, value: Any, message: str) -> JSONResponse:
    # The shape of FastAPI's own validation errors (and of /api/v1/flows), so clients handle one format.
    return JSONResponse(
        status_code=422,
        content={
            "detail": [{"loc": ["query", parameter], "msg": message, "type": "value_error", "input": value}]
        },
    )


@dataclass(frozen=True)
class _Opened:
    principal: Any
    filters: Mapping[str, Any]  # the filters given (logged)
    filter: FlowFilter
    scope: RowScope
    accept: Callable[[Row], Row | None]
    now_ns: int


@dataclass(frozen=True)
class _Refused:
    response: JSONResponse
    reason: str


def live_router(
    hub: LiveHub,
    principal_dependency: Callable[..., Any],
    scope_for: Callable[[Any], RowScope],
    *,
    queue_flows: int = DEFAULT_QUEUE_FLOWS,
    keepalive_s: float = SSE_KEEPALIVE_S,
    recheck_s: float | None = None,
) -> APIRouter:
    """The stream routes; the app owner includes this router next to /api/v1/flows. `recheck_s`: how often
    an open stream re-checks its caller's credential and scope (query_api.stream_access; default 4.5 s, or
    NETWARDEN_STREAM_RECHECK_S)."""
    router = APIRouter()
    period = recheck_period(recheck_s)

    async def opening(
        flt: FlowFilter = Depends(flow_filter),
        principal: Any = Depends(principal_dependency),
        ticket: str | None = Query(None, description="a stream ticket (POST /api/v1/stream-tickets), single use"),
    ) -> _Opened | _Refused:
        """The stream's filter, scope and row filter, or the refusal and its reason (422 naming the filter,
        403 without any role binding). `ticket` is read by the authentication dependency (declared here for
        the OpenAPI description)."""
        del ticket
        filters = given_filters(flt)
        if getattr(principal, "bindings", None) == ():
            reason = f"user {principal.name!r} has no role binding"
            refusal = JSONResponse(status_code=403, content={"detail": reason, "needed": "any role binding"})
            return _Refused(refusal, reason)
        now_ns = time.time_ns()  # relative `since`/`until` stay anchored here when the scope is swapped
        try:
            flt = live_flow_filter(filters)
            scope = scope_for(principal)
            return _Opened(principal, filters, flt, scope, subscription_filter(flt, scope, now_ns), now_ns)
        except FilterValueError as exc:
            return _Refused(_unprocessable(exc.parameter, exc.value, str(exc)), str(exc))

    def watch(conn: HTTPConnection, principal: Any, opened: _Opened, sub: LiveSubscription) -> asyncio.Task[StreamEnd]:
        def widened(new_scope: Any) -> None:
            sub.accept = subscription_filter(opened.filter, new_scope, opened.now_ns)

        access = StreamAccess(principal, opened.scope, scope_for, reauthenticator(conn), widened, period)
        return asyncio.create_task(access.until_lost())

    @router.get(
        STREAM_PATH,
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "jsonpb flows as SSE events"},
            401: {"description": "no or bad credentials, or a token in the URL"},
            429: {"description": "too many failed authentications from this client (Retry-After)"},
        },
        summary="Live flows as Server-Sent Events",
        description=(
            "Flows as they are stored, filtered like /api/v1/flows and limited to the caller's scope (peers "
            "outside it redacted). Each `data:` event is one jsonpb GetFlowsResponse; an event named "
            '`missed` carries `{"missed": N}` when this client fell behind and N flows were dropped for it. '
            "Access is re-checked every few seconds (at most 5): when the token is revoked or the scope "
            'narrows, a last event named `closed` carries `{"closed": "revoked"|"narrowed"|"unverified", '
            '"detail": ...}` and the stream ends. The same path is a WebSocket (one text message per flow or '
            "gap; closed with code 1008 and the reason). Clients that cannot set headers pass a `ticket` "
            "from POST /api/v1/stream-tickets; tokens in URLs are refused."
        ),
    )
    @accepts_stream_tickets
    async def stream_sse(request: Request, opened: _Opened | _Refused = Depends(opening)) -> Any:
        if isinstance(opened, _Refused):
            return opened.response
        principal, filters = opened.principal, opened.filters
        sub = hub.subscribe(opened.accept, queue_flows)
        _log_opened("sse", principal, filters, hub.subscriber_count)
        lost = watch(request, principal, opened, sub)

        async def events() -> AsyncIterator[str]:
            try:
                yield ": netwarden live flows\n\n"  # flushes headers at once: the client knows it is subscribed
                while True:
                    getter = asyncio.ensure_future(sub.next_batch(timeout=keepalive_s))
                    await asyncio.wait({getter, lost}, return_when=asyncio.FIRST_COMPLETED)
                    if lost.done():  # checked first: rows queued under the old access are not sent
                        getter.cancel()
                        yield lost.result().sse_event()
                        return
                    batch = getter.result()
                    if batch is None:
                        return
                    if not batch:
                        yield ": keepalive\n\n"
                        continue
                    parts = []
                    for message in batch:
                        if isinstance(message, Missed):
                            parts.append(f"event: missed\ndata: {message.to_json()}\n\n")
                        else:
                            parts.append(f"data: {hub.text_of(message)}\n\n")
                    SENT.labels("sse").inc(len(batch))
                    yield "".join(parts)
            finally:
                lost.cancel()
                sub.close()
                _log_closed("sse", principal, sub)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @accepts_stream_tickets
    async def stream_ws(websocket: WebSocket, opened: _Opened | _Refused = Depends(opening)) -> None:
        if isinstance(opened, _Refused):
            await _reject(websocket, opened.response, opened.reason)
            return
        principal, filters = opened.principal, opened.filters
        # Subscribed before the handshake completes: a client that sees the connection open misses nothing.
        sub = hub.subscribe(opened.accept, queue_flows)
        try:
            await websocket.accept()
        except BaseException:
            sub.close()
            raise
        _log_opened("websocket", principal, filters, hub.subscriber_count)
        closed_by_client = asyncio.create_task(_wait_disconnect(websocket))
        lost = watch(websocket, principal, opened, sub)
        try:
            while not closed_by_client.done():
                getter = asyncio.ensure_future(sub.next_batch())
                await asyncio.wait({getter, closed_by_client, lost}, return_when=asyncio.FIRST_COMPLETED)
                if lost.done():  # checked first: rows queued under the old access are not sent
                    getter.cancel()
                    await websocket.close(code=WS_POLICY_VIOLATION, reason=lost.result().close_reason())
                    break
                if not getter.done():
                    getter.cancel()
                    break
                batch = getter.result()
                if batch is None:
                    await websocket.close()
                    break
                for message in batch:
                    text = message.to_json() if isinstance(message, Missed) else hub.text_of(message)
                    await websocket.send_text(text)
                SENT.labels("websocket").inc(len(batch))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away mid-send
        finally:
            lost.cancel()
            sub.close()
            _log_closed("websocket", principal, sub)
            closed_by_client.cancel()

    router.add_api_websocket_route(STREAM_PATH, stream_ws, name="stream_ws")
    return router


def _log_opened(transport: str, principal: Any, filters: Mapping[str, Any], subscribers: int) -> None:
    log.info(
        "live stream opened transport=%s principal=%s filters=%s subscribers=%d",
        transport,
        getattr(principal, "name", principal),
        json.dumps(dict(filters), default=str, sort_keys=True),
        subscribers,
    )


def _log_closed(transport: str, principal: Any, sub: LiveSubscription) -> None:
    log.info(
        "live stream closed transport=%s principal=%s delivered=%d missed=%d",
        transport,
        getattr(principal, "name", principal),
        sub.delivered,
        sub.missed_total,
    )


async def _wait_disconnect(websocket: WebSocket) -> None:
    # Clients send nothing; reading is how a close or a dropped connection is noticed.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


async def _reject(websocket: WebSocket, response: JSONResponse, reason: str) -> None:
    """Refuse the handshake with an HTTP response where the server supports it, else close 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=WS_POLICY_VIOLATION, reason=reason[:120])


__all__ = [
    "STREAM_PATH",
    "EnrichedTopicFeed",
    "LiveHub",
    "LiveMessage",
    "LiveSubscription",
    "Missed",
    "RowScope",
    "StoredRow",
    "decode_enriched",
    "flow_predicate",
    "live_flow_filter",
    "live_router",
    "stored_rows",
    "subscription_filter",
    "table_rows",
]

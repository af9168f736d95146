"""The query API: flow history over HTTP, health and Prometheus metrics.

Output formats of GET /api/v1/flows (every flow in hubble's jsonpb form, schemas.flow_render):
- `json` (default): `{"flows": [GetFlowsResponse, ...]}`, newest first;
- `ndjson`: one GetFlowsResponse per line, newest first;
- `jsonpb`: exactly what `hubble observe -o jsonpb` / `netwarden flows -o jsonpb` print: one compact
  GetFlowsResponse per line, the selected newest flows in time order (oldest first).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from query_api.flow_query import FilterValueError, FlowFilter
from query_api.metrics import QueryApiMetrics
from query_api.store import FlowStore
from schemas.flow_render import row_to_jsonpb

log = logging.getLogger("netwarden.query_api")

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
NDJSON = "application/x-ndjson"


def jsonpb_line(obj: dict[str, Any]) -> str:
    """One compact JSON line, like Go's json.Encoder used by `hubble observe -o jsonpb`."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _unprocessable(parameter: str, value: Any, message: str) -> JSONResponse:
    # Same shape as FastAPI's own validation errors, so clients handle one format.
    return JSONResponse(
        status_code=422,
        content={
            "detail": [{"loc": ["query", parameter], "msg": message, "type": "value_error", "input": value}]
        },
    )


def create_app(store: FlowStore, registry: CollectorRegistry | None = None) -> FastAPI:
    app = FastAPI(title="netwarden query API", version="1")
    metrics = QueryApiMetrics(registry)
    app.state.store = store
    app.state.metrics = metrics

    @app.middleware("http")
    async def record_metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.requests.labels(template, request.method, str(status)).inc()
            metrics.latency.labels(template, request.method).observe(time.perf_counter() - start)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/flows", response_model=None)
    async def get_flows(
        cluster: str | None = Query(None, description="cluster the flow was collected from"),
        namespace: str | None = Query(None, description="source or destination namespace"),
        pod: str | None = Query(None, description="[namespace/]pod-name prefix, either side"),
        verdict: str | None = Query(None, description="FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, ..."),
        protocol: str | None = Query(None, description="tcp, udp, sctp, icmp, icmpv4, icmpv6"),
        port: int | None = Query(None, ge=0, le=65535, description="source or destination port"),
        since: str | None = Query(None, description="RFC 3339 or a duration ago (5m, 2h, 1d)"),
        until: str | None = Query(None, description="RFC 3339 or a duration ago"),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="newest N matching flows"),
        format: Literal["json", "ndjson", "jsonpb"] = Query("json"),
    ) -> Response:
        flt = FlowFilter(
            cluster=cluster,
            namespace=namespace,
            pod=pod,
            verdict=verdict,
            protocol=protocol,
            port=port,
            since=since,
            until=until,
            last=limit,
        )

        def run() -> list[dict[str, Any]]:
            # Query and render off the event loop: the chDB client blocks, rendering is CPU work.
            return [row_to_jsonpb(row) for row in store.query_flows(flt)]

        try:
            flows = await run_in_threadpool(run)
        except FilterValueError as exc:
            return _unprocessable("limit" if exc.parameter == "last" else exc.parameter, exc.value, str(exc))
        except Exception:
            metrics.store_errors.inc()
            log.exception("flow history query failed")
            return JSONResponse(status_code=503, content={"detail": "flow store unavailable"})
        metrics.flows_returned.labels(format).inc(len(flows))
        if format == "json":
            return JSONResponse({"flows": flows})
        if format == "jsonpb":
            flows.reverse()
        body = "".join(jsonpb_line(f) + "\n" for f in flows)
        return Response(body, media_type=NDJSON)

    return app

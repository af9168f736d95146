"""The query API: role-scoped flow history and summaries over HTTP, tenancy listings, health and metrics.

Authentication: every route except /healthz needs a Principal from `principal_dependency` (a FastAPI
dependency; the composition root passes `query_api.auth.fastapi_dependency(authenticator)` or simply
`authenticator=`); without one configured, every protected route answers 401 (fail closed). /metrics is
public unless `metrics_dependency` is given. Authorization: any role binding may read; what it sees is
its ScopeFilter (query_api.scope), built from the tenancy snapshot `ownership()` on each request and
applied inside the SQL query.

Output formats of GET /api/v1/flows (every flow in hubble's jsonpb form, schemas.flow_render):
- `json` (default): `{"flows": [GetFlowsResponse, ...], "next_cursor": token or null}`, newest first; each
  flow also carries netwarden's enrichment under `netwarden` (schemas.flow_render.row_enrichment: each
  side's project/workspace, the desired and staged policy sets' verdicts with attribution when evaluated,
  `verdict_mismatch`), absent when there is none;
- `ndjson`: one GetFlowsResponse per line, newest first;
- `jsonpb`: exactly what `hubble observe -o jsonpb` / `netwarden flows -o jsonpb` print: one compact
  GetFlowsResponse per line, the selected newest flows in time order (oldest first).
For ndjson/jsonpb the next page's cursor is in the `X-Next-Cursor` header. `next_cursor` is set only when
more flows match: pass it as `cursor` (same filters) for the next, older page.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from policy_engine.roles import Ownership, PermissionDenied, Principal, Role
from query_api.flow_params import flow_filter
from query_api.flow_query import FilterValueError, FlowFilter, encode_cursor
from query_api.metrics import QueryApiMetrics
from query_api.scope import PROJECT_ROLES, WORKSPACE_ROLES, ScopeFilter
from query_api.store import FlowStore
from query_api.summary import DEFAULT_EDGES, DEFAULT_TOP, MAX_EDGES, MAX_TOP, parse_window, summarize
from schemas.clickhouse import CATALOG_TABLE
from schemas.flow_render import jsonpb_line, row_time_ns, row_to_json, row_to_jsonpb

log = logging.getLogger("netwarden.query_api")

DEFAULT_LIMIT = 100
RENDER_CACHE_SIZE = 20_000
MAX_LIMIT = 10_000
NDJSON = "application/x-ndjson"
NEXT_CURSOR_HEADER = "X-Next-Cursor"

PrincipalDependency = Callable[..., Any]


def _unprocessable(parameter: str, value: Any, message: str) -> JSONResponse:
    # Same shape as FastAPI's own validation errors, so clients handle one format.
    return JSONResponse(
        status_code=422,
        content={
            "detail": [{"loc": ["query", parameter], "msg": message, "type": "value_error", "input": value}]
        },
    )


# ---- response models (published in /openapi.json) -----------------------------------------------


class ErrorResponse(BaseModel):
    detail: str


class PermissionDeniedResponse(BaseModel):
    detail: str
    needed: str = Field(description="the role (and scope) the request needs")


class FlowsPage(BaseModel):
    flows: list[dict[str, Any]] = Field(
        description="GetFlowsResponse objects in hubble's jsonpb form, plus netwarden's enrichment under "
        "`netwarden` when there is any (project/workspace per side, desired/staged verdicts, verdict_mismatch)"
    )
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next (older) page")


class SummaryEndpoint(BaseModel):
    cluster: str
    namespace: str
    workload: str = Field(description="workload name, else reserved identity label, else pod; '' if redacted")


class SummaryBucket(BaseModel):
    start: str
    verdicts: dict[str, int]


class TopTalker(BaseModel):
    source: SummaryEndpoint
    destination: SummaryEndpoint
    flows: int


class DropReasonCount(BaseModel):
    reason: str
    flows: int


class DropPolicyCount(BaseModel):
    kind: str
    namespace: str
    name: str
    flows: int


class ServiceEdge(BaseModel):
    source: SummaryEndpoint
    destination: SummaryEndpoint
    port: int
    protocol: str
    flows: int
    verdicts: dict[str, int]


class VerdictMismatch(BaseModel):
    source: SummaryEndpoint
    destination: SummaryEndpoint
    port: int
    protocol: str
    verdict: str = Field(description="Hubble's verdict")
    desired_verdict: str = Field(description="netwarden's verdict under the cluster's desired policy set")
    desired_drop_reason: str
    egress_policy: str = Field(description="Kind/namespace/name of the policy that decided egress")
    egress_rule: str
    ingress_policy: str
    ingress_rule: str
    flows: int


class FlowSummary(BaseModel):
    since: str
    until: str
    bucket_seconds: float
    total: int
    buckets: list[SummaryBucket]
    top_talkers: list[TopTalker]
    drops_by_reason: list[DropReasonCount]
    drops_by_policy: list[DropPolicyCount]
    edges: list[ServiceEdge] = Field(
        description="requests only (replies would add the clients' ephemeral ports)"
    )
    edges_truncated: bool
    verdict_mismatches: list[VerdictMismatch] = Field(
        [], description="requests where Hubble's verdict differs from netwarden's desired one, biggest first"
    )
    rollup_minutes: int = Field(0, description="whole minutes of the window read from the per-minute rollups")


class NamespaceInfo(BaseModel):
    cluster: str
    namespace: str
    project: str = ""
    workspace: str = ""


class NamespaceList(BaseModel):
    namespaces: list[NamespaceInfo]


class WorkspaceNamespace(BaseModel):
    cluster: str
    namespace: str


class WorkspaceInfo(BaseModel):
    name: str
    project: str
    namespaces: list[WorkspaceNamespace]


class WorkspaceList(BaseModel):
    workspaces: list[WorkspaceInfo]


class ClusterInfo(BaseModel):
    name: str
    projects: list[str]


class ClusterList(BaseModel):
    clusters: list[ClusterInfo]


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no or bad credentials"},
    403: {"model": PermissionDeniedResponse, "description": "the caller's roles do not allow this"},
}


def _unauthenticated() -> Principal:
    raise HTTPException(401, "authentication is not configured on this server")


def _ownership_provider(ownership: Ownership | Callable[[], Ownership] | None) -> Callable[[], Ownership]:
    if ownership is None:
        return Ownership
    if isinstance(ownership, Ownership):
        return lambda: ownership
    return ownership


def create_app(
    store: FlowStore,
    registry: CollectorRegistry | None = None,
    *,
    principal_dependency: PrincipalDependency | None = None,
    authenticator: Any = None,
    ownership: Ownership | Callable[[], Ownership] | None = None,
    metrics_dependency: PrincipalDependency | None = None,
    live_hub: Any = None,
) -> FastAPI:
    """`principal_dependency` (a FastAPI dependency returning a Principal) or `authenticator` (a
    query_api.auth.Authenticator; /metrics then needs a token when NETWARDEN_METRICS_AUTH is set)
    authenticates; `ownership` is the tenancy snapshot (or a callable returning a fresh one: the
    control plane changes while the API runs). `live_hub` (query_api.live.LiveHub) adds the live
    stream routes under the same authentication and scope rule."""
    if authenticator is not None:
        from query_api import auth

        settings = auth.AuthSettings.from_env()
        if principal_dependency is None:
            principal_dependency = auth.fastapi_dependency(authenticator, settings)
        if metrics_dependency is None:
            metrics_dependency = auth.metrics_dependency(authenticator, settings)
    authenticate: PrincipalDependency = principal_dependency or _unauthenticated
    # Declares `Authorization: Bearer` in the OpenAPI document; checking it is authenticate's job.
    bearer = HTTPBearer(auto_error=False, description="netwarden API token or OIDC JWT")

    async def current_principal(
        principal: Principal = Depends(authenticate), _: Any = Depends(bearer)
    ) -> Principal:
        return principal

    tenancy = _ownership_provider(ownership)

    app = FastAPI(title="netwarden query API", version="1")
    metrics = QueryApiMetrics(registry)
    if authenticator is not None:
        authenticator.export_metrics(metrics.registry)  # netwarden_api_authentications_total on /metrics
    app.state.store = store
    app.state.metrics = metrics

    @app.exception_handler(PermissionDenied)
    async def permission_denied(_: Request, exc: PermissionDenied) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc), "needed": exc.needed})

    @app.exception_handler(FilterValueError)
    async def bad_filter(_: Request, exc: FilterValueError) -> JSONResponse:
        return _unprocessable("limit" if exc.parameter == "last" else exc.parameter, exc.value, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape, minus `ctx`/`url` which may hold non-JSON values (e.g. exceptions).
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type", "input")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": json.loads(json.dumps(errors, default=str))})

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

    # Stored flows never change, and a row's rendering depends only on which of its sides the caller's
    # scope hides: renderings are cached per (flow, hidden sides, format). Callers must not mutate them.
    render_cache: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
    render_lock = threading.Lock()

    def rendered(row: dict[str, Any], scope: ScopeFilter, enriched: bool) -> dict[str, Any]:
        key = (
            str(row["cluster"]),
            row_time_ns(row),
            str(row["uuid"]),
            scope.side_in_scope(row, "src"),
            scope.side_in_scope(row, "dst"),
            enriched,
        )
        with render_lock:
            hit = render_cache.get(key)
            if hit is not None:
                render_cache.move_to_end(key)
                return hit
        obj = row_to_json(row) if enriched else row_to_jsonpb(row)
        with render_lock:
            render_cache[key] = obj
            while len(render_cache) > RENDER_CACHE_SIZE:
                render_cache.popitem(last=False)
        return obj

    def reader_scope(principal: Principal, action: str) -> ScopeFilter:
        """Any role binding may read; the scope says what. No binding at all: 403."""
        if not principal.bindings:
            raise PermissionDenied(
                action, f"any role binding ({', '.join(r.value for r in Role)})", principal
            )
        return ScopeFilter.for_principal(principal, tenancy())

    async def in_thread(fn: Callable[[], Any]) -> Any:
        # The chDB client blocks and rendering is CPU work: keep both off the event loop.
        try:
            return await run_in_threadpool(fn)
        except FilterValueError:
            raise
        except Exception:
            metrics.store_errors.inc()
            log.exception("flow store query failed")
            raise HTTPException(503, "flow store unavailable") from None

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    metrics_deps = [Depends(metrics_dependency)] if metrics_dependency is not None else []

    @app.get("/metrics", dependencies=metrics_deps, response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/api/v1/flows",
        response_model=FlowsPage,
        responses={
            **AUTH_RESPONSES,
            200: {"content": {NDJSON: {"schema": {"type": "string"}}}},
            503: {"model": ErrorResponse},
        },
    )
    async def get_flows(
        flt: FlowFilter = Depends(flow_filter),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="newest N matching flows"),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
        format: Literal["json", "ndjson", "jsonpb"] = Query("json"),
        principal: Principal = Depends(current_principal),
    ) -> Response:
        scope = reader_scope(principal, "read flows")
        # One more than asked: tells whether another page exists without a count query.
        query = dataclasses.replace(flt, last=limit + 1, cursor=cursor)

        def run() -> tuple[list[dict[str, Any]], str | None]:
            rows = store.query_flows(query, scope=scope)
            next_cursor = None
            if len(rows) > limit:
                rows = rows[:limit]
                last = rows[-1]
                next_cursor = encode_cursor(row_time_ns(last), last["uuid"], str(last["cluster"]))
            return [rendered(row, scope, format == "json") for row in rows], next_cursor

        flows, next_cursor = await in_thread(run)
        metrics.flows_returned.labels(format).inc(len(flows))
        if format == "json":
            return JSONResponse({"flows": flows, "next_cursor": next_cursor})
        if format == "jsonpb":
            flows.reverse()
        body = "".join(jsonpb_line(f) + "\n" for f in flows)
        headers = {NEXT_CURSOR_HEADER: next_cursor} if next_cursor else None
        return Response(body, media_type=NDJSON, headers=headers)

    @app.get(
        "/api/v1/flows/summary",
        response_model=FlowSummary,
        responses={**AUTH_RESPONSES, 503: {"model": ErrorResponse}},
    )
    async def get_summary(
        flt: FlowFilter = Depends(flow_filter),
        bucket: str | None = Query(None, description="bucket width (10s, 1m, 1h); default: ~60 buckets"),
        top: int = Query(DEFAULT_TOP, ge=1, le=MAX_TOP, description="number of top talker pairs"),
        max_edges: int = Query(DEFAULT_EDGES, ge=1, le=MAX_EDGES, description="service-map edges at most"),
        principal: Principal = Depends(current_principal),
    ) -> JSONResponse:
        """Counts over the window since..until (default: the last hour), scope-filtered and redacted."""
        scope = reader_scope(principal, "read flow summaries")
        window = parse_window(flt.since, flt.until, bucket)
        body = await in_thread(lambda: summarize(store, flt, window, scope, top, max_edges))
        return JSONResponse(body)

    def stored_places(scope: ScopeFilter) -> set[tuple[str, str]]:
        """(cluster, namespace) of every endpoint ever stored that the scope may see (namespace '' for
        reserved identities): from the flow catalog, scoped in SQL."""
        where, params = "1", {}
        if not scope.everything:
            where, params = scope.place_in_scope_sql("namespace_cluster", "namespace"), scope.params()
        rows = store.run(
            f"SELECT DISTINCT namespace_cluster AS cl, namespace AS ns FROM {CATALOG_TABLE} WHERE {where}",
            params,
        )
        return {(str(r["cl"]), str(r["ns"])) for r in rows}

    @app.get("/api/v1/namespaces", response_model=NamespaceList, responses=AUTH_RESPONSES)
    async def list_namespaces(principal: Principal = Depends(current_principal)) -> dict[str, Any]:
        """Namespaces the caller sees: declared in workspaces or seen in flows, within the caller's scope."""
        scope = reader_scope(principal, "list namespaces")
        own = tenancy()
        owner = {
            (ref.cluster, ref.namespace): (own.workspace_project.get(ws, ""), ws)
            for ws, refs in own.workspace_namespaces.items()
            for ref in refs
        }
        seen = {p for p in await in_thread(lambda: stored_places(scope)) if p[1]}
        places = sorted({p for p in owner if scope.can_see_namespace(*p)} | seen)
        return {
            "namespaces": [
                {
                    "cluster": c,
                    "namespace": n,
                    "project": owner.get((c, n), ("", ""))[0],
                    "workspace": owner.get((c, n), ("", ""))[1],
                }
                for c, n in places
            ]
        }

    @app.get("/api/v1/workspaces", response_model=WorkspaceList, responses=AUTH_RESPONSES)
    async def list_workspaces(principal: Principal = Depends(current_principal)) -> dict[str, Any]:
        """Org roles: every workspace; project roles: their project's; workspace roles: their own."""
        scope = reader_scope(principal, "list workspaces")
        own = tenancy()
        projects = {b.scope_name for b in principal.roles(*PROJECT_ROLES)}
        workspaces = {b.scope_name for b in principal.roles(*WORKSPACE_ROLES)}
        out = []
        for name in sorted(own.workspace_project):
            project = own.workspace_project[name]
            refs = sorted(own.workspace_namespaces.get(name, frozenset()))
            if scope.everything or project in projects or name in workspaces:
                out.append(
                    {
                        "name": name,
                        "project": project,
                        "namespaces": [{"cluster": r.cluster, "namespace": r.namespace} for r in refs],
                    }
                )
        return {"workspaces": out}

    @app.get("/api/v1/clusters", response_model=ClusterList, responses=AUTH_RESPONSES)
    async def list_clusters(principal: Principal = Depends(current_principal)) -> dict[str, Any]:
        """Clusters the caller sees a namespace of: declared in projects/workspaces or seen in flows."""
        scope = reader_scope(principal, "list clusters")
        own = tenancy()
        # A cluster is seen when a place in it is (a project scope sees its clusters' reserved places).
        seen = {c for c, _ in await in_thread(lambda: stored_places(scope))}
        declared = set().union(*own.project_clusters.values()) if own.project_clusters else set()
        declared |= {r.cluster for refs in own.workspace_namespaces.values() for r in refs}
        names = sorted({c for c in declared if scope.can_see_cluster(c)} | seen)
        return {
            "clusters": [
                {"name": c, "projects": sorted(p for p, cs in own.project_clusters.items() if c in cs)}
                for c in names
            ]
        }

    if live_hub is not None and authenticator is not None:
        from query_api.auth import stream_ticket_router

        app.include_router(stream_ticket_router(authenticator, current_principal))
    if live_hub is not None:
        from query_api.live import live_router

        app.include_router(
            live_router(live_hub, current_principal, lambda p: ScopeFilter.for_principal(p, tenancy()))
        )
    from query_api.report_routes import app_router as report_router

    app.include_router(report_router(store, current_principal, authenticator))
    from query_api.policy_routes import app_router as policy_router

    app.include_router(policy_router(current_principal, authenticator))
    from query_api.why_routes import app_router as why_router

    app.include_router(why_router(store, current_principal, authenticator))
    from query_api.policy_traffic_routes import app_router as policy_traffic_router

    app.include_router(policy_traffic_router(store, current_principal, authenticator))
    # Last: /api/v1/policies/{name} must not shadow the fixed policy routes above.
    from query_api import admin_api, blueprint_api, policy_api

    for control_plane_api in (policy_api, blueprint_api, admin_api):
        app.include_router(control_plane_api.app_router(current_principal, authenticator))
    from query_api.console_routes import app_router as console_router

    app.include_router(console_router(current_principal, tenancy, authenticator))  # the web console at / and GET /api/v1/me
    return app

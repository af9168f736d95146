"""GET /api/v1/reports/validation: the validation report (query_api.report_data) as JSON or one HTML page.

Any role binding may read it; what it covers is the caller's scope (a workspace admin's report covers its
workspace, peers redacted as in flows). Parameters as `netwarden report validate`: cluster, namespace or
workspace, since (default 24h), until, live (ask the clusters' kube APIs, default true), format json|html.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from policy_engine.gitops import GitOpsErrors
from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import ControlPlaneStore, StoreError
from policy_engine.why import WhyInputError
from query_api.conversations import ConversationQueryError, HistoryParamError
from query_api.report_data import ReportParams, validation_report
from query_api.report_html import render_html
from query_api.store import FlowStore

# Errors that name the parameter, value and reason (answered 422).
PARAMETER_ERRORS = (HistoryParamError, WhyInputError)

# ---- response models (OpenAPI) --------------------------------------------------------------------------


class ReportWindow(BaseModel):
    since: str
    until: str


class DirectionCoverage(BaseModel):
    workloads: float | None = Field(description="share of the namespace's workloads some policy selects")
    workloads_selected: int
    workloads_total: int
    flows: float | None = Field(description="share of the namespace's flows in this direction some policy selects")
    flows_selected: int
    flows_total: int


class NamespaceReport(BaseModel):
    namespace: str
    workspace: str
    default_deny: dict[str, bool] = Field(description="ingress/egress: a pod of the namespace is isolated")
    coverage: dict[str, DirectionCoverage]
    workloads: list[dict[str, Any]] = []


class RuleUsage(BaseModel):
    policy: str = Field(description="netwarden policy the object was rendered from")
    version: int
    object: str = Field(description="rendered object Kind/namespace/name")
    netwarden_rule: str = ""
    direction: str
    rule: str = Field(description='rule as flows are attributed: "ingress[0]", "specs[1].egress[0]", ...')
    flows: int
    last_matched: str | None


class ClusterReport(BaseModel):
    cluster: str
    desired_set: dict[str, Any] | None
    kube: dict[str, Any] | None = Field(description="null when the kube API was not asked")
    conversations: int
    flows: int
    namespaces: list[NamespaceReport]
    not_in_effect: list[dict[str, Any]] = Field(
        description="forwarded conversations the desired set denies, per workload, with likely causes"
    )
    unexpected_drops: list[dict[str, Any]] = Field(description="dropped conversations the desired set allows")
    drops: dict[str, Any] = Field(description="by_reason, by_policy, top_conversations, buckets")
    rules: list[RuleUsage]
    unused_rules: list[RuleUsage]
    staged: list[dict[str, Any]] = Field(description="per staged policy: newly_denied, newly_allowed")
    health: dict[str, Any]


class ValidationReportModel(BaseModel):
    window: ReportWindow = Field(description="a duration ago is widened to whole hours; RFC 3339 times are exact")
    drops: dict[str, Any] = Field(description="all the report's clusters, from the rollups: by_reason, by_policy, "
                                  "buckets (flows per verdict over time)")
    clusters: list[ClusterReport]


# ---- the router --------------------------------------------------------------------------------------------


@dataclass
class HistoryRouteDeps:
    """What the history routes (report, why, what-if, recommend) need from the app: the flow store, the
    principal dependency, and the control-plane store (a context manager giving a store usable in the calling
    thread; None: the API has none)."""

    store: FlowStore
    current_principal: Callable[..., Any]
    control_plane: Callable[[], AbstractContextManager[ControlPlaneStore]] | None


ReportRouteDeps = HistoryRouteDeps


def unprocessable(parameter: str, value: Any, message: str) -> JSONResponse:
    """422 naming the parameter as FastAPI's own validation does (the request body: loc ["body"])."""
    loc = ["body"] if parameter == "body" else ["query", parameter]
    return JSONResponse(
        status_code=422, content={"detail": [{"loc": loc, "msg": message, "type": "value_error", "input": value}]}
    )


def _documents_refused(exc: GitOpsErrors) -> JSONResponse:
    """403 when the caller may not write a document (as `apply` refuses it), else 422; one line per problem."""
    lines = [str(e) for e in exc.errors]
    if exc.denied is not None:
        return JSONResponse(status_code=403, content={"detail": "\n".join(lines), "needed": exc.denied.needed})
    return JSONResponse(status_code=422, content={"detail": "\n".join(lines)})


async def answer(
    deps: HistoryRouteDeps,
    principal: Principal,
    action: str,
    work: Callable[[ControlPlaneStore], Any],
    respond: Callable[[Any], Any] = JSONResponse,
) -> Any:
    """`work(control-plane store)` in the threadpool, answered: `respond(result)`; a refusal 403; a named bad
    parameter, document or query 422; a store that fails 503."""
    if not principal.bindings:
        raise PermissionDenied(action, "any role binding", principal)
    opener = deps.control_plane
    if opener is None:
        raise HTTPException(503, "this API has no control-plane store: the answer needs the policy sets")

    def run() -> Any:
        # Refusals travel back as values: the threadpool must not turn them into 503s.
        try:
            with opener() as control:
                return work(control)
        except (PermissionDenied, *PARAMETER_ERRORS, GitOpsErrors, ConversationQueryError, StoreError) as exc:
            return exc

    try:
        result = await run_in_threadpool(run)
    except Exception:
        raise HTTPException(503, "flow store unavailable") from None
    if isinstance(result, PermissionDenied):
        raise result
    if isinstance(result, GitOpsErrors):
        return _documents_refused(result)
    if isinstance(result, PARAMETER_ERRORS):
        return unprocessable(result.parameter, result.value, result.reason)
    if isinstance(result, ConversationQueryError | StoreError):
        return unprocessable(str(result).split(":")[0], None, str(result))
    return respond(result)


def history_refusals(forbidden: str) -> dict[int | str, dict[str, Any]]:
    """The refusals a history route documents (OpenAPI `responses`); `forbidden`: when it answers 403."""
    return {
        401: {"description": "no or bad credentials"},
        403: {"description": forbidden},
        422: {"description": "a bad parameter, named"},
        503: {"description": "flow store unavailable"},
    }


def router(deps: Any) -> APIRouter:
    """`deps`: ReportRouteDeps, or the app's route dependencies with the same attributes."""
    api = APIRouter()

    @api.get(
        "/api/v1/reports/validation",
        response_model=ValidationReportModel,
        responses={
            200: {"content": {"text/html": {"schema": {"type": "string"}}}},
            **history_refusals("the caller's roles do not cover the namespace or workspace asked for"),
        },
    )
    async def get_validation_report(
        cluster: str | None = Query(None, description="only this cluster"),
        namespace: str | None = Query(None, description="only this namespace"),
        workspace: str | None = Query(None, description="only this workspace's namespaces"),
        since: str | None = Query(None, description="RFC 3339 or a duration ago (default 24h)"),
        until: str | None = Query(None, description="RFC 3339 or a duration ago (default now)"),
        live: bool = Query(True, description="ask the clusters' kube APIs (pods, drift)"),
        format: Literal["json", "html"] = Query("json"),
        principal: Principal = Depends(deps.current_principal),
    ) -> Any:
        params = ReportParams(cluster or None, namespace, workspace or None, since, until, live)
        return await answer(
            deps, principal, "reading the validation report",
            lambda control: validation_report(deps.store, control, principal, params),
            lambda report: HTMLResponse(render_html(report)) if format == "html" else JSONResponse(report),
        )

    return api


def app_router(store: FlowStore, current_principal: Callable[..., Any], authenticator: Any) -> APIRouter:
    """The route as create_app wires it: the control-plane store is the authenticator's tenancy store
    (each request opens its own connection to the same SQLite file). An app without one (no token
    authenticator, e.g. a test app) has no report route."""
    tenancy = getattr(authenticator, "tenancy", None)
    if tenancy is None:
        return APIRouter()  # no control plane, no policy sets: the API serves no report
    return router(ReportRouteDeps(store, current_principal, control_plane_of(tenancy.store)))


def control_plane_of(shared: ControlPlaneStore) -> Callable[[], AbstractContextManager[ControlPlaneStore]]:
    """Per-request stores on the file `shared` uses; an in-memory store is shared under a lock."""
    import threading
    from contextlib import contextmanager

    path = shared.sqlite_file()
    lock = threading.Lock()

    @contextmanager
    def opened() -> Iterator[ControlPlaneStore]:
        if not path:
            with lock:
                yield shared
            return
        store = ControlPlaneStore.on_sqlite(path)
        try:
            yield store
        finally:
            store.close()

    return opened


def store_opener(data_dir: str) -> Callable[[], AbstractContextManager[ControlPlaneStore]]:
    """A control-plane store per request (its own SQLite connection: the API's threads never share one)."""
    from contextlib import contextmanager

    @contextmanager
    def opened() -> Iterator[ControlPlaneStore]:
        store = ControlPlaneStore.open(data_dir)
        try:
            yield store
        finally:
            store.close()

    return opened

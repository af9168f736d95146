"""Policy meets traffic over HTTP: what-if of candidate documents and recommendations from history.

- `POST /api/v1/policies/what-if?since=7d&until=&cluster=&baseline=desired|observed`: the netwarden.io/v1
  documents in the body (YAML, multi-document, or JSON: one document or a list; `fromFile` rules refused),
  applied to a scratch copy of the control-plane store as the caller: a caller may only what-if documents it
  could write (403 naming the role otherwise, as `apply` would refuse them). Answers policy_engine.whatif's
  report: per affected cluster the observed conversations that would become denied and allowed.
  `baseline=observed` compares Hubble's verdicts with the resulting desired set instead of the current set
  (what `sync --check-history` asks: with no documents, "what would syncing the current set deny").
- `GET /api/v1/policies/recommendation?cluster=C&namespace=NS|workspace=W&since=7d&engine=auto`: least-privilege
  Policy and Assignment documents (policy_engine.recommend), every rule validated against the schemas.

Both read the window's history by conversation (query_api.conversations, one GROUP BY, scoped in SQL) and show
only conversations touching the caller's scope, peers outside it redacted as flows are. The gathering
functions (`what_if`, `recommendation`) are also what the CLI's local mode and `bench traffic` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import yaml
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from policy_engine.blueprints import cilium_enforces
from policy_engine.control_plane import ControlPlane, resolve_policy_set, validate_policy
from policy_engine.gitops import Document
from policy_engine.recommend import Form, Recommendation, recommend
from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.whatif import (
    WhatIfReport,
    candidate_policy_sets,
    compare,
    current_policy_sets,
    parse_documents,
)
from query_api.conversations import (
    HistoryParamError,
    HistoryWindow,
    history_window,
    read_conversations,
    redact_conversation,
)
from query_api.report_routes import HistoryRouteDeps, answer, control_plane_of
from query_api.scope import ScopeFilter
from query_api.store import FlowStore

DEFAULT_SINCE = "7d"
ENGINES = ("auto", "cilium", "kubernetes")
BASELINES = ("desired", "observed")


# One error and one window rule for every history question (query_api.conversations).
TrafficParamError = HistoryParamError
Window = HistoryWindow


def parse_window(since: str | None, until: str | None, now_ns: int | None = None) -> HistoryWindow:
    return history_window(since, until, now_ns, default_since=DEFAULT_SINCE)


# -- gathering ----------------------------------------------------------------------------------------------


def what_if(
    flows_client: Any,
    store: ControlPlaneStore,
    principal: Principal,
    documents: Sequence[Document] | None,
    window: Window,
    *,
    clusters: Sequence[str] | None = None,
    baseline: str = "desired",
) -> WhatIfReport:
    """Apply `documents` to `store` in a rolled-back transaction as `principal` (GitOpsErrors / PermissionDenied
    when it may not write them) and compare the window's conversations under each affected cluster's set before
    and after. `documents=None` or `baseline="observed"`: Hubble's verdicts are the before. Pass a store no one
    else uses meanwhile (scratch_copy in a server)."""
    if baseline not in BASELINES:
        raise TrafficParamError("baseline", baseline, f"expected one of {', '.join(BASELINES)}")
    cp = ControlPlane(store, principal)
    before: dict[str, Any]
    if documents is None or (baseline == "observed" and not documents):
        after = current_policy_sets(cp, clusters)
        before = dict.fromkeys(after)
    else:
        sets = candidate_policy_sets(cp, documents, clusters)
        after = dict(sets.after)
        before = dict.fromkeys(after) if baseline == "observed" else dict(sets.before)
    if not after:
        return WhatIfReport(())
    scope = ScopeFilter.for_principal(principal, store.ownership())
    conversations = read_conversations(
        flows_client, since=window.since, until=window.until, clusters=sorted(after), scope=scope, redact=False
    )
    redact = None if scope.everything else (lambda c: redact_conversation(c, scope))
    return compare(conversations, before, after, redact=redact)


def recommend_scope(
    store: ControlPlaneStore,
    principal: Principal,
    cluster: str,
    namespace: str | None,
    workspace: str | None,
    namespaces: Sequence[str] | None = None,
) -> list[str]:
    """The namespaces of the request on `cluster` (a namespace, a workspace's, or a list), each visible to the
    principal (PermissionDenied otherwise)."""
    if [namespace, workspace, namespaces].count(None) != 2:
        raise TrafficParamError("namespace", namespace, "exactly one of namespace or workspace")
    if store.get_cluster(cluster) is None:
        raise TrafficParamError("cluster", cluster, f"unknown cluster {cluster!r}")
    if namespaces is not None:
        for ns in namespaces:
            recommend_scope(store, principal, cluster, ns, None)
        return sorted(set(namespaces))
    if workspace is not None:
        ws = store.get_workspace(workspace)
        if ws is None:
            raise TrafficParamError("workspace", workspace, f"unknown workspace {workspace!r}")
        namespaces = sorted(r.namespace for r in ws.namespaces if r.cluster == cluster)
        if not namespaces:
            raise TrafficParamError("workspace", workspace, f"workspace {workspace} has no namespace on {cluster}")
    else:
        assert namespace is not None
        if not namespace or "/" in namespace:
            raise TrafficParamError("namespace", namespace, f"invalid namespace {namespace!r}")
        namespaces = [namespace]
    scope = ScopeFilter.for_principal(principal, store.ownership())
    for ns in namespaces:
        if not scope.can_see_namespace(cluster, ns):
            raise PermissionDenied(
                f"recommending policies for {cluster}/{ns}",
                "a role whose scope includes the namespace (org, its project or its workspace)", principal,
            )
    return namespaces


def recommendation_form(store: ControlPlaneStore, cluster: str, engine: str) -> Form:
    """cilium or kubernetes: forced, or (auto) what enforces on the cluster under its blueprint."""
    if engine not in ENGINES:
        raise TrafficParamError("engine", engine, f"expected one of {', '.join(ENGINES)}")
    if engine != "auto":
        return "cilium" if engine == "cilium" else "kubernetes"
    return "cilium" if cilium_enforces(resolve_policy_set(store, cluster).engine) else "kubernetes"


def recommendation(
    flows_client: Any,
    store: ControlPlaneStore,
    principal: Principal,
    window: Window,
    *,
    cluster: str,
    namespace: str | None = None,
    workspace: str | None = None,
    namespaces: Sequence[str] | None = None,
    engine: str = "auto",
) -> Recommendation:
    """Least-privilege documents for the namespace, workspace or namespaces on `cluster` from the window's
    conversations, each rule validated against the real schemas (a failure is a bug: it raises PolicyInvalid)."""
    namespaces = recommend_scope(store, principal, cluster, namespace, workspace, namespaces)
    form = recommendation_form(store, cluster, engine)
    scope = ScopeFilter.for_principal(principal, store.ownership())
    conversations = read_conversations(
        flows_client, since=window.since, until=window.until, clusters=[cluster], scope=scope,
        places=[(cluster, ns) for ns in namespaces],
    )
    result = recommend(conversations, cluster, namespaces, form)
    for spec in result.policies:
        validate_policy(spec)
    return result


@contextmanager
def scratch_copy(store: ControlPlaneStore) -> Iterator[ControlPlaneStore]:
    """A private in-memory copy of a SQLite control-plane store: a what-if in a server never holds a transaction
    on the file every request authenticates against (what_if rolls its writes back on the copy too). A store
    without a file (tests) is used as it is."""
    path = store.sqlite_file()
    if not path:
        yield store
        return
    source = ControlPlaneStore.on_sqlite(path)  # its own connection: `store` may be another thread's
    try:
        scratch = source.copy_in_memory()
    finally:
        source.close()
    try:
        yield scratch
    finally:
        scratch.close()


# -- the routes ----------------------------------------------------------------------------------------------


class PlaceModel(BaseModel):
    namespace: str
    workload: str = Field(description="workload name; reserved:NAME for reserved identities; '' if redacted")


class ConversationGroupModel(BaseModel):
    source: PlaceModel
    destination: PlaceModel
    port: int
    protocol: str
    flows: int
    first_seen: str
    last_seen: str


class ClusterChangesModel(BaseModel):
    cluster: str
    newly_denied: list[ConversationGroupModel]
    newly_allowed: list[ConversationGroupModel]


class WhatIfModel(BaseModel):
    clusters: list[ClusterChangesModel]


class RecommendationModel(BaseModel):
    documents: list[dict[str, Any]] = Field(description="netwarden.io/v1 Policy and Assignment documents")
    notes: list[str]
    conversations: int = Field(description="observed conversations the rules come from")


PolicyTrafficRouteDeps = HistoryRouteDeps


def _body_documents(body: bytes) -> list[Any]:
    """YAML (multi-document) or JSON: one document or a list of them."""
    try:
        return [d for d in yaml.safe_load_all(body.decode("utf-8")) if d is not None]
    except RecursionError:  # found by tests/fuzz: a 503 "flow store unavailable" before
        raise TrafficParamError("body", None, "not YAML or JSON: nested too deeply") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TrafficParamError("body", None, f"not YAML or JSON: {str(exc).splitlines()[0]}") from None


def router(deps: PolicyTrafficRouteDeps) -> APIRouter:
    api = APIRouter()
    errors = {
        401: {"description": "no or bad credentials"},
        403: {"description": "the caller may not write a document, or see the namespace"},
        422: {"description": "a bad parameter or document, named"},
        503: {"description": "flow store or control plane unavailable"},
    }

    @api.post(
        "/api/v1/policies/what-if",
        response_model=WhatIfModel,
        responses=errors,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
        }}},
    )
    async def post_what_if(
        request: Request,
        since: str | None = Query(None, description="RFC 3339 or a duration ago (default 7d)"),
        until: str | None = Query(None, description="RFC 3339 or a duration ago (default now)"),
        cluster: list[str] = Query([], description="only these clusters (repeatable)"),
        baseline: str = Query("desired", description="desired: the current set; observed: what Hubble saw"),
        principal: Principal = Depends(deps.current_principal),
    ) -> Any:
        """The observed conversations the documents would newly deny and allow, per affected cluster."""
        body = await request.body()

        def work(control: ControlPlaneStore) -> Any:
            window = parse_window(since, until)
            documents = parse_documents(_body_documents(body), "request body")
            with scratch_copy(control) as scratch:
                report = what_if(deps.store, scratch, principal, documents, window,
                                 clusters=cluster or None, baseline=baseline)
            return report.to_dict()

        return await answer(deps, principal, "replaying history", work)

    @api.get("/api/v1/policies/recommendation", response_model=RecommendationModel, responses=errors)
    async def get_recommendation(
        cluster: str = Query(..., description="the cluster whose traffic is learned from"),
        namespace: str | None = Query(None, description="this namespace"),
        workspace: str | None = Query(None, description="or this workspace's namespaces on the cluster"),
        since: str | None = Query(None, description="RFC 3339 or a duration ago (default 7d)"),
        until: str | None = Query(None, description="RFC 3339 or a duration ago (default now)"),
        engine: str = Query("auto", description="auto (the cluster's engine), cilium or kubernetes"),
        principal: Principal = Depends(deps.current_principal),
    ) -> Any:
        """Least-privilege Policy and Assignment documents from the observed traffic of the scope."""

        def work(control: ControlPlaneStore) -> Any:
            result = recommendation(deps.store, control, principal, parse_window(since, until),
                                    cluster=cluster, namespace=namespace, workspace=workspace, engine=engine)
            return {"documents": list(result.documents), "notes": list(result.notes),
                    "conversations": result.conversations}

        return await answer(deps, principal, "learning from history", work)

    return api


def app_router(store: FlowStore, current_principal: Callable[..., Any], authenticator: Any) -> APIRouter:
    """The routes as create_app wires them: the control-plane store is the authenticator's tenancy store; an
    app without one (a flow-only API) has no policy sets to replay history against, so no routes."""
    tenancy = getattr(authenticator, "tenancy", None)
    if tenancy is None:
        return APIRouter()
    return router(PolicyTrafficRouteDeps(store, current_principal, control_plane_of(tenancy.store)))


__all__ = [
    "DEFAULT_SINCE",
    "PolicyTrafficRouteDeps",
    "TrafficParamError",
    "Window",
    "app_router",
    "parse_window",
    "recommendation",
    "router",
    "scratch_copy",
    "what_if",
]

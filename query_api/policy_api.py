"""Policy routes beyond staging (query_api.policy_routes): one policy's documents, versions, rollback, write and
delete, and GitOps over HTTP: apply and diff of multi-document YAML, and the listings `netwarden get` prints.

Every call is the engine API as the token's principal (policy_engine.control_plane: one set of role rules for
the CLI and the API); errors as query_api.control_plane_http says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from policy_engine.cluster_sync import live_diff
from policy_engine.control_plane import ControlPlane
from policy_engine.gitops import (
    apply_documents,
    blueprint_document,
    diff_documents,
    policy_document,
    policy_documents,
)
from policy_engine.model import Assignment, Cluster, PolicySpec
from policy_engine.roles import Principal
from query_api.control_plane_http import (
    YAML_OR_JSON_BODY,
    ChangeBody,
    ControlPlaneCalls,
    DocumentBody,
    VersionConflict,
    change_body,
    deleting,
    documents_or_refusal,
    one_document,
    responses,
)

Resource = Literal["policies", "blueprints", "clusters", "assignments"]


class DocumentList(BaseModel):
    documents: list[DocumentBody]


class PolicyVersionEntry(BaseModel):
    version: int
    mode: str = Field(description="enforced or staged")
    createdAt: str  # as `netwarden policy history -o json` prints it
    createdBy: str
    source: str
    message: str
    hash: str
    spec: dict[str, Any]


class PolicyVersions(BaseModel):
    policy: str
    versions: list[PolicyVersionEntry]


class RollbackRequest(BaseModel):
    to_version: int = Field(ge=1, description="the version whose content becomes current, as a new version")


class PolicyWritten(BaseModel):
    policy: str
    version: int
    result: str = Field(description="created, updated or unchanged")


class RollbackResult(BaseModel):
    policy: str
    version: int = Field(description="the new current version")
    restored_from: int


class Deleted(BaseModel):
    kind: str
    name: str
    deleted: bool = Field(description="false: there was nothing to delete")


class ApplyResult(BaseModel):
    documents: int
    changes: list[ChangeBody]


class ObjectChangeBody(BaseModel):
    action: str = Field(description="create, update or delete")
    kind: str
    namespace: str
    name: str


class LiveDrift(BaseModel):
    notes: list[str] = []
    drift: list[dict[str, Any]] = []
    error: str | None = None


class ClusterDiff(BaseModel):
    cluster: str
    desired: list[ObjectChangeBody] = Field(description="changes of the cluster's desired objects")
    staged: list[ObjectChangeBody] | None = Field(None, description="the staged set's objects, where they differ")
    live: LiveDrift | None = Field(None, description="with live=true: what the next sync would change on the cluster")


class DiffResult(BaseModel):
    store: list[ChangeBody]
    clusters: list[ClusterDiff]


def cluster_document(c: Cluster, cp: ControlPlane) -> dict[str, Any]:
    """A Cluster document (`netwarden get clusters -o json`), with the engine and blueprint in effect."""
    spec = {k: v for k, v in c.to_content().items() if v not in (None, [])}
    policy_set = cp.policy_set(c.name)
    bp = policy_set.blueprint
    return {"apiVersion": "netwarden.io/v1", "kind": "Cluster", "metadata": {"name": c.name}, "spec": spec,
            "status": {"engine": policy_set.engine, "blueprint": bp.name if bp else None,
                       "blueprintVersion": bp.version if bp else None}}


def assignment_document(a: Assignment) -> dict[str, Any]:
    return {"apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": a.name}, "spec": a.to_content()}


def resource_documents(cp: ControlPlane, resource: str) -> list[dict[str, Any]]:
    """What `netwarden get RESOURCE -o json|yaml` prints, narrowed as the engine narrows listings."""
    if resource == "policies":
        return policy_documents(cp.list_policy_states())
    if resource == "blueprints":
        return [blueprint_document(b) for b in cp.list_blueprints()]
    if resource == "clusters":
        return [cluster_document(c, cp) for c in cp.list_clusters()]
    return [assignment_document(a) for a in cp.list_assignments()]


def policy_versions(cp: ControlPlane, name: str) -> list[dict[str, Any]]:
    """`netwarden policy history -o json`."""
    return [
        {"version": v.version, "mode": v.info.mode, "createdAt": v.info.created_at, "createdBy": v.info.created_by,
         "source": v.info.source, "message": v.info.message, "hash": v.spec.hash()[:12],
         "spec": policy_document(v)["spec"]}
        for v in cp.policy_history(name)
    ]


def diff_body(cp: ControlPlane, docs: Any, *, prune: bool, live: bool) -> dict[str, Any]:
    report = diff_documents(cp, docs, prune=prune)
    clusters = []
    for name, changes in report.clusters.items():
        live_state = live_diff(cp, docs, name, prune=prune) if live and name in report.rendered else None
        clusters.append({"cluster": name, "desired": [vars(c) for c in changes],
                         "staged": [vars(c) for c in report.staged[name]] if name in report.staged else None,
                         "live": live_state})
    return {"store": [change_body(c) for c in report.store], "clusters": clusters}


def router(current_principal: Callable[..., Any], tenancy: Any) -> APIRouter:
    api = APIRouter(tags=["policies"])
    run = ControlPlaneCalls(tenancy)

    @api.get("/api/v1/documents/{resource}", response_model=DocumentList, responses=responses(422))
    async def list_documents(resource: Resource, principal: Principal = Depends(current_principal)) -> Any:
        """The store's `netwarden.io/v1` documents of one kind, as `netwarden get RESOURCE -o json` prints them."""
        return await run(principal, lambda cp: {"documents": resource_documents(cp, resource)})

    @api.get("/api/v1/policies/{name}", response_model=DocumentBody, responses=responses(404, 422))
    async def get_policy(name: str, version: int | None = Query(None, ge=1, description="default: the current one"),
                         principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, lambda cp: policy_document(cp.get_policy(name, version)))

    @api.get("/api/v1/policies/{name}/versions", response_model=PolicyVersions, responses=responses(404))
    async def get_versions(name: str, principal: Principal = Depends(current_principal)) -> Any:
        """Every version, enforced and staged, oldest first (`netwarden policy history`)."""
        return await run(principal, lambda cp: {"policy": name, "versions": policy_versions(cp, name)})

    @api.post("/api/v1/policies/{name}/rollback", response_model=RollbackResult, responses=responses(404, 409, 422))
    async def rollback(name: str, request: RollbackRequest, principal: Principal = Depends(current_principal)) -> Any:
        """An old version's content becomes current, as a new version (history is never rewritten)."""
        def fn(cp: ControlPlane) -> Any:
            with cp.store.transaction():
                pv = cp.rollback_policy(name, request.to_version)
            return {"policy": name, "version": pv.version, "restored_from": request.to_version}

        return await run(principal, fn)

    @api.put("/api/v1/policies/{name}", response_model=PolicyWritten, responses=responses(409, 422),
             openapi_extra=YAML_OR_JSON_BODY)
    async def put_policy(
        name: str, request: Request,
        expected_version: int | None = Query(None, ge=0, description="refuse (409) unless the current enforced "
                                             "version is this one (0: the policy must not exist yet)"),
        principal: Principal = Depends(current_principal),
    ) -> Any:
        """Write one Policy document as a new enforced version (unchanged content writes nothing)."""
        docs = await documents_or_refusal(request)
        if not isinstance(docs, list):
            return docs

        def fn(cp: ControlPlane) -> Any:
            doc = one_document(docs, "Policy", name)
            assert isinstance(doc.model, PolicySpec)
            with cp.store.transaction():
                current = cp.store.get_policy(name)
                held = current.version if current else None
                if expected_version is not None and (held or 0) != expected_version:
                    raise VersionConflict(f"policy {name}", expected_version, held)
                if doc.staged:
                    pv, result = cp.stage_policy(doc.model, source="api")
                else:
                    pv, result = cp.put_policy(doc.model, source="api")
            return {"policy": name, "version": pv.version, "result": result}

        return await run(principal, fn)

    @api.delete("/api/v1/policies/{name}", response_model=Deleted, responses=responses(409))
    async def delete_policy(name: str, principal: Principal = Depends(current_principal)) -> Any:
        """Stops rendering and evaluating the policy; its versions stay for history. 409 while still used."""
        return await run(principal, deleting(
            "Policy", name, lambda cp: cp.store.get_policy(name) or cp.store.get_staged_policy(name),
            lambda cp: cp.delete_policy(name)))

    @api.post("/api/v1/apply", response_model=ApplyResult, responses=responses(422), openapi_extra=YAML_OR_JSON_BODY)
    async def apply(
        request: Request,
        prune: bool = Query(False, description="delete store objects the documents do not hold (never built-ins)"),
        dry_run: bool = Query(False, description="check and report, write nothing"),
        principal: Principal = Depends(current_principal),
    ) -> Any:
        """`netwarden apply`: the documents (YAML separated by `---`, or JSON) in one transaction, all or
        nothing; unchanged documents write nothing and need no write role."""
        docs = await documents_or_refusal(request)
        if not isinstance(docs, list):
            return docs
        return await run(principal, lambda cp: {
            "documents": len(docs),
            "changes": [change_body(c) for c in apply_documents(cp, docs, prune=prune, dry_run=dry_run)]})

    @api.post("/api/v1/diff", response_model=DiffResult, responses=responses(422), openapi_extra=YAML_OR_JSON_BODY)
    async def diff(
        request: Request,
        prune: bool = Query(False),
        live: bool = Query(True, description="also ask each reachable cluster what the next sync would change"),
        principal: Principal = Depends(current_principal),
    ) -> Any:
        """`netwarden diff`: what applying would change in the store, in each cluster's desired (and staged)
        objects and on the live clusters. Nothing is written."""
        docs = await documents_or_refusal(request)
        if not isinstance(docs, list):
            return docs
        return await run(principal, lambda cp: diff_body(cp, docs, prune=prune, live=live))

    return api


def app_router(current_principal: Callable[..., Any], authenticator: Any) -> APIRouter:
    tenancy = getattr(authenticator, "tenancy", None)
    return router(current_principal, tenancy) if tenancy is not None else APIRouter()


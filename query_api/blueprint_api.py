"""Blueprint, assignment and cluster routes: CRUD and versions, and per cluster its rendered objects, sync
status and drift, sync itself and the Cilium install profile (what `netwarden render|sync|install-profile`
do locally). `GET /api/v1/clusters` (query_api.app) lists the clusters the caller sees flows of; the cluster
definitions are `GET /api/v1/documents/clusters`.

Every call is the engine API as the token's principal (policy_engine.control_plane holds the role rules);
errors as query_api.control_plane_http says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from policy_engine.cluster_sync import install_profile_view, rendered_view, sync_cluster
from policy_engine.control_plane import ControlPlane
from policy_engine.gitops import blueprint_document
from policy_engine.model import Assignment, BlueprintSpec, Cluster
from policy_engine.roles import Principal
from policy_engine.store import StoreError
from query_api.control_plane_http import (
    YAML_OR_JSON_BODY,
    ControlPlaneCalls,
    DocumentBody,
    VersionConflict,
    deleting,
    documents_or_refusal,
    one_document,
    responses,
)
from query_api.policy_api import Deleted, DocumentList, assignment_document, cluster_document


class Written(BaseModel):
    kind: str
    name: str
    result: str = Field(description="created, updated or unchanged")
    version: int | None = Field(None, description="blueprints: the current version")


class RenderedObjects(BaseModel):
    cluster: str
    engine: str
    notes: list[str]
    objects: list[dict[str, Any]]


class SyncStatus(BaseModel):
    cluster: str
    status: str = Field(description="in-sync, drifted (status only), synced, errors (after a sync) or error")
    applied: bool = Field(description="true: objects were applied and pruned")
    engine: str
    objects: int
    notes: list[str]
    drift: list[dict[str, Any]] = Field(description="objects changed, missing or extra on the cluster")
    sync: dict[str, Any] | None = Field(None, description="after a sync: created, updated, unchanged, pruned, errors")
    unmanaged_pods: list[str] = Field(description="Cilium chaining: pods started before Cilium (not enforced)")
    restarted: list[str]
    error: str = Field(description="the cluster's API failed (or cannot be reached): why")


class InstallProfile(BaseModel):
    cluster: str
    type: str
    primary_cni: str
    engine: str
    notes: list[str]
    installs_nothing: bool
    helm_values: dict[str, Any]
    objects: list[dict[str, Any]]


def _blueprint(cp: ControlPlane, name: str, version: int | None = None) -> Any:
    cp.authorizer.require_read(cp.principal, f"reading blueprint {name}")
    bv = cp.store.get_blueprint(name, version)
    if bv is None:
        raise StoreError(f"no blueprint named {name!r}" + (f" with version {version}" if version else ""))
    return bv


def _cluster(cp: ControlPlane, name: str) -> Cluster:
    cluster = next((c for c in cp.list_clusters() if c.name == name), None)
    if cluster is None:  # unknown, or outside the caller's scope: the same answer
        raise StoreError(f"no cluster named {name!r}")
    return cluster


def router(current_principal: Callable[..., Any], tenancy: Any) -> APIRouter:
    api = APIRouter(tags=["blueprints and clusters"])
    run = ControlPlaneCalls(tenancy)

    async def put_document(request: Request, principal: Principal, kind: str, name: str,
                           write: Callable[[ControlPlane, Any], dict[str, Any]]) -> Any:
        docs = await documents_or_refusal(request)
        if not isinstance(docs, list):
            return docs

        def fn(cp: ControlPlane) -> Any:
            doc = one_document(docs, kind, name)
            with cp.store.transaction():
                return {"kind": kind, "name": name, **write(cp, doc.model)}

        return await run(principal, fn)

    # -- blueprints ---------------------------------------------------------------------------------------
    @api.get("/api/v1/blueprints", response_model=DocumentList, responses=responses())
    async def list_blueprints(principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, lambda cp: {"documents": [blueprint_document(b) for b in cp.list_blueprints()]})

    @api.get("/api/v1/blueprints/{name}", response_model=DocumentBody, responses=responses(404, 422))
    async def get_blueprint(name: str, version: int | None = Query(None, ge=1),
                            principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, lambda cp: blueprint_document(_blueprint(cp, name, version)))

    @api.get("/api/v1/blueprints/{name}/versions", response_model=DocumentList, responses=responses(404))
    async def blueprint_versions(name: str, principal: Principal = Depends(current_principal)) -> Any:
        def fn(cp: ControlPlane) -> Any:
            _blueprint(cp, name)
            return {"documents": [blueprint_document(b) for b in cp.store.blueprint_history(name)]}

        return await run(principal, fn)

    @api.put("/api/v1/blueprints/{name}", response_model=Written, responses=responses(409, 422),
             openapi_extra=YAML_OR_JSON_BODY)
    async def put_blueprint(name: str, request: Request,
                            expected_version: int | None = Query(None, ge=0, description="409 unless current"),
                            principal: Principal = Depends(current_principal)) -> Any:
        def write(cp: ControlPlane, spec: Any) -> dict[str, Any]:
            assert isinstance(spec, BlueprintSpec)
            current = cp.store.get_blueprint(name)
            if expected_version is not None and (current.version if current else 0) != expected_version:
                raise VersionConflict(f"blueprint {name}", expected_version, current.version if current else None)
            bv, result = cp.put_blueprint(spec, source="api")
            return {"result": result, "version": bv.version}

        return await put_document(request, principal, "Blueprint", name, write)

    @api.delete("/api/v1/blueprints/{name}", response_model=Deleted, responses=responses(409))
    async def delete_blueprint(name: str, principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, deleting("Blueprint", name, lambda cp: cp.store.get_blueprint(name),
                                             lambda cp: cp.delete_blueprint(name)))

    # -- assignments --------------------------------------------------------------------------------------
    @api.get("/api/v1/assignments", response_model=DocumentList, responses=responses())
    async def list_assignments(principal: Principal = Depends(current_principal)) -> Any:
        """Assignments touching the caller's scope."""
        return await run(principal, lambda cp: {"documents": [assignment_document(a) for a in cp.list_assignments()]})

    @api.put("/api/v1/assignments/{name}", response_model=Written, responses=responses(404, 409, 422),
             openapi_extra=YAML_OR_JSON_BODY)
    async def put_assignment(name: str, request: Request, principal: Principal = Depends(current_principal)) -> Any:
        def write(cp: ControlPlane, assignment: Any) -> dict[str, Any]:
            assert isinstance(assignment, Assignment)
            return {"result": cp.put_assignment(assignment)}

        return await put_document(request, principal, "Assignment", name, write)

    @api.delete("/api/v1/assignments/{name}", response_model=Deleted, responses=responses())
    async def delete_assignment(name: str, principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, deleting("Assignment", name, lambda cp: cp.store.get_assignment(name),
                                             lambda cp: cp.delete_assignment(name)))

    # -- clusters -----------------------------------------------------------------------------------------
    @api.get("/api/v1/clusters/{name}", response_model=DocumentBody, responses=responses(404))
    async def get_cluster(name: str, principal: Principal = Depends(current_principal)) -> Any:
        """The cluster's definition, with the engine and blueprint in effect."""
        return await run(principal, lambda cp: cluster_document(_cluster(cp, name), cp))

    @api.put("/api/v1/clusters/{name}", response_model=Written, responses=responses(409, 422),
             openapi_extra=YAML_OR_JSON_BODY)
    async def put_cluster(name: str, request: Request, principal: Principal = Depends(current_principal)) -> Any:
        def write(cp: ControlPlane, cluster: Any) -> dict[str, Any]:
            assert isinstance(cluster, Cluster)
            return {"result": cp.put_cluster(cluster)}

        return await put_document(request, principal, "Cluster", name, write)

    @api.delete("/api/v1/clusters/{name}", response_model=Deleted, responses=responses(409))
    async def delete_cluster(name: str, principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, deleting("Cluster", name, lambda cp: cp.store.get_cluster(name),
                                             lambda cp: cp.delete_cluster(name)))

    @api.get("/api/v1/clusters/{name}/render", response_model=RenderedObjects, responses=responses(404, 409))
    async def render(name: str, principal: Principal = Depends(current_principal)) -> Any:
        """The objects the cluster should hold (`netwarden render`), with notes."""
        return await run(principal, lambda cp: rendered_view(cp.render(name)))

    def sync_of(name: str, *, apply: bool, restart_unmanaged: bool = False) -> Callable[[ControlPlane], Any]:
        def fn(cp: ControlPlane) -> Any:
            cluster = cp.store.get_cluster(name)
            if cluster is None:
                raise StoreError(f"no cluster named {name!r}")
            if apply:
                cp.require_sync(name)
            else:
                cp.render(name)  # reading the status needs what rendering needs (the engine's rule)
            return sync_cluster(cp, cluster, apply=apply, restart_unmanaged=restart_unmanaged).to_dict()

        return fn

    @api.get("/api/v1/clusters/{name}/sync", response_model=SyncStatus, responses=responses(404, 409))
    async def sync_status(name: str, principal: Principal = Depends(current_principal)) -> Any:
        """Sync status and drift, read from the cluster's API; nothing is written."""
        return await run(principal, sync_of(name, apply=False))

    @api.post("/api/v1/clusters/{name}/sync", response_model=SyncStatus, responses=responses(404, 409))
    async def sync(name: str, restart_unmanaged: bool = Query(False, description="restart workloads whose pods "
                                                                                  "predate Cilium"),
                   principal: Principal = Depends(current_principal)) -> Any:
        """`netwarden sync --cluster NAME`: server-side apply of the desired objects, prune, drift, status."""
        return await run(principal, sync_of(name, apply=True, restart_unmanaged=restart_unmanaged))

    @api.get("/api/v1/clusters/{name}/install-profile", response_model=InstallProfile,
             responses=responses(404, 409, 422))
    async def install_profile(
        name: str,
        engine: Literal["cilium-chaining", "cilium-primary", "primary-cni"] | None = Query(
            None, description="override the engine of the cluster's blueprint"),
        principal: Principal = Depends(current_principal),
    ) -> Any:
        """Cilium's Helm values and CNI chaining objects for the cluster (409 with the support matrix's advice
        when the engine cannot run there)."""
        def fn(cp: ControlPlane) -> Any:
            _cluster(cp, name)
            return install_profile_view(cp, name, engine)

        return await run(principal, fn)

    return api


def app_router(current_principal: Callable[..., Any], authenticator: Any) -> APIRouter:
    tenancy = getattr(authenticator, "tenancy", None)
    return router(current_principal, tenancy) if tenancy is not None else APIRouter()


"""The web console: static assets (query_api/console/, vanilla JS, nothing fetched from elsewhere) at `/`, and
`GET /api/v1/me`, what the caller is and may write, so the console hides what the role may not do. The API
refuses those writes anyway: /me only mirrors policy_engine.roles.Authorizer, it grants nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from policy_engine.control_plane import ControlPlane
from policy_engine.roles import Authorizer, Ownership, PermissionDenied, Principal
from query_api.control_plane_http import ControlPlaneCalls

ASSETS = Path(__file__).with_name("console")
_MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# Only these files are served: nothing else of the package is reachable through the console route.
_FILES = {p.name: p for p in ASSETS.iterdir() if p.suffix in _MEDIA} if ASSETS.is_dir() else {}


class Binding(BaseModel):
    role: str
    scope_kind: str
    scope: str


class Me(BaseModel):
    name: str
    bindings: list[Binding]
    cluster_writes: list[str] = Field(description="clusters whose cluster-wide policies and sync the caller may write")
    namespace_writes: list[str] = Field(
        description="cluster/namespace pairs declared in workspaces whose namespace policies the caller may write"
    )
    may_write_policies: bool = Field(description="some policy (cluster-wide or namespace) is the caller's to write")
    may_administer: bool = Field(description="projects, users, bindings and tokens (org-admin)")


def permissions(principal: Principal, ownership: Ownership) -> dict[str, Any]:
    """The caller's write permissions as the engine's Authorizer decides them, place by place."""
    rules = Authorizer(ownership)

    def allowed(check: Callable[[], None]) -> bool:
        try:
            check()
        except PermissionDenied:
            return False
        return True

    clusters = sorted(set().union(*ownership.project_clusters.values()) if ownership.project_clusters else set())
    refs = sorted({r for refs in ownership.workspace_namespaces.values() for r in refs})
    cluster_writes = [c for c in clusters if allowed(lambda c=c: rules.require_cluster_write(principal, "", [c]))]
    namespace_writes = [
        f"{r.cluster}/{r.namespace}" for r in refs
        if allowed(lambda r=r: rules.require_namespace_write(principal, "", [r]))
    ]
    # An unassigned policy affects nothing: anyone who may write some policy somewhere may author one.
    may_author = allowed(lambda: rules.require_namespace_write(principal, "", [])) or allowed(
        lambda: rules.require_cluster_write(principal, "", [])
    ) or bool(cluster_writes)
    return {
        "name": principal.name,
        "bindings": [{"role": b.role.value, "scope_kind": b.scope_kind.value, "scope": b.scope_name}
                     for b in principal.bindings],
        "cluster_writes": cluster_writes,
        "namespace_writes": namespace_writes,
        "may_write_policies": may_author or bool(namespace_writes),
        "may_administer": allowed(lambda: rules.require_project_write(principal, "")),
    }


class PolicyWrites(BaseModel):
    policies: dict[str, bool] = Field(description="policy name -> whether the caller may write (edit, stage, "
                                      "promote, roll back) it where it is enforced now")


def policy_writes(cp: ControlPlane) -> dict[str, Any]:
    """Per policy, the engine's own write check (ControlPlane._require_policy_write: the places the policy is
    enforced through assignments and blueprints), asked without writing anything."""
    out = {}
    for version in cp.store.list_policies():
        try:
            # The engine keeps this rule private; reused here, not restated.
            cp._require_policy_write(version.spec.name, version.spec.scope, "")
        except PermissionDenied:
            out[version.spec.name] = False
        else:
            out[version.spec.name] = not version.builtin
    return {"policies": out}


def app_router(
    current_principal: Callable[..., Any], tenancy: Callable[[], Ownership], authenticator: Any = None
) -> APIRouter:
    router = APIRouter()
    control_plane = getattr(authenticator, "tenancy", None)
    if control_plane is not None:
        run = ControlPlaneCalls(control_plane)

        @router.get("/api/v1/me/policies", response_model=PolicyWrites,
                    responses={401: {"description": "no or bad credentials"}})
        async def my_policy_writes(principal: Principal = Depends(current_principal)) -> Any:
            return await run(principal, policy_writes)

    @router.get("/", include_in_schema=False)
    async def console_index() -> FileResponse:
        return _asset("index.html")

    @router.get("/console/{name}", include_in_schema=False)
    async def console_asset(name: str) -> FileResponse:
        return _asset(name)

    @router.get("/api/v1/me", response_model=Me,
                responses={401: {"description": "no or bad credentials"}})
    def me(principal: Principal = Depends(current_principal)) -> dict[str, Any]:
        # Sync: the tenancy snapshot reads SQLite, so FastAPI runs this off the event loop.
        return permissions(principal, tenancy())

    return router


def _asset(name: str) -> FileResponse:
    path = _FILES.get(name)
    if path is None:
        raise HTTPException(404, f"no console asset {name!r}")
    # no-cache: a console upgraded with the API is picked up on the next load.
    return FileResponse(path, media_type=_MEDIA[path.suffix], headers={"Cache-Control": "no-cache"})

"""Tenancy administration over HTTP (`netwarden admin ... --server`): projects and workspaces through the engine
API (projects: org-admin; workspaces: org-admin or the project's project-admin), users, role bindings and API
tokens for org-admins (the engine's org-admin rule, `Authorizer.require_project_write`). Every listing here is
what the matching `netwarden admin RESOURCE list -o json` prints (the CLI builds it with these functions too).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from policy_engine.control_plane import ControlPlane
from policy_engine.model import NamespaceRef, Project, Workspace
from policy_engine.roles import Principal, ScopeKind
from policy_engine.store import StoreError
from policy_engine.tenancy import Tenancy, TenancyError, parse_binding, parse_duration
from query_api.control_plane_http import BadInput, ControlPlaneCalls, deleting, responses
from query_api.policy_api import Deleted


class ProjectRequest(BaseModel):
    clusters: list[str] = Field(default=[], description="the project's clusters (they must exist)")
    description: str = ""


class WorkspaceRequest(BaseModel):
    project: str
    namespaces: list[str] = Field(default=[], description="CLUSTER/NAMESPACE, each in a cluster of the project")
    description: str = ""


class BindingRequest(BaseModel):
    user: str
    role: str = Field(description="org-admin, org-read-only, infra-admin, project-admin, ... workspace-read-only")
    scope: str = Field(default="org", description="'org', or the project or workspace the role binds to")


class TokenRequest(BaseModel):
    user: str
    expires: str = Field(default="never", description="a duration (30d, 12h, 2w) or 'never'")
    description: str = ""


class Written(BaseModel):
    kind: str
    name: str
    result: str = Field(description="created, updated or unchanged")


class ProjectInfo(BaseModel):
    name: str
    clusters: list[str]
    description: str
    workspaces: list[str]


class WorkspaceInfo(BaseModel):
    name: str
    project: str
    namespaces: list[dict[str, str]]
    description: str


class BindingInfo(BaseModel):
    user: str
    role: str
    scope_kind: str
    scope: str
    stale: bool = Field(description="its scope was deleted or re-created since: grants nothing")


class UserInfo(BaseModel):
    name: str
    created_at: str
    roles: list[dict[str, Any]]
    active_tokens: int


class TokenInfo(BaseModel):
    id: str
    user: str
    status: str = Field(description="active, expired or revoked")
    description: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class TokenCreated(BaseModel):
    id: str
    user: str
    token: str = Field(description="the secret, shown once: it is stored hashed")
    expires_at: str | None
    roles: list[str]


class Projects(BaseModel):
    projects: list[ProjectInfo]


class Workspaces(BaseModel):
    workspaces: list[WorkspaceInfo]


class Users(BaseModel):
    users: list[UserInfo]


class Bindings(BaseModel):
    bindings: list[BindingInfo]


class Tokens(BaseModel):
    tokens: list[TokenInfo]


class BindingDeleted(BaseModel):
    user: str
    role: str
    scope: str
    deleted: bool


def _time(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t is not None else None


def require_org_admin(cp: ControlPlane, action: str) -> None:
    """Users, bindings and tokens: the engine's org-admin rule (the one projects use)."""
    cp.authorizer.require_project_write(cp.principal, action)


def projects_view(cp: ControlPlane) -> list[dict[str, Any]]:
    workspaces = cp.list_workspaces()
    return [{"name": p.name, **p.to_content(), "workspaces": [w.name for w in workspaces if w.project == p.name]}
            for p in cp.list_projects()]


def workspaces_view(cp: ControlPlane) -> list[dict[str, Any]]:
    return [{"name": w.name, "project": w.project,
             "namespaces": [{"cluster": r.cluster, "namespace": r.namespace} for r in w.namespaces],
             "description": w.description} for w in cp.list_workspaces()]


def users_view(tenancy: Tenancy) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    bindings, tokens = tenancy.list_bindings(), tenancy.list_tokens()
    return [{"name": u.name, "created_at": u.created_at,
             "roles": [{"role": b.binding.role.value, "scope": b.scope, "stale": b.stale}
                       for b in bindings if b.user == u.name],
             "active_tokens": sum(1 for t in tokens if t.user == u.name and t.status(now) == "active")}
            for u in tenancy.list_users()]


def bindings_view(tenancy: Tenancy, user: str | None) -> list[dict[str, Any]]:
    if user is not None and tenancy.get_user(user) is None:
        raise StoreError(f"no user named {user!r}")
    return [{"user": b.user, "role": b.binding.role.value, "scope_kind": b.binding.scope_kind.value,
             "scope": b.scope, "stale": b.stale} for b in tenancy.list_bindings(user)]


def tokens_view(tenancy: Tenancy, user: str | None) -> list[dict[str, Any]]:
    if user is not None and tenancy.get_user(user) is None:
        raise StoreError(f"no user named {user!r}")
    now = datetime.now(UTC)
    return [{"id": t.id, "user": t.user, "status": t.status(now), "description": t.description,
             "created_at": _time(t.created_at), "expires_at": _time(t.expires_at),
             "revoked_at": _time(t.revoked_at), "last_used_at": _time(t.last_used_at)}
            for t in tenancy.list_tokens(user)]


def create_token(tenancy: Tenancy, user: str, expires: str, description: str) -> dict[str, Any]:
    token_id, secret = tenancy.create_token(user, parse_duration(expires), description=description)
    token = tenancy.get_token(token_id)
    assert token is not None
    return {"id": token_id, "user": user, "token": secret, "expires_at": _time(token.expires_at),
            "roles": [str(b) for b in tenancy.bindings(user)]}


def namespace_refs(values: list[str]) -> tuple[NamespaceRef, ...]:
    refs = set()
    for i, value in enumerate(values):
        cluster, sep, namespace = value.partition("/")
        if not sep or not cluster or not namespace or "/" in namespace:
            raise BadInput(f"expected CLUSTER/NAMESPACE, got {value!r}", "body", "namespaces", i)
        refs.add(NamespaceRef(cluster, namespace))
    return tuple(sorted(refs))


def router(current_principal: Callable[..., Any], tenancy: Any) -> APIRouter:
    api = APIRouter(prefix="/api/v1/admin", tags=["administration"])
    run = ControlPlaneCalls(tenancy)

    def as_org_admin(action: str, fn: Callable[[Tenancy], Any]) -> Callable[[ControlPlane], Any]:
        def call(cp: ControlPlane) -> Any:
            require_org_admin(cp, action)
            with cp.store.transaction():
                return fn(Tenancy(cp.store))

        return call

    # -- projects and workspaces (the engine's own rules) ------------------------------------------------
    @api.get("/projects", response_model=Projects, responses=responses())
    async def list_projects(principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, lambda cp: {"projects": projects_view(cp)})

    @api.put("/projects/{name}", response_model=Written, responses=responses(409, 422))
    async def put_project(name: str, body: ProjectRequest, principal: Principal = Depends(current_principal)) -> Any:
        def fn(cp: ControlPlane) -> Any:
            try:
                with cp.store.transaction():
                    result = cp.put_project(Project(name, tuple(sorted(set(body.clusters))), body.description))
            except StoreError as exc:
                if "unknown cluster" not in str(exc):
                    raise
                raise BadInput(str(exc), "body", "clusters") from None
            return {"kind": "Project", "name": name, "result": result}

        return await run(principal, fn)

    @api.delete("/projects/{name}", response_model=Deleted, responses=responses(409))
    async def delete_project(name: str, principal: Principal = Depends(current_principal)) -> Any:
        def delete(cp: ControlPlane) -> None:
            cp.delete_project(name)
            # A later project of the same name must not inherit old grants.
            Tenancy(cp.store).remove_scope_bindings(ScopeKind.PROJECT, name)

        return await run(principal, deleting("Project", name, lambda cp: cp.store.get_project(name), delete))

    @api.get("/workspaces", response_model=Workspaces, responses=responses())
    async def list_workspaces(principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, lambda cp: {"workspaces": workspaces_view(cp)})

    @api.put("/workspaces/{name}", response_model=Written, responses=responses(409, 422))
    async def put_workspace(name: str, body: WorkspaceRequest,
                            principal: Principal = Depends(current_principal)) -> Any:
        def fn(cp: ControlPlane) -> Any:
            workspace = Workspace(name, body.project, namespace_refs(body.namespaces), body.description)
            try:
                with cp.store.transaction():
                    result = cp.put_workspace(workspace)
            except StoreError as exc:  # the engine's words for a bad reference: name the field
                field = "project" if "unknown project" in str(exc) else "namespaces" if "of namespace" in str(exc) else ""
                if not field:
                    raise
                raise BadInput(str(exc), "body", field) from None
            return {"kind": "Workspace", "name": name, "result": result}

        return await run(principal, fn)

    @api.delete("/workspaces/{name}", response_model=Deleted, responses=responses(409))
    async def delete_workspace(name: str, principal: Principal = Depends(current_principal)) -> Any:
        def delete(cp: ControlPlane) -> None:
            if cp.store.get_workspace(name) is not None:  # the engine checks roles only for one that exists
                cp.delete_workspace(name)
                Tenancy(cp.store).remove_scope_bindings(ScopeKind.WORKSPACE, name)

        return await run(principal, deleting("Workspace", name, lambda cp: cp.store.get_workspace(name), delete))

    # -- users, bindings, tokens (org-admin) -----------------------------------------------------------------
    @api.get("/users", response_model=Users, responses=responses())
    async def list_users(principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, as_org_admin("listing users", lambda t: {"users": users_view(t)}))

    @api.put("/users/{name}", response_model=Written, responses=responses(422))
    async def put_user(name: str, principal: Principal = Depends(current_principal)) -> Any:
        def fn(t: Tenancy) -> Any:
            try:
                return {"kind": "User", "name": name, "result": t.create_user(name)}
            except TenancyError as exc:
                raise BadInput(str(exc), "path", "name") from None

        return await run(principal, as_org_admin(f"creating user {name}", fn))

    @api.delete("/users/{name}", response_model=Deleted, responses=responses(404))
    async def delete_user(name: str, principal: Principal = Depends(current_principal)) -> Any:
        def fn(t: Tenancy) -> Any:
            t.delete_user(name)
            return {"kind": "User", "name": name, "deleted": True}

        return await run(principal, as_org_admin(f"deleting user {name}", fn))

    @api.get("/bindings", response_model=Bindings, responses=responses(404))
    async def list_bindings(user: str | None = Query(None), principal: Principal = Depends(current_principal)) -> Any:
        return await run(principal, as_org_admin("listing role bindings", lambda t: {
            "bindings": bindings_view(t, user)}))

    @api.post("/bindings", response_model=Written, responses=responses(404, 422))
    async def create_binding(body: BindingRequest, principal: Principal = Depends(current_principal)) -> Any:
        def fn(t: Tenancy) -> Any:
            result = t.add_binding(body.user, body.role, body.scope)
            return {"kind": "RoleBinding", "name": f"{body.user}: {parse_binding(body.role, body.scope)}",
                    "result": result}

        return await run(principal, as_org_admin(f"granting {body.role} to {body.user}", fn))

    @api.delete("/bindings", response_model=BindingDeleted, responses=responses(404, 422))
    async def delete_binding(user: str = Query(...), role: str = Query(...), scope: str = Query("org"),
                             principal: Principal = Depends(current_principal)) -> Any:
        def fn(t: Tenancy) -> Any:
            t.remove_binding(user, role, scope)
            return {"user": user, "role": role, "scope": scope, "deleted": True}

        return await run(principal, as_org_admin(f"removing {role} from {user}", fn))

    @api.get("/tokens", response_model=Tokens, responses=responses(404))
    async def list_tokens(user: str | None = Query(None), principal: Principal = Depends(current_principal)) -> Any:
        """Token metadata; never a secret."""
        return await run(principal, as_org_admin("listing API tokens", lambda t: {"tokens": tokens_view(t, user)}))

    @api.post("/tokens", response_model=TokenCreated, responses=responses(404, 422))
    async def post_token(body: TokenRequest, principal: Principal = Depends(current_principal)) -> Any:
        """A new API token for the user; the secret is in this answer only."""
        return await run(principal, as_org_admin(f"creating a token for {body.user}", lambda t: create_token(
            t, body.user, body.expires, body.description)))

    @api.delete("/tokens/{token_id}", response_model=Deleted, responses=responses(404))
    async def revoke_token(token_id: str, principal: Principal = Depends(current_principal)) -> Any:
        def fn(t: Tenancy) -> Any:
            t.revoke_token(token_id)
            return {"kind": "ApiToken", "name": token_id, "deleted": True}

        return await run(principal, as_org_admin(f"revoking token {token_id}", fn))

    return api


def app_router(current_principal: Callable[..., Any], authenticator: Any) -> APIRouter:
    tenancy = getattr(authenticator, "tenancy", None)
    return router(current_principal, tenancy) if tenancy is not None else APIRouter()

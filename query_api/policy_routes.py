"""Policy routes: list policies with their enforced and staged versions, stage, promote and unstage.

- `GET /api/v1/policies`: every policy with its versions in effect and mode (any role binding reads: the policy
  catalogue is org-wide, as in `netwarden get policies`).
- `POST /api/v1/policies/stage`: the body holds `netwarden.io/v1` documents, YAML (several separated by `---`)
  or JSON (one document, a list, or `{"documents": [...]}`); every Policy document is staged (evaluated on
  flows and in reports, never rendered to clusters), as `netwarden policy stage -f FILE` does. 422 names the
  document and field of bad input; 403 when the caller's roles do not cover writing a policy.
- `POST /api/v1/policies/{name}/promote`: the staged version becomes the enforced one, as a new version.
- `DELETE /api/v1/policies/{name}/staged`: the staged version is no longer evaluated.
Role rules are the control plane's, exactly as for writing the policy (ControlPlane._require_policy_write);
the principal comes from the token. Writes land in the inventory outbox in the same transaction, so the stream
evaluates the new staged set as soon as the publisher sends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from policy_engine.gitops import Change, GitOpsErrors, parse_documents, policy_documents, stage_documents
from policy_engine.model import PolicyState, PolicyVersion
from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import StoreError

MAX_BODY = 4 * 1024 * 1024

# ---- response models (OpenAPI) ----------------------------------------------------------------------------


class PolicyVersionInfo(BaseModel):
    version: int
    mode: str = Field(description="enforced (rendered to clusters) or staged (evaluated only)")
    created_at: str
    created_by: str
    source: str
    message: str


class PolicyInfo(BaseModel):
    name: str
    scope: str
    builtin: bool
    mode: str = Field(description="enforced, staged (a new policy staged only) or enforced+staged")
    enforced: PolicyVersionInfo | None
    staged: PolicyVersionInfo | None


class PolicyList(BaseModel):
    policies: list[PolicyInfo]
    documents: list[dict[str, Any]] | None = Field(
        None, description="with documents=true: the netwarden.io/v1 documents (a staged version has spec.mode staged)"
    )


class ChangeInfo(BaseModel):
    kind: str
    name: str
    action: str = Field(description="stage, unchanged, create, update (documents other than policies)")
    detail: str


class StageResult(BaseModel):
    changes: list[ChangeInfo]


class PromoteResult(BaseModel):
    policy: str
    version: int = Field(description="the new enforced version")
    promoted_from: int = Field(description="the staged version it copies")


class UnstageResult(BaseModel):
    policy: str
    unstaged_version: int


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or bad credentials"},
    403: {"description": "the caller's roles do not allow writing this policy: `detail` and `needed` say why"},
}


def _version(pv: PolicyVersion | None) -> dict[str, Any] | None:
    if pv is None:
        return None
    i = pv.info
    return {"version": i.version, "mode": i.mode, "created_at": i.created_at, "created_by": i.created_by,
            "source": i.source, "message": i.message}


def _policy(state: PolicyState) -> dict[str, Any]:
    mode = "+".join(m for m, v in (("enforced", state.enforced), ("staged", state.staged)) if v is not None)
    return {"name": state.name, "scope": state.scope, "builtin": state.builtin, "mode": mode,
            "enforced": _version(state.enforced), "staged": _version(state.staged)}


def _change(c: Change) -> dict[str, Any]:
    return {"kind": c.kind, "name": c.name, "action": c.action, "detail": c.detail}


def _documents_of(body: bytes, content_type: str) -> list[Any]:
    """YAML or JSON documents from a request body. Raises ValueError naming the problem."""
    if not body.strip():
        raise ValueError("the body holds no documents")
    if "json" in content_type:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"invalid JSON: {exc}") from None
        except RecursionError:  # found by tests/fuzz: a 500 before
            raise ValueError("invalid JSON: nested too deeply") from None
        if isinstance(data, dict) and "documents" in data:
            data = data["documents"]
        return data if isinstance(data, list) else [data]
    try:
        return list(yaml.safe_load_all(body.decode("utf-8")))
    except RecursionError:  # found by tests/fuzz: a 500 before
        raise ValueError("invalid YAML: nested too deeply") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def _unprocessable(msg: str, *loc: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}]})


def _refusal(result: Any) -> JSONResponse | None:
    """The HTTP answer for a refusal the control plane returned; None for a result."""
    if isinstance(result, PermissionDenied):
        return JSONResponse(status_code=403, content={"detail": str(result), "needed": result.needed})
    if isinstance(result, GitOpsErrors):
        if result.denied is not None:
            return JSONResponse(status_code=403, content={"detail": str(result), "needed": result.denied.needed})
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": ["body", f"document {e.ref.index}", *([e.field] if e.field else [])], "msg": str(e),
             "type": "value_error"} for e in result.errors]})
    if isinstance(result, StoreError):
        status = 404 if "no policy named" in str(result) or "no staged version" in str(result) else 409
        return JSONResponse(status_code=status, content={"detail": str(result)})
    return None


def router(current_principal: Callable[..., Any], tenancy: Any) -> APIRouter:
    """`tenancy`: policy_engine.tenancy.Tenancy (its control_plane(principal) opens the engine API per request);
    None: the routes answer 503."""
    api = APIRouter()

    async def run(fn: Callable[[Any], Any], principal: Principal) -> Any:
        if tenancy is None:
            raise HTTPException(503, "this API has no control-plane store")

        def call() -> Any:
            # Refusals travel back as values so the threadpool never turns them into 500s.
            try:
                with tenancy.control_plane(principal) as cp:
                    return fn(cp)
            except (PermissionDenied, GitOpsErrors, StoreError) as exc:
                return exc

        result = await run_in_threadpool(call)
        return _refusal(result) or result

    @api.get("/api/v1/policies", response_model=PolicyList, responses=_ERRORS)
    async def list_policies(documents: bool = False, principal: Principal = Depends(current_principal)) -> Any:
        def fn(cp: Any) -> Any:
            states = cp.list_policy_states()
            body: dict[str, Any] = {"policies": [_policy(s) for s in states]}
            if documents:
                body["documents"] = policy_documents(states)
            return body

        return await run(fn, principal)

    @api.post(
        "/api/v1/policies/stage",
        response_model=StageResult,
        responses={**_ERRORS, 422: {"description": "bad documents: each problem names the document and field"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        }}},
    )
    async def stage(request: Request, principal: Principal = Depends(current_principal)) -> Any:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
        try:
            docs = parse_documents(_documents_of(body, request.headers.get("content-type", "")), "request")
        except ValueError as exc:  # GitOpsErrors too
            return _refusal(exc) or _unprocessable(str(exc))
        if not any(d.kind == "Policy" for d in docs):
            return _unprocessable("no Policy document to stage")
        return await run(lambda cp: {"changes": [_change(c) for c in stage_documents(cp, docs)]}, principal)

    @api.post("/api/v1/policies/{name}/promote", response_model=PromoteResult,
              responses={**_ERRORS, 404: {"description": "no such policy, or nothing staged"}})
    async def promote(name: str, principal: Principal = Depends(current_principal)) -> Any:
        def fn(cp: Any) -> Any:
            with cp.store.transaction():
                staged = cp.store.get_staged_policy(name)
                pv = cp.promote_policy(name)
            return {"policy": name, "version": pv.version, "promoted_from": staged.version if staged else 0}

        return await run(fn, principal)

    @api.delete("/api/v1/policies/{name}/staged", response_model=UnstageResult,
                responses={**_ERRORS, 404: {"description": "no such policy, or nothing staged"}})
    async def unstage(name: str, principal: Principal = Depends(current_principal)) -> Any:
        def fn(cp: Any) -> Any:
            with cp.store.transaction():
                pv = cp.unstage_policy(name)
            return {"policy": name, "unstaged_version": pv.version}

        return await run(fn, principal)

    return api


def app_router(current_principal: Callable[..., Any], authenticator: Any) -> APIRouter:
    """The routes as create_app wires them: the control plane is the authenticator's tenancy store; an app
    without one (a flow-only API) has no policy routes."""
    tenancy = getattr(authenticator, "tenancy", None)
    return router(current_principal, tenancy) if tenancy is not None else APIRouter()

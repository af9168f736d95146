"""What the control-plane routers (policy_api, cluster_api, admin_api) share: running the engine API
(policy_engine.control_plane.ControlPlane, which holds every role rule) as the token's principal in a worker
thread, reading `netwarden.io/v1` documents from a body, and turning the engine's refusals into HTTP answers:

- 403 `{"detail", "needed"}`: PermissionDenied (the role needed, as the engine words it);
- 422 `{"detail": [{"loc", "msg", "type"}]}`: bad input, `loc` naming the document and field (or parameter);
- 404 `{"detail"}`: no such policy, version, blueprint, cluster, user, token...;
- 409 `{"detail"}`: the store's state refuses it (a version conflict, still in use, built in, not renderable).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from policy_engine.cluster_sync import InstallUnsupported
from policy_engine.control_plane import ControlPlane, PolicyInvalid
from policy_engine.gitops import Change, Document, GitOpsErrors, parse_documents
from policy_engine.render import RenderError
from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import StoreError
from query_api.policy_routes import MAX_BODY, _documents_of, _refusal

# The store's words for "there is no such thing" (everything else it refuses is a conflict with its state).
_NOT_FOUND = re.compile(r"\bno (\w+ )?(named|with id)\b|\bunknown cluster\b|\bhas no (staged )?version\b")


class ErrorBody(BaseModel):
    detail: str


class DeniedBody(BaseModel):
    detail: str
    needed: str = Field(description="the role (and scope) the request needs")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='where: ["body", "document 2", "spec.scope"] or ["query", "engine"]')
    msg: str
    type: str


class InvalidBody(BaseModel):
    detail: list[FieldError]


class Conflict(BaseModel):
    detail: str
    current_version: int | None = Field(None, description="on a version conflict: the version the store holds")


class DocumentBody(BaseModel):
    """A `netwarden.io/v1` document (as `netwarden get ... -o json` prints it), with `status` where known."""

    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    spec: dict[str, Any]
    status: dict[str, Any] | None = None


class ChangeBody(BaseModel):
    kind: str
    name: str
    action: str = Field(description="create, update, unchanged, delete, stage or unstage")
    detail: str


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI shapes of the 4xx answers a route gives."""
    shapes: dict[int, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "no or bad credentials"},
        403: {"model": DeniedBody, "description": "the caller's roles do not allow this; `needed` names the role"},
        404: {"model": ErrorBody, "description": "no such object (or version)"},
        409: {"model": Conflict, "description": "conflicts with the store's state (e.g. a version conflict)"},
        422: {"model": InvalidBody, "description": "bad input: `loc` names the document and field or parameter"},
        503: {"model": ErrorBody, "description": "this API has no control-plane store"},
    }
    return {c: shapes[c] for c in (401, 403, 503, *codes)}


YAML_OR_JSON_BODY = {"requestBody": {"required": True, "content": {
    "application/yaml": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object"}},
}}}


class VersionConflict(Exception):
    """409: the caller's expected version is not the one stored (someone wrote in between)."""

    def __init__(self, what: str, expected: int, current: int | None) -> None:
        self.current = current
        held = f"is at version {current}" if current is not None else "does not exist"
        super().__init__(f"{what} {held}, not version {expected} (expected_version): read it again and retry")


class BadInput(ValueError):
    """422 naming where the bad value is."""

    def __init__(self, message: str, *loc: str | int) -> None:
        self.loc = loc
        super().__init__(message)


def unprocessable(message: str, *loc: str | int) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{"loc": list(loc), "msg": message, "type": "value_error"}]})


def refusal(exc: Exception) -> JSONResponse:
    """The HTTP answer for an engine refusal (see the module docstring)."""
    if isinstance(exc, VersionConflict):
        return JSONResponse(status_code=409, content={"detail": str(exc), "current_version": exc.current})
    if isinstance(exc, BadInput):
        return unprocessable(str(exc), *exc.loc)
    if isinstance(exc, PolicyInvalid):
        return unprocessable(str(exc), "body", f"spec.rules[{exc.rule_index}].{exc.rule_kind}.{exc.path}")
    if isinstance(exc, (PermissionDenied, GitOpsErrors)):
        answer = _refusal(exc)
        assert answer is not None
        return answer
    if isinstance(exc, StoreError):
        text = str(exc)
        head, sep, _ = text.partition(": ")
        if sep and head in ("scope", "expires", "role"):  # tenancy input naming its field
            return unprocessable(text, "body", head)
        return JSONResponse(status_code=404 if _NOT_FOUND.search(text) else 409, content={"detail": text})
    if isinstance(exc, (RenderError, InstallUnsupported)):
        return JSONResponse(status_code=409, content={"detail": str(exc)})
    return unprocessable(str(exc), "body")  # ValueError: e.g. an unknown role


REFUSALS = (PermissionDenied, GitOpsErrors, StoreError, PolicyInvalid, RenderError, InstallUnsupported,
            VersionConflict, BadInput, ValueError)


class ControlPlaneCalls:
    """Runs `fn(cp)` for one request in a worker thread (SQLite never on the event loop), `cp` the engine API
    as the request's principal; a refusal comes back as its HTTP answer."""

    def __init__(self, tenancy: Any) -> None:
        self.tenancy = tenancy  # policy_engine.tenancy.Tenancy, or None: every route answers 503

    async def __call__(self, principal: Principal, fn: Callable[[ControlPlane], Any]) -> Any:
        if self.tenancy is None:
            raise HTTPException(503, "this API has no control-plane store")

        def call() -> Any:
            # Refusals travel back as values so the threadpool never turns them into 500s.
            try:
                with self.tenancy.control_plane(principal) as cp:
                    return fn(cp)
            except REFUSALS as exc:
                return exc

        result = await run_in_threadpool(call)
        return refusal(result) if isinstance(result, Exception) else result


async def body_documents(request: Request) -> list[Document]:
    """The `netwarden.io/v1` documents of a YAML or JSON body (parsed, not yet applied). Raises GitOpsErrors or
    BadInput; `fromFile` rules are refused (the CLI sends them inline). A JSON body `{"documents": [...],
    "sources": [...]}` names where each document came from (recorded with the versions it writes, as a local
    apply records `file#index@commit`)."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    content_type = request.headers.get("content-type", "")
    try:
        raw = _documents_of(body, content_type)
    except ValueError as exc:
        raise BadInput(str(exc), "body") from None
    docs = parse_documents(raw, "request")
    sources = _sources(body, content_type, len(raw))
    return [replace(d, source=sources[d.ref.index - 1]) for d in docs] if sources else docs


def _sources(body: bytes, content_type: str, count: int) -> list[str] | None:
    if "json" not in content_type:
        return None
    data = json.loads(body)  # parsed once already: it is valid
    sources = data.get("sources") if isinstance(data, dict) else None
    if sources is None:
        return None
    if not isinstance(sources, list) or len(sources) != count or not all(isinstance(s, str) for s in sources):
        raise BadInput(f"expected one string per document ({count}), found {str(sources)[:80]}", "body", "sources")
    return [s[:500] for s in sources]


def one_document(docs: list[Document], kind: str, name: str) -> Document:
    """The single document of `kind` named `name` a PUT holds. Raises BadInput naming the field."""
    if len(docs) != 1:
        raise BadInput(f"expected one {kind} document, found {len(docs)}", "body")
    doc = docs[0]
    if doc.kind != kind:
        raise BadInput(f"expected kind {kind}, found {doc.kind}", "body", "kind")
    if doc.name != name:
        raise BadInput(f"metadata.name {doc.name!r} differs from the path's {name!r}", "body", "metadata.name")
    return doc


async def documents_or_refusal(request: Request) -> list[Document] | JSONResponse:
    try:
        return await body_documents(request)
    except (GitOpsErrors, BadInput) as exc:
        return refusal(exc)


def deleting(kind: str, name: str, find: Callable[[ControlPlane], Any],
             delete: Callable[[ControlPlane], Any]) -> Callable[[ControlPlane], dict[str, Any]]:
    """A DELETE route's work: `delete(cp)` in one transaction (the engine checks roles, also for what is
    absent), answering whether `find(cp)` found anything to delete."""
    def fn(cp: ControlPlane) -> dict[str, Any]:
        with cp.store.transaction():
            found = find(cp) is not None
            delete(cp)
        return {"kind": kind, "name": name, "deleted": found}

    return fn


def change_body(c: Change) -> dict[str, Any]:
    return {"kind": c.kind, "name": c.name, "action": c.action, "detail": c.detail}

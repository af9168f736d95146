"""The CLI's one HTTP client for a netwarden API (`--server URL --token T`, or NETWARDEN_SERVER and
NETWARDEN_TOKEN): every command that asks the API sends its requests through `ApiClient`, so authentication,
timeouts and the reading of the API's refusals (401/403/404/409/422 as one line each, document problems named
by the file and document they came from) are written once.

With a server the token decides the role: `--as-role/--scope` act only locally (`scope_flags_refused`).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netwarden.cli import CommandError

SERVER_ENV = "NETWARDEN_SERVER"
TOKEN_ENV = "NETWARDEN_TOKEN"
API_TIMEOUT_S = 120.0

_REQUEST_DOCUMENT = re.compile(r"^request: document (\d+)", re.MULTILINE)


def server_of(args: argparse.Namespace) -> str | None:
    """--server, else NETWARDEN_SERVER unless --data-dir says local."""
    return getattr(args, "server", None) or (None if getattr(args, "data_dir", None) else os.environ.get(SERVER_ENV))


def scope_flags_refused(args: argparse.Namespace) -> None:
    if getattr(args, "as_role", None) or getattr(args, "scope", None):
        raise CommandError("--as-role/--scope act locally; with --server the token decides the role")


@dataclass
class ApiClient:
    server: str
    token: str | None = None
    # Where each document of the request body came from ("file: document 2"), to name it in refusals.
    sources: Sequence[str] = field(default_factory=tuple)

    @classmethod
    def of(cls, args: argparse.Namespace, server: str | None = None) -> ApiClient:
        server = server or server_of(args)
        assert server, "the caller checked that there is a server"
        return cls(server, getattr(args, "token", None) or os.environ.get(TOKEN_ENV))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiClient | None:
        """The client when the command asks an API (refusing --as-role/--scope then), None for local mode."""
        server = server_of(args)
        if not server:
            return None
        scope_flags_refused(args)
        return cls.of(args, server)

    def send(self, method: str, path: str, **kwargs: Any) -> Any:
        """The 200 response (an httpx.Response), or the API's refusal as a CommandError."""
        import httpx

        headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        base = self.server if "://" in self.server else f"http://{self.server}"
        try:
            with httpx.Client(base_url=base.rstrip("/"), headers=headers, timeout=API_TIMEOUT_S) as client:
                response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CommandError(f"--server {self.server}: {exc}") from None
        if response.status_code == 200:
            return response
        raise self.refusal(response)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The 200 response's JSON."""
        return self.send(method, path, **kwargs).json()

    def refusal(self, response: Any) -> CommandError:
        """One CommandError for a refusal; document problems one per line, named by their source."""
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text.strip()[:200]}
        detail = body.get("detail") if isinstance(body, Mapping) else body
        status = response.status_code
        if isinstance(detail, list) and detail and all(isinstance(d, Mapping) for d in detail):
            return CommandError("\nnetwarden: ".join(self._named(self._field_error(d)) for d in detail))
        text = self._named(str(detail))
        what = {401: "the server refused the token", 403: "permission denied"}.get(status)
        if what is None:
            return CommandError(text if status in (400, 404, 409, 422) else f"server error {status}: {text}")
        lines = text.split("\n")  # the API's own message often starts with the same words: say them once
        return CommandError("\nnetwarden: ".join(ln if what in ln.lower() else f"{what}: {ln}" for ln in lines))

    def _field_error(self, item: Mapping[str, Any]) -> str:
        """A parameter as its flag; a body field named once (the engine's messages often name it already)."""
        from netwarden.commands.flows import _flag

        loc = [str(x) for x in item.get("loc") or []]
        msg = str(item.get("msg", "invalid value"))
        if loc and loc[0] in ("query", "path"):
            return f"{_flag(loc[-1])}: {msg}"
        field = ".".join(x for x in loc[1:] if not x.startswith("document "))
        return msg if not field or field in msg else f"{field}: {msg}"

    def _named(self, text: str) -> str:
        """'request: document 2' -> where document 2 of the body came from."""
        def source(m: re.Match[str]) -> str:
            i = int(m.group(1)) - 1
            return self.sources[i] if 0 <= i < len(self.sources) else m.group(0)

        return _REQUEST_DOCUMENT.sub(source, text)


def wire_documents(docs: Sequence[Any]) -> tuple[dict[str, Any], list[str]]:
    """Parsed gitops Documents as an API request's JSON body (`{"documents", "sources"}`: the server records
    each document's `file#index@commit` as a local apply does), and where each came from ("file: document N")
    for naming them in refusals. Serialized from the parsed models, so `fromFile` rules travel inline (the
    server reads no files)."""
    from policy_engine.model import PolicySpec

    out: list[dict[str, Any]] = []
    for doc in docs:
        spec = {k: v for k, v in doc.model.to_content().items() if k != "name"}
        if isinstance(doc.model, PolicySpec):
            spec["rules"] = [{"name": r.name, r.kind: dict(r.spec)} for r in doc.model.rules]
            if doc.mode:
                spec["mode"] = doc.mode
        out.append({"apiVersion": "netwarden.io/v1", "kind": doc.kind, "metadata": {"name": doc.name},
                    "spec": _without_empty(spec)})
    body = {"documents": out, "sources": [d.source for d in docs]}
    return body, [f"{d.ref.file}: document {d.ref.index}" if d.ref.index else d.ref.file for d in docs]


def _without_empty(spec: dict[str, Any]) -> dict[str, Any]:
    # None means "not given" to the parser; an empty description is its default.
    return {k: v for k, v in spec.items() if v is not None and not (k == "description" and v == "")}

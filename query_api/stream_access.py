"""Access that does not go stale: a live stream re-checks its caller while it runs.

A stream is authorized once when it opens; a revoked token, a removed role binding or a workspace that
lost a namespace would otherwise keep streaming until the client disconnects. `StreamAccess` re-runs the
authentication of the credential the stream was opened with (query_api.auth.reauthenticator: the bearer
token, or the token behind a stream ticket) and rebuilds the scope every `recheck_s` (4.5 s, so a stream
ends within 5 s of a revocation; `NETWARDEN_STREAM_RECHECK_S` or `live_router(recheck_s=)` sets it, at
most 5 s). Outcomes:

- credential refused (revoked, expired, deleted user, OIDC user without a role) or no role binding left:
  the stream ends, reason `revoked`;
- the scope narrowed (it no longer covers everything the stream was showing): the stream ends, reason
  `narrowed`. Not silently continued with the narrower filter: a user watching a stream would otherwise
  see flows stop without a word. The client may reconnect and gets the current scope;
- the scope widened: the stream goes on with the wider scope (nothing the caller sees is taken away);
- the check itself failed (control-plane store or OIDC issuer unreachable) `UNVERIFIED_LIMIT` times in a
  row: the stream ends, reason `unverified` (fail closed, but not on one hiccup).

A WebSocket is closed with code 1008 and the reason `access <reason>: <detail>`; an SSE stream gets a
last event named `closed` with `{"closed": reason, "detail": ...}` and ends. Rows queued for the client
when the stream ends are dropped, not delivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from query_api.auth import AuthError

log = logging.getLogger("netwarden.query_api.live")

RECHECK_ENV = "NETWARDEN_STREAM_RECHECK_S"
MAX_RECHECK_S = 5.0
# Below the 5 s promise by the time a check takes (a few ms; the store may be slower under load).
DEFAULT_RECHECK_S = 4.5
UNVERIFIED_LIMIT = 3
WS_POLICY_VIOLATION = 1008

RECHECKS = Counter("netwarden_live_access_rechecks_total", "Re-checks of a live stream's credential and scope")
ENDED = Counter(
    "netwarden_live_streams_ended_total",
    "Live streams ended by the server because access changed (revoked, narrowed, unverified)",
    ["reason"],
)


def recheck_period(value: float | None = None, environ: Mapping[str, str] = os.environ) -> float:
    """`value`, else NETWARDEN_STREAM_RECHECK_S, else 4.5 s; must lie in (0, 5]."""
    if value is None:
        text = environ.get(RECHECK_ENV, "").strip()
        try:
            value = float(text) if text else DEFAULT_RECHECK_S
        except ValueError:
            raise ValueError(f"{RECHECK_ENV}: expected seconds (0 < s <= 5), got {text!r}") from None
    if not 0 < value <= MAX_RECHECK_S:
        raise ValueError(f"{RECHECK_ENV}: expected seconds (0 < s <= {MAX_RECHECK_S:g}), got {value!r}")
    return value


@dataclass(frozen=True)
class StreamEnd:
    """Why the server ended a stream."""

    reason: Literal["revoked", "narrowed", "unverified"]
    detail: str

    def close_reason(self) -> str:
        # A WebSocket close reason is at most 123 bytes of UTF-8.
        return f"access {self.reason}: {self.detail}".encode()[:123].decode(errors="ignore")

    def sse_event(self) -> str:
        return f"event: closed\ndata: {json.dumps({'closed': self.reason, 'detail': self.detail})}\n\n"


class StreamAccess:
    """One stream's principal and scope, kept current. `on_widened(scope)` is called (from the event loop)
    when the scope grew, so the subscription can filter with it."""

    def __init__(
        self,
        principal: Any,
        scope: Any,
        scope_for: Callable[[Any], Any],
        reauthenticate: Callable[[], Any] | None,
        on_widened: Callable[[Any], None],
        every_s: float,
    ) -> None:
        self.principal = principal
        self.scope = scope
        self._scope_for = scope_for
        self._reauthenticate = reauthenticate
        self._on_widened = on_widened
        self.every_s = every_s
        self._unverified = 0

    def check(self) -> tuple[StreamEnd | None, Any]:
        """One re-check (blocking: store lookups): (end, None) or (None, the scope now)."""
        RECHECKS.inc()
        try:
            principal = self._reauthenticate() if self._reauthenticate is not None else self.principal
            if getattr(principal, "bindings", None) == ():
                return StreamEnd("revoked", f"user {principal.name!r} has no role binding left"), None
            scope = self._scope_for(principal)
        except AuthError as exc:
            if exc.status in (401, 403):
                return StreamEnd("revoked", exc.detail), None
            return self._failed(exc.detail), None
        except Exception as exc:  # the store or the issuer is unreachable: not the caller's doing
            log.warning("live stream: re-checking access failed", exc_info=True)
            return self._failed(f"{type(exc).__name__}: {exc}"), None
        self._unverified = 0
        self.principal = principal
        if scope == self.scope:
            return None, scope
        covers = getattr(scope, "covers", None)
        if callable(covers) and covers(self.scope):
            return None, scope
        return StreamEnd("narrowed", "the caller's scope changed; reconnect to stream within the current scope"), None

    def _failed(self, detail: str) -> StreamEnd | None:
        self._unverified += 1
        if self._unverified < UNVERIFIED_LIMIT:
            return None
        return StreamEnd("unverified", f"could not re-check access {self._unverified} times: {detail}")

    async def until_lost(self) -> StreamEnd:
        """Re-checks every `every_s` until access is lost; returns why. On a fixed schedule: a slow check
        does not push the next one later."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.every_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            end, scope = await run_in_threadpool(self.check)
            if end is not None:
                ENDED.labels(end.reason).inc()
                log.info(
                    "live stream ended principal=%s reason=%s detail=%s",
                    getattr(self.principal, "name", self.principal),
                    end.reason,
                    end.detail,
                )
                return end
            if scope is not None and scope != self.scope:
                self.scope = scope
                self._on_widened(scope)

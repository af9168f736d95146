"""Stream tickets (query_api.auth): browsers cannot set headers on an EventSource or a WebSocket, so they trade
their bearer credential for a single-use ticket at `POST /api/v1/stream-tickets` and pass it as `?ticket=`."""

from __future__ import annotations

import collections
import datetime
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from policy_engine.roles import Principal
from query_api.auth_error import AuthError

if TYPE_CHECKING:
    from query_api.auth import Authenticator

STREAM_TICKETS_PATH = "/api/v1/stream-tickets"
TICKET_PARAM = "ticket"
TICKET_PREFIX = "nwst_"  # not TOKEN_PREFIX + "_": a ticket is never mistaken for an API token


@dataclass(frozen=True)
class StreamTicket:
    principal: str
    credential: str  # the Authorization header that asked for the ticket (never sent back)
    expires_at: float  # on the tickets' clock


class StreamTickets:
    """Short-lived single-use tickets for the live stream routes (browsers cannot set headers there).

    Held in this process's memory, by SHA-256: with several API replicas, a client redeems a ticket at
    the replica that issued it (session affinity). At most `max_tickets` outstanding; the oldest is dropped
    first (the client just asks again)."""

    def __init__(
        self,
        ttl_s: float = 60.0,
        *,
        max_tickets: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_tickets = max_tickets
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._tickets: collections.OrderedDict[str, StreamTicket] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, principal: str, credential: str) -> tuple[str, datetime.datetime]:
        """(ticket, expiry as a UTC time)."""
        ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            while self._tickets:  # issued in order, so expired ones are at the front
                oldest = next(iter(self._tickets.values()))
                if oldest.expires_at > now and len(self._tickets) < self.max_tickets:
                    break
                self._tickets.popitem(last=False)
            self._tickets[_digest(ticket)] = StreamTicket(principal, credential, now + self.ttl_s)
        expires = datetime.datetime.fromtimestamp(self._wall_clock() + self.ttl_s, datetime.UTC)
        return ticket, expires

    def redeem(self, ticket: str) -> StreamTicket:
        """The ticket's grant, once: it is gone afterwards. AuthError when unknown, used or expired."""
        with self._lock:
            found = self._tickets.pop(_digest(ticket), None)
        if found is None:
            raise AuthError("invalid stream ticket: unknown or already used (a ticket is good for one stream)")
        if found.expires_at <= self._clock():
            raise AuthError(f"invalid stream ticket: expired (a ticket is valid {self.ttl_s:g} s)")
        return found


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class StreamTicketResponse(BaseModel):
    ticket: str = Field(description=f"pass as ?{TICKET_PARAM}= to GET /api/v1/flows/stream (SSE or WebSocket)")
    expires_at: str = Field(description="RFC 3339 UTC; the ticket is good for one stream opened before then")


def stream_ticket_router(
    authenticator: Authenticator, principal_dependency: Callable[..., Any]
) -> APIRouter:
    """`POST /api/v1/stream-tickets`: the caller's bearer credential -> a single-use stream ticket."""
    router = APIRouter()

    @router.post(
        STREAM_TICKETS_PATH,
        status_code=201,
        response_model=StreamTicketResponse,
        summary="A short-lived ticket for the live stream",
        description=(
            "For clients that cannot set headers on an EventSource or a WebSocket (browsers): the ticket "
            "authenticates one live stream as the caller, is valid about a minute, and works nowhere else. "
            "Tokens in URLs are refused."
        ),
    )
    async def create_stream_ticket(request: Request, principal: Principal = Depends(principal_dependency)) -> Any:
        # Only the header authenticates here (no ticket, no URL token): it is the credential to bind.
        credential = request.headers.get("authorization") or ""
        ticket, expires = authenticator.tickets.issue(principal.name, credential)
        return {"ticket": ticket, "expires_at": expires.isoformat(timespec="seconds").replace("+00:00", "Z")}

    return router

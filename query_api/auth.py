"""Authentication for the query API: `Authorization: Bearer <token>` with a netwarden API token or,
when configured, an OIDC ID/access token (a JWT) from a trusted issuer.

Pure logic first (`Authenticator.authenticate(header) -> Principal`, raising `AuthError`); the
FastAPI glue (`fastapi_dependency`, `metrics_dependency`) is a thin shell around it.

OIDC: the JWT's signature is checked against the issuer's JWKS (inline, from `jwks_url`, or found
through `<issuer>/.well-known/openid-configuration`), only with RS256/ES256 and only with the
algorithm the key is for (no "alg" confusion), then `iss`, `aud`, `exp` and `nbf`. Roles come from a
claim mapped by configuration, e.g.

    {"issuer": "https://id.example.com", "audience": "netwarden",
     "username_claim": "email",
     "roles": {"claim": "groups", "map": {
         "platform-team": {"role": "org-admin", "scope": "org"},
         "shop-devs": [{"role": "workspace-admin", "scope": "shop-team"}]}}}

and, unless `use_stored_bindings` is false, from role bindings stored for the same user name (so an
org admin can grant an SSO user a role with `netwarden admin binding create`).

No credential in a URL (URLs end up in access logs, proxies and browser history): `?token=` and
`?access_token=` are refused on every route. Browsers, which cannot set headers on an EventSource or a
WebSocket, get a stream ticket instead (`POST /api/v1/stream-tickets` with the bearer token): single use,
valid `StreamTickets.ttl_s` (60 s), accepted as `?ticket=` only on routes marked `accepts_stream_tickets`
(the live stream). A ticket is bound to the principal and to the credential that asked for it: redeeming
it re-checks that credential, and a stream opened with it is re-checked through the same credential.

Guessing is slowed down: a client (remote address) whose presented credentials were refused
`FailureThrottle.max_failures` times within `window_s` gets 429 with Retry-After, whatever it presents,
until the oldest failure leaves the window. Memory is bounded (`max_clients` addresses).

`netwarden_api_authentications_total{method,result}` counts attempts; the app exports it on its
/metrics (`Authenticator.export_metrics`).

Parts beside this module: query_api.oidc (OIDC configuration and keys), query_api.stream_tickets, and
query_api.auth_error (AuthError).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Depends, HTTPException, WebSocketException
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from prometheus_client import CollectorRegistry, Counter
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from policy_engine.roles import Principal
from policy_engine.tenancy import TOKEN_PREFIX, Tenancy
from query_api.auth_error import AuthError as AuthError
from query_api.oidc import OIDC_CONFIG_ENV as OIDC_CONFIG_ENV
from query_api.oidc import SUPPORTED_ALGORITHMS as SUPPORTED_ALGORITHMS
from query_api.oidc import ClaimRoleMapping as ClaimRoleMapping
from query_api.oidc import JWKSCache, OIDCConfig
from query_api.oidc import OIDCConfigError as OIDCConfigError
from query_api.stream_tickets import STREAM_TICKETS_PATH, TICKET_PARAM, StreamTickets
from query_api.stream_tickets import StreamTicket as StreamTicket
from query_api.stream_tickets import stream_ticket_router as stream_ticket_router

log = logging.getLogger("netwarden.query_api.auth")

METRICS_AUTH_ENV = "NETWARDEN_METRICS_AUTH"
URL_TOKEN_PARAMS = ("token", "access_token")



class FailureThrottle:
    """Slows down credential guessing, per client (remote address): after `max_failures` refused
    credentials within `window_s`, the client is told to wait (429, Retry-After) until the oldest of them
    leaves the window, so a guesser gets one try per window / max_failures on average. A success does not
    clear the record (a guesser holding one valid token could otherwise reset it). Bounded memory: at most
    `max_clients` clients, each with at most `max_failures` timestamps; the client that failed least
    recently is forgotten first."""

    def __init__(
        self,
        max_failures: int = 10,
        window_s: float = 60.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window_s <= 0 or max_clients < 1:
            raise ValueError(
                f"FailureThrottle: need max_failures >= 1, window_s > 0, max_clients >= 1; got "
                f"{max_failures}, {window_s}, {max_clients}"
            )
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, client: str) -> float:
        """Seconds the client must wait before its next attempt (0: go ahead)."""
        with self._lock:
            times = self._failures.get(client)
            if times is None or len(times) < self.max_failures:
                return 0.0
            return max(0.0, times[0] + self.window_s - self._clock())

    def record_failure(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            times = self._failures.pop(client, None)
            if times is None:
                times = collections.deque(maxlen=self.max_failures)
            while times and times[0] + self.window_s <= now:
                times.popleft()
            times.append(now)
            self._failures[client] = times  # most recent last
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)



class Authenticator:
    """`registry`: where `netwarden_api_authentications_total{method,result}` is registered (a private
    registry by default, so several authenticators can coexist in tests); `export_metrics` adds it to an
    app's registry. `throttle` slows down clients whose credentials keep being refused; `tickets` holds the
    live stream's tickets."""

    def __init__(
        self,
        tenancy: Tenancy | None,
        oidc: OIDCConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        throttle: FailureThrottle | None = None,
        tickets: StreamTickets | None = None,
    ) -> None:
        self.tenancy = tenancy
        self.oidc = oidc
        self._jwks = JWKSCache(oidc) if oidc is not None else None
        self.throttle = throttle if throttle is not None else FailureThrottle()
        self.tickets = tickets if tickets is not None else StreamTickets()
        self.authentications = Counter(
            "netwarden_api_authentications_total",
            "Authentication attempts by credential type (api-token, oidc, stream-ticket, url, none) and "
            "result (ok, refused = 401, forbidden = 403, unavailable = 503, throttled = 429)",
            ["method", "result"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    def export_metrics(self, registry: CollectorRegistry) -> None:
        """Show this authenticator's counters on `registry` (the app's /metrics) as well."""
        try:
            registry.register(self.authentications)
        except ValueError:  # already there (the same registry, or shared by two apps of this authenticator)
            pass

    def count(self, method: str, result: str) -> None:
        self.authentications.labels(method, result).inc()

    def authenticate(self, authorization_header: str | None) -> Principal:
        method = "none"
        try:
            token = bearer_token(authorization_header)
            method = _method(token)
            principal = self._authenticate(token)
        except AuthError as exc:
            self._refused(method, exc)
            raise
        self.count(method, "ok")
        return principal

    def reauthenticate(self, authorization_header: str) -> Principal:
        """The principal of a credential presented earlier, as it stands now (revoked token, removed
        binding: AuthError or fewer bindings). Long-lived connections call this periodically; not counted
        as an attempt."""
        return self._authenticate(bearer_token(authorization_header))

    def redeem_ticket(self, ticket: str) -> tuple[Principal, str]:
        """(principal, credential) of a stream ticket: single use; the credential that asked for it must
        still be valid and name the same principal."""
        try:
            grant = self.tickets.redeem(ticket)
            principal = self._authenticate(bearer_token(grant.credential))
            if principal.name != grant.principal:
                raise AuthError("invalid stream ticket: its credential now names another user")
        except AuthError as exc:
            self._refused("stream-ticket", exc)
            raise
        self.count("stream-ticket", "ok")
        return principal, grant.credential

    def _refused(self, method: str, exc: AuthError) -> None:
        result = {401: "refused", 403: "forbidden", 429: "throttled"}.get(exc.status, "unavailable")
        self.count(method, result)
        # The detail never holds the credential, only why it failed.
        log.info("authentication %s (%s): %s", result, method, exc.detail)

    def _authenticate(self, token: str) -> Principal:
        if token.startswith(TOKEN_PREFIX + "_"):
            if self.tenancy is None:
                raise AuthError("API tokens are not enabled on this server")
            check = self.tenancy.check_token(token)
            if check.principal is None:
                raise AuthError(f"invalid token: {check.reason}")
            return check.principal
        if token.count(".") == 2 and self.oidc is not None:
            return self._authenticate_jwt(token)
        raise AuthError("invalid token: " + ("neither a netwarden API token (nw_...) nor a JWT" if self.oidc
                                             else "not a netwarden API token (nw_...)"))

    def _authenticate_jwt(self, token: str) -> Principal:
        import jwt

        assert self.oidc is not None and self._jwks is not None
        config = self.oidc
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: malformed JWT ({exc})") from None
        alg = header.get("alg")
        if alg not in config.algorithms:
            raise AuthError(
                f"invalid token: JWT algorithm {alg!r} not accepted (accepted: {', '.join(config.algorithms)})"
            )
        kid = header.get("kid")
        # A key is only ever used with its own algorithm, so an RSA public key cannot become an
        # HMAC secret and an ES256 token cannot be checked with an RSA key.
        if kid is not None and not isinstance(kid, str):
            raise AuthError("invalid token: JWT header kid must be a string")
        candidates = [k for k in self._jwks.keys(kid) if k.algorithm_name == alg]
        if not candidates:
            raise AuthError(
                f"invalid token: no {alg} signing key"
                + (f" with kid {kid!r}" if kid else "")
                + f" in the JWKS of {config.issuer}"
            )
        claims: dict[str, Any] | None = None
        error: jwt.InvalidTokenError | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    audience=config.audience if isinstance(config.audience, str) else list(config.audience),
                    issuer=config.issuer,
                    leeway=config.leeway_seconds,
                    options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt.InvalidSignatureError as exc:
                error = exc  # another key without kid may still match
            except jwt.ExpiredSignatureError:
                raise AuthError("invalid token: JWT expired") from None
            except jwt.ImmatureSignatureError:
                raise AuthError("invalid token: JWT not valid yet (nbf/iat in the future)") from None
            except jwt.InvalidAudienceError:
                raise AuthError(f"invalid token: JWT audience is not {config.audience!r}") from None
            except jwt.InvalidIssuerError:
                raise AuthError(f"invalid token: JWT issuer is not {config.issuer!r}") from None
            except jwt.MissingRequiredClaimError as exc:
                raise AuthError(f"invalid token: JWT lacks the {exc.claim!r} claim") from None
            except jwt.InvalidTokenError as exc:
                raise AuthError(f"invalid token: {exc}") from None
        if claims is None:
            raise AuthError(f"invalid token: JWT signature does not verify ({error})")
        name = next((str(claims[c]) for c in config.username_claims if claims.get(c)), None)
        if name is None:
            raise AuthError(
                f"invalid token: JWT has none of the user name claims {', '.join(config.username_claims)}"
            )
        values, bindings = config.roles.bindings_for(claims)
        stored = (
            self.tenancy.bindings(name) if self.tenancy is not None and config.use_stored_bindings else ()
        )
        merged = tuple(dict.fromkeys(bindings + stored))
        if not merged:
            raise AuthError(
                f"user {name!r} has no role: claim {config.roles.claim!r} values "
                f"{values or 'none'} map to no role and no role binding is stored for the user",
                status=403,
            )
        return Principal(name, merged)


def authenticator_from_env(tenancy: Tenancy | None, environ: Mapping[str, str] = os.environ) -> Authenticator:
    """API tokens from `tenancy`, plus OIDC when NETWARDEN_OIDC_CONFIG is set (the composition root)."""
    return Authenticator(tenancy, OIDCConfig.from_env(environ))


def _method(token: str) -> str:
    return "api-token" if token.startswith(TOKEN_PREFIX + "_") else "oidc"


def bearer_token(authorization_header: str | None) -> str:
    if authorization_header is None or not authorization_header.strip():
        raise AuthError("missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(f"Authorization must be 'Bearer <token>', got scheme {scheme!r}")
    return token


# -- FastAPI glue ---------------------------------------------------------------------------------


class BearerScheme(SecurityBase):
    """Declares `Authorization: Bearer` in the OpenAPI document (securitySchemes, the docs' Authorize
    button). Reads nothing itself: `fastapi_dependency` authenticates, for HTTP and WebSocket alike."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            bearerFormat="netwarden API token (nw_...) or OIDC JWT",
            description="`netwarden admin token create USER` prints a token; with OIDC configured, an ID token",
        )
        self.scheme_name = "bearer"

    async def __call__(self) -> None:
        return None


BEARER_SCHEME = BearerScheme()


@dataclass(frozen=True)
class AuthSettings:
    # Prometheus scrapers usually sit inside the cluster network without credentials.
    metrics_requires_auth: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> AuthSettings:
        value = environ.get(METRICS_AUTH_ENV, "").strip().lower()
        return cls(metrics_requires_auth=value in ("1", "true", "yes", "on"))


_TICKET_MARK = "__netwarden_stream_tickets__"
_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def accepts_stream_tickets(endpoint: _Endpoint) -> _Endpoint:
    """Marks a route's endpoint as one where `?ticket=` authenticates (the live stream routes only)."""
    setattr(endpoint, _TICKET_MARK, True)
    return endpoint


def _route_accepts_tickets(conn: HTTPConnection) -> bool:
    endpoint = getattr(conn.scope.get("route"), "endpoint", None)
    return bool(getattr(endpoint, _TICKET_MARK, False))


def reauthenticator(conn: HTTPConnection) -> Callable[[], Principal] | None:
    """For long-lived connections: a blocking call returning the caller's principal as it stands now
    (AuthError once the credential is revoked); None when the connection was not authenticated here."""
    return getattr(conn.state, "reauthenticate", None)


def _client(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client is not None else "unknown"


def _refusal(conn: HTTPConnection, exc: AuthError) -> Exception:
    """HTTP: `{"detail": ...}` with the status. WebSocket: the same HTTP response where the server can
    refuse a handshake with one (uvicorn: the client sees 401/429 and the detail), else close 1008."""
    if conn.scope["type"] == "websocket" and "websocket.http.response" not in conn.scope.get("extensions", {}):
        # A close reason is at most 123 bytes of UTF-8.
        return WebSocketException(code=1008, reason=exc.detail.encode()[:123].decode(errors="ignore"))
    return HTTPException(exc.status, exc.detail, headers=exc.headers())


def fastapi_dependency(
    authenticator: Authenticator, settings: AuthSettings | None = None
) -> Callable[[HTTPConnection], Awaitable[Principal]]:
    """A dependency returning the caller's Principal (also set as `conn.state.principal`, and
    `conn.state.reauthenticate` for long-lived connections: see `reauthenticator`).

    Credentials: the Authorization header; on routes marked `accepts_stream_tickets`, a `?ticket=`.
    Refused: credentials in the URL (401 saying what to do instead), and any attempt from a client that
    keeps failing (429 with Retry-After). HTTP failures are `{"detail": ...}` JSON with 401 +
    `WWW-Authenticate: Bearer` (403/503 as `AuthError` says); on a WebSocket see `_refusal`.
    """
    del settings  # nothing in it concerns authentication of a route itself

    async def require_principal(conn: HTTPConnection, _: None = Depends(BEARER_SCHEME)) -> Principal:
        client = _client(conn)
        header = conn.headers.get("authorization")
        ticket = conn.query_params.get(TICKET_PARAM)
        presented = bool(header and header.strip()) or bool(ticket)
        try:
            wait = authenticator.throttle.retry_after(client)
            if wait > 0:
                authenticator.count("none", "throttled")
                raise AuthError(
                    "too many failed authentication attempts from this client: retry later", 429, retry_after_s=wait
                )
            if any(p in conn.query_params for p in URL_TOKEN_PARAMS):
                authenticator.count("url", "refused")
                raise AuthError(
                    "tokens are not accepted in URLs (they end up in logs): send 'Authorization: Bearer <token>'"
                    f", or for the live stream get a ticket from POST {STREAM_TICKETS_PATH} and pass ?ticket="
                )
            if ticket is not None and not header:
                if not _route_accepts_tickets(conn):
                    authenticator.count("stream-ticket", "refused")
                    raise AuthError("stream tickets are accepted on the live stream routes only")
                # Thread: redeeming re-checks the credential behind the ticket (SQLite, maybe the JWKS).
                principal, credential = await run_in_threadpool(authenticator.redeem_ticket, ticket)
            else:
                principal = await run_in_threadpool(authenticator.authenticate, header)
                credential = header or ""
        except AuthError as exc:
            if exc.status == 401 and presented:
                authenticator.throttle.record_failure(client)
            raise _refusal(conn, exc) from None
        conn.state.principal = principal
        conn.state.reauthenticate = functools.partial(authenticator.reauthenticate, credential)
        return principal

    return require_principal


def metrics_dependency(
    authenticator: Authenticator, settings: AuthSettings
) -> Callable[[HTTPConnection], Awaitable[Principal | None]]:
    """For /metrics: authenticates only when `settings.metrics_requires_auth`."""
    inner = fastapi_dependency(authenticator, settings)

    async def maybe_principal(conn: HTTPConnection) -> Principal | None:
        return await inner(conn) if settings.metrics_requires_auth else None

    return maybe_principal

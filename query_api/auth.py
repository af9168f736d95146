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
"""

from __future__ import annotations

import collections
import datetime
import functools
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, WebSocketException
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from policy_engine.roles import Principal, RoleBinding
from policy_engine.tenancy import TOKEN_PREFIX, Tenancy, TenancyError, parse_binding

log = logging.getLogger("netwarden.query_api.auth")

SUPPORTED_ALGORITHMS = ("RS256", "ES256")
OIDC_CONFIG_ENV = "NETWARDEN_OIDC_CONFIG"
METRICS_AUTH_ENV = "NETWARDEN_METRICS_AUTH"
STREAM_TICKETS_PATH = "/api/v1/stream-tickets"
TICKET_PARAM = "ticket"
TICKET_PREFIX = "nwst_"  # not TOKEN_PREFIX + "_": a ticket is never mistaken for an API token
URL_TOKEN_PARAMS = ("token", "access_token")


class AuthError(Exception):
    """The request cannot be authenticated. `status` is the HTTP status: 401 (no or bad
    credentials), 403 (valid identity that no role is mapped to), 503 (issuer keys unreachable)."""

    def __init__(self, detail: str, status: int = 401, *, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is not None:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}
        if self.status != 401:
            return {}
        # RFC 6750: tell the client which scheme to use and, for a presented token, that it is bad.
        return {"WWW-Authenticate": 'Bearer realm="netwarden"'}


class OIDCConfigError(ValueError):
    """Bad OIDC configuration: the message names the field."""


@dataclass(frozen=True)
class ClaimRoleMapping:
    """Claim values (e.g. IdP group names) -> role bindings. `claim` may be a dotted path
    (`realm_access.roles`); its value may be a string or a list of strings."""

    claim: str = "groups"
    grants: Mapping[str, tuple[RoleBinding, ...]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ClaimRoleMapping:
        claim = raw.get("claim", "groups")
        if not isinstance(claim, str) or not claim:
            raise OIDCConfigError(f"roles.claim: expected a claim name, got {claim!r}")
        table = raw.get("map", {})
        if not isinstance(table, Mapping):
            raise OIDCConfigError(
                f"roles.map: expected a mapping of claim value -> role, got {type(table).__name__}"
            )
        grants: dict[str, tuple[RoleBinding, ...]] = {}
        for value, spec in table.items():
            specs = spec if isinstance(spec, list) else [spec]
            bindings = []
            for i, item in enumerate(specs):
                where = f"roles.map[{value!r}]" + (f"[{i}]" if isinstance(spec, list) else "")
                if not isinstance(item, Mapping) or "role" not in item:
                    raise OIDCConfigError(f"{where}: expected {{'role': ..., 'scope': ...}}, got {item!r}")
                try:
                    bindings.append(parse_binding(str(item["role"]), item.get("scope")))
                except TenancyError as exc:
                    raise OIDCConfigError(f"{where}: {exc}") from None
            grants[str(value)] = tuple(bindings)
        return cls(claim, grants)

    def bindings_for(self, claims: Mapping[str, Any]) -> tuple[list[str], tuple[RoleBinding, ...]]:
        """(claim values found, bindings they map to)."""
        value: Any = claims
        for part in self.claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            values = [value]
        elif isinstance(value, list):
            values = [v for v in value if isinstance(v, str)]
        else:
            values = []
        bindings: list[RoleBinding] = []
        for v in values:
            for b in self.grants.get(v, ()):
                if b not in bindings:
                    bindings.append(b)
        return values, tuple(bindings)


@dataclass(frozen=True)
class OIDCConfig:
    issuer: str
    audience: str | tuple[str, ...]
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None  # inline JWKS document ({"keys": [...]})
    roles: ClaimRoleMapping = field(default_factory=ClaimRoleMapping)
    # First claim present names the user. `sub` by default: stable and issuer-unique, unlike email.
    username_claims: tuple[str, ...] = ("sub",)
    algorithms: tuple[str, ...] = SUPPORTED_ALGORITHMS
    leeway_seconds: float = 30.0  # clock skew between issuer and us
    jwks_cache_seconds: float = 300.0
    use_stored_bindings: bool = True

    def __post_init__(self) -> None:
        unsupported = set(self.algorithms) - set(SUPPORTED_ALGORITHMS)
        if unsupported or not self.algorithms:
            raise OIDCConfigError(
                f"algorithms: only {', '.join(SUPPORTED_ALGORITHMS)} are accepted, got "
                f"{', '.join(self.algorithms) or 'none'}"
            )
        if not self.issuer:
            raise OIDCConfigError("issuer: required")
        if not self.audience:
            raise OIDCConfigError("audience: required (the client id netwarden's tokens are issued for)")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> OIDCConfig:
        known = {
            "issuer",
            "audience",
            "jwks_url",
            "jwks",
            "roles",
            "username_claim",
            "username_claims",
            "algorithms",
            "leeway_seconds",
            "jwks_cache_seconds",
            "use_stored_bindings",
        }
        unknown = set(raw) - known
        if unknown:
            raise OIDCConfigError(f"{sorted(unknown)[0]}: unknown field (known: {', '.join(sorted(known))})")
        audience = raw.get("audience")
        username = raw.get("username_claims", raw.get("username_claim", "sub"))
        return cls(
            issuer=str(raw.get("issuer") or ""),
            audience=tuple(audience) if isinstance(audience, list) else str(audience or ""),
            jwks_url=raw.get("jwks_url"),
            jwks=raw.get("jwks"),
            roles=ClaimRoleMapping.from_mapping(raw.get("roles") or {}),
            username_claims=(username,) if isinstance(username, str) else tuple(username),
            algorithms=tuple(raw.get("algorithms", SUPPORTED_ALGORITHMS)),
            leeway_seconds=float(raw.get("leeway_seconds", 30.0)),
            jwks_cache_seconds=float(raw.get("jwks_cache_seconds", 300.0)),
            use_stored_bindings=bool(raw.get("use_stored_bindings", True)),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OIDCConfig | None:
        """NETWARDEN_OIDC_CONFIG: inline JSON, or the path of a JSON or YAML file. Unset: no OIDC."""
        value = (environ.get(OIDC_CONFIG_ENV) or "").strip()
        if not value:
            return None
        if value.startswith("{"):
            return cls.from_mapping(json.loads(value))
        import yaml

        return cls.from_mapping(yaml.safe_load(Path(value).read_text()))


class JWKSCache:
    """The issuer's signing keys, fetched on first use and again after `max_age` or when a token
    names an unknown key id (key rotation), at most once per `min_refresh` seconds so a flood of
    forged kids cannot hammer the issuer."""

    def __init__(self, config: OIDCConfig, *, min_refresh: float = 10.0, timeout: float = 5.0) -> None:
        self._config = config
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._lock = threading.Lock()
        self._keys: list[Any] = []  # jwt.PyJWK
        self._fetched_at = float("-inf")
        self._fetches = 0
        self._error: str | None = None
        if config.jwks is not None:
            self._keys = self._parse(config.jwks)
            self._fetched_at = float("inf")  # inline keys never expire

    @property
    def fetches(self) -> int:
        return self._fetches

    def _parse(self, document: Mapping[str, Any]) -> list[Any]:
        import jwt

        keys = []
        for raw in document.get("keys", []) if isinstance(document, Mapping) else []:
            try:
                keys.append(jwt.PyJWK.from_dict(dict(raw)))
            except (jwt.PyJWKError, jwt.InvalidKeyError, TypeError, ValueError):
                continue  # keys of types we do not verify with (e.g. encryption keys) are skipped
        return keys

    def _jwks_url(self) -> str:
        import httpx

        if self._config.jwks_url:
            return self._config.jwks_url
        discovery = self._config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        response = httpx.get(discovery, timeout=self._timeout)
        response.raise_for_status()
        url = response.json().get("jwks_uri")
        if not isinstance(url, str):
            raise ValueError(f"{discovery} has no jwks_uri")
        return url

    def _fetch(self) -> None:
        import httpx

        self._fetches += 1
        try:
            response = httpx.get(self._jwks_url(), timeout=self._timeout)
            response.raise_for_status()
            keys = self._parse(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            # Keep serving with the keys we have (if any); retried after min_refresh.
            self._error = f"cannot fetch the OIDC issuer's signing keys: {exc}"
            return
        finally:
            self._fetched_at = time.monotonic()
        self._keys, self._error = keys, None

    def keys(self, kid: str | None) -> list[Any]:
        with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at > self._config.jwks_cache_seconds
            unknown_kid = kid is not None and not any(k.key_id == kid for k in self._keys)
            if (stale or unknown_kid) and now - self._fetched_at >= self._min_refresh:
                self._fetch()
            if not self._keys and self._error:
                # Not the client's fault: 503, so it retries instead of discarding its token.
                raise AuthError(self._error, status=503)
            return [k for k in self._keys if kid is None or k.key_id == kid]


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


def metrics_dependency(
    authenticator: Authenticator, settings: AuthSettings
) -> Callable[[HTTPConnection], Awaitable[Principal | None]]:
    """For /metrics: authenticates only when `settings.metrics_requires_auth`."""
    inner = fastapi_dependency(authenticator, settings)

    async def maybe_principal(conn: HTTPConnection) -> Principal | None:
        return await inner(conn) if settings.metrics_requires_auth else None

    return maybe_principal

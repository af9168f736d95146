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
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, WebSocketException
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from prometheus_client import CollectorRegistry, Counter
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from policy_engine.roles import Principal, RoleBinding
from policy_engine.tenancy import TOKEN_PREFIX, Tenancy, TenancyError, parse_binding

log = logging.getLogger("netwarden.query_api.auth")

SUPPORTED_ALGORITHMS = ("RS256", "ES256")
OIDC_CONFIG_ENV = "NETWARDEN_OIDC_CONFIG"
METRICS_AUTH_ENV = "NETWARDEN_METRICS_AUTH"


class AuthError(Exception):
    """The request cannot be authenticated. `status` is the HTTP status: 401 (no or bad
    credentials), 403 (valid identity that no role is mapped to), 503 (issuer keys unreachable)."""

    def __init__(self, detail: str, status: int = 401) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def headers(self) -> dict[str, str]:
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


class Authenticator:
    """`registry`: where `netwarden_api_authentications_total{method,result}` is exported (a private
    registry by default, so several authenticators can coexist in tests)."""

    def __init__(
        self, tenancy: Tenancy | None, oidc: OIDCConfig | None = None, *, registry: CollectorRegistry | None = None
    ) -> None:
        self.tenancy = tenancy
        self.oidc = oidc
        self._jwks = JWKSCache(oidc) if oidc is not None else None
        self.authentications = Counter(
            "netwarden_api_authentications_total",
            "Authentication attempts by credential type (api-token, oidc, none) and result "
            "(ok, refused = 401, forbidden = 403, unavailable = 503)",
            ["method", "result"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    def authenticate(self, authorization_header: str | None) -> Principal:
        method = "none"
        try:
            token = bearer_token(authorization_header)
            method = "api-token" if token.startswith(TOKEN_PREFIX + "_") else "oidc"
            principal = self._authenticate(token)
        except AuthError as exc:
            result = {401: "refused", 403: "forbidden"}.get(exc.status, "unavailable")
            self.authentications.labels(method, result).inc()
            # The detail never holds the credential, only why it failed.
            log.info("authentication %s (%s): %s", result, method, exc.detail)
            raise
        self.authentications.labels(method, "ok").inc()
        return principal

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
    # Browsers cannot set headers on WebSocket/EventSource; `?access_token=` lets the console
    # stream. Off for plain HTTP routes so tokens do not end up in access logs needlessly.
    query_token_routes: Sequence[str] = ("/api/v1/flows/stream",)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> AuthSettings:
        value = environ.get(METRICS_AUTH_ENV, "").strip().lower()
        return cls(metrics_requires_auth=value in ("1", "true", "yes", "on"))


def _credentials(conn: HTTPConnection, settings: AuthSettings) -> str | None:
    header = conn.headers.get("authorization")
    if header is None and conn.url.path in settings.query_token_routes:
        token = conn.query_params.get("access_token")
        if token:
            return f"Bearer {token}"
    return header


def fastapi_dependency(
    authenticator: Authenticator, settings: AuthSettings | None = None
) -> Callable[[HTTPConnection], Awaitable[Principal]]:
    """A dependency returning the caller's Principal (also set as `request.state.principal`).

    HTTP: failures become `{"detail": ...}` JSON with 401 + `WWW-Authenticate: Bearer` (403/503 as
    `AuthError` says). WebSocket: the handshake is closed with code 1008 and the detail as reason.
    """
    settings = settings or AuthSettings()

    async def require_principal(conn: HTTPConnection, _: None = Depends(BEARER_SCHEME)) -> Principal:
        try:
            # Thread: token lookup hits SQLite and OIDC may fetch the JWKS.
            principal = await run_in_threadpool(authenticator.authenticate, _credentials(conn, settings))
        except AuthError as exc:
            if conn.scope["type"] == "websocket":
                # A close reason is at most 123 bytes of UTF-8.
                reason = exc.detail.encode()[:123].decode(errors="ignore")
                raise WebSocketException(code=1008, reason=reason) from None
            raise HTTPException(exc.status, exc.detail, headers=exc.headers()) from None
        conn.state.principal = principal
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

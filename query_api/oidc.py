"""OIDC for the query API (query_api.auth): configuration (NETWARDEN_OIDC_CONFIG), the claim -> role mapping, and
the issuer's signing keys (JWKS), fetched and cached."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy_engine.roles import RoleBinding
from policy_engine.tenancy import TenancyError, parse_binding
from query_api.auth_error import AuthError

SUPPORTED_ALGORITHMS = ("RS256", "ES256")
OIDC_CONFIG_ENV = "NETWARDEN_OIDC_CONFIG"


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

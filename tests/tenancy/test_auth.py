"""Authentication: API tokens and OIDC JWTs (keys generated here, JWKS served over real local HTTP),
and the FastAPI dependency's 401/403 responses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import Depends, FastAPI, WebSocket
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from starlette.testclient import WebSocketDenialResponse

from policy_engine.roles import Principal, Role, RoleBinding, ScopeKind
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy
from query_api.auth import (
    Authenticator,
    AuthError,
    AuthSettings,
    OIDCConfig,
    OIDCConfigError,
    authenticator_from_env,
    fastapi_dependency,
    metrics_dependency,
)

from .conftest import seed_org

ISSUER = "https://id.example.test"
AUDIENCE = "netwarden"
ROLES = {
    "claim": "groups",
    "map": {
        "platform-team": {"role": "org-admin", "scope": "org"},
        "shop-devs": [{"role": "workspace-admin", "scope": "frontend"},
                      {"role": "project-read-only", "scope": "shop"}],
    },
}


def _jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    return {**json.loads(algo.to_jwk(public_key)), "kid": kid, "alg": alg, "use": "sig"}


class Issuer:
    """An OIDC issuer: keys, a JWKS document served on 127.0.0.1, and a token minting helper."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.keys = [_jwk(self.rsa.public_key(), "rsa-1", "RS256"), _jwk(self.ec.public_key(), "ec-1", "ES256")]
        self.requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests += 1
                if self.path == "/jwks.json":
                    body = json.dumps({"keys": issuer.keys}).encode()
                elif self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": ISSUER, "jwks_uri": issuer.jwks_url}).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.jwks_url = f"{self.base}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, *, alg: str = "RS256", kid: str | None = None, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-123", "email": "dev@example.com",
                   "iat": now, "exp": now + 600, "groups": ["shop-devs"], **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        signing_key = key or (self.rsa if alg == "RS256" else self.ec)
        return jwt.encode(payload, signing_key, algorithm=alg,
                          headers={"kid": kid or ("rsa-1" if alg == "RS256" else "ec-1")})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    try:
        yield i
    finally:
        i.close()


def _config(issuer: Issuer, **overrides: Any) -> OIDCConfig:
    return OIDCConfig.from_mapping({"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": issuer.jwks_url,
                                    "roles": ROLES, **overrides})


def _hs256_forgery(secret: bytes) -> str:
    # PyJWT itself refuses to HMAC-sign with a PEM key, so build the token by hand.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60,
                           "groups": ["platform-team"]}).encode())
    sig = b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
    return f"{header}.{body}.{sig}"


def _bearer(token: str) -> str:
    return f"Bearer {token}"


# -- API tokens -----------------------------------------------------------------------------------


def test_api_token_authenticates(tenancy: Tenancy) -> None:
    tenancy.create_user("alice")
    tenancy.add_binding("alice", "project-admin", "shop")
    token_id, secret = tenancy.create_token("alice")
    registry = CollectorRegistry()
    auth = Authenticator(tenancy, registry=registry)
    assert auth.authenticate(_bearer(secret)) == Principal(
        "alice", (RoleBinding(Role.PROJECT_ADMIN, ScopeKind.PROJECT, "shop"),))
    assert auth.authenticate(f"bearer   {secret}  ").name == "alice"
    tenancy.revoke_token(token_id)
    with pytest.raises(AuthError, match="revoked") as err:
        auth.authenticate(_bearer(secret))
    assert err.value.status == 401
    with pytest.raises(AuthError):
        auth.authenticate(None)

    def count(method: str, result: str) -> float | None:
        return registry.get_sample_value("netwarden_api_authentications_total", {"method": method, "result": result})

    assert (count("api-token", "ok"), count("api-token", "refused"), count("none", "refused")) == (2, 1, 1)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
        ("Bearer", "must be 'Bearer <token>'"),
        ("Bearer nw_0123456789ab_xxxxxxxxxxxxxxxxxxxxxxxxxx", "unknown API token"),
        ("Bearer something-else", r"not a netwarden API token \(nw_...\)"),
        ("Bearer a.b.c", "not a netwarden API token"),  # no OIDC configured: a JWT is not accepted
    ],
)
def test_bad_credentials_are_401(tenancy: Tenancy, header: str | None, message: str) -> None:
    with pytest.raises(AuthError, match=message) as err:
        Authenticator(tenancy).authenticate(header)
    assert err.value.status == 401 and err.value.headers()["WWW-Authenticate"].startswith("Bearer")


# -- OIDC -----------------------------------------------------------------------------------------


def test_valid_jwt_maps_groups_to_roles(tenancy: Tenancy, issuer: Issuer) -> None:
    auth = Authenticator(tenancy, _config(issuer))
    principal = auth.authenticate(_bearer(issuer.token()))
    assert principal.name == "user-123"
    assert set(principal.bindings) == {
        RoleBinding(Role.WORKSPACE_ADMIN, ScopeKind.WORKSPACE, "frontend"),
        RoleBinding(Role.PROJECT_READ_ONLY, ScopeKind.PROJECT, "shop"),
    }
    admin = auth.authenticate(_bearer(issuer.token(groups="platform-team", alg="ES256")))
    assert admin.bindings == (RoleBinding(Role.ORG_ADMIN, ScopeKind.ORG),)
    # Keys are cached: many tokens, one JWKS fetch.
    for _ in range(5):
        auth.authenticate(_bearer(issuer.token()))
    assert issuer.requests == 1


def test_username_claim_and_stored_bindings(tenancy: Tenancy, issuer: Issuer) -> None:
    tenancy.create_user("dev@example.com")
    tenancy.add_binding("dev@example.com", "infra-admin", "ops")
    auth = Authenticator(tenancy, _config(issuer, username_claim="email"))
    principal = auth.authenticate(_bearer(issuer.token(groups=["nobody-maps-this"])))
    assert principal == Principal("dev@example.com", (RoleBinding(Role.INFRA_ADMIN, ScopeKind.PROJECT, "ops"),))
    off = Authenticator(tenancy, _config(issuer, username_claim="email", use_stored_bindings=False))
    with pytest.raises(AuthError) as err:
        off.authenticate(_bearer(issuer.token(groups=["nobody-maps-this"])))
    assert err.value.status == 403


def test_discovery_finds_the_jwks(tenancy: Tenancy, issuer: Issuer) -> None:
    config = OIDCConfig.from_mapping({"issuer": issuer.base, "audience": AUDIENCE, "roles": ROLES})
    token = issuer.token(iss=issuer.base)
    assert Authenticator(tenancy, config).authenticate(_bearer(token)).name == "user-123"


def test_inline_jwks(tenancy: Tenancy, issuer: Issuer) -> None:
    config = OIDCConfig.from_mapping({"issuer": ISSUER, "audience": AUDIENCE, "roles": ROLES,
                                      "jwks": {"keys": issuer.keys}})
    assert Authenticator(tenancy, config).authenticate(_bearer(issuer.token())).name == "user-123"
    assert issuer.requests == 0


@pytest.mark.parametrize(
    ("claims", "status", "message"),
    [
        ({"exp": int(time.time()) - 3600}, 401, "JWT expired"),
        ({"nbf": int(time.time()) + 3600}, 401, "not valid yet"),
        ({"aud": "someone-else"}, 401, "audience is not 'netwarden'"),
        ({"iss": "https://evil.example"}, 401, "issuer is not"),
        ({"exp": None}, 401, "lacks the 'exp' claim"),
        ({"sub": None}, 401, "none of the user name claims"),
        ({"groups": ["interns"]}, 403, "map to no role"),
        ({"groups": None}, 403, "map to no role"),
    ],
)
def test_rejected_jwts(tenancy: Tenancy, issuer: Issuer, claims: dict[str, Any], status: int, message: str) -> None:
    with pytest.raises(AuthError, match=message) as err:
        Authenticator(tenancy, _config(issuer)).authenticate(_bearer(issuer.token(**claims)))
    assert err.value.status == status


def test_bad_signatures_and_algorithms(tenancy: Tenancy, issuer: Issuer) -> None:
    auth = Authenticator(tenancy, _config(issuer))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthError, match="signature does not verify"):
        auth.authenticate(_bearer(issuer.token(key=stranger)))
    good = issuer.token()
    head, body, sig = good.split(".")
    with pytest.raises(AuthError, match="signature"):
        auth.authenticate(_bearer(f"{head}.{body}.{sig[:-4]}AAAA"))
    # HS256 with the RSA public key as secret (the classic confusion attack) is refused outright.
    public_pem = issuer.rsa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    forged = _hs256_forgery(public_pem)
    with pytest.raises(AuthError, match="algorithm 'HS256' not accepted"):
        auth.authenticate(_bearer(forged))
    # An ES256 header naming the RSA key finds no matching key.
    with pytest.raises(AuthError, match="no ES256 signing key with kid 'rsa-1'"):
        auth.authenticate(_bearer(issuer.token(alg="ES256", kid="rsa-1")))
    with pytest.raises(AuthError, match="malformed JWT"):
        auth.authenticate("Bearer x.y.z")


def test_key_rotation_refetches_once(tenancy: Tenancy, issuer: Issuer) -> None:
    auth = Authenticator(tenancy, _config(issuer))
    auth.authenticate(_bearer(issuer.token()))
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.keys.append(_jwk(new_key.public_key(), "rsa-2", "RS256"))
    assert auth._jwks is not None
    auth._jwks._min_refresh = 0.0  # the rotation happens "later"
    assert auth.authenticate(_bearer(issuer.token(key=new_key, kid="rsa-2"))).name == "user-123"
    assert issuer.requests == 2


def test_unreachable_issuer_is_503(tenancy: Tenancy, issuer: Issuer) -> None:
    config = _config(issuer, jwks_url=issuer.base + "/missing")
    auth = Authenticator(tenancy, config)
    for _ in range(2):  # the second attempt, inside min_refresh, does not refetch but still says why
        with pytest.raises(AuthError, match="cannot fetch") as err:
            auth.authenticate(_bearer(issuer.token()))
        assert err.value.status == 503
    assert issuer.requests == 1


def test_issuer_outage_keeps_cached_keys(tenancy: Tenancy, issuer: Issuer) -> None:
    auth = Authenticator(tenancy, _config(issuer, jwks_cache_seconds=0))
    auth.authenticate(_bearer(issuer.token()))
    issuer.close()
    assert auth._jwks is not None
    auth._jwks._min_refresh = 0.0
    assert auth.authenticate(_bearer(issuer.token())).name == "user-123"  # refetch failed, old keys used


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"issuer": ISSUER}, "audience: required"),
        ({"audience": AUDIENCE}, "issuer: required"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["HS256"]}, "algorithms"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "roles": {"map": {"g": {"role": "root"}}}}, r"roles.map\['g'\]"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "roles": {"map": {"g": {"role": "project-admin"}}}},
         "needs a project name"),
        ({"issuer": ISSUER, "audience": AUDIENCE, "colour": "red"}, "colour: unknown field"),
    ],
)
def test_bad_oidc_config(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(OIDCConfigError, match=message):
        OIDCConfig.from_mapping(raw)


def test_oidc_config_from_env(tmp_path: Any) -> None:
    assert OIDCConfig.from_env({}) is None
    assert authenticator_from_env(None, {}).oidc is None
    inline = OIDCConfig.from_env({"NETWARDEN_OIDC_CONFIG": json.dumps({"issuer": ISSUER, "audience": AUDIENCE})})
    assert inline is not None and inline.issuer == ISSUER
    path = tmp_path / "oidc.yaml"
    path.write_text(f"issuer: {ISSUER}\naudience: [a, b]\nroles: {json.dumps(ROLES)}\n")
    from_file = OIDCConfig.from_env({"NETWARDEN_OIDC_CONFIG": str(path)})
    assert from_file is not None and from_file.audience == ("a", "b")
    assert AuthSettings.from_env({"NETWARDEN_METRICS_AUTH": "true"}).metrics_requires_auth


# -- FastAPI --------------------------------------------------------------------------------------


def _app(auth: Authenticator, settings: AuthSettings) -> FastAPI:
    app = FastAPI()
    # Dependencies as defaults: string annotations (PEP 563) cannot name local Annotated aliases.
    caller = Depends(fastapi_dependency(auth, settings))
    maybe_caller = Depends(metrics_dependency(auth, settings))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/whoami")
    async def whoami(principal: Principal = caller) -> dict[str, Any]:
        return {"name": principal.name, "roles": [b.role.value for b in principal.bindings]}

    @app.get("/metrics")
    async def metrics(principal: Principal | None = maybe_caller) -> dict[str, Any]:
        return {"by": principal.name if principal else None}

    @app.websocket("/api/v1/flows/stream")
    async def stream(ws: WebSocket, principal: Principal = caller) -> None:
        await ws.accept()
        await ws.send_json({"name": principal.name})
        await ws.close()

    return app


def test_fastapi_dependency(tmp_path: Path, issuer: Issuer) -> None:
    with ControlPlaneStore.open(tmp_path) as store:
        seed_org(store)
    # The API's threadpool calls the store from several threads: Tenancy.open allows that.
    tenancy = Tenancy.open(tmp_path)
    tenancy.create_user("alice")
    tenancy.add_binding("alice", "org-read-only")
    _, secret = tenancy.create_token("alice")
    auth = Authenticator(tenancy, _config(issuer))
    client = TestClient(_app(auth, AuthSettings(metrics_requires_auth=False)))

    assert client.get("/healthz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/api/v1/whoami"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    r = client.get("/api/v1/whoami")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json() == {"detail": "missing Authorization header: send 'Authorization: Bearer <token>'"}
    r = client.get("/api/v1/whoami", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "invalid token" in r.json()["detail"]
    r = client.get("/api/v1/whoami", headers={"Authorization": _bearer(secret)})
    assert r.json() == {"name": "alice", "roles": ["org-read-only"]}
    r = client.get("/api/v1/whoami", headers={"Authorization": _bearer(issuer.token(groups=["interns"]))})
    assert r.status_code == 403 and "no role" in r.json()["detail"] and "www-authenticate" not in r.headers
    # No token in a URL, on any route (browsers use stream tickets: tests/live/test_stream_access.py).
    assert client.get(f"/api/v1/whoami?access_token={secret}").status_code == 401
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(
        f"/api/v1/flows/stream?access_token={secret}"
    ):
        pass
    assert denied.value.status_code == 401 and "not accepted in URLs" in denied.value.json()["detail"]
    # A refused WebSocket handshake is an HTTP response, so the client sees why.
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/api/v1/flows/stream"):
        pass
    assert denied.value.status_code == 401

    assert client.get("/metrics").json() == {"by": None}
    locked = TestClient(_app(auth, AuthSettings(metrics_requires_auth=True)))
    assert locked.get("/metrics").status_code == 401
    assert locked.get("/metrics", headers={"Authorization": _bearer(secret)}).json() == {"by": "alice"}
    tenancy.close()

"""Property-based run of the published OpenAPI (schemathesis, in-process over ASGI): no 5xx, ever.

Two apps: the flow API with a stand-in principal (every flow route, both a wide and a narrow scope), and the
app as `netwarden up` wires it (real API-token authenticator over a control-plane store, live hub) for every
route the first one lacks: policies, blueprints, assignments, clusters, admin, reports, why, what-if,
stream tickets, and the live stream's parameters (over real HTTP: the stream never ends by itself)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from policy_engine.control_plane import ControlPlane
from policy_engine.model import Cluster, NamespaceRef, Project, Workspace
from policy_engine.roles import Ownership, Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy
from query_api.app import create_app
from query_api.auth import Authenticator, FailureThrottle
from query_api.live import STREAM_PATH, LiveHub
from query_api.store import FlowStore
from tests.query_api.conftest import bearer_principals

EXAMPLES_PER_OPERATION = 60
EXAMPLES_PER_EXTRA_OPERATION = 5  # ~50 routes, some reading flows on chDB: ~15 s
TOKENS = {
    "admin": Principal.with_role("org-admin", name="admin"),
    "ws": Principal.with_role("workspace-read-only", "w1", name="ws"),
}
OWNERSHIP = Ownership(
    project_clusters={"p1": frozenset({"qa-c2"})},
    workspace_project={"w1": "p1"},
    workspace_namespaces={"w1": frozenset({NamespaceRef("qa-c1", "shop")})},
)


@pytest.fixture(scope="module")
def app(flow_store: FlowStore) -> FastAPI:
    return create_app(flow_store, principal_dependency=bearer_principals(TOKENS), ownership=OWNERSHIP)


def test_openapi_declares_models_and_errors(app: FastAPI) -> None:
    doc = TestClient(app).get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for model in (
        "FlowsPage",
        "FlowSummary",
        "NamespaceList",
        "WorkspaceList",
        "ClusterList",
        "ErrorResponse",
    ):
        assert model in schemas, model
    for path in ("/api/v1/flows", "/api/v1/flows/summary", "/api/v1/namespaces"):
        responses = doc["paths"][path]["get"]["responses"]
        assert {"200", "401", "403", "422"} <= set(responses), path


@pytest.mark.parametrize("token", ["admin", "ws"])
def test_no_server_errors(app: FastAPI, token: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/v1/flows", "/api/v1/flows/summary", "/api/v1/clusters"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_5xx(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            assert response.status_code < 500, (
                case.path,
                case.query,
                response.status_code,
                response.text[:500],
            )
            assert response.status_code != 401, "a valid token was refused"

        no_5xx()
    assert time.monotonic() - started < 60


def test_openapi_declares_bearer_authentication(app: FastAPI) -> None:
    doc = TestClient(app).get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert doc["paths"]["/api/v1/flows"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]


# Names nobody generates by chance: a fuzzed DELETE must not remove the caller itself.
ADMIN = "fuzz-admin-7c1e"


@pytest.fixture(scope="module")
def full_app(flow_store: FlowStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    tmp = tmp_path_factory.mktemp("openapi-control-plane")
    with ControlPlaneStore.open(tmp) as store:
        cp = ControlPlane(store, Principal.with_role("org-admin", name="seed"))
        cp.put_cluster(Cluster("qa-c1", "upstream", "cilium"))
        cp.put_project(Project("p1", ("qa-c1",)))
        cp.put_workspace(Workspace("w1", "p1", (NamespaceRef("qa-c1", "shop"),)))
    tenancy = Tenancy.open(tmp)
    tenancy.create_user(ADMIN)
    tenancy.add_binding(ADMIN, "org-admin")
    _, token = tenancy.create_token(ADMIN)
    # Every request carries a valid token: nothing here is guessing, so nothing is throttled.
    authenticator = Authenticator(tenancy, throttle=FailureThrottle(10**9, 1.0))
    app = create_app(flow_store, authenticator=authenticator, ownership=tenancy.ownership, live_hub=LiveHub())
    yield app, token
    tenancy.close()


def test_no_server_errors_on_every_other_route(app: FastAPI, full_app: tuple[FastAPI, str]) -> None:
    """Every route of the full app that the flow app lacks (but the endless live stream, below)."""
    full, token = full_app
    covered = {(op.method, op.path) for op in (r.ok() for r in schemathesis.openapi.from_asgi("/openapi.json", app).get_all_operations())}
    schema = schemathesis.openapi.from_asgi("/openapi.json", full)
    operations = [
        op
        for op in (r.ok() for r in schema.get_all_operations())
        if (op.method, op.path) not in covered and op.path != STREAM_PATH
    ]
    paths = {op.path for op in operations}
    assert {"/api/v1/stream-tickets", "/api/v1/policies/{name}", "/api/v1/admin/bindings", "/api/v1/why"} <= paths
    assert len(operations) >= 40
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_EXTRA_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_5xx(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            assert response.status_code < 500, (
                case.method,
                case.path,
                case.path_parameters,
                case.query,
                response.status_code,
                response.text[:500],
            )
            assert response.status_code != 401, (case.path, response.text[:200])

        no_5xx()


def test_live_stream_parameters_are_validated_before_it_opens(full_app: tuple[FastAPI, str]) -> None:
    """The stream's query parameters over real HTTP: 200 (an open stream, closed by us at once) or a 4xx
    naming the parameter; never a 5xx."""
    full, token = full_app
    server = uvicorn.Server(uvicorn.Config(full, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    operation = next(
        r.ok() for r in schemathesis.openapi.from_asgi("/openapi.json", full).get_all_operations()
        if r.ok().path == STREAM_PATH and r.ok().method.upper() == "GET"
    )
    statuses: set[int] = set()
    try:
        with httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:

            @given(case=operation.as_strategy())
            @settings(max_examples=40, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def opens_or_refuses(case: schemathesis.Case) -> None:
                with http.stream("GET", STREAM_PATH, params=case.query) as response:
                    statuses.add(response.status_code)
                    assert response.status_code < 500, (case.query, response.read()[:300])
                    if response.status_code == 422:
                        detail = response.read()
                        assert b'"loc":["query"' in detail, detail

            opens_or_refuses()
    finally:
        server.should_exit = True
        thread.join(10)
    assert 200 in statuses and 422 in statuses


def test_hostile_document_bodies_are_refused_with_4xx(full_app: tuple[FastAPI, str]) -> None:
    """Found by fuzzing: bodies nested deeper than Python's stack were a 500 (apply, diff, stage, PUT) or a 503
    (what-if, reported as the flow store being unavailable)."""
    full, token = full_app
    deep: object = "x"
    for _ in range(900):
        deep = [deep]
    policy = {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "p"},
              "spec": {"scope": "namespace", "rules": [{"name": "r", "cilium": {"ingress": deep}}]}}
    bodies = [
        (b"[" * 700, "application/yaml"),
        (b"- " * 700 + b"x", "application/yaml"),
        (json.dumps(policy).encode(), "application/json"),
        (b"[" * 1100, "application/json"),
    ]
    client = TestClient(full, raise_server_exceptions=False)
    for method, path in (
        ("POST", "/api/v1/apply"),
        ("POST", "/api/v1/diff"),
        ("POST", "/api/v1/policies/stage"),
        ("POST", "/api/v1/policies/what-if"),
        ("PUT", "/api/v1/policies/p"),
    ):
        for body, content_type in bodies:
            r = client.request(
                method, path, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": content_type}
            )
            assert 400 <= r.status_code < 500, (path, body[:20], r.status_code, r.text[:200])

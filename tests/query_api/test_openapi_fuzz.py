"""Property-based run of the published OpenAPI (schemathesis, in-process over ASGI): no 5xx, ever."""

from __future__ import annotations

import time

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from policy_engine.model import NamespaceRef
from policy_engine.roles import Ownership, Principal
from query_api.app import create_app
from query_api.store import FlowStore
from tests.query_api.conftest import bearer_principals

EXAMPLES_PER_OPERATION = 60
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

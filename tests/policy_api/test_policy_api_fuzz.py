"""Property-based run (schemathesis, in-process over ASGI) of every control-plane route the OpenAPI publishes,
with the demo's real tokens: no 5xx ever, a valid token never refused, and every answer is one the OpenAPI
declares (status code, and the body's shape for JSON answers)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings

from tests.policy_api.conftest import app_on, seed

EXAMPLES_PER_OPERATION = 5
# The routes of query_api.policy_api, blueprint_api and admin_api (and the staging routes they extend).
PREFIXES = ("/api/v1/policies", "/api/v1/documents", "/api/v1/apply", "/api/v1/diff", "/api/v1/blueprints",
            "/api/v1/assignments", "/api/v1/clusters/", "/api/v1/admin")
# A scoped writer (mostly refused) and the org admin (whose random writes reach the engine's checks).
ROLES = ("workspace-admin", "org-admin")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    data: Path = tmp_path_factory.mktemp("fuzz") / "data"
    tokens = seed(data)
    app, tenancy = app_on(data)
    try:
        yield app, tokens
    finally:
        tenancy.close()


def test_every_control_plane_route_is_covered_and_declares_its_errors(demo: tuple[FastAPI, dict[str, str]]) -> None:
    app, _ = demo
    paths = {p: ops for p, ops in app.openapi()["paths"].items() if p.startswith(PREFIXES)}
    assert len(paths) >= 25
    for path, ops in paths.items():
        for method, op in ops.items():
            declared = set(op["responses"])
            assert {"200", "401", "403"} <= declared, (method, path)
            assert op["responses"]["200"]["content"]["application/json"]["schema"], (method, path)


@pytest.mark.parametrize("role", ROLES)
def test_no_server_errors_and_answers_as_declared(demo: tuple[FastAPI, dict[str, str]], role: str) -> None:
    app, tokens = demo
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    started = time.monotonic()
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if op.path.startswith(PREFIXES)]
    assert len(operations) >= 35
    headers = {"Authorization": f"Bearer {tokens[role]}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def as_declared(case: schemathesis.Case) -> None:
            response = case.call(headers=headers)
            where = (case.method, case.formatted_path, case.query, response.status_code, response.text[:300])
            assert response.status_code < 500, where
            assert response.status_code != 401, where
            if response.status_code != 413:  # a body over the limit: Starlette's own answer
                case.validate_response(response, checks=[schemathesis.checks.status_code_conformance,
                                                          schemathesis.checks.response_schema_conformance])

        as_declared()
    assert time.monotonic() - started < 20

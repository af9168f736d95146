"""The HTTP API over real HTTP semantics (FastAPI TestClient / httpx) on the real chDB store."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from policy_engine.roles import Principal
from query_api.app import create_app
from query_api.store import FlowStore
from tests.query_api.conftest import BASE_NS, INJECTION_NS, bearer_principals, flow_uuid, rfc3339

PRINCIPALS = {"admin": Principal.with_role("org-admin", name="admin"), "nobody": Principal("nobody")}
AUTH = {"Authorization": "Bearer admin"}


@pytest.fixture(scope="module")
def http(flow_store: FlowStore) -> Iterator[TestClient]:
    app = create_app(flow_store, principal_dependency=bearer_principals(PRINCIPALS))
    with TestClient(app, headers=AUTH) as client:
        yield client


def test_authentication_and_authorization_errors_are_json(flow_store: FlowStore) -> None:
    app = create_app(flow_store, principal_dependency=bearer_principals(PRINCIPALS))
    with TestClient(app) as client:
        for path in ("/api/v1/flows", "/api/v1/flows/summary", "/api/v1/namespaces", "/api/v1/clusters"):
            r = client.get(path)
            assert r.status_code == 401 and r.json()["detail"], path
            r = client.get(path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, path
            r = client.get(path, headers={"Authorization": "Bearer nobody"})
            assert r.status_code == 403 and "org-admin" in r.json()["needed"], path
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
    with TestClient(create_app(flow_store)) as client:  # no authentication configured: fail closed
        assert client.get("/api/v1/flows").status_code == 401


def test_healthz(http: TestClient) -> None:
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_json_format_newest_first(http: TestClient) -> None:
    r = http.get("/api/v1/flows", params={"cluster": "qa-c1", "namespace": "shop"})
    assert r.status_code == 200
    flows = r.json()["flows"]
    assert [f["flow"]["uuid"] for f in flows] == [flow_uuid(7), flow_uuid(1), flow_uuid(0)]
    first = flows[-1]
    assert first["time"] == rfc3339(BASE_NS) == first["flow"]["time"]
    assert first["flow"]["IP"]["ipVersion"] == "IPv4" and first["flow"]["verdict"] == "FORWARDED"


def test_jsonpb_format_is_hubble_lines_oldest_first(http: TestClient) -> None:
    r = http.get("/api/v1/flows", params={"cluster": "qa-c1", "namespace": "shop", "format": "jsonpb"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = r.text.splitlines()
    assert [json.loads(x)["flow"]["uuid"] for x in lines] == [flow_uuid(0), flow_uuid(1), flow_uuid(7)]
    assert all(": " not in x and ", " not in x for x in lines if "Flags" not in x)  # compact, like hubble


def test_ndjson_format_newest_first(http: TestClient) -> None:
    r = http.get("/api/v1/flows", params={"verdict": "DROPPED", "cluster": "qa-c1", "format": "ndjson"})
    (line,) = r.text.splitlines()
    flow = json.loads(line)["flow"]
    assert flow["drop_reason_desc"] == "POLICY_DENIED" and flow["drop_reason"] == 133
    assert flow["l4"] == {"UDP": {"source_port": 5353, "destination_port": 53}}


def test_limit_and_filters(http: TestClient) -> None:
    r = http.get("/api/v1/flows", params={"limit": 2, "cluster": "qa-c2"})
    assert [f["flow"]["uuid"] for f in r.json()["flows"]] == [flow_uuid(5), flow_uuid(4)]
    r = http.get("/api/v1/flows", params={"namespace": INJECTION_NS})
    assert [f["flow"]["uuid"] for f in r.json()["flows"]] == [flow_uuid(6)]
    r = http.get("/api/v1/flows", params={"namespace": "' OR 1=1 --"})
    assert r.json() == {"flows": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"verdict": "BOGUS"}, "verdict"),
        ({"protocol": "dns"}, "protocol"),
        ({"since": "last tuesday"}, "since"),
        ({"until": "2024-02-30T00:00:00Z"}, "until"),
        ({"pod": "a/b/c"}, "pod"),
        ({"port": "99999"}, "port"),
        ({"port": "http"}, "port"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100001"}, "limit"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(
    http: TestClient, params: dict[str, str], parameter: str
) -> None:
    r = http.get("/api/v1/flows", params=params)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["query", parameter]
    assert str(list(params.values())[0]) in json.dumps(detail)


def returned(http: TestClient, fmt: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'netwarden_api_flows_returned_total{{format="{fmt}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_metrics(http: TestClient) -> None:
    before = returned(http, "ndjson")
    http.get("/api/v1/flows", params={"cluster": "qa-c2", "format": "ndjson"})
    assert returned(http, "ndjson") == before + 3
    http.get("/api/v1/flows", params={"verdict": "nope"})
    text = http.get("/metrics").text
    assert 'netwarden_api_requests_total{method="GET",route="/api/v1/flows",status="200"}' in text
    assert 'netwarden_api_requests_total{method="GET",route="/api/v1/flows",status="422"}' in text
    assert 'netwarden_api_request_duration_seconds_count{method="GET",route="/api/v1/flows"}' in text


def test_store_failure_is_503(flow_store: FlowStore) -> None:
    class BrokenClient:
        def query(self, *a: object, **kw: object) -> None:
            raise ConnectionError("ClickHouse down")

    app = create_app(FlowStore(BrokenClient()), principal_dependency=bearer_principals(PRINCIPALS))  # type: ignore[arg-type]
    with TestClient(app, headers=AUTH) as client:
        r = client.get("/api/v1/flows")
        assert r.status_code == 503 and r.json() == {"detail": "flow store unavailable"}
        assert "netwarden_api_store_errors_total 1.0" in client.get("/metrics").text


def test_live_hub_adds_the_stream_under_the_same_authentication(flow_store: FlowStore) -> None:
    from query_api.live import STREAM_PATH, LiveHub

    app = create_app(flow_store, principal_dependency=bearer_principals(PRINCIPALS), live_hub=LiveHub())
    with TestClient(app) as client:
        # The route exists (not 404) and refuses a request without a token like every other route.
        assert client.get(STREAM_PATH, headers={"Accept": "text/event-stream"}).status_code == 401
        assert STREAM_PATH in client.get("/openapi.json", headers=AUTH).json()["paths"]

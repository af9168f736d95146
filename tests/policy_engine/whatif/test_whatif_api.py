"""What-if and recommendation over HTTP with the caller's role and scope, and the CLI through the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from netwarden.cli import main
from policy_engine.model import NamespaceRef, Project, Workspace
from policy_engine.roles import PermissionDenied, Principal
from query_api.policy_traffic_routes import PolicyTrafficRouteDeps, router
from query_api.report_routes import store_opener
from query_api.store import FlowStore
from tests.policy_engine.whatif.conftest import admin, new_store, store_demo_traffic
from tests.policy_engine.whatif.test_whatif import deny_port
from tests.query_api.conftest import bearer_principals
from tests.reports.loopback_api import serve

CLUSTER = "wa-east"
ORG = Principal.with_role("org-admin", name="olga")
WENDY = Principal.with_role("workspace-admin", "wa-shop", name="wendy")
NOBODY = Principal(name="nobody", bindings=())


def lock_shop_egress() -> list[dict[str, Any]]:
    """A namespace policy of shop: its pods may only talk to shop (so DNS and the data tier become denied)."""
    return [
        {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "shop-egress-lock"},
         "spec": {"scope": "namespace", "rules": [{"name": "lock", "cilium": {
             "endpointSelector": {},
             "egress": [{"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "shop"}}]}]}}]}},
        {"apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": "shop-egress-lock"},
         "spec": {"policy": "shop-egress-lock", "targets": [{"workspace": "wa-shop"}]}},
    ]


@pytest.fixture(scope="module")
def app(flows: FlowStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    data = tmp_path_factory.mktemp("wa-data")
    store_demo_traffic(flows, CLUSTER, 3_000, seed=3)
    store = new_store(data, CLUSTER)
    with store.transaction():
        cp = admin(store)
        cp.put_project(Project("wa-proj", (CLUSTER,)))
        cp.put_workspace(Workspace("wa-shop", "wa-proj", (NamespaceRef(CLUSTER, "shop"),)))
    store.close()
    app = FastAPI()
    principals = {"org": ORG, "wendy": WENDY, "nobody": NOBODY}
    app.include_router(router(PolicyTrafficRouteDeps(flows, bearer_principals(principals), store_opener(str(data)))))

    @app.exception_handler(PermissionDenied)
    async def denied(_: Any, exc: PermissionDenied) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc), "needed": exc.needed})

    yield app


def post(client: TestClient, token: str, docs: Any, **params: Any) -> Any:
    body = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
    return client.post("/api/v1/policies/what-if", params={"since": "2h", **params}, content=body,
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/yaml"})


def test_what_if_over_http_with_roles_and_scope(app: FastAPI) -> None:
    client = TestClient(app)
    r = post(client, "org", deny_port(53, cluster=CLUSTER))
    assert r.status_code == 200, r.text
    (cluster,) = r.json()["clusters"]
    assert cluster["cluster"] == CLUSTER and {g["port"] for g in cluster["newly_denied"]} == {53}
    # JSON bodies work too.
    r2 = client.post("/api/v1/policies/what-if", params={"since": "2h"}, json=lock_shop_egress(),
                     headers={"Authorization": "Bearer org"})
    assert r2.status_code == 200, r2.text
    # The workspace admin may what-if its own namespace policy and sees only what touches shop, peers redacted.
    r = post(client, "wendy", lock_shop_egress())
    assert r.status_code == 200, r.text
    (cluster,) = r.json()["clusters"]
    denied = cluster["newly_denied"]
    assert denied and all(g["source"]["namespace"] == "shop" for g in denied)
    outside = [g for g in denied if g["destination"]["namespace"] not in ("shop", "")]
    assert outside and all(g["destination"]["workload"] == "" for g in outside)
    world = [g for g in denied if g["destination"]["namespace"] == ""]
    assert world and all(g["destination"]["workload"] == "reserved:world" for g in world)
    assert sum(g["flows"] for g in denied) == sum(g["flows"] for g in r2.json()["clusters"][0]["newly_denied"])
    # ... but not a cluster-wide policy, which needs an infrastructure role.
    r = post(client, "wendy", deny_port(53, cluster=CLUSTER))
    assert r.status_code == 403 and "permission denied" in r.json()["detail"] and r.json()["needed"]
    assert post(client, "nobody", lock_shop_egress()).status_code == 403
    assert post(client, "", lock_shop_egress()).status_code == 401
    bad = post(client, "org", "kind: [unclosed")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body"]
    files = [{"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "p"},
              "spec": {"scope": "namespace", "rules": [{"fromFile": "/etc/hostname"}]}}]
    bad = post(client, "org", files)
    assert bad.status_code == 422 and "fromFile is not accepted" in bad.json()["detail"]
    bad = post(client, "org", lock_shop_egress(), since="yesterday-ish")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "since"]
    assert "/api/v1/policies/what-if" in client.get("/openapi.json").json()["paths"]
    # No documents, baseline observed (`sync --check-history` through the API): the current set against Hubble.
    r = post(client, "org", "", baseline="observed")
    assert r.status_code == 200 and [(c["cluster"], c["newly_denied"]) for c in r.json()["clusters"]] == [(CLUSTER, [])]


def test_recommendation_over_http(app: FastAPI) -> None:
    client = TestClient(app)
    r = client.get("/api/v1/policies/recommendation", params={"cluster": CLUSTER, "namespace": "shop", "since": "2h"},
                   headers={"Authorization": "Bearer wendy"})
    assert r.status_code == 200, r.text
    kinds = [d["kind"] for d in r.json()["documents"]]
    assert kinds == ["Policy", "Assignment"] and r.json()["conversations"] > 0
    by_workspace = client.get("/api/v1/policies/recommendation", params={
        "cluster": CLUSTER, "workspace": "wa-shop", "since": "2h"}, headers={"Authorization": "Bearer wendy"})
    assert by_workspace.status_code == 200 and by_workspace.json()["documents"] == r.json()["documents"]
    r = client.get("/api/v1/policies/recommendation", params={"cluster": CLUSTER, "namespace": "data"},
                   headers={"Authorization": "Bearer wendy"})
    assert r.status_code == 403
    r = client.get("/api/v1/policies/recommendation", params={"cluster": CLUSTER, "namespace": "data",
                                                              "workspace": "wa-shop"},
                   headers={"Authorization": "Bearer org"})
    assert r.status_code == 422


@pytest.fixture(scope="module")
def server(app: FastAPI) -> Iterator[str]:
    with serve(app) as url:
        yield url


def test_cli_through_the_api(server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "lock.yaml"
    docs.write_text(yaml.safe_dump_all(lock_shop_egress()))
    base = ["policy", "what-if", "--server", server, "--since", "2h", "-f", str(docs)]
    capsys.readouterr()
    assert main([*base, "--token", "wendy", "-o", "json"]) == 3
    assert {c["cluster"] for c in json.loads(capsys.readouterr().out)["clusters"]} == {CLUSTER}
    assert main([*base, "--token", "nobody"]) == 2
    assert "permission denied" in capsys.readouterr().err
    assert main(["policy", "recommend", "--server", server, "--token", "wendy", "--cluster", CLUSTER,
                 "--namespace", "shop", "--since", "2h"]) == 0
    out = capsys.readouterr()
    assert [d["kind"] for d in yaml.safe_load_all(out.out)] == ["Policy", "Assignment"]
    assert "observed conversation(s)" in out.err

"""The policy API over HTTP with the demo users' real tokens: list with versions and mode, stage (YAML or JSON
documents), promote, unstage; role rules from the control plane (403 naming the role needed), bad documents 422
naming the field; and `netwarden policy stage/promote/unstage --server` against the same routes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from netwarden.broker import free_port
from netwarden.cli import main
from netwarden.demo_seed import seed_demo
from policy_engine.control_plane import ControlPlane
from policy_engine.inventory import latest_inventory
from policy_engine.model import Assignment, AssignmentTarget, PolicyRule, PolicySpec
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy
from query_api.app import create_app
from query_api.auth import Authenticator
from query_api.store import FlowStore, open_clickhouse
from tests.enrichment.conftest import CART_ALLOW_V1, CART_ALLOW_V2


def policy_doc(name: str, spec: dict[str, Any], scope: str = "namespace", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": name},
            "spec": {"scope": scope, **extra, "rules": [{"name": name, "cilium": spec}]}}


@pytest.fixture
def api(tmp_path: Path, chdb_dsn: str) -> Iterator[tuple[TestClient, dict[str, str], Path]]:
    with ControlPlaneStore.open(tmp_path) as store:
        entries = seed_demo(store, tmp_path)
        with store.transaction():
            cp = ControlPlane(store, Principal.with_role("org-admin", name="test"))
            cp.put_policy(PolicySpec("cart-allow", "namespace", (PolicyRule("cart-allow", "cilium", CART_ALLOW_V1),)))
            cp.put_assignment(Assignment("cart", policy="cart-allow", targets=(AssignmentTarget(workspace="shop-team"),)))
    tenancy = Tenancy.open(tmp_path)
    app = create_app(FlowStore(open_clickhouse(None, chdb_dsn)), CollectorRegistry(),
                     authenticator=Authenticator(tenancy), ownership=tenancy.ownership)
    try:
        yield TestClient(app), {e["name"]: e["token"] for e in entries}, tmp_path
    finally:
        tenancy.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cart_state(client: TestClient, token: str) -> dict[str, Any]:
    r = client.get("/api/v1/policies", headers=auth(token))
    assert r.status_code == 200, r.text
    return next(p for p in r.json()["policies"] if p["name"] == "cart-allow")


def test_stage_promote_unstage_over_http_with_role_rules(api: tuple[TestClient, dict[str, str], Path]) -> None:
    client, tokens, data = api
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in (("/api/v1/policies", "get"), ("/api/v1/policies/stage", "post"),
                         ("/api/v1/policies/{name}/promote", "post"), ("/api/v1/policies/{name}/staged", "delete")):
        assert {"200", "401", "403"} <= set(paths[path][method]["responses"]), path
    assert set(paths["/api/v1/policies/stage"]["post"]["requestBody"]["content"]) == {"application/yaml", "application/json"}
    assert client.get("/api/v1/policies").status_code == 401
    state = cart_state(client, tokens["walter"])  # read-only roles read
    assert (state["mode"], state["enforced"]["version"], state["staged"]) == ("enforced", 1, None)

    body = yaml.safe_dump(policy_doc("cart-allow", CART_ALLOW_V2))
    # A read-only role, and a workspace admin of another workspace, may not stage it.
    for user in ("walter", "oscar"):
        r = client.post("/api/v1/policies/stage", content=body, headers={**auth(tokens[user]), "Content-Type": "application/yaml"})
        assert r.status_code == 403, r.text
        assert "staging namespace policy cart-allow" in r.json()["detail"]
        assert r.json()["needed"].startswith("role org-admin, project-admin")
    r = client.post("/api/v1/policies/stage", content=body, headers={**auth(tokens["wendy"]), "Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    assert r.json()["changes"] == [{"kind": "Policy", "name": "cart-allow", "action": "stage", "detail": "staged version 2"}]
    state = cart_state(client, tokens["wendy"])
    assert (state["mode"], state["enforced"]["version"], state["staged"]["version"]) == ("enforced+staged", 1, 2)
    assert state["staged"]["created_by"] == "wendy"
    with ControlPlaneStore.open(data) as store:
        assert [v.version for v in latest_inventory(store)["demo-east"].staged.staged_versions] == [2]

    # Cluster-wide is infrastructure: not a workspace admin's, staged or not.
    deny = json.dumps(policy_doc("stage-deny-all", {"endpointSelector": {}, "ingress": [{}]}, scope="cluster"))
    r = client.post("/api/v1/policies/stage", content=deny, headers={**auth(tokens["wendy"]), "Content-Type": "application/json"})
    assert r.status_code == 403 and "org-admin or infra-admin" in r.json()["needed"]
    # JSON documents, as a list under "documents"; bad input names the document and field.
    bad = {"documents": [policy_doc("x", CART_ALLOW_V1, mode="audit")]}
    r = client.post("/api/v1/policies/stage", json=bad, headers=auth(tokens["olivia"]))
    assert r.status_code == 422
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "document 1", "spec.mode"] and "expected one of enforced, staged" in problem["msg"]
    r = client.post("/api/v1/policies/stage", content="kind: [", headers={**auth(tokens["olivia"]), "Content-Type": "application/yaml"})
    assert r.status_code == 422 and "invalid YAML" in r.json()["detail"][0]["msg"]

    assert client.post("/api/v1/policies/cart-allow/promote", headers=auth(tokens["walter"])).status_code == 403
    r = client.post("/api/v1/policies/cart-allow/promote", headers=auth(tokens["wendy"]))
    assert r.status_code == 200 and r.json() == {"policy": "cart-allow", "version": 3, "promoted_from": 2}
    state = cart_state(client, tokens["wendy"])
    assert (state["mode"], state["enforced"]["version"], state["enforced"]["message"]) == (
        "enforced", 3, "promoted staged version 2")
    r = client.delete("/api/v1/policies/cart-allow/staged", headers=auth(tokens["wendy"]))
    assert r.status_code == 404 and "has no staged version" in r.json()["detail"]
    assert client.post("/api/v1/policies/nope/promote", headers=auth(tokens["olivia"])).status_code == 404

    r = client.post("/api/v1/policies/stage", json=policy_doc("cart-allow", CART_ALLOW_V1), headers=auth(tokens["olivia"]))
    assert r.status_code == 200 and r.json()["changes"][0]["detail"] == "staged version 4"
    assert client.delete("/api/v1/policies/cart-allow/staged", headers=auth(tokens["walter"])).status_code == 403
    r = client.delete("/api/v1/policies/cart-allow/staged", headers=auth(tokens["wendy"]))
    assert r.status_code == 200 and r.json() == {"policy": "cart-allow", "unstaged_version": 4}
    r = client.get("/api/v1/policies", params={"documents": "true"}, headers=auth(tokens["oscar"]))
    docs = [d for d in r.json()["documents"] if d["metadata"]["name"] == "cart-allow"]
    assert len(docs) == 1 and docs[0]["status"]["version"] == 3 and "mode" not in docs[0]["spec"]


def test_the_cli_stages_through_the_api(
    api: tuple[TestClient, dict[str, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, tokens, _data = api
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.02)
        url = f"http://127.0.0.1:{port}"
        file = tmp_path / "cart.yaml"
        file.write_text(yaml.safe_dump(policy_doc("cart-allow", CART_ALLOW_V2)))
        assert main(["policy", "stage", "-f", str(file), "--server", url, "--token", tokens["walter"]]) == 2
        assert "permission denied: " in capsys.readouterr().err
        assert main(["policy", "stage", "-f", str(file), "--server", url, "--token", tokens["wendy"]]) == 0
        assert "stage     Policy cart-allow (staged version 2)" in capsys.readouterr().out
        assert main(["policy", "promote", "cart-allow", "--server", url, "--token", tokens["wendy"]]) == 0
        assert "staged version 2 promoted: enforced as version 3" in capsys.readouterr().out
        assert main(["policy", "unstage", "cart-allow", "--server", url, "--token", tokens["wendy"]]) == 2
        assert "has no staged version" in capsys.readouterr().err
    finally:
        server.should_exit = True
        thread.join(10)

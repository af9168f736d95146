"""The policy API's role rules, over real HTTP with the demo users' real tokens: a workspace admin writes namespace
policies of its own workspace and nothing else (through the API and through `netwarden apply --server`);
read-only roles get 403 on every write route; errors name the field, the role needed, or the version held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.policy_api.conftest import CLUSTER_POLICY, DATA_POLICY, SHOP_POLICY, Cli, Served

YAML = {"Content-Type": "application/yaml"}


def test_workspace_admin_writes_its_own_namespace_policy_and_nothing_wider(api: Served) -> None:
    wendy = api.http("workspace-admin")  # workspace-admin of shop-team = demo-east/shop
    for body, needed in ((CLUSTER_POLICY, "role org-admin or infra-admin"),
                         (DATA_POLICY, "covering namespace(s) demo-east/data")):
        r = wendy.post("/api/v1/apply", content=body, headers=YAML)
        assert r.status_code == 403, r.text
        assert needed in r.json()["needed"] and "principal 'wendy'" in r.json()["detail"]
    # All or nothing: the refused documents wrote nothing.
    assert wendy.get("/api/v1/policies/guard-smtp").status_code == 404
    assert wendy.get("/api/v1/policies/data-allow-web").status_code == 404

    r = wendy.post("/api/v1/apply", content=SHOP_POLICY, headers=YAML)
    assert r.status_code == 200, r.text
    assert [(c["kind"], c["action"]) for c in r.json()["changes"]] == [("Policy", "create"), ("Assignment", "create")]
    doc = wendy.get("/api/v1/policies/shop-allow-web").json()
    assert doc["status"]["version"] == 1 and doc["status"]["updatedBy"] == "wendy"
    # Her namespace policy is rendered to her namespace's cluster.
    objects = api.http("org-admin").get("/api/v1/clusters/demo-east/render").json()["objects"]
    assert any(o["metadata"]["name"] == "shop-allow-web" and o["metadata"]["namespace"] == "shop" for o in objects)


def test_workspace_admin_through_the_cli(api: Served, cli: Cli, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    server = ["--server", api.url, "--token", api.tokens["workspace-admin"]]
    files = {}
    for name, body in (("cluster.yaml", CLUSTER_POLICY), ("data.yaml", DATA_POLICY), ("shop.yaml", SHOP_POLICY)):
        files[name] = tmp_path / name
        files[name].write_text(body)
    _, err = cli("apply", "-f", str(files["cluster.yaml"]), *server, code=2)
    assert err == (f"netwarden: {files['cluster.yaml']}: document 1 (Policy guard-smtp): spec.scope: permission denied: "
                   "writing cluster policy guard-smtp needs role org-admin or infra-admin; principal 'wendy' has "
                   "workspace-admin of workspace shop-team\n")
    _, err = cli("apply", "-f", str(files["data.yaml"]), *server, code=2)
    assert f"{files['data.yaml']}: document 2 (Assignment data-allow-web): spec.targets: permission denied" in err
    assert "covering namespace(s) demo-east/data" in err
    # NETWARDEN_SERVER / NETWARDEN_TOKEN stand for the flags.
    monkeypatch.setenv("NETWARDEN_SERVER", api.url)
    monkeypatch.setenv("NETWARDEN_TOKEN", api.tokens["workspace-admin"])
    out, _ = cli("apply", "-f", str(files["shop.yaml"]))
    assert out.splitlines() == ["create    Policy shop-allow-web (version 1)", "create    Assignment shop-allow-web",
                                "2 document(s), 2 change(s)"]
    # The token decides the role: a flag cannot claim another one.
    _, err = cli("apply", "-f", str(files["cluster.yaml"]), "--as-role", "org-admin", code=2)
    assert "with --server the token decides the role" in err
    monkeypatch.delenv("NETWARDEN_TOKEN")
    _, err = cli("get", "policies", code=2)
    assert "the server refused the token" in err


def _writes(api: Served) -> list[tuple[str, str, dict[str, Any]]]:
    """One request per write route of the control-plane API, each a change the org admin could make."""
    changed = SHOP_POLICY.replace('"8080"', '"9090"')  # applying what is stored needs no write role
    policy = changed.split("---")[0]
    cluster = {"apiVersion": "netwarden.io/v1", "kind": "Cluster", "metadata": {"name": "demo-east"},
               "spec": {"type": "upstream", "primaryCNI": "calico", "namespaces": ["shop"]}}
    blueprint = api.http("org-admin").get("/api/v1/blueprints/demo-zero-trust").json()
    blueprint["spec"]["description"] = "changed"
    assignment = {"apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": "shop-allow-web"},
                  "spec": {"policy": "payments-egress", "targets": [{"cluster": "demo-east", "namespace": "shop"}]}}
    return [
        ("POST", "/api/v1/apply", {"content": changed, "headers": YAML}),
        ("PUT", "/api/v1/policies/{name}", {"content": policy, "headers": YAML}),
        ("DELETE", "/api/v1/policies/{name}", {}),
        ("POST", "/api/v1/policies/{name}/rollback", {"json": {"to_version": 1}}),
        ("POST", "/api/v1/policies/stage", {"content": policy, "headers": YAML}),
        ("POST", "/api/v1/policies/{name}/promote", {}),
        ("DELETE", "/api/v1/policies/{name}/staged", {}),
        ("PUT", "/api/v1/blueprints/{name}", {"json": blueprint}),
        ("DELETE", "/api/v1/blueprints/{name}", {}),
        ("PUT", "/api/v1/assignments/{name}", {"json": assignment}),
        ("DELETE", "/api/v1/assignments/{name}", {}),
        ("PUT", "/api/v1/clusters/{name}", {"json": cluster}),
        ("DELETE", "/api/v1/clusters/{name}", {}),
        ("POST", "/api/v1/clusters/{name}/sync", {}),
        ("PUT", "/api/v1/admin/projects/{name}", {"json": {"clusters": ["demo-east"]}}),
        ("DELETE", "/api/v1/admin/projects/{name}", {}),
        ("PUT", "/api/v1/admin/workspaces/{name}", {"json": {"project": "storefront", "namespaces": ["demo-east/x"]}}),
        ("DELETE", "/api/v1/admin/workspaces/{name}", {}),
        ("PUT", "/api/v1/admin/users/{name}", {}),
        ("DELETE", "/api/v1/admin/users/{name}", {}),
        ("POST", "/api/v1/admin/bindings", {"json": {"user": "walter", "role": "org-admin"}}),
        ("DELETE", "/api/v1/admin/bindings", {"params": {"user": "wendy", "role": "workspace-admin",
                                                         "scope": "shop-team"}}),
        ("POST", "/api/v1/admin/tokens", {"json": {"user": "olivia"}}),
        ("DELETE", "/api/v1/admin/tokens/{token_id}", {}),
    ]


# Each path parameter names an object the org admin could change (so a 403 is the role's, not a 404).
NAMES = {"/api/v1/policies/{name}/promote": "frontend-egress", "/api/v1/policies/{name}/staged": "frontend-egress",
         "/api/v1/policies/{name}": "shop-allow-web", "/api/v1/policies/{name}/rollback": "shop-allow-web",
         "/api/v1/blueprints/{name}": "demo-zero-trust", "/api/v1/assignments/{name}": "shop-allow-web",
         "/api/v1/clusters/{name}": "demo-east", "/api/v1/clusters/{name}/sync": "demo-east",
         "/api/v1/admin/projects/{name}": "storefront", "/api/v1/admin/workspaces/{name}": "shop-team",
         "/api/v1/admin/users/{name}": "wendy", "/api/v1/admin/tokens/{token_id}": "0123456789ab"}


def test_read_only_roles_get_403_on_every_write(api: Served) -> None:
    writes = _writes(api)
    olivia = api.http("org-admin")
    with olivia:
        olivia.post("/api/v1/apply", content=SHOP_POLICY, headers=YAML).raise_for_status()  # the assignment exists
        spec = olivia.get("/openapi.json").json()["paths"]
    # Every write route of the API is in the list (a new one must be added here).
    declared = {(m.upper(), p) for p, ops in spec.items() for m in ops
                if m in ("put", "post", "delete") and p not in ("/api/v1/diff", "/api/v1/policies/what-if")}
    assert declared == {(m, p) for m, p, _ in writes}
    for role in ("org-read-only", "project-read-only", "workspace-read-only"):
        with api.http(role) as client:
            for method, path, kwargs in writes:
                url = path.replace("{name}", NAMES.get(path, "")).replace("{token_id}", NAMES.get(path, ""))
                r = client.request(method, url, **kwargs)
                assert r.status_code == 403, (role, method, url, r.status_code, r.text)
                assert r.json()["needed"].startswith(("role org-admin", "role org-admin or")), r.text


def test_errors_name_the_field_the_version_or_the_object(api: Served) -> None:
    with api.http("org-admin") as olivia:
        bad = SHOP_POLICY.replace("scope: namespace", "scope: galaxy")
        r = olivia.post("/api/v1/apply", content=bad, headers=YAML)
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "document 1", "spec.scope"]
        assert "expected one of cluster, namespace, found 'galaxy'" in r.json()["detail"][0]["msg"]
        r = olivia.put("/api/v1/policies/other", content=SHOP_POLICY.split("---")[0], headers=YAML)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "metadata.name"]
        assert olivia.get("/api/v1/policies/nope").status_code == 404
        assert olivia.get("/api/v1/clusters/nope/render").status_code == 404
        r = olivia.post("/api/v1/policies/payments-egress/rollback", json={"to_version": 99})
        assert r.status_code == 404 and "has no version 99" in r.json()["detail"]
        # Optimistic concurrency: a writer that read version 1 loses to one that wrote version 2 in between.
        first = SHOP_POLICY.split("---")[0]
        assert olivia.put("/api/v1/policies/shop-allow-web", params={"expected_version": 0}, content=first,
                          headers=YAML).json() == {"policy": "shop-allow-web", "version": 1, "result": "created"}
        second = first.replace('"8080"', '"8081"')
        assert olivia.put("/api/v1/policies/shop-allow-web", params={"expected_version": 1}, content=second,
                          headers=YAML).json()["version"] == 2
        r = olivia.put("/api/v1/policies/shop-allow-web", params={"expected_version": 1},
                       content=first.replace('"8080"', '"8082"'), headers=YAML)
        assert r.status_code == 409 and r.json()["current_version"] == 2
        # Still used by an assignment: a conflict with the store's state.
        r = olivia.delete("/api/v1/policies/payments-egress")
        assert r.status_code == 409 and "still used by" in r.json()["detail"]


def test_an_oidc_user_writes_as_its_mapped_role(tmp_path: Path) -> None:
    """The principal may come from an OIDC JWT (groups mapped to roles): the same engine rules apply."""
    from prometheus_client import CollectorRegistry

    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator, OIDCConfig
    from tests.policy_api.conftest import seed
    from tests.reports.loopback_api import serve
    from tests.tenancy.test_auth import AUDIENCE, ISSUER, Issuer

    seed(tmp_path / "data")
    issuer, tenancy = Issuer(), Tenancy.open(tmp_path / "data")
    config = OIDCConfig.from_mapping({"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": issuer.jwks_url, "roles": {
        "claim": "groups", "map": {"shop-devs": {"role": "workspace-admin", "scope": "shop-team"}}}})
    app = create_app(None, CollectorRegistry(), authenticator=Authenticator(tenancy, config),  # type: ignore[arg-type]
                     ownership=tenancy.ownership)
    try:
        with serve(app) as url, httpx.Client(base_url=url, timeout=30,
                                             headers={"Authorization": f"Bearer {issuer.token()}"}) as dev:
            r = dev.post("/api/v1/apply", content=DATA_POLICY, headers=YAML)
            assert r.status_code == 403 and "principal 'user-123' has workspace-admin of workspace shop-team" in r.text
            assert dev.post("/api/v1/apply", content=SHOP_POLICY, headers=YAML).status_code == 200
            assert dev.get("/api/v1/policies/shop-allow-web").json()["status"]["updatedBy"] == "user-123"
    finally:
        issuer.close()
        tenancy.close()

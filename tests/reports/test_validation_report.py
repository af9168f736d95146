"""The validation report end to end on real parts: flows in chDB (inserted through the real decoder), a control
plane applied and synced with the CLI to the kube API stand-in, planted faults; read through the gathering
function, the HTTP route (with role tokens) and the CLI.

Planted: db's pods started before Cilium (no CiliumEndpoint) and db talks to blog (forwarded, the default deny
denies it: not in effect, cause unmanaged pods); the api ingress object edited on the cluster (web -> api
dropped: unexpected drop, cause drifted); a hand-made policy denies blog's DNS (unexpected drop, named from
Hubble's attribution); a rule for a pgadmin that never talks (unused).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from netwarden.cli import main
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from query_api.report_data import ReportParams, validation_report
from query_api.report_routes import ValidationReportModel
from query_api.store import FlowStore, open_clickhouse
from schemas.clickhouse import FLOWS_TABLE
from streams.decode import FlowDecoder
from tests.kube_api_stub import KubeApiStub
from tests.query_api.conftest import encode
from tests.reports.loopback_api import serve

CLUSTER = "rep-it"
AGENT_START = "2026-01-01T10:00:00Z"


def _documents(api_server: str) -> str:
    return f"""
apiVersion: netwarden.io/v1
kind: Cluster
metadata: {{name: {CLUSTER}}}
spec: {{type: EKS, primaryCNI: aws-cni, apiServer: "{api_server}", namespaces: [shop, blog]}}
---
apiVersion: netwarden.io/v1
kind: Project
metadata: {{name: rep-proj}}
spec: {{clusters: [{CLUSTER}]}}
---
apiVersion: netwarden.io/v1
kind: Workspace
metadata: {{name: rep-shop}}
spec: {{project: rep-proj, namespaces: ["{CLUSTER}/shop"]}}
---
apiVersion: netwarden.io/v1
kind: Workspace
metadata: {{name: rep-blog}}
spec: {{project: rep-proj, namespaces: ["{CLUSTER}/blog"]}}
---
apiVersion: netwarden.io/v1
kind: Policy
metadata: {{name: shop-internal}}
spec:
  scope: namespace
  rules:
    - name: api-ingress
      cilium:
        endpointSelector: {{matchLabels: {{app: api}}}}
        ingress:
          - fromEndpoints: [{{matchLabels: {{app: web}}}}]
            toPorts: [{{ports: [{{port: "8080", protocol: TCP}}]}}]
          - fromEndpoints: [{{matchLabels: {{app: pgadmin}}}}]
    - name: web-egress
      cilium:
        endpointSelector: {{matchLabels: {{app: web}}}}
        egress:
          - toEndpoints: [{{matchLabels: {{app: api}}}}]
            toPorts: [{{ports: [{{port: "8080", protocol: TCP}}]}}]
---
apiVersion: netwarden.io/v1
kind: Blueprint
metadata: {{name: rep-bp}}
spec:
  installProfile: {{engine: cilium-chaining}}
  clusterPolicies: [zero-trust-day0-default-deny, zero-trust-day0-allow-dns]
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {{name: rep-bp-clusters}}
spec: {{blueprint: rep-bp, clusters: [{CLUSTER}]}}
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {{name: rep-shop-internal}}
spec: {{policy: shop-internal, targets: [{{workspace: rep-shop}}]}}
"""


def _pod(ns: str, name: str, app: str, workload: str, started: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "labels": {"app": app, "pod-template-hash": "7c9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{workload}-7c9",
                                 "controller": True, "uid": "u"}],
        },
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "startTime": started},
    }


def _seed_cluster(stub: KubeApiStub) -> None:
    agent = _pod("kube-system", "cilium-n1", "cilium", "cilium", AGENT_START)
    agent["metadata"]["labels"] = {"k8s-app": "cilium"}
    stub.put(agent)
    for ns, app, started, enforced in (
        ("shop", "web", "2026-01-02T00:00:00Z", True),
        ("shop", "api", "2026-01-02T00:00:00Z", True),
        ("shop", "db", "2025-12-31T00:00:00Z", False),  # started before Cilium, never restarted
        ("blog", "blog", "2026-01-02T00:00:00Z", True),
    ):
        name = f"{app}-7c9-x"
        stub.put(_pod(ns, name, app, app, started))
        if enforced:
            stub.put({"apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
                      "metadata": {"name": name, "namespace": ns}})


def _side(ns: str, app: str, identity: int) -> dict[str, Any]:
    return {
        "identity": identity, "namespace": ns, "pod_name": f"{app}-7c9-x",
        "labels": [f"k8s:app={app}", f"k8s:io.kubernetes.pod.namespace={ns}"],
        "workloads": [{"name": app, "kind": "Deployment"}],
    }


WEB, API, DB, BLOG = _side("shop", "web", 51001), _side("shop", "api", 51002), _side("shop", "db", 51003), \
    _side("blog", "blog", 51004)
DNS = {"identity": 51005, "namespace": "kube-system", "pod_name": "coredns-1",
       "labels": ["k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"],
       "workloads": [{"name": "coredns", "kind": "Deployment"}]}


def _flows(now_ns: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(n: int, src: dict[str, Any], dst: dict[str, Any], l4: dict[str, Any], verdict: str = "FORWARDED",
            **extra: Any) -> None:
        for _ in range(n):
            t = now_ns - 20 * 60 * 1_000_000_000 + len(out) * 1_000_000
            seconds, nanos = divmod(t, 1_000_000_000)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
            flow = {"time": stamp, "uuid": f"00000000-0000-4000-9000-{len(out):012d}", "verdict": verdict,
                    "IP": {"source": "10.1.0.1", "destination": "10.1.0.2", "ipVersion": "IPv4"},
                    "l4": l4, "source": src, "destination": dst, "Type": "L3_L4", "node_name": "n1",
                    "event_type": {"type": 1 if verdict == "DROPPED" else 4},
                    "traffic_direction": "EGRESS", "is_reply": False, **extra}
            out.append({"flow": flow, "node_name": "n1", "time": stamp})

    tcp = {"TCP": {"source_port": 40000, "destination_port": 8080}}
    add(5, WEB, API, tcp)  # allowed, in effect
    add(40, DB, BLOG, {"TCP": {"source_port": 40001, "destination_port": 5432}})  # not in effect (unmanaged db)
    add(4, WEB, API, tcp, "DROPPED", drop_reason_desc="POLICY_DENIED", traffic_direction="INGRESS")  # drifted
    add(7, BLOG, DNS, {"UDP": {"source_port": 40002, "destination_port": 53}}, "DROPPED",
        drop_reason_desc="POLICY_DENY",
        egress_denied_by=[{"kind": "CiliumNetworkPolicy", "namespace": "blog", "name": "hand-made"}])
    return out


@pytest.fixture(scope="module")
def world(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("report-control-plane")
    with KubeApiStub(cilium=True, namespaces=("default", "kube-system", "shop", "blog")) as stub:
        _seed_cluster(stub)
        docs = data / "docs.yaml"
        docs.write_text(_documents(stub.url))
        assert main(["apply", "-f", str(docs), "--data-dir", str(data)]) == 0
        assert main(["sync", "--cluster", CLUSTER, "--data-dir", str(data)]) == 0
        # By hand on the cluster: the api ingress object loses its web rule.
        stub.edit("CiliumNetworkPolicy", "shop-internal-api-ingress", "shop",
                  lambda o: o["spec"].update(ingress=o["spec"]["ingress"][1:]))
        flows = FlowStore(open_clickhouse(str(chdb_dir), None))
        flows.ensure_schema()
        now_ns = time.time_ns()
        batch = FlowDecoder().decode(CLUSTER, [encode(r) for r in _flows(now_ns)])
        assert not batch.rejected, batch.rejected
        flows.client.insert_arrow(FLOWS_TABLE, batch.table)
        control = ControlPlaneStore.open(data)
        yield {"flows": flows, "control": control, "data": data, "stub": stub, "now_ns": now_ns}
        control.close()
        flows.close()


def _report(world: dict[str, Any], principal: Principal, **params: Any) -> dict[str, Any]:
    return validation_report(world["flows"], world["control"], principal, ReportParams(cluster=CLUSTER, **params))


ORG = Principal.with_role("org-admin", name="org")
BLOG_ADMIN = Principal.with_role("workspace-admin", "rep-blog", name="wendy")


def test_each_planted_fault_lands_in_its_list(world: dict[str, Any]) -> None:
    (c,) = _report(world, ORG)["clusters"]
    assert c["kube"] == {"reachable": True, "error": ""}
    # not in effect: db's egress, caused by its pods started before Cilium
    (group,) = [g for g in c["not_in_effect"] if g["workload"] == "db"]
    assert group["direction"] == "egress" and group["flows"] == 40
    assert group["cause"] == "unmanaged-pods"
    assert [p["name"] for p in group["causes"][0]["pods"]] == ["db-7c9-x"]
    assert group["causes"][0]["fix"] == f"netwarden sync --cluster {CLUSTER} --restart-unmanaged"
    # unexpected drops: web -> api (allowing object edited on the cluster), blog DNS (hand-made policy)
    drops = {(d["source"]["workload"], d["destination"]["workload"]): d for d in c["unexpected_drops"]}
    assert drops[("web", "api")]["cause"] == "drifted"
    assert "CiliumNetworkPolicy/shop/shop-internal-api-ingress" in drops[("web", "api")]["causes"][0]["objects"]
    assert drops[("blog", "coredns")]["cause"] == "unmanaged-policy"
    assert "CiliumNetworkPolicy/blog/hand-made" in drops[("blog", "coredns")]["causes"][0]["detail"]
    # unused: the pgadmin rule; the web rule decided the 5 forwarded + 4 dropped flows
    unused = {(r["policy"], r["object"], r["rule"]) for r in c["unused_rules"]}
    assert ("shop-internal", "CiliumNetworkPolicy/shop/shop-internal-api-ingress", "ingress[1]") in unused
    used = {(r["object"], r["rule"]): r for r in c["rules"]}
    web_rule = used[("CiliumNetworkPolicy/shop/shop-internal-api-ingress", "ingress[0]")]
    assert web_rule["flows"] == 9 and web_rule["version"] == 1 and web_rule["last_matched"]
    # coverage: default deny on in both namespaces; every shop workload selected for egress
    shop = next(n for n in c["namespaces"] if n["namespace"] == "shop")
    assert shop["workspace"] == "rep-shop"
    assert shop["default_deny"] == {"ingress": True, "egress": True}
    assert shop["coverage"]["egress"]["workloads_selected"] == shop["coverage"]["egress"]["workloads_total"] == 3
    # drops from the rollups, the top dropped conversations from history
    assert {r["reason"]: r["flows"] for r in c["drops"]["by_reason"]} == {"POLICY_DENY": 7, "POLICY_DENIED": 4}
    assert c["drops"]["by_policy"] == [{"kind": "CiliumNetworkPolicy", "namespace": "blog", "name": "hand-made",
                                        "flows": 7}]
    # the report's own drops come from the rollups: the same counts
    report = _report(world, ORG)
    assert {r["reason"]: r["flows"] for r in report["drops"]["by_reason"]} == {"POLICY_DENY": 7, "POLICY_DENIED": 4}
    assert sum(sum(b["verdicts"].values()) for b in report["drops"]["buckets"]) == 56
    assert [t["flows"] for t in c["drops"]["top_conversations"]] == [7, 4]


def test_missing_object_and_unreachable_cluster(world: dict[str, Any]) -> None:
    stub: KubeApiStub = world["stub"]
    saved = stub.get("CiliumClusterwideNetworkPolicy", "zero-trust-day0-default-deny")
    assert saved is not None
    stub.delete("CiliumClusterwideNetworkPolicy", "zero-trust-day0-default-deny")
    try:
        (c,) = _report(world, ORG)["clusters"]
        (group,) = [g for g in c["not_in_effect"] if g["workload"] == "db"]
        assert [x["cause"] for x in group["causes"]] == ["unmanaged-pods", "missing"]
    finally:
        stub.put(saved, manager="netwarden")
    (c,) = _report(world, ORG, live=False)["clusters"]
    assert c["kube"] is None
    assert c["not_in_effect"][0]["cause"] == "unknown"


def test_workspace_admin_sees_only_its_workspace(world: dict[str, Any]) -> None:
    (c,) = _report(world, BLOG_ADMIN)["clusters"]
    assert [n["namespace"] for n in c["namespaces"]] == ["blog"]
    assert c["not_in_effect"] == []  # db's egress is shop's business
    assert not any("/shop/" in r["object"] for r in c["rules"])
    for d in c["unexpected_drops"] + c["drops"]["top_conversations"]:
        assert "blog" in (d["source"]["namespace"], d["destination"]["namespace"])
    everywhere = json.dumps(c)
    assert "db-7c9-x" not in everywhere and "web" not in {d["source"]["workload"] for d in c["unexpected_drops"]}
    from policy_engine.roles import PermissionDenied

    with pytest.raises(PermissionDenied):
        _report(world, BLOG_ADMIN, workspace="rep-shop")


@pytest.fixture(scope="module")
def tokens(world: dict[str, Any]) -> dict[str, str]:
    """Real API tokens, as `netwarden admin token create` makes them."""
    from policy_engine.tenancy import Tenancy

    tenancy = Tenancy(world["control"])
    out = {}
    for user, role, scope in (("rep-org", "org-admin", None), ("rep-wendy", "workspace-admin", "rep-blog")):
        tenancy.create_user(user)
        tenancy.add_binding(user, role, scope)
        out[user] = tenancy.create_token(user)[1]
    tenancy.create_user("rep-nobody")
    out["rep-nobody"] = tenancy.create_token("rep-nobody")[1]
    return out


@pytest.fixture(scope="module")
def client(world: dict[str, Any], tokens: dict[str, str]) -> Iterator[TestClient]:
    """The API as `netwarden up` builds it: create_app with an Authenticator on the control-plane store."""
    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator

    tenancy = Tenancy.open(world["data"])
    app = create_app(world["flows"], authenticator=Authenticator(tenancy), ownership=tenancy.ownership)
    with TestClient(app) as c:
        yield c
    tenancy.close()


def test_route_json_html_and_refusals(client: TestClient, tokens: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {tokens['rep-org']}"}
    wendy_auth = {"Authorization": f"Bearer {tokens['rep-wendy']}"}
    r = client.get("/api/v1/reports/validation", params={"cluster": CLUSTER}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    ValidationReportModel.model_validate(body)  # what /openapi.json publishes is what is served
    assert set(body["window"]) == {"since", "until"}
    (c,) = body["clusters"]
    assert {"cluster", "namespaces", "not_in_effect", "unexpected_drops", "unused_rules", "staged"} <= set(c)
    assert {"namespace", "workspace", "default_deny", "coverage"} <= set(c["namespaces"][0])
    assert {"policy", "version", "rule", "flows", "last_matched"} <= set(c["unused_rules"][0])

    openapi = client.get("/openapi.json").json()
    assert "ValidationReportModel" in openapi["components"]["schemas"]
    assert {"200", "401", "403", "422"} <= set(openapi["paths"]["/api/v1/reports/validation"]["get"]["responses"])

    page = client.get("/api/v1/reports/validation", params={"cluster": CLUSTER, "format": "html"}, headers=auth)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<svg" in html and "db-7c9-x" in html and "netwarden sync --cluster rep-it --restart-unmanaged" in html
    for external in ("://", "<script", "<link", "@import", "url("):
        assert external not in html

    wendy = client.get("/api/v1/reports/validation", params={"cluster": CLUSTER},
                       headers=wendy_auth)
    assert [n["namespace"] for n in wendy.json()["clusters"][0]["namespaces"]] == ["blog"]
    assert client.get("/api/v1/reports/validation", params={"workspace": "rep-shop"},
                      headers=wendy_auth).status_code == 403
    bad = client.get("/api/v1/reports/validation", params={"workspace": "no-such"}, headers=auth)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "workspace"]
    assert client.get("/api/v1/reports/validation", params={"since": "yesterday"}, headers=auth).status_code == 422
    typo = client.get("/api/v1/reports/validation", params={"cluster": "rep-itt"}, headers=auth)
    assert typo.status_code == 422 and typo.json()["detail"][0]["loc"] == ["query", "cluster"]
    assert client.get("/api/v1/reports/validation").status_code == 401
    assert client.get("/api/v1/reports/validation", headers={"Authorization": f"Bearer {tokens['rep-nobody']}"}).status_code == 403


def test_cli_local_table_json_and_errors(world: dict[str, Any], chdb_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NETWARDEN_CLICKHOUSE", f"chdb://{(chdb_dir / 'clickhouse').resolve()}")
    monkeypatch.setenv("NETWARDEN_DATA_DIR", str(world["data"]))
    assert main(["report", "validate", "--cluster", CLUSTER, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["clusters"][0]["cluster"] == CLUSTER
    assert main(["report", "validate", "--cluster", CLUSTER]) == 0
    table = capsys.readouterr().out
    assert "NOT IN EFFECT" in table and "shop/db egress" in table and "--restart-unmanaged" in table
    assert "UNUSED RULES" in table and "ingress[1]" in table
    assert main(["report", "validate", "--cluster", CLUSTER, "--workspace", "rep-blog",
                 "--as-role", "workspace-admin", "--scope", "rep-blog", "-o", "json"]) == 0
    assert [n["namespace"] for n in json.loads(capsys.readouterr().out)["clusters"][0]["namespaces"]] == ["blog"]
    assert main(["report", "validate", "--since", "soon"]) == 2
    assert "--since" in capsys.readouterr().err
    assert main(["report", "validate", "--data-dir", str(world["data"] / "nothing-here")]) == 2
    assert "no flow history there" in capsys.readouterr().err


def test_namespace_selection(world: dict[str, Any]) -> None:
    (c,) = _report(world, ORG, namespace="shop")["clusters"]
    assert [n["namespace"] for n in c["namespaces"]] == ["shop"]
    assert [g["workload"] for g in c["not_in_effect"]] == ["db"]
    from policy_engine.roles import PermissionDenied

    with pytest.raises(PermissionDenied):
        _report(world, BLOG_ADMIN, namespace="shop")


@pytest.fixture(scope="module")
def server(world: dict[str, Any]) -> Iterator[str]:
    """The same API under uvicorn on loopback, for the CLI's --server mode."""
    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator

    tenancy = Tenancy.open(world["data"])
    app = create_app(world["flows"], authenticator=Authenticator(tenancy), ownership=tenancy.ownership)
    with serve(app) as url:
        yield url
    tenancy.close()


def test_cli_through_the_api(server: str, tokens: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    org = ["report", "validate", "--server", server, "--token", tokens["rep-org"], "--cluster", CLUSTER]
    assert main([*org, "-o", "json"]) == 0
    (c,) = json.loads(capsys.readouterr().out)["clusters"]
    assert [g["workload"] for g in c["not_in_effect"]] == ["db"]
    assert main([*org, "-o", "html"]) == 0
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")
    assert main(org) == 0
    assert "shop/db egress" in capsys.readouterr().out
    wendy = ["report", "validate", "--server", server, "--token", tokens["rep-wendy"]]
    assert main([*wendy, "--workspace", "rep-shop"]) == 2
    assert "permission denied" in capsys.readouterr().err
    assert main([*wendy, "--as-role", "org-admin"]) == 2
    assert "--as-role" in capsys.readouterr().err

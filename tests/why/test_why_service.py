"""`netwarden why` and GET /api/v1/why on real parts: flows in chDB (through the real decoder), a control plane
applied with the CLI; the fix printed by why, applied with `netwarden apply`, makes why answer FORWARDED."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from netwarden.cli import main
from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import ControlPlaneStore
from query_api.report_routes import store_opener
from query_api.store import FlowStore, open_clickhouse
from query_api.why_routes import WhyParams, WhyRouteDeps, router, why_report
from tests.query_api.conftest import bearer_principals, insert_responses
from tests.reports.loopback_api import serve

CLUSTER = "why-it"
DOCUMENTS = f"""
apiVersion: netwarden.io/v1
kind: Cluster
metadata: {{name: {CLUSTER}}}
spec: {{type: EKS, primaryCNI: aws-cni, namespaces: [shop, data]}}
---
apiVersion: netwarden.io/v1
kind: Project
metadata: {{name: why-proj}}
spec: {{clusters: [{CLUSTER}]}}
---
apiVersion: netwarden.io/v1
kind: Workspace
metadata: {{name: why-shop}}
spec: {{project: why-proj, namespaces: ["{CLUSTER}/shop"]}}
---
apiVersion: netwarden.io/v1
kind: Workspace
metadata: {{name: why-data}}
spec: {{project: why-proj, namespaces: ["{CLUSTER}/data"]}}
---
apiVersion: netwarden.io/v1
kind: Policy
metadata: {{name: shop-web-egress}}
spec:
  scope: namespace
  rules:
    - name: to-api
      cilium:
        endpointSelector: {{matchLabels: {{app: web}}}}
        egress:
          - toEndpoints: [{{matchLabels: {{app: api}}}}]
            toPorts: [{{ports: [{{port: "8080", protocol: TCP}}]}}]
---
apiVersion: netwarden.io/v1
kind: Blueprint
metadata: {{name: why-bp}}
spec:
  installProfile: {{engine: cilium-chaining}}
  clusterPolicies: [zero-trust-day0-default-deny, zero-trust-day0-allow-dns]
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {{name: why-bp-clusters}}
spec: {{blueprint: why-bp, clusters: [{CLUSTER}]}}
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {{name: why-shop-web-egress}}
spec: {{policy: shop-web-egress, targets: [{{workspace: why-shop}}]}}
"""
API_IP = "10.9.0.2"


def _side(ns: str, app: str, identity: int) -> dict[str, Any]:
    return {"identity": identity, "namespace": ns, "pod_name": f"{app}-7c9-x",
            "labels": [f"k8s:app={app}", "k8s:pod-template-hash=7c9", f"k8s:io.kubernetes.pod.namespace={ns}"],
            "workloads": [{"name": app, "kind": "Deployment"}]}


WEB, API, DB = _side("shop", "web", 61001), _side("shop", "api", 61002), _side("data", "db", 61003)


def _flows(now_ns: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(n: int, src: dict[str, Any], dst: dict[str, Any], port: int, verdict: str, direction: str,
            ip: tuple[str, str] = ("10.9.0.1", "10.9.0.3"), l4: dict[str, Any] | None = None, **extra: Any) -> None:
        for _ in range(n):
            t = now_ns - 30 * 60 * 1_000_000_000 + len(out) * 1_000_000
            seconds, nanos = divmod(t, 1_000_000_000)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
            flow = {"time": stamp, "uuid": f"00000000-0000-4000-a000-{len(out):012d}", "verdict": verdict,
                    "IP": {"source": ip[0], "destination": ip[1], "ipVersion": "IPv4"},
                    "l4": l4 or {"TCP": {"source_port": 40000 + len(out), "destination_port": port}},
                    "source": src, "destination": dst, "Type": "L3_L4", "node_name": "n1",
                    "event_type": {"type": 1 if verdict == "DROPPED" else 4},
                    "traffic_direction": direction, "is_reply": False, **extra}
            out.append({"flow": flow, "node_name": "n1", "time": stamp})

    add(12, WEB, API, 8080, "DROPPED", "INGRESS", ("10.9.0.1", API_IP), drop_reason_desc="POLICY_DENIED")
    add(3, WEB, DB, 5432, "DROPPED", "EGRESS", drop_reason_desc="POLICY_DENIED")
    # pings web -> api forwarded (a policy not in effect), with their echo replies
    add(2, WEB, API, 0, "FORWARDED", "EGRESS", ("10.9.0.1", API_IP), l4={"ICMPv4": {"type": 8}})
    add(2, API, WEB, 0, "FORWARDED", "INGRESS", (API_IP, "10.9.0.1"), l4={"ICMPv4": {"type": 0}}, is_reply=True)
    return out


@pytest.fixture(scope="module")
def world(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("why-control-plane")
    docs = data / "docs.yaml"
    docs.write_text(DOCUMENTS)
    assert main(["apply", "-f", str(docs), "--data-dir", str(data)]) == 0
    flows = FlowStore(open_clickhouse(str(chdb_dir), None))
    flows.ensure_schema()
    insert_responses(flows, CLUSTER, _flows(time.time_ns()))
    control = ControlPlaneStore.open(data)
    yield {"flows": flows, "control": control, "data": data}
    control.close()
    flows.close()


ORG = Principal.with_role("org-admin", name="org")
SHOP_ADMIN = Principal.with_role("workspace-admin", "why-shop", name="wendy")
DATA_ADMIN = Principal.with_role("workspace-admin", "why-data", name="dana")


def _why(world: dict[str, Any], principal: Principal, src: str, dst: str, port: int | None,
         **extra: Any) -> dict[str, Any]:
    return why_report(world["flows"], world["control"], principal, WhyParams(CLUSTER, src, dst, port, **extra))


def test_history_decisions_and_the_fix_applied_turns_it_allowed(
    world: dict[str, Any], chdb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = _why(world, ORG, "shop/web", "shop/api", 8080)
    assert doc["observed"]["flows"] == 12
    (row,) = doc["observed"]["by_verdict"]
    assert (row["verdict"], row["drop_reason"], row["observed_at"]) == ("DROPPED", "POLICY_DENIED", "INGRESS")
    desired = doc["desired"]
    assert desired["verdict"] == "DROPPED" and desired["egress"]["netwarden_policy"] == "shop-web-egress"
    assert desired["ingress"]["rule"] == "default-deny"
    assert desired["ingress"]["netwarden_policy"] == "zero-trust-day0-default-deny"
    assert doc["staged"]["verdict"] == "DROPPED" and doc["staged"]["differs"] is False
    fix = doc["fix"]
    assert fix["verified"] is True
    (direction,) = fix["directions"]
    assert direction["writers"] == ["org-admin", "project-admin of why-proj", "workspace-admin of why-shop"]

    # Apply the printed YAML, as a user would, to a copy of the control plane; ask again.
    scratch = tmp_path / "cp"
    shutil.copytree(world["data"], scratch)
    (tmp_path / "fix.yaml").write_text(fix["yaml"])
    fix_file = str(tmp_path / "fix.yaml")
    capsys.readouterr()
    assert main(["apply", "-f", fix_file, "--data-dir", str(scratch), "--as-role", "workspace-admin",
                 "--scope", "why-data"]) == 2
    refusal = capsys.readouterr().err
    assert "permission denied" in refusal and "why-it/shop" in refusal  # not a writer the answer named
    assert main(["apply", "-f", fix_file, "--data-dir", str(scratch), "--as-role", "workspace-admin",
                 "--scope", "why-shop"]) == 0
    monkeypatch.setenv("NETWARDEN_CLICKHOUSE", f"chdb://{(chdb_dir / 'clickhouse').resolve()}")
    monkeypatch.setenv("NETWARDEN_DATA_DIR", str(scratch))
    capsys.readouterr()
    assert main(["why", "--cluster", CLUSTER, "--from", "shop/web", "--to", "shop/api", "--port", "8080",
                 "-o", "json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["desired"]["verdict"] == "FORWARDED" and after["fix"] is None
    assert after["desired"]["ingress"]["netwarden_policy"] == fix["documents"][0]["metadata"]["name"]
    assert after["observed"]["flows"] == 12  # history is what it was


def test_icmp_pings_with_their_replies_and_the_disagreement(world: dict[str, Any]) -> None:
    doc = _why(world, ORG, "shop/web", "shop/api", None, protocol="ICMP")
    assert doc["query"]["port"] == 8 and doc["observed"]["flows"] == 4  # replies count with their requests
    assert {r["verdict"] for r in doc["observed"]["by_verdict"]} == {"FORWARDED"}
    # web's egress has only a TCP/8080 port rule: ICMP is dropped there too (Cilium: toPorts never admits ICMP)
    desired = doc["desired"]
    assert desired["verdict"] == "DROPPED"
    assert (desired["egress"]["verdict"], desired["ingress"]["verdict"]) == ("DROPPED", "DROPPED")
    assert any("not in effect" in n for n in doc["notes"])
    (policy, _assignment) = doc["fix"]["documents"]
    rules = {r["name"]: r["cilium"] for r in policy["spec"]["rules"]}
    for direction in ("egress", "ingress"):
        assert rules[direction][direction][0]["icmps"] == [{"fields": [{"type": 8, "family": "IPv4"}]}]
    assert doc["fix"]["verified"] is True


def test_pod_name_and_pod_ip_resolve_to_their_workload(world: dict[str, Any]) -> None:
    doc = _why(world, ORG, "shop/web-7c9-x", API_IP, 8080)
    assert doc["observed"]["flows"] == 12
    assert doc["destination"]["namespace"] == "shop" and doc["destination"]["workload"] == "api"
    assert doc["source"]["workload"] == "web"


def test_workspace_admin_asks_about_pairs_touching_its_scope_only(world: dict[str, Any]) -> None:
    doc = _why(world, SHOP_ADMIN, "shop/web", "data/db", 5432)
    assert doc["observed"]["flows"] == 3
    assert doc["destination"] == {"namespace": "data", "workload": "", "workload_kind": "", "ip": "",
                                  "reserved": "", "in_scope": False}
    assert "k8s:app=db" not in json.dumps(doc)
    egress, ingress = doc["fix"]["directions"]
    assert egress["action"] == "apply the documents" and "outside your scope" in ingress["action"]
    with pytest.raises(PermissionDenied):
        _why(world, DATA_ADMIN, "shop/web", "shop/api", 8080)


@pytest.fixture(scope="module")
def app(world: dict[str, Any]) -> FastAPI:
    app = FastAPI()
    principals = {"org": ORG, "wendy": SHOP_ADMIN, "dana": DATA_ADMIN,
                  "nobody": Principal(name="nobody", bindings=())}
    app.include_router(router(WhyRouteDeps(world["flows"], bearer_principals(principals),
                                           store_opener(str(world["data"])))))

    @app.exception_handler(PermissionDenied)
    async def denied(_: Any, exc: PermissionDenied) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc), "needed": exc.needed})

    return app


def test_route_answers_in_scope_and_refuses_clearly(app: FastAPI) -> None:
    client = TestClient(app)
    query = {"cluster": CLUSTER, "from": "shop/web", "to": "shop/api", "port": 8080}
    r = client.get("/api/v1/why", params=query, headers={"Authorization": "Bearer org"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"query", "window", "source", "destination", "observed", "desired", "staged", "fix", "notes"}
    assert body["observed"]["flows"] == 12 and body["fix"]["verified"] is True
    assert client.get("/api/v1/why", params=query, headers={"Authorization": "Bearer dana"}).status_code == 403
    bad = client.get("/api/v1/why", params={**query, "port": 0}, headers={"Authorization": "Bearer org"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "port"]
    bad = client.get("/api/v1/why", params={**query, "to": "api"}, headers={"Authorization": "Bearer org"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "to"]
    bad = client.get("/api/v1/why", params={**query, "cluster": "no-such"}, headers={"Authorization": "Bearer org"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "cluster"]
    assert client.get("/api/v1/why", params=query).status_code == 401
    assert client.get("/api/v1/why", params=query, headers={"Authorization": "Bearer nobody"}).status_code == 403
    assert "/api/v1/why" in client.get("/openapi.json").json()["paths"]


def test_cli_over_the_api_table_and_errors(app: FastAPI, capsys: pytest.CaptureFixture[str]) -> None:
    with serve(app) as server:
        base = ["why", "--server", server, "--cluster", CLUSTER, "--from", "shop/web", "--to", "data/db",
                "--port", "5432"]
        capsys.readouterr()
        assert main([*base, "--token", "wendy"]) == 0
        table = capsys.readouterr().out
        assert "HUBBLE SAW" in table and "DROPPED" in table and "POLICY_DENIED" in table
        assert "data/* (outside your scope)" in table
        assert "FIX" in table and "kind: Policy" in table and "workspace-admin of why-data" in table
        assert main([*base, "--token", "dana", "-o", "json"]) == 0  # data-team may ask too: db is theirs
        assert json.loads(capsys.readouterr().out)["source"]["in_scope"] is False
        assert main([*base[:-1], "70000", "--token", "org"]) == 2
        assert "--port" in capsys.readouterr().err

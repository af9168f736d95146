"""Run by tests/reports/conftest.py in its own process (chDB allows one data dir per process, and the demo's
cluster names must not meet the other tests' flows): the demo as `netwarden up` seeds it (organization, kube API
stand-ins, blueprint and policies with the planted faults, first sync, drift, staged policy), flows of each
cluster from the demo's generator judged by the policies on its stand-in (as `up`'s Hubble servers do), stored
through the real decoder. Then, on that one world (issue 8's acceptance):

- `report`: the validation report through the API with the demo users' tokens;
- `policy_traffic`: what-if of a DNS deny added to the demo blueprint (and of a harmless change) with the CLI, a
  direct count of the flows it concerns, `recommend` for every demo namespace, what-if of the recommendation, the
  recommendation staged, promoted and synced, and the demo judge's verdict of every demo connection before and
  after (runs after `report`: it changes the clusters).

Prints {"report": {...}, "policy_traffic": {...}} as JSON.

    python -m tests.reports.demo_world DATA_DIR FLOWS_PER_CLUSTER
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

WINDOW = "2h"  # the CLI's window: the flows are seconds old


@dataclass
class DemoWorld:
    data_dir: Path
    control: Any  # ControlPlaneStore
    users: dict[str, dict[str, Any]]  # role -> demo-tokens.json entry
    clusters: dict[str, Any]  # name -> DemoCluster
    judges: dict[str, Any]  # name -> StandInJudge
    flows: Any  # FlowStore


def cli(*argv: str) -> tuple[int, str]:
    """`netwarden ARGV` in this process: (exit code, stdout)."""
    from netwarden.cli import main

    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(list(argv))
    return code, output.getvalue()


@contextlib.contextmanager
def demo_world(data_dir: Path, flows_per_cluster: int) -> Iterator[DemoWorld]:
    from netwarden.demo.enforcement import StandInJudge
    from netwarden.demo.faults import UNMANAGED, plant_drift, sync_cluster
    from netwarden.demo.world import DemoCluster
    from netwarden.demo_seed import seed_demo, seed_demo_policies
    from policy_engine.store import ControlPlaneStore
    from query_api.store import FlowStore, clickhouse_path, open_clickhouse
    from schemas.clickhouse import FLOWS_TABLE
    from streams.decode import FlowDecoder

    control = ControlPlaneStore.open(data_dir)
    users = seed_demo(control, data_dir)
    clusters = {name: DemoCluster.open(data_dir, name, unmanaged=UNMANAGED.get(name, ()))
                for name in ("demo-east", "demo-west")}
    flows = None
    try:
        seed_demo_policies(control, {name: c.url for name, c in clusters.items()})
        for name, demo in clusters.items():
            # What `up` runs for a fresh demo cluster: the first sync, then the planted drift.
            ok, output = asyncio.run(sync_cluster(data_dir, name))
            assert ok, output
            plant_drift(demo)
        flows = FlowStore(open_clickhouse(str(data_dir), None))
        flows.ensure_schema()
        # The CLI's local mode reads this process's chDB through its DSN (one embedded server per process).
        os.environ.update(NETWARDEN_DATA_DIR=str(data_dir), NETWARDEN_CLICKHOUSE=f"chdb://{clickhouse_path(str(data_dir))}")
        os.environ.pop("NETWARDEN_SERVER", None)
        now = time.time_ns()
        judges = {}
        for name, demo in clusters.items():
            judge = judges[name] = StandInJudge(demo.url)
            judge.refresh()
            demo.traffic.judge = judge
            data = demo.traffic.serialized(flows_per_cluster, now, spacing_ns=10_000_000)
            batch = FlowDecoder().decode(name, [raw for _, _, raw in data])
            assert not batch.rejected, batch.rejected
            flows.client.insert_arrow(FLOWS_TABLE, batch.table)
        yield DemoWorld(data_dir, control, {u["role"]: u for u in users}, clusters, judges, flows)
    finally:
        if flows is not None:
            flows.close()
        for demo in clusters.values():
            demo.close()
        control.close()


def report(world: DemoWorld) -> dict[str, Any]:
    """The validation report of the org admin and of the workspace admin, through the API."""
    from fastapi.testclient import TestClient

    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator

    tenancy = Tenancy.open(world.data_dir)
    app = create_app(world.flows, authenticator=Authenticator(tenancy), ownership=tenancy.ownership)
    out: dict[str, Any] = {}
    try:
        with TestClient(app) as client:
            for who, role in (("org", "org-admin"), ("workspace", "workspace-admin")):
                response = client.get("/api/v1/reports/validation",
                                      headers={"Authorization": f"Bearer {world.users[role]['token']}"})
                assert response.status_code == 200, response.text
                out[who] = response.json()
    finally:
        tenancy.close()
    out["workspace_scope"] = world.users["workspace-admin"]["scope"]
    return out


def blueprint_plus(world: DemoWorld, port: int) -> list[dict[str, Any]]:
    """The issue's example change: a cluster-wide policy denying every pod's egress to `port` (UDP and TCP),
    added to the demo blueprint as the store has it. Default deny off in the policy: in Cilium a deny section
    alone turns it on for every pod selected (kube-system's are not under the blueprint's default deny)."""
    from netwarden.demo_seed import DEMO_BLUEPRINT
    from policy_engine.gitops import blueprint_document

    ports = [{"port": str(port), "protocol": "UDP"}, {"port": str(port), "protocol": "TCP"}]
    policy = {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": f"deny-egress-{port}"},
              "spec": {"scope": "cluster", "rules": [{"name": "deny", "cilium": {
                  "endpointSelector": {}, "enableDefaultDeny": {"egress": False},
                  "egressDeny": [{"toEntities": ["all"], "toPorts": [{"ports": ports}]}]}}]}}
    blueprint = blueprint_document(world.control.get_blueprint(DEMO_BLUEPRINT))
    blueprint["spec"]["clusterPolicies"].append(policy["metadata"]["name"])
    return [policy, blueprint]


def flows_to_port(world: DemoWorld, port: int, since: Any, until: Any) -> list[list[Any]]:
    """Direct count from the flows table: [cluster, client ns, server ns, protocol, flows] of pod clients' flows
    to `port` (requests and their replies) in [since, until)."""
    return [list(r) for r in world.flows.client.query(
        "SELECT cluster, if(is_reply, dst_namespace, src_namespace) AS client, if(is_reply, src_namespace, "
        "dst_namespace) AS server, multiIf(l4_protocol = 1, 'TCP', l4_protocol = 2, 'UDP', toString(l4_protocol)), "
        "count() FROM flows WHERE time >= {s:DateTime64(9)} AND time < {u:DateTime64(9)} AND l4_protocol IN (1, 2) "
        "AND if(is_reply, src_port, dst_port) = {p:UInt16} AND client != '' GROUP BY ALL ORDER BY ALL",
        parameters={"s": since, "u": until, "p": port},
    ).result_rows]


def observed(verdict: Any) -> str:
    """What Hubble shows for a connection under a judge's verdict: forwarded, or dropped with the reason of the
    first direction that drops it (egress before ingress)."""
    if verdict.allowed:
        return "FORWARDED"
    return f"DROPPED {(verdict.egress if not verdict.egress.allowed else verdict.ingress).drop_reason}"


def enforced(world: DemoWorld) -> dict[str, str]:
    """Every demo connection of each cluster -> what its stand-in's enforcement lets Hubble see now."""
    out = {}
    for name, judge in world.judges.items():
        judge.refresh()
        for conn in world.clusters[name].traffic.connections():
            key = (f"{name} {conn.client.side.namespace}/{conn.client.pod or conn.client.side.workload or conn.client.side.ip}"
                   f" -> {conn.server.side.namespace}/{conn.server.pod or conn.server.side.workload or conn.server.side.ip}"
                   f" {conn.port}/{conn.protocol}")
            out[key] = observed(judge(conn))
    return out


def policy_traffic(world: DemoWorld) -> dict[str, Any]:
    from netwarden.demo_seed import DEMO_NAMESPACES
    from query_api.policy_traffic_routes import parse_window

    window = parse_window(WINDOW, None)
    out: dict[str, Any] = {}
    changes = world.data_dir / "changes"
    changes.mkdir()
    for name, port in (("deny_dns", 53), ("deny_unused", 9)):
        path = changes / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(blueprint_plus(world, port)))
        code, text = cli("policy", "what-if", "-f", str(path), "--since", WINDOW, "-o", "json")
        out[name] = {"exit": code, "what_if": json.loads(text)}
    out["dns_flows"] = flows_to_port(world, 53, window.since, window.until)

    recommended = world.data_dir / "recommended"
    recommended.mkdir()
    policies = []
    for cluster in world.clusters:
        for namespace in DEMO_NAMESPACES:
            code, text = cli("policy", "recommend", "--cluster", cluster, "--namespace", namespace, "--since", WINDOW)
            assert code == 0, text
            docs = list(yaml.safe_load_all(text))
            policies += [d["metadata"]["name"] for d in docs if d["kind"] == "Policy"]
            (recommended / f"{cluster}-{namespace}.yaml").write_text(text)
    out["recommended_policies"] = policies
    code, text = cli("policy", "what-if", "-f", str(recommended), "--since", WINDOW, "-o", "json")
    out["recommendation_what_if"] = {"exit": code, "what_if": json.loads(text)}

    data = ("--data-dir", str(world.data_dir))
    before = enforced(world)
    code, text = cli("policy", "stage", "-f", str(recommended), *data)
    assert code == 0, text
    staged_sync = []
    for name in world.clusters:  # staged: evaluated, never synced (the sync repairs the planted drift though)
        code, text = cli("sync", "--cluster", name, *data)
        assert code == 0, text
        staged_sync.append(text)
    out["staged_sync_output"], out["staged_enforced"] = staged_sync, enforced(world)
    for policy in policies:
        code, text = cli("policy", "promote", policy, *data)
        assert code == 0, text
    synced = []
    for name in world.clusters:
        code, text = cli("sync", "--cluster", name, *data)
        assert code == 0, text
        synced.append(text)
    out["sync_output"] = synced
    out["before"], out["after"] = before, enforced(world)
    return out


if __name__ == "__main__":
    with demo_world(Path(sys.argv[1]), int(sys.argv[2])) as world:
        result = {"report": report(world), "policy_traffic": policy_traffic(world)}
    sys.stdout.write(json.dumps(result) + "\n")

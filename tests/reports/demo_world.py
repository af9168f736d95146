"""Run by tests/reports/test_demo_report.py in its own process (chDB allows one data dir per process, and the
demo's cluster names must not meet the other tests' flows): the demo as `netwarden up` seeds it (organization,
kube API stand-ins, blueprint and policies with the planted faults, first sync, drift, staged policy), flows of
each cluster from the demo's generator judged by the policies on its stand-in (as `up`'s Hubble servers do),
stored through the real decoder; then the validation report through the API with the demo users' tokens.
Prints {"org": report, "workspace": report, "workspace_scope": ...} as JSON.

    python -m tests.reports.demo_world DATA_DIR FLOWS_PER_CLUSTER
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any


def build(data_dir: Path, flows_per_cluster: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from netwarden.cli import main
    from netwarden.demo.enforcement import StandInJudge
    from netwarden.demo.faults import UNMANAGED, plant_drift
    from netwarden.demo.world import DemoCluster
    from netwarden.demo_seed import seed_demo, seed_demo_policies
    from policy_engine.store import ControlPlaneStore
    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator
    from query_api.store import FlowStore, open_clickhouse
    from schemas.clickhouse import FLOWS_TABLE
    from streams.decode import FlowDecoder

    control = ControlPlaneStore.open(data_dir)
    users = seed_demo(control, data_dir)
    clusters = {name: DemoCluster.open(data_dir, name, unmanaged=UNMANAGED.get(name, ()))
                for name in ("demo-east", "demo-west")}
    try:
        seed_demo_policies(control, {name: c.url for name, c in clusters.items()})
        for name, demo in clusters.items():
            # What `up` runs for a fresh demo cluster (netwarden.demo.faults.sync_cluster: the sync CLI), here
            # in this process: then the planted drift.
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                code = main(["sync", "--cluster", name, "--data-dir", str(data_dir), "--as-role", "org-admin"])
            assert code == 0, output.getvalue()
            plant_drift(demo)
        flows = FlowStore(open_clickhouse(str(data_dir), None))
        flows.ensure_schema()
        now = time.time_ns()
        for name, demo in clusters.items():
            judge = StandInJudge(demo.url)
            judge.refresh()
            demo.traffic.judge = judge
            data = demo.traffic.serialized(flows_per_cluster, now, spacing_ns=10_000_000)
            batch = FlowDecoder().decode(name, [raw for _, _, raw in data])
            assert not batch.rejected, batch.rejected
            flows.client.insert_arrow(FLOWS_TABLE, batch.table)
        tenancy = Tenancy.open(data_dir)
        app = create_app(flows, authenticator=Authenticator(tenancy), ownership=tenancy.ownership)
        token = {u["role"]: u for u in users}
        out: dict[str, Any] = {}
        with TestClient(app) as client:
            for who, role in (("org", "org-admin"), ("workspace", "workspace-admin")):
                response = client.get("/api/v1/reports/validation",
                                      headers={"Authorization": f"Bearer {token[role]['token']}"})
                assert response.status_code == 200, response.text
                out[who] = response.json()
            out["workspace_scope"] = token["workspace-admin"]["scope"]
        tenancy.close()
        flows.close()
        return out
    finally:
        for demo in clusters.values():
            demo.close()
        control.close()


if __name__ == "__main__":
    sys.stdout.write(json.dumps(build(Path(sys.argv[1]), int(sys.argv[2]))) + "\n")

"""Run by tests/console/conftest.py in a process of its own (chDB allows one data dir per process): the demo world
of tests/reports/demo_world.py (the organization `netwarden up` seeds, its policies synced to the kube API
stand-ins, demo flows judged by them and stored through the real sink and enricher) served by the real app on loopback
uvicorn with the real Authenticator and a live hub. Prints one JSON line {"url", "users"} once serving; then each
stdin line `publish N` sends the N newest stored flows through the live hub (as the pipeline does after storing);
stdin closed: stops.

    python -m tests.console.serve_demo DATA_DIR FLOWS_PER_CLUSTER
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry


def main(data_dir: Path, flows_per_cluster: int) -> None:
    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator
    from query_api.flow_query import FlowFilter
    from query_api.live import LiveHub
    from streams.sink import ClickHouseSink, Part
    from streams.verdicts import PolicyEnricher
    from tests.enrichment.inventory_helpers import inventory_view
    from tests.reports.demo_world import demo_world
    from tests.reports.loopback_api import serve

    # demo_world stores a token flow per cluster; the demo's flows go through the real sink with the worker's
    # enricher (netwarden's desired/staged verdicts and attribution beside Hubble's), as `netwarden up` stores them.
    with demo_world(data_dir, 1) as world:
        sink = ClickHouseSink(world.flows.client, PolicyEnricher(inventory_view(world.control)))
        for name, cluster in world.clusters.items():
            data = cluster.traffic.serialized(flows_per_cluster, time.time_ns(), spacing_ns=10_000_000)
            result = sink.store([Part(name, f"console-demo[{name}]@0", [raw for _, _, raw in data])])
            assert not result.refused and result.stored == len(data), result
        sink.close()
        tenancy = Tenancy.open(world.data_dir)
        hub = LiveHub()
        app = create_app(world.flows, CollectorRegistry(), authenticator=Authenticator(tenancy),
                         ownership=tenancy.ownership, live_hub=hub)
        try:
            with serve(app) as url:
                print(json.dumps({"url": url, "users": world.users}), flush=True)
                for line in sys.stdin:
                    command, _, count = line.strip().partition(" ")
                    if command == "publish":
                        rows = world.flows.query_flows(FlowFilter(last=int(count)))
                        hub.publish_rows(rows)
                        print(json.dumps({"published": len(rows)}), flush=True)
        finally:
            hub.close()
            tenancy.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))

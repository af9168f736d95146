"""Demo traffic of two clusters of our own, stored through the real sink (ClickHouse decodes, the policy
enricher judges against a real control plane, the materialized views fill the rollups), in a window of our
own: the chDB directory is shared by the whole test process (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from collectors.traffic import DemoTraffic
from policy_engine.control_plane import ControlPlane
from policy_engine.inventory import all_messages
from policy_engine.model import Assignment, Cluster, NamespaceRef, Project, Workspace
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from query_api.store import FlowStore, open_clickhouse
from streams.inventory import InventoryView
from streams.sink import ClickHouseSink, Part
from streams.verdicts import PolicyEnricher

EAST, WEST = "grafana-east", "grafana-west"
CLUSTERS = (EAST, WEST)
NAMESPACES = ("shop", "data", "monitoring", "kube-system")
# Two hours of traffic ending at T_END; no other test stores flows in 2022.
T_END = datetime(2022, 3, 14, 12, 0, tzinfo=UTC)
T_START = T_END - timedelta(hours=2)
PER_CLUSTER = 3000
WORKSPACE = "grafana-shop-team"  # grafana-east/shop


def seed_control_plane(data_dir: Path) -> None:
    """Projects and workspaces over our clusters; zero-trust Day 0 on the east cluster, so netwarden's
    verdicts there differ from what the generated (unpoliced) traffic says: verdict mismatches."""
    with ControlPlaneStore.open(data_dir) as store, store.transaction():
        cp = ControlPlane(store, Principal.with_role("org-admin", name="test"))
        for cluster in CLUSTERS:
            cp.put_cluster(Cluster(cluster, "upstream", "cilium", namespaces=NAMESPACES))
        cp.put_project(Project("grafana-storefront", (EAST,)))
        cp.put_project(Project("grafana-platform", (WEST,)))
        cp.put_workspace(Workspace(WORKSPACE, "grafana-storefront", (NamespaceRef(EAST, "shop"),)))
        cp.put_workspace(Workspace("grafana-data-team", "grafana-storefront", (NamespaceRef(EAST, "data"),)))
        cp.put_workspace(Workspace("grafana-observability", "grafana-platform", (NamespaceRef(WEST, "monitoring"),)))
        cp.put_assignment(Assignment("grafana-east-day0", blueprint="zero-trust-day0", clusters=(EAST,)))


@pytest.fixture(scope="package")
def control_plane_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grafana-control-plane")
    seed_control_plane(path)
    return path


def store_demo_traffic(client: Any, control_plane_dir: Path) -> None:
    view = InventoryView()
    with ControlPlaneStore.open(control_plane_dir) as store:
        for message in all_messages(store):
            view.apply(message.key, message.value)
    sink = ClickHouseSink(client, PolicyEnricher(view))
    spacing = int((T_END - T_START).total_seconds() * 1e9) // PER_CLUSTER
    try:
        for i, cluster in enumerate(CLUSTERS):
            entries = DemoTraffic(cluster, seed=90 + i).serialized(
                PER_CLUSTER, now_ns=int(T_END.timestamp() * 1e9) - 1, spacing_ns=spacing)
            result = sink.store([Part(cluster, f"grafana-test[{i}]@0", [data for _, _, data in entries])])
            assert not result.refused and result.stored == PER_CLUSTER
    finally:
        sink.close()


@pytest.fixture(scope="package")
def flow_client(chdb_dsn: str, control_plane_dir: Path) -> Iterator[Any]:
    store = FlowStore(open_clickhouse(None, chdb_dsn))
    store.ensure_schema()
    store_demo_traffic(store.client, control_plane_dir)
    yield store.client

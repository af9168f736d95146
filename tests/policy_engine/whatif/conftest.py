"""History in the session's chDB (own cluster names: wi-*) and a control-plane store that knows those clusters."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_engine.control_plane import ControlPlane
from policy_engine.model import Cluster
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from query_api.store import FlowStore, open_clickhouse
from schemas.clickhouse import FLOWS_TABLE

MINUTE_NS = 60 * 1_000_000_000


def admin(store: ControlPlaneStore) -> ControlPlane:
    return ControlPlane(store, Principal.with_role("org-admin", name="test"))


def store_demo_traffic(
    flows: FlowStore, cluster: str, n: int, *, seed: int = 0, minutes: int = 30
) -> tuple[dt.datetime, dt.datetime]:
    """`n` flows of the demo generator's topology for `cluster`, spread over the last `minutes` (ending a minute
    ago), stored straight into `flows` (decoded as the sink does; no pipeline). Returns a window around them."""
    from collectors.traffic import DemoTraffic
    from streams.decode import FlowDecoder

    start = time.time_ns() - (minutes + 1) * MINUTE_NS
    spacing = minutes * MINUTE_NS // n
    entries = DemoTraffic(cluster, seed=seed).serialized(n, now_ns=start, spacing_ns=spacing)
    batch = FlowDecoder().decode(cluster, [raw for *_, raw in entries])
    assert not batch.rejected
    flows.client.insert_arrow(FLOWS_TABLE, batch.table)
    times = [t.to_pydatetime() if hasattr(t, "to_pydatetime") else t for t in batch.table.column("time").to_pylist()]
    margin = dt.timedelta(minutes=1)
    return min(times).astimezone(dt.UTC) - margin, max(times).astimezone(dt.UTC) + margin


@pytest.fixture(scope="package")
def flows(chdb_dir: Path) -> Iterator[FlowStore]:
    store = FlowStore(open_clickhouse(str(chdb_dir), None))
    store.ensure_schema()
    yield store
    store.close()


def new_store(path: Path, *clusters: str) -> ControlPlaneStore:
    store = ControlPlaneStore.open(path)
    with store.transaction():
        cp = admin(store)
        for name in clusters:
            cp.put_cluster(Cluster(name, "upstream", "cilium"))
    return store

"""End-to-end acknowledgement: a collector's checkpoint moves only over batches the worker stored, so flows
the broker acknowledged and then lost are read from Hubble again; a node that left stops holding the resume
point back; a resume that finds Hubble's ring no longer reaching back records the lost range.
Real Tansu, real chDB, real gRPC on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from collectors.hubble_client import Checkpoint, HubbleCollector
from collectors.hubble_server import HubbleServer
from collectors.kafka_out import FlowBatchProducer, new_producer
from collectors.stored_acks import StoredAcks
from collectors.traffic import DemoTraffic
from netwarden.broker import ensure_topics, recreate_topics
from netwarden.embedded import PipelineStack, StackConfig
from query_api.report_data import lost_ranges_by_cluster
from query_api.store import FlowStore
from schemas.topics import FLOWS_RAW, pipeline_topics


async def until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met in {timeout:g}s"
        await asyncio.sleep(0.05)


def stored(stack: PipelineStack, cluster: str) -> tuple[int, int]:
    raw, unique = stack.clickhouse.query(
        "SELECT count(), uniqExact(uuid) FROM flows WHERE cluster = {c:String}", parameters={"c": cluster}
    ).result_rows[0]
    return int(raw), int(unique)


class Collecting:
    """A collector with end-to-end acknowledgement (as `netwarden collect` runs it), in this process."""

    def __init__(self, bootstrap: str, cluster: str, port: int, checkpoint: Path, ack_timeout_s: float = 30.0):
        self.bootstrap, self.cluster, self.port = bootstrap, cluster, port
        self.checkpoint_path, self.ack_timeout_s = checkpoint, ack_timeout_s
        self.stop = asyncio.Event()

    async def __aenter__(self) -> HubbleCollector:
        self.producer = new_producer(self.bootstrap)
        await self.producer.start()
        shipper = FlowBatchProducer(self.producer, self.cluster)
        self.acks = StoredAcks(self.bootstrap, shipper.collector_id)
        self.collector = HubbleCollector(
            self.cluster, f"127.0.0.1:{self.port}", shipper.ship, checkpoint=Checkpoint(self.checkpoint_path),
            acks=self.acks, ack_timeout_s=self.ack_timeout_s, linger_s=0.05, ship_lost=shipper.ship_lost_ranges,
        )
        self.task = asyncio.create_task(self.collector.run(self.stop))
        return self.collector

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)
        await self.acks.stop()
        await self.producer.stop()


def test_checkpoint_moves_only_over_stored_flows_and_lost_batches_are_read_again(
    tmp_path: Path, tansu: Any, chdb_dsn: str
) -> None:
    cluster = "ack-lost"

    async def run() -> None:
        await ensure_topics(tansu.bootstrap, pipeline_topics(1))
        server = HubbleServer(ring_capacity=10_000)
        port = await server.start("127.0.0.1", 0)
        traffic = DemoTraffic(cluster, seed=11)
        entries = traffic.serialized(600)
        server.add_serialized(entries)
        newest = max(t for t, _, _ in entries)
        checkpoint = tmp_path / "checkpoint.json"
        try:
            async with Collecting(tansu.bootstrap, cluster, port, checkpoint, ack_timeout_s=2.0) as collector:
                # No worker yet: Kafka acknowledges every batch, nothing is stored, the checkpoint stays put.
                await until(lambda: collector.stats.flows == 600, what="all flows shipped")
                assert Checkpoint(checkpoint).nodes == {}
                # The broker loses what it acknowledged (as Tansu does when it dies): flows.raw is empty again.
                await recreate_topics(tansu.bootstrap, [t for t in pipeline_topics(1) if t.name == FLOWS_RAW])
                # No notice arrives: the collector reads the batches again from its stored checkpoint.
                await until(lambda: collector.stats.rewinds >= 1, what="a rewind")
                stack = PipelineStack(
                    StackConfig(data_dir=tmp_path / "worker", kafka=tansu.bootstrap, clickhouse_dsn=chdb_dsn)
                )
                await stack.start()
                try:
                    await until(lambda: stored(stack, cluster)[1] == 600, what="every flow stored")
                    # Stored: the checkpoint reaches the newest flow of the node.
                    await until(lambda: max(Checkpoint(checkpoint).nodes.values(), default=0) == newest,
                                what="checkpoint at the newest stored flow")
                    raw, unique = stored(stack, cluster)
                    assert unique == 600  # none lost
                finally:
                    await stack.stop()
        finally:
            await server.stop()

    asyncio.run(run())


def test_a_restarted_hubble_with_an_empty_ring_is_reported_as_a_lost_range(
    tmp_path: Path, tansu: Any, chdb_dsn: str
) -> None:
    cluster = "ack-gap"

    async def run() -> None:
        await ensure_topics(tansu.bootstrap, pipeline_topics(1))
        traffic = DemoTraffic(cluster, seed=12)
        server = HubbleServer(ring_capacity=10_000)
        port = await server.start("127.0.0.1", 0)
        first = traffic.serialized(200, now_ns=time.time_ns() - 120 * 10**9)
        server.add_serialized(first)
        stack = PipelineStack(StackConfig(data_dir=tmp_path / "worker", kafka=tansu.bootstrap, clickhouse_dsn=chdb_dsn))
        await stack.start()
        checkpoint = tmp_path / "checkpoint.json"
        try:
            async with Collecting(tansu.bootstrap, cluster, port, checkpoint) as collector:
                await until(lambda: len(Checkpoint(checkpoint).nodes) > 0 and stored(stack, cluster)[1] == 200,
                            what="first flows stored and checkpointed")
                last_stored = dict(Checkpoint(checkpoint).nodes)
                await server.stop()
                # The server comes back with an empty ring: what it held is gone; new flows start a minute later.
                server = HubbleServer(ring_capacity=10_000)
                await server.start("127.0.0.1", port)
                later = traffic.serialized(100, now_ns=time.time_ns() - 60 * 10**9)
                server.add_serialized(later)
                await until(lambda: len(collector.stats.gaps) > 0, what="a lost range")
                await until(lambda: stored(stack, cluster)[1] == 300, what="the new flows stored")
            gaps = {g.node: g for g in collector.stats.gaps}
            first_later = {}
            for t, node, _ in later:
                first_later.setdefault(node, t)
            for node, gap in gaps.items():
                assert gap.after_ns == last_stored[node]  # from the node's last stored flow ...
                assert gap.before_ns == first_later[node]  # ... to the first flow the new ring held
            node = next(iter(gaps))
            assert REGISTRY.get_sample_value(
                "netwarden_collector_gaps_total", {"cluster": cluster, "node": node}
            ) >= 1
            # The ranges reach the store, and the validation report's health section reads them there.
            store = FlowStore(stack.clickhouse)
            await until(lambda: len(lost_ranges_by_cluster(store, [cluster], 0, time.time_ns())[cluster]) == len(gaps)
                        if lost_ranges_by_cluster(store, [cluster], 0, time.time_ns()) else False, what="ranges stored")
            reported = {r["node"]: r for r in lost_ranges_by_cluster(store, [cluster], 0, time.time_ns())[cluster]}
            for node, gap in gaps.items():
                assert reported[node]["seconds"] == round((gap.before_ns - gap.after_ns) / 1e9, 3)
        finally:
            await stack.stop()
            await server.stop()

    asyncio.run(run())


def test_a_node_that_left_stops_holding_the_resume_point_back() -> None:
    now = time.time_ns()
    cp = Checkpoint(None, window_ns=5 * 10**9, stale_ns=600 * 10**9)
    cp.record_batch({"node-a": now, "node-b": now - 1 * 10**9}, [])
    assert cp.since_ns() == now - 1 * 10**9 - 5 * 10**9  # both report: the laggard sets the resume point
    cp.record_batch({"node-a": now + 900 * 10**9}, [])  # node-b has sent nothing for 15 minutes
    assert cp.since_ns() == now + 900 * 10**9 - 5 * 10**9

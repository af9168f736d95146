"""Commit after write, for real: the worker commits a batch's offsets only once its rows are in ClickHouse and
its dead letters are acknowledged; retriable failures back off without committing, refusals are dead-lettered
and the stream goes on. Real Tansu broker, real chDB."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from collectors.kafka_out import FlowBatchProducer, new_producer
from collectors.traffic import DemoTraffic
from netwarden.broker import ensure_topics
from query_api.store import FlowStore, open_clickhouse
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2
from schemas.topics import FLOWS_RAW, pipeline_topics
from streams.app import FlowPipeline, FlowWorker, StreamSettings
from streams.enrichment import NoEnrichment
from streams.sink import ClickHouseSink
from tests.pipeline.test_dead_letters import read_dead_letters


@pytest.fixture(scope="module")
def client(chdb_dsn: str) -> Any:
    store = FlowStore(open_clickhouse(None, chdb_dsn))
    store.ensure_schema()
    return store.client


async def committed(bootstrap: str, group: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(FLOWS_RAW, 0))
    finally:
        await consumer.stop()


def count(client: Any, cluster: str, final: bool = True) -> int:
    sql = f"SELECT count() FROM flows {'FINAL' if final else ''} WHERE cluster = {{c:String}}"
    return int(client.query(sql, parameters={"c": cluster}).result_rows[0][0])


def retries(stage: str) -> float:
    return REGISTRY.get_sample_value("netwarden_stream_retries_total", {"stage": stage}) or 0.0


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


class Rig:
    def __init__(self, bootstrap: str, client: Any, group: str):
        self.bootstrap = bootstrap
        self.client = client
        self.group = group
        self.stored = asyncio.Event()

    def worker(self, pipeline: FlowPipeline, **settings: Any) -> FlowWorker:
        s = StreamSettings(broker=self.bootstrap, group_id=self.group, flush_seconds=0.05, **settings)
        return FlowWorker(s, pipeline, on_stored=self.stored.set)

    async def ship(self, cluster: str, payloads: list[bytes]) -> None:
        producer = new_producer(self.bootstrap)
        await producer.start()
        try:
            await FlowBatchProducer(producer, cluster).ship("node-1", payloads)
        finally:
            await producer.stop()


@asynccontextmanager
async def rig(tansu: Any, client: Any, group: str) -> AsyncIterator[Rig]:
    await ensure_topics(tansu.bootstrap, pipeline_topics(1))
    yield Rig(tansu.bootstrap, client, group)


def demo(cluster: str, n: int, seed: int = 1) -> list[bytes]:
    return [raw for _, _, raw in DemoTraffic(cluster, seed=seed).serialized(n)]


def test_a_failing_dead_letter_send_does_not_commit(tansu: Any, client: Any) -> None:
    async def run() -> None:
        async with rig(tansu, client, "wc-dlq") as r:
            await r.ship("wc-dlq", [*demo("wc-dlq", 5), b"\xff\xfe not protobuf"])
            before = retries("dead_letter")
            # The broker refuses this topic name: every send fails for real (after the request timeout).
            worker = r.worker(
                FlowPipeline(ClickHouseSink(client)), dlq_topic="bad topic!", request_timeout_s=1.0,
                hold_seconds=0,  # written through: the rows are in flows before their letters are sent
            )
            await worker.start()
            try:
                await until(lambda: retries("dead_letter") >= before + 2)
                assert count(client, "wc-dlq") == 5  # the rows are stored ...
                assert await committed(r.bootstrap, r.group) is None  # ... but nothing is committed
                assert not r.stored.is_set()
                worker.settings.dlq_topic = "flows.dlq"  # the broker takes letters again: the batch completes
                await asyncio.wait_for(r.stored.wait(), 30)
                assert await committed(r.bootstrap, r.group) == 1
            finally:
                await worker.stop()
            letters = await read_dead_letters(r.bootstrap, 1)
            assert [x.payload for x in letters] == [b"\xff\xfe not protobuf"]

    asyncio.run(run())


class BlockingEnricher(NoEnrichment):
    """Holds the batch between decode and write until released (a real enricher that is slow)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def enrich_keys(self, keys: pa.Table) -> pa.Table:
        self.entered.set()
        self.release.wait(60)
        return super().enrich_keys(keys)


def test_a_cancelled_insert_does_not_commit_and_a_restart_stores_it_once(tansu: Any, client: Any) -> None:
    async def run() -> None:
        async with rig(tansu, client, "wc-cancel") as r:
            payloads = demo("wc-cancel", 300)
            await r.ship("wc-cancel", payloads)
            enricher = BlockingEnricher()
            worker = r.worker(FlowPipeline(ClickHouseSink(client), enricher))
            await worker.start()
            await asyncio.get_running_loop().run_in_executor(None, enricher.entered.wait, 30)
            stopping = asyncio.create_task(worker.stop())  # cancels the loop mid-insert
            await until(lambda: worker._task is None or worker._task.done())
            enricher.release.set()  # the insert thread finishes; its rows land, but the loop is gone
            await stopping
            assert await committed(r.bootstrap, r.group) is None
            assert not r.stored.is_set()

            again = r.worker(FlowPipeline(ClickHouseSink(client)))  # a restart is handed the batch again
            await again.start()
            try:
                await asyncio.wait_for(r.stored.wait(), 30)
            finally:
                await again.stop()
            assert await committed(r.bootstrap, r.group) == 1
            assert count(client, "wc-cancel") == len(payloads)  # exactly once (twins collapse)

    asyncio.run(run())


def test_a_refused_entry_is_dead_lettered_and_the_stream_goes_on(tansu: Any, client: Any) -> None:
    bad_ip = observer_pb2.GetFlowsResponse(
        flow=flow_pb2.Flow(
            time={"seconds": 1_700_000_000},
            uuid="5b0c1e0a-7c8e-4a55-9d3c-9a4b5b6c7d8e",
            IP=flow_pb2.IP(source="10.0.0.300", destination="10.0.0.1"),
        )
    ).SerializeToString()

    async def run() -> None:
        async with rig(tansu, client, "wc-refused") as r:
            first, second = demo("wc-refused", 20, seed=3), demo("wc-refused", 20, seed=4)
            await r.ship("wc-refused", [*first[:7], bad_ip, *first[7:]])
            await r.ship("wc-refused", second)
            pipeline = FlowPipeline(ClickHouseSink(client))
            worker = r.worker(pipeline)
            await worker.start()
            try:
                await until(lambda: pipeline.totals.messages == 2)
            finally:
                await worker.stop()
            assert await committed(r.bootstrap, r.group) == 2
            assert count(client, "wc-refused") == 40
            letters = await read_dead_letters(r.bootstrap, 1)
            assert len(letters) == 1 and letters[0].payload == bad_ip
            assert letters[0].origin == "flows.raw[0]@0#7"
            assert "flow.IP.source is not an IP address" in letters[0].reason

    asyncio.run(run())


def test_clickhouse_unreachable_backs_off_without_committing(tansu: Any, client: Any, chdb_dsn: str) -> None:
    async def run() -> None:
        async with rig(tansu, client, "wc-down") as r:
            await r.ship("wc-down", demo("wc-down", 10))
            gone = open_clickhouse(None, chdb_dsn)
            gone.close()  # every call now fails the way a lost connection does
            sink = ClickHouseSink(gone)
            before = retries("write")
            worker = r.worker(FlowPipeline(sink), max_backoff_s=0.5)
            await worker.start()
            try:
                await until(lambda: retries("write") >= before + 3)
                assert await committed(r.bootstrap, r.group) is None
                assert count(client, "wc-down") == 0
                sink.client = client  # ClickHouse is back
                await asyncio.wait_for(r.stored.wait(), 30)
            finally:
                await worker.stop()
            assert await committed(r.bootstrap, r.group) == 1
            assert count(client, "wc-down") == 10

    asyncio.run(run())


def test_a_year_old_capture_spanning_months_ingests(tansu: Any, client: Any) -> None:
    """More daily partitions than ClickHouse allows per insert block by default (100)."""
    start = int(dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC).timestamp() * 1e9)
    traffic = DemoTraffic("wc-old", seed=9)
    payloads = [
        raw for day in range(300) for _, _, raw in traffic.serialized(2, now_ns=start + day * 86_400 * 10**9)
    ]

    async def run() -> None:
        async with rig(tansu, client, "wc-old") as r:
            await r.ship("wc-old", payloads)
            pipeline = FlowPipeline(ClickHouseSink(client))
            worker = r.worker(pipeline)
            await worker.start()
            try:
                await asyncio.wait_for(r.stored.wait(), 60)
            finally:
                await worker.stop()
            assert pipeline.totals.dead_lettered == 0
            assert count(client, "wc-old") == len(payloads)
            days = client.query("SELECT uniq(toDate(time)) FROM flows WHERE cluster = 'wc-old'").result_rows[
                0
            ][0]
            assert days == 300

    asyncio.run(run())


def rollup_flows(client: Any, cluster: str) -> int:
    sql = "SELECT sum(flows) FROM flows_verdicts_1m WHERE cluster = {c:String}"
    return int(client.query(sql, parameters={"c": cluster}).result_rows[0][0] or 0)


def test_held_batches_reach_live_at_once_and_flows_with_one_flush_then_commit(tansu: Any, client: Any) -> None:
    """Small batches wait in the held table (the rollup views then run once per flush, not per batch): the
    live stream has them at once, flows and the rollups after the flush, and the offsets only after that."""

    async def run() -> None:
        async with rig(tansu, client, "wc-hold") as r:
            for seed in (1, 2, 3):
                await r.ship("wc-hold", demo("wc-hold", 40, seed=seed))
            pipeline = FlowPipeline(ClickHouseSink(client))
            live: list[int] = []
            pipeline.stored_listeners.append(lambda table: live.append(table.num_rows))
            worker = r.worker(pipeline, hold_seconds=3600, buffer_messages=1)
            await worker.start()
            try:
                await until(lambda: pipeline.sink.held_flows == 120)
                assert sum(live) == 120  # live listeners had every row as it was decoded ...
                assert count(client, "wc-hold") == 0  # ... flows has none yet ...
                assert await committed(r.bootstrap, r.group) is None  # ... and nothing is committed
                assert pipeline.totals.stored == 0 and not r.stored.is_set()
            finally:
                await worker.stop()  # a clean stop flushes what was handled and commits it
            assert count(client, "wc-hold", final=False) == 120
            assert rollup_flows(client, "wc-hold") == 120
            assert await committed(r.bootstrap, r.group) == 3
            assert pipeline.totals.stored == 120 and pipeline.sink.held_for() is None

            # With nothing more to read, the hold ends when it is due (here 0.2 s), not at the next batch.
            await r.ship("wc-hold", demo("wc-hold", 10, seed=4))
            r.stored.clear()
            again = r.worker(FlowPipeline(ClickHouseSink(client)), hold_seconds=0.2)
            await again.start()
            try:
                await asyncio.wait_for(r.stored.wait(), 30)
            finally:
                await again.stop()
            assert count(client, "wc-hold", final=False) == 130
            assert rollup_flows(client, "wc-hold") == 130
            assert await committed(r.bootstrap, r.group) == 4

    asyncio.run(run())

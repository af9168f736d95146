"""The pipeline stack in one process: broker (Tansu child or external Kafka), collectors, Faust worker, ClickHouse.

chDB allows one process per data directory, so this process both writes ClickHouse and serves reads.
With the embedded Tansu broker, memory is bounded by generations: every `rotate_seconds` the collectors
pause, the worker drains what was shipped, flows.raw is deleted and created again (Tansu frees a topic's
RAM only on deletion; it ignores retention and refuses DeleteRecords) and a fresh Faust app with a new
consumer group starts on the empty topic. Against a real Kafka (scale mode) retention does this job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from prometheus_client import Counter, Gauge

from collectors.hubble_client import Checkpoint, ClientTLS, HubbleCollector
from collectors.kafka_out import FlowBatchProducer, new_producer
from netwarden.broker import TansuBroker, ensure_topics, recreate_topics
from query_api.live import LiveHub
from query_api.store import FlowStore, open_clickhouse
from schemas.topics import FLOWS_RAW, TopicSpec, pipeline_topics
from streams.app import FlowPipeline, StreamSettings, build_app
from streams.sink import ClickHouseSink

log = logging.getLogger("netwarden.embedded")

BROKER_RSS = Gauge("netwarden_broker_rss_bytes", "Resident memory of the embedded Tansu broker")
ROTATIONS = Counter("netwarden_broker_rotations_total", "flows.raw generations retired to free broker memory")


@dataclass
class StackConfig:
    data_dir: Path
    kafka: str | None = None  # external Kafka bootstrap; None = embedded Tansu
    clickhouse_dsn: str | None = None  # external ClickHouse; None = chDB under data_dir
    partitions: int = 2
    retention_days: int = 7
    rotate_seconds: float = 300.0  # embedded broker only


class GenerationState:
    """Which consumer-group generation is current; persisted so a restarted worker resumes its group."""

    def __init__(self, path: Path):
        self.path = path
        self.generation = json.loads(path.read_text())["generation"] if path.exists() else 1

    def advance(self) -> int:
        self.generation += 1
        self.path.write_text(json.dumps({"generation": self.generation}))
        return self.generation


class PipelineStack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.data_dir = config.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker: TansuBroker | None = None
        self.bootstrap = config.kafka or ""
        self.clickhouse: Any = None
        self.flow_store: FlowStore | None = None  # reads of the same chDB client (the API in embedded mode)
        self.pipeline: FlowPipeline | None = None
        self.app: faust.App | None = None
        self.producer: Any = None
        self.collectors: dict[str, HubbleCollector] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._gate = asyncio.Event()  # open = collectors may ship
        self._gate.set()
        self.shipped_messages = 0
        self._in_flight = 0
        self._generation = GenerationState(self.data_dir / "broker-generation.json")
        self.stored_event = asyncio.Event()
        # Live stream hook: every stored table is offered to live clients in-process (query_api.live).
        self.live_hub = LiveHub()

    @property
    def embedded_broker(self) -> bool:
        return self.config.kafka is None

    def _topics(self) -> list[TopicSpec]:
        return pipeline_topics(self.config.partitions)

    async def start(self) -> None:
        # ClickHouse first: a data dir held by another process (DataDirLockedError) fails before any
        # broker or worker has started.
        self.clickhouse = open_clickhouse(str(self.data_dir), self.config.clickhouse_dsn)
        self.flow_store = FlowStore(self.clickhouse)
        self.flow_store.ensure_schema(self.config.retention_days)
        if self.embedded_broker:
            self.broker = TansuBroker(log_path=self.data_dir / "broker.log")
            self.broker.start()
            self.bootstrap = self.broker.bootstrap
            # Tansu's memory storage starts empty: every start is a new generation.
            self._generation.advance()
        await ensure_topics(self.bootstrap, self._topics())
        self.pipeline = FlowPipeline(ClickHouseSink(self.clickhouse))
        self.pipeline.stored_listeners.append(self.live_hub.publish_table)
        self.producer = new_producer(self.bootstrap)
        await self.producer.start()
        await self._start_worker()
        if self.embedded_broker:
            self._tasks.append(asyncio.create_task(self._rotate_loop()))

    async def _start_worker(self) -> None:
        assert self.pipeline is not None
        settings = StreamSettings(
            broker=self.bootstrap,
            group_id=f"netwarden-sink-g{self._generation.generation}",
            # Live stream hook: with an external Kafka, API replicas elsewhere read flows.enriched.
            publish_enriched=not self.embedded_broker,
        )
        self.app = build_app(settings, self.pipeline, on_stored=self.stored_event.set)
        await self.app.start()

    async def add_collector(
        self, cluster: str, target: str, *, tls: ClientTLS | None = None, checkpoint: bool = True
    ) -> HubbleCollector:
        shipper = FlowBatchProducer(self.producer, cluster)
        cp_path = self.data_dir / f"checkpoint-{cluster}.json" if checkpoint else None

        async def ship(node: str, responses: list[bytes]) -> None:
            await self._gate.wait()
            self._in_flight += 1
            try:
                await shipper.ship(node, responses)
                self.shipped_messages += 1
            finally:
                self._in_flight -= 1

        collector = HubbleCollector(cluster, target, ship, checkpoint=Checkpoint(cp_path), tls=tls)
        self.collectors[cluster] = collector
        self._tasks.append(asyncio.create_task(collector.run(self._stop)))
        return collector

    def shipper(self, cluster: str) -> FlowBatchProducer:
        return FlowBatchProducer(self.producer, cluster)

    async def rotate(self) -> None:
        """Retire the current flows.raw generation (embedded broker only)."""
        assert self.pipeline is not None and self.app is not None
        self._gate.clear()
        try:
            while self._in_flight:
                await asyncio.sleep(0.05)
            while self.pipeline.totals.messages < self.shipped_messages:
                await asyncio.sleep(0.05)
            await self.app.stop()
            raw = [t for t in self._topics() if t.name == FLOWS_RAW]
            await recreate_topics(self.bootstrap, raw)
            self._generation.advance()
            self.pipeline.totals.messages = self.shipped_messages = 0
            await self._start_worker()
            ROTATIONS.inc()
        finally:
            self._gate.set()

    async def _rotate_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=5.0)
            except TimeoutError:
                pass
            if self.broker:
                BROKER_RSS.set(self.broker.rss_bytes())
            if time.monotonic() - last >= self.config.rotate_seconds and not self._stop.is_set():
                await self.rotate()
                last = time.monotonic()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        if self.app is not None:
            await self.app.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.broker is not None:
            self.broker.stop()
        self.live_hub.close()

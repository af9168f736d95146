"""The pipeline stack: broker (Tansu child or external Kafka), collectors, stream worker, ClickHouse.

chDB allows one process per data directory, so this process both writes ClickHouse and serves reads.
Collectors and demo Hubble servers run in supervised child processes (`spawn_collector`,
`spawn_demo_server`: the second core works on gRPC while this one writes ClickHouse); `add_collector`
keeps one in this process for `ingest` and tests.
With the embedded Tansu broker, memory is bounded by generations: every `rotate_seconds`, or as soon as
the broker's RSS passes `broker_memory_bytes` (checked every 5 s), the collectors
pause, the worker drains what was shipped, flows.raw is deleted and created again (Tansu frees a topic's
RAM only on deletion; it ignores retention and refuses DeleteRecords) and a fresh Faust app with a new
consumer group starts on the empty topic. Against a real Kafka (scale mode) retention does this job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from collectors.hubble_client import Checkpoint, ClientTLS, HubbleCollector
from collectors.kafka_out import FlowBatchProducer, new_producer
from netwarden.broker import TansuBroker, ensure_topics, free_port, recreate_topics
from netwarden.supervise import Child, ChildFailed, python_argv
from policy_engine.inventory_publisher import InventoryPublisher
from policy_engine.store import ControlPlaneStore
from query_api.live import LiveHub
from query_api.store import FlowStore, open_clickhouse
from schemas.topics import FLOWS_RAW, INVENTORY, TopicSpec, pipeline_topics
from streams.app import HOLD_ENV, FlowPipeline, FlowWorker, StreamSettings, build_app, hold_seconds_from
from streams.inventory import InventoryFeed, start_inventory
from streams.sink import ClickHouseSink
from streams.verdicts import PolicyEnricher

log = logging.getLogger("netwarden.embedded")

BROKER_RSS = Gauge("netwarden_broker_rss_bytes", "Resident memory of the embedded Tansu broker")
CHILD_RSS = Gauge("netwarden_child_rss_bytes", "Resident memory of a child process of the embedded stack", ["child"])
CHILD_CPU = Gauge("netwarden_child_cpu_seconds", "CPU (user + system) used by a child process of the embedded stack",
                  ["child"])
# Collector children count in their own process; their totals are re-exported here, on the one /metrics.
CHILD_COLLECTOR = Gauge("netwarden_collector_child_total", "Totals reported by a collector child process",
                        ["cluster", "what"])
ROTATIONS = Counter("netwarden_broker_rotations_total", "flows.raw generations retired to free broker memory")
ROTATION_BACKLOG = Gauge("netwarden_broker_rotation_backlog_messages",
                         "flows.raw messages the worker had yet to consume when a rotation was due")
BROKER_RESTARTS = Counter("netwarden_broker_restarts_total", "Times the embedded broker died and was restarted")
BROKER_MAX_RESTARTS = 5
BROKER_RESTART_WINDOW_S = 300.0
ROTATE_MAX_BACKLOG = 16  # messages (<= 2000 flows each): the drain before a rotation takes a second or two


@dataclass
class StackConfig:
    data_dir: Path
    kafka: str | None = None  # external Kafka bootstrap; None = embedded Tansu
    clickhouse_dsn: str | None = None  # external ClickHouse; None = chDB under data_dir
    partitions: int = 2
    retention_days: int | None = None  # None: keep the stored TTL (new data dirs: 7)
    rollup_retention_days: int | None = None  # None: keep the stored TTL (new data dirs: 90)
    rotate_seconds: float = 300.0  # embedded broker only
    broker_memory_bytes: int = 128 << 20  # embedded broker only: rotate early once its RSS passes this


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
        self.app: FlowWorker | None = None
        self.inventory: InventoryFeed | None = None
        self.producer: Any = None
        self.collectors: dict[str, HubbleCollector] = {}
        self.collector_children: dict[str, CollectorChild] = {}
        self.server_children: dict[str, Child] = {}
        self.failed = asyncio.Event()  # a child gave up or the broker died: the owner should stop
        self._rotating: asyncio.Task[None] | None = None
        self._in_rotation = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._gate = asyncio.Event()  # open = collectors may ship
        self._gate.set()
        self.shipped_messages = 0
        self._in_flight = 0
        self._generation = GenerationState(self.data_dir / "broker-generation.json")
        self._broker_deaths: list[float] = []
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
        self.flow_store.ensure_schema(self.config.retention_days, self.config.rollup_retention_days)
        if self.embedded_broker:
            self.broker = TansuBroker(log_path=self.data_dir / "broker.log")
            self.broker.start()
            self.bootstrap = self.broker.bootstrap
            # Tansu's memory storage starts empty: every start is a new generation.
            self._generation.advance()
        await ensure_topics(self.bootstrap, self._topics())
        if self.embedded_broker:
            # The control plane lives in this data dir; in scale mode `netwarden admin inventory publish
            # --follow` runs next to the real store instead (a worker's data dir may hold a stale one).
            publisher = InventoryPublisher(
                lambda: ControlPlaneStore.open(self.data_dir),
                self.bootstrap,
                ensure_topic=lambda b: ensure_topics(b, [t for t in self._topics() if t.name == INVENTORY]),
            )
            self._tasks.append(asyncio.create_task(publisher.run(self._stop)))
        self.inventory = await start_inventory(self.bootstrap)
        self.pipeline = FlowPipeline(ClickHouseSink(self.clickhouse), PolicyEnricher(self.inventory.view))
        self.pipeline.stored_listeners.append(self.live_hub.publish_table)
        self.producer = new_producer(self.bootstrap)
        await self.producer.start()
        await self._start_worker()
        if self.embedded_broker:
            self._rotating = asyncio.create_task(self._rotate_loop())
            self._tasks.append(self._rotating)
        self._tasks.append(asyncio.create_task(self._watch_children()))

    async def _start_worker(self) -> None:
        assert self.pipeline is not None
        settings = StreamSettings(
            broker=self.bootstrap,
            group_id=f"netwarden-sink-g{self._generation.generation}",
            # Live stream hook: with an external Kafka, API replicas elsewhere read flows.enriched.
            publish_enriched=not self.embedded_broker,
            hold_seconds=hold_seconds_from(os.environ.get(HOLD_ENV)),
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

    async def spawn_collector(self, cluster: str, target: str, *, checkpoint: bool = True,
                              tls_args: list[str] | None = None) -> CollectorChild:
        """A supervised collector process (collectors.child) shipping to this stack's broker."""
        argv = python_argv("-m", "collectors.child", "--cluster", cluster, "--hubble", target,
                           "--kafka", self.bootstrap, "--control", *(tls_args or []))
        if checkpoint:
            argv += ["--data-dir", str(self.data_dir)]
        child = CollectorChild(f"collector-{cluster}", argv)
        await child.start()
        self.collector_children[cluster] = child
        return child

    async def spawn_demo_server(self, cluster: str, *, rate: float = 50.0, ring: int = 4095, seed: int = 0,
                                preload: int = 0, timeout_s: float = 30.0, kube_api: str | None = None) -> str:
        """A supervised `netwarden hubble-serve` generating `cluster`'s demo traffic; returns host:port.
        With `kube_api` (the cluster's API, netwarden.demo.world) its verdicts follow the policies there.

        The port is fixed at first start, so a restarted server is found again by its collector."""
        port = free_port()
        argv = python_argv("-m", "netwarden", "hubble-serve", "--port", str(port), "--generate", cluster,
                           "--rate", f"{rate:g}", "--ring", str(ring), "--seed", str(seed))
        if preload:
            argv += ["--preload", str(preload)]
        if kube_api:
            argv += ["--kube-api", kube_api]
        child = Child(f"hubble-{cluster}", argv)
        await child.start()
        self.server_children[cluster] = child
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while not _listening(port):
            if child.failed.is_set() or time.monotonic() > deadline:
                raise ChildFailed(f"hubble-serve for {cluster} did not listen on {target} within {timeout_s:.0f}s")
            await asyncio.sleep(0.05)
        return target

    def children(self) -> dict[str, Child]:
        out: dict[str, Child] = {c.name: c for c in self.collector_children.values()}
        out.update({c.name: c for c in self.server_children.values()})
        return out

    async def _watch_children(self) -> None:
        """Export children's memory; a child that gave up, or a dead broker, fails the stack."""
        ticks = 0
        while not self._stop.is_set():
            ticks += 1
            for name, child in self.children().items():
                CHILD_RSS.labels(name).set(child.rss_bytes())
                CHILD_CPU.labels(name).set(child.cpu_seconds())
                if child.failed.is_set() and not self.failed.is_set():
                    log.error("%s keeps dying: stopping the stack", name)
                    self.failed.set()
            if self.broker and self.broker.process and self.broker.process.poll() is not None \
                    and not self.failed.is_set() and not self._stop.is_set():
                await self._restart_broker()
            if ticks % 5 == 0:
                for cluster, collector in self.collector_children.items():
                    with contextlib.suppress(ChildFailed, TimeoutError, BrokenPipeError, ConnectionResetError):
                        stats = await collector.stats()
                        for what in ("flows", "lost_events", "duplicates", "connections"):
                            CHILD_COLLECTOR.labels(cluster, what).set(float(stats.get(what, 0)))  # type: ignore[arg-type]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)

    async def _restart_broker(self) -> None:
        """The embedded Tansu died, and with it everything it held (memory storage). Start it again on the same
        port with fresh topics and a new worker generation. Nothing is lost that Hubble still holds: collectors
        move their checkpoints only over stored batches and read the rest again (collectors.stored_acks).
        More than BROKER_MAX_RESTARTS deaths within BROKER_RESTART_WINDOW_S fail the stack instead."""
        assert self.broker is not None and self.broker.process is not None
        now = time.monotonic()
        self._broker_deaths = [t for t in self._broker_deaths if now - t < BROKER_RESTART_WINDOW_S] + [now]
        log.error("the embedded broker exited with %s (log: %s)", self.broker.process.returncode, self.broker.log_path)
        if len(self._broker_deaths) > BROKER_MAX_RESTARTS:
            log.error("the broker died %d times within %.0f s: stopping the stack",
                      len(self._broker_deaths), BROKER_RESTART_WINDOW_S)
            self.failed.set()
            return
        await asyncio.sleep(min(30.0, 0.5 * 2 ** (len(self._broker_deaths) - 1)))
        if self.app is not None:
            # Its consumer talks to a dead broker; whatever it had not committed is read again by collectors.
            await self.app.abandon()
        try:
            self.broker.start()
            await ensure_topics(self.bootstrap, self._topics())
        except Exception:
            log.exception("restarting the broker failed: stopping the stack")
            self.failed.set()
            return
        self._generation.advance()
        self.shipped_messages = 0
        if self.pipeline is not None:
            self.pipeline.totals.messages = 0
        await self._start_worker()
        BROKER_RESTARTS.inc()
        log.warning("the embedded broker was restarted (generation %d)", self._generation.generation)

    async def _backlog_messages(self) -> int:
        """Kafka messages shipped this generation that the worker has not consumed yet."""
        shipped = self.shipped_messages
        for child in self.collector_children.values():
            with contextlib.suppress(ChildFailed, TimeoutError, BrokenPipeError, ConnectionResetError):
                shipped += int((await child.stats()).get("shipped", 0))  # type: ignore[call-overload]
        consumed = self.pipeline.totals.messages if self.pipeline is not None else 0
        return max(0, shipped - consumed)

    async def _pause_collectors(self) -> int:
        """Stop every collector shipping; returns the Kafka messages they shipped this generation."""
        self._gate.clear()
        while self._in_flight:
            await asyncio.sleep(0.05)
        shipped = self.shipped_messages
        for child in self.collector_children.values():
            shipped += await child.pause()
        return shipped

    async def _resume_collectors(self) -> None:
        for child in self.collector_children.values():
            with contextlib.suppress(ChildFailed, TimeoutError):
                await child.resume()
        self._gate.set()

    def shipper(self, cluster: str) -> FlowBatchProducer:
        return FlowBatchProducer(self.producer, cluster)

    async def rotate(self) -> None:
        """Retire the current flows.raw generation (embedded broker only)."""
        assert self.pipeline is not None and self.app is not None
        shipped = await self._pause_collectors()
        try:
            while self.pipeline.totals.messages < shipped:
                await asyncio.sleep(0.05)
            await self.app.stop()
            raw = [t for t in self._topics() if t.name == FLOWS_RAW]
            await recreate_topics(self.bootstrap, raw)
            self._generation.advance()
            self.pipeline.totals.messages = self.shipped_messages = 0
            await self._start_worker()
            ROTATIONS.inc()
        finally:
            await self._resume_collectors()

    async def _rotate_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=5.0)
            except TimeoutError:
                pass
            rss = self.broker.rss_bytes() if self.broker else 0
            BROKER_RSS.set(rss)
            due = time.monotonic() - last >= self.config.rotate_seconds
            # The broker's RAM grows with what was shipped since the last rotation, whatever the rate.
            full = rss > self.config.broker_memory_bytes and time.monotonic() - last >= 10
            if (due or full) and not self._stop.is_set():
                # A rotation pauses the collectors until the worker has drained the generation: while the
                # worker lags, wait for it to catch up (a long pause laps Hubble's rings: lost events),
                # unless the broker is at twice its budget (memory stays bounded).
                backlog = await self._backlog_messages()
                ROTATION_BACKLOG.set(backlog)
                if backlog > ROTATE_MAX_BACKLOG and rss < 2 * self.config.broker_memory_bytes:
                    continue
                if self.broker is not None and self.broker.process is not None \
                        and self.broker.process.poll() is not None:
                    continue  # the broker is down: _watch_children restarts it (a fresh generation anyway)
                self._in_rotation = True
                try:
                    await self.rotate()
                except Exception:
                    log.exception("rotation failed; retrying at the next interval")
                finally:
                    self._in_rotation = False
                last = time.monotonic()

    async def stop(self) -> None:
        began = time.monotonic()
        steps: list[str] = []

        def step(name: str) -> None:
            steps.append(f"{name} {time.monotonic() - began:.1f}s")

        self._stop.set()
        # Children first, together (collectors ship what they read and save checkpoints; a server that
        # goes first only ends their streams), then this process's tasks, worker and broker. Bounded:
        # Ctrl-C on `up` must return within 10 s.
        # 5 s: a collector waits up to 2.5 s for the worker to confirm what it shipped (collectors.hubble_client).
        await asyncio.gather(*(c.stop(timeout=5.0) for c in self.children().values()))
        step("children")
        if self._rotating is not None and self._in_rotation:
            # A rotation waits for the worker to drain; the embedded broker's memory goes away anyway.
            self._rotating.cancel()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        step("tasks")
        if self.app is not None:
            await self.app.stop()
        step("worker")
        if self.inventory is not None:
            await self.inventory.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.broker is not None:
            self.broker.stop()
        step("broker")
        self.live_hub.close()
        if time.monotonic() - began > 5:
            log.warning("stopping the stack took long: %s", ", ".join(steps))


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class CollectorChild(Child):
    """A collectors.child process and its stdin/stdout control protocol (pause/resume for rotation)."""

    _REPLY = re.compile(r"^\{.*\}$")

    def __init__(self, name: str, argv: list[str]):
        super().__init__(name, argv, stdin=True, on_line=self._on_line)
        self._replies: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        self._asking = asyncio.Lock()

    def _on_line(self, line: str) -> None:
        if self._REPLY.match(line):
            self._replies.put_nowait(json.loads(line))

    async def _ask(self, command: str, key: str, timeout_s: float = 30.0) -> object:
        async with self._asking:  # one question at a time: replies carry no id
            while not self._replies.empty():  # a late reply to a question that timed out
                self._replies.get_nowait()
            await self.send(command)
            deadline = time.monotonic() + timeout_s
            while True:
                reply = await asyncio.wait_for(self._replies.get(), max(0.01, deadline - time.monotonic()))
                if key in reply:
                    return reply[key]

    async def pause(self) -> int:
        """Messages shipped since the last resume, once nothing is in flight; 0 if the child is down
        (a restarted child ships nothing before its gRPC stream is up again, and then into the new
        generation)."""
        try:
            return int(await self._ask("pause", "paused"))  # type: ignore[call-overload]
        except (ChildFailed, TimeoutError, BrokenPipeError, ConnectionResetError) as exc:
            log.warning("%s: could not pause (%s)", self.name, exc)
            return 0

    async def resume(self) -> None:
        await self._ask("resume", "resumed", timeout_s=5.0)

    async def stats(self) -> dict[str, object]:
        return await self._ask("stats", "stats", timeout_s=5.0)  # type: ignore[return-value]

"""The stream worker: flows.raw -> ClickHouse (decode, enrich, write), bad entries -> flows.dlq, then commit.

Our own consumer loop (aiokafka, a consumer group, auto-commit off) with explicit stages per batch of
flows.raw messages, in the spirit of Snuba's Arroyo strategies:

  decode + enrich + write   ClickHouse decodes the raw bytes, enriches once per distinct key and stores
                            (streams.sink; no per-flow Python). Retriable failures back off and retry the
                            same batch for ever (never commit, never drop); refused entries become letters.
  dead letters              delivered to flows.dlq and acknowledged by the broker, retried until they are.
  commit                    the batch's offsets, explicitly, only after the two stages above.

A cancellation (stop, rotation) anywhere before the commit leaves the batch uncommitted: a restarted worker
is handed it again, and the flows table (ReplacingMergeTree on Hubble's uuid) collapses the twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge, Histogram

from schemas.dead_letter import DeadLetter
from schemas.messages.batch_pb2 import FlowBatch
from schemas.stored_notice import notices
from schemas.topics import FLOWS_DLQ, FLOWS_ENRICHED, FLOWS_RAW, FLOWS_STORED
from streams.enrichment import KeyEnricher
from streams.sink import ClickHouseSink, Part, RetriableError, StoreResult

log = logging.getLogger("netwarden.streams")

STORED = Counter("netwarden_stream_flows_stored_total", "Flows inserted into ClickHouse", ["cluster"])
DEAD = Counter("netwarden_stream_dead_lettered_total", "Records sent to flows.dlq", ["reason_kind"])
MESSAGES = Counter("netwarden_stream_messages_total", "flows.raw messages committed")
LOST = Counter("netwarden_stream_lost_events_total", "Events Hubble reported lost (not stored)", ["cluster"])
RETRIES = Counter("netwarden_stream_retries_total", "Stage attempts that failed and were retried", ["stage"])
BACKING_OFF = Gauge("netwarden_stream_backing_off", "1 while a stage waits to retry", ["stage"])
COMMIT_SECONDS = Histogram("netwarden_stream_commit_seconds", "Offset commit latency")
COMMITS = Counter("netwarden_stream_commits_total", "Offset commits", ["outcome"])
LAST_INSERT = Gauge("netwarden_stream_last_insert_timestamp_seconds", "When rows were last stored")
NOTICE_FAILURES = Counter(
    "netwarden_stream_stored_notice_failures_total", "flows.stored notices the broker did not take"
)
DLQ_SECONDS = Histogram("netwarden_stream_dead_letter_seconds", "Dead-letter delivery latency per batch")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
HOLD_ENV = "NETWARDEN_HOLD_SECONDS"
DEFAULT_HOLD_SECONDS = 1.0


def hold_seconds_from(value: str | None) -> float:
    """StreamSettings.hold_seconds from NETWARDEN_HOLD_SECONDS ('' or unset: the default; 0 disables)."""
    if value is None or not value.strip():
        return DEFAULT_HOLD_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 60:
        raise ValueError(f"{HOLD_ENV}: expected seconds between 0 and 60, got {value!r}")
    return seconds
# A dead letter must fit a Kafka request even when its payload was a whole (large) flows.raw value.
MAX_LETTER_PAYLOAD = 4 * 1024 * 1024


@dataclass
class StreamSettings:
    broker: str  # host:port[,host:port]
    group_id: str = "netwarden-sink"
    buffer_messages: int = 64  # a batch is at most this many flows.raw messages ...
    flush_seconds: float = 0.25  # ... gathered for at most this long after the first one
    session_timeout_s: float = 6.0  # Tansu: a group join takes about half of it
    # Live stream hook (query_api.live): publish each stored table to flows.enriched for API replicas in
    # scale mode. Off in embedded mode, where the API reads the pipeline in-process (FlowPipeline hook).
    publish_enriched: bool = False
    # Tansu answers a waiting fetch only at its deadline, not when records arrive: this bounds how long a
    # flow sits in flows.raw before the worker sees it (the live stream's target is 1 s end to end).
    fetch_max_wait_s: float = 0.1
    dlq_topic: str = FLOWS_DLQ
    max_backoff_s: float = 10.0
    # Small batches wait in the sink's held table up to this long (or streams.sink.HOLD_FLOWS flows) and go
    # to flows in one insert, their offsets committed after it: the views' fixed cost is paid once per
    # flush, not per batch. History lags the live stream by at most this much. 0 writes every batch through.
    hold_seconds: float = DEFAULT_HOLD_SECONDS
    request_timeout_s: float = 30.0  # a dead-letter send not acknowledged by then is retried


@dataclass
class StreamTotals:
    """Counts for this process, for `netwarden ingest`'s summary and for tests."""

    stored: int = 0  # flows in ClickHouse
    dead_lettered: int = 0  # letters acknowledged by the broker
    messages: int = 0  # flows.raw messages committed
    by_cluster: dict[str, int] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one batch of flows.raw messages became."""

    result: StoreResult
    letters: list[DeadLetter]
    # (collector, sequence) of every FlowBatch handled: named in flows.stored once committed.
    batch_ids: list[tuple[str, int]] = field(default_factory=list)


class FlowPipeline:
    """The core of the worker: flows.raw values -> rows in ClickHouse + dead letters. Synchronous (it runs in
    a worker thread); raises streams.sink.RetriableError when ClickHouse cannot take the batch now."""

    def __init__(self, sink: ClickHouseSink, enricher: KeyEnricher | None = None):
        self.sink = sink
        if enricher is not None:
            sink.enricher = enricher
        self.totals = StreamTotals()
        # Live stream hook (query_api.live): called with each table right after it is stored. Listeners
        # must not block (LiveHub.publish_table only enqueues); `last_stored` feeds flows.enriched.
        self.stored_listeners: list[Callable[[pa.Table], None]] = []
        self.last_stored: pa.Table | None = None
        self.want_rows = False  # set by the worker when it publishes flows.enriched

    @property
    def enricher(self) -> KeyEnricher | None:
        return self.sink.enricher

    def process(self, messages: Sequence[tuple[str, bytes]], hold: bool = False) -> Outcome:
        """messages: (origin "flows.raw[p]@offset", value) pairs. hold: the rows may wait in the sink's held
        table (outcome.result.held) until `flush()`; the live listeners get them at once either way."""
        parts: list[Part] = []
        letters: list[DeadLetter] = []
        batch_ids: list[tuple[str, int]] = []
        lost_ranges: list[tuple[str, str, int, int]] = []
        for origin, value in messages:
            try:
                batch = FlowBatch.FromString(value)
            except DecodeError as exc:
                letters.append(_letter(f"flows.raw value is not a FlowBatch: {exc}", origin, "", value))
                continue
            batch_id = f"{batch.collector}#{batch.sequence}" if batch.collector else ""
            if batch.collector:
                batch_ids.append((batch.collector, batch.sequence))
            lost_ranges += [(batch.cluster, r.node, r.after_ns, r.before_ns) for r in batch.lost_ranges]
            if batch.framed:  # framed by the producer: no entry is touched in Python
                parts.append(
                    Part(batch.cluster, origin, origins=batch.origins, framed=batch.framed, batch_id=batch_id)
                )
            elif batch.responses:
                parts.append(Part(batch.cluster, origin, batch.responses, batch.origins, batch_id=batch_id))
        want_rows = self.want_rows or any(_wants_rows(listener) for listener in self.stored_listeners)
        result = self.sink.store(parts, want_rows=want_rows, hold=hold)
        if lost_ranges:
            self.sink.store_lost_ranges(lost_ranges)
        letters += self._letters(result)
        for cluster, lost in result.lost_events.items():
            LOST.labels(cluster).inc(lost)
        if not result.held:
            self._count(result)
        table = pa.concat_tables(result.tables) if len(result.tables) > 1 else (result.tables or [None])[0]
        self.last_stored = table
        if table is not None and table.num_rows:
            for listener in self.stored_listeners:
                try:
                    listener(table)
                except Exception:  # the live feed is best effort; storage has already succeeded
                    log.exception("stored-table listener failed")
        return Outcome(result, letters, batch_ids)

    def flush(self) -> Outcome:
        """The held batches into flows (one insert); their letters if the flows table refused entries."""
        result = self.sink.flush_held()
        self._count(result)
        return Outcome(result, self._letters(result))

    @staticmethod
    def _letters(result: StoreResult) -> list[DeadLetter]:
        return [
            _letter(reason, entry_origin, cluster, payload)
            for entry_origin, cluster, payload, reason in result.refused_entries()
        ]

    def _count(self, result: StoreResult) -> None:
        if not result.stored:
            return
        LAST_INSERT.set(time.time())
        # Counted once the rows are in the flows table: `ingest` and tests wait on these totals.
        for cluster, rows in result.stored_by_cluster.items():
            self.totals.by_cluster[cluster] = self.totals.by_cluster.get(cluster, 0) + rows
            STORED.labels(cluster).inc(rows)
        self.totals.stored += result.stored


def _wants_rows(listener: Callable[[pa.Table], None]) -> bool:
    """Reading the stored rows back costs as much as storing them: skip it for a listener bound to a hub with
    no subscribers right now (query_api.live.LiveHub.subscriber_count; its publish is free then anyway)."""
    count = getattr(getattr(listener, "__self__", None), "subscriber_count", None)
    if count is None:
        return True
    return bool(count() if callable(count) else count)


def _letter(reason: str, origin: str, cluster: str, payload: bytes) -> DeadLetter:
    if len(payload) > MAX_LETTER_PAYLOAD:
        reason = f"{reason} (payload truncated from {len(payload)} bytes)"
        payload = payload[:MAX_LETTER_PAYLOAD]
    return DeadLetter(reason, origin, cluster, payload)


ENRICHED_ROWS_PER_MESSAGE = 5000  # keeps a flows.enriched value well under the 16 MiB request limit


def enriched_values(table: pa.Table) -> list[bytes]:
    """flows.enriched values: Arrow IPC streams of stored record rows (query_api.live.decode_enriched)."""
    out = []
    for offset in range(0, table.num_rows, ENRICHED_ROWS_PER_MESSAGE):
        sink = pa.BufferOutputStream()
        part = table.slice(offset, ENRICHED_ROWS_PER_MESSAGE)
        with pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        out.append(sink.getvalue().to_pybytes())
    return out


class FlowWorker:
    """The consumer loop around a FlowPipeline. `start()` joins the group; `stop()` leaves it without
    committing anything that was not stored and dead-lettered."""

    def __init__(
        self, settings: StreamSettings, pipeline: FlowPipeline, on_stored: Callable[[], None] | None = None
    ):
        self.settings = settings
        self.pipeline = pipeline
        self.on_stored = on_stored
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[Outcome] | None = None
        self.failure: BaseException | None = None
        self.on_batch_start: Callable[[], object] | None = None  # benches: when work on a batch begins
        self._held_records: list[ConsumerRecord] = []  # handled, not yet committed (held or not yet flushed)
        self._held_ids: list[tuple[str, int]] = []  # their FlowBatch names, for flows.stored
        pipeline.want_rows = settings.publish_enriched

    async def start(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            FLOWS_RAW,
            bootstrap_servers=s.broker,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=int(s.fetch_max_wait_s * 1000),
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=1000,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.broker,
            acks="all",
            linger_ms=5,
            max_request_size=MAX_MESSAGE_BYTES,
            request_timeout_ms=int(s.request_timeout_s * 1000),
        )
        await self.producer.start()
        try:
            await self.consumer.start()
        except BaseException:
            await self.producer.stop()
            raise
        self._task = asyncio.create_task(self._run(), name=f"flow-worker-{s.group_id}")

    async def abandon(self) -> None:
        """The broker is gone (nothing can be committed, and its clients may hang): stop the loop, drop the
        held rows unstored (collectors read them again), and close the Kafka clients in the background."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            self._task = None
        if self._in_flight is not None and not self._in_flight.done():
            await asyncio.wait([self._in_flight], timeout=60)
        await asyncio.get_running_loop().run_in_executor(None, self.pipeline.sink.discard_held)
        self._held_records, self._held_ids = [], []
        for client in (self.consumer, self.producer):
            if client is not None:
                fut = asyncio.ensure_future(asyncio.wait_for(client.stop(), 30))
                _closing.add(fut)
                fut.add_done_callback(_closing.discard)
        self.consumer = self.producer = None

    async def stop(self, flush: bool = True) -> None:
        """flush=False: the broker is gone (nothing could be committed): held rows are dropped unstored."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        interrupted = self._in_flight is not None and not self._in_flight.done()
        if interrupted:
            # The insert thread cannot be interrupted; let it finish before ClickHouse may be closed.
            await asyncio.wait([self._in_flight], timeout=60)  # type: ignore[list-item]
        try:
            if flush and self._held_records and not interrupted and self.failure is None:
                # A clean stop: what was handled is stored and committed, not handed out again.
                await asyncio.wait_for(self._flush_and_commit(), timeout=30)
        except Exception as exc:  # a timeout included
            log.warning("held batches not stored at stop (Kafka hands them out again): %s", exc)
        finally:
            if self._held_records or interrupted:
                # Uncommitted: the rows must not reach flows now, or a redelivery would count them twice.
                await asyncio.get_running_loop().run_in_executor(None, self.pipeline.sink.discard_held)
                self._held_records = []
        if self.consumer is not None:
            await self.consumer.stop()  # auto-commit is off: leaving commits nothing
        if self.producer is not None:
            await self.producer.stop()

    async def _run(self) -> None:
        assert self.consumer is not None
        try:
            while True:
                records = await self._gather()
                if records:
                    await self.handle(records)
                elif self._held_records:
                    await self._flush_and_commit()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: make it visible instead of a silently dead loop
            self.failure = exc
            log.exception("flow worker stopped")
            raise

    def _flush_due_in(self) -> float | None:
        """Seconds until the held batches must be flushed (None: nothing held)."""
        held_for = self.pipeline.sink.held_for()
        if held_for is None:
            return None
        return max(0.0, self.settings.hold_seconds - held_for)

    async def _gather(self) -> list[ConsumerRecord]:
        assert self.consumer is not None
        s = self.settings
        due = self._flush_due_in()
        first_wait = 1.0 if due is None else min(1.0, due)
        got = await self.consumer.getmany(timeout_ms=int(first_wait * 1000), max_records=s.buffer_messages)
        records = list(chain.from_iterable(got.values()))
        if not records:
            return records
        deadline = time.monotonic() + s.flush_seconds
        while len(records) < s.buffer_messages:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = await self.consumer.getmany(
                timeout_ms=int(left * 1000), max_records=s.buffer_messages - len(records)
            )
            if not more:
                break
            records += chain.from_iterable(more.values())
        return records

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """decode/enrich/write -> dead letters -> commit, for one batch of records. A held batch is committed
        with the flush that stores it."""
        if self.on_batch_start is not None:
            self.on_batch_start()
        messages = [(f"{FLOWS_RAW}[{r.partition}]@{r.offset}", r.value or b"") for r in records]
        hold = self.settings.hold_seconds > 0
        outcome = await self._retrying("write", lambda: self._store(messages, hold))
        if outcome.letters:
            await self._retrying("dead_letter", lambda: self._deliver(outcome.letters))
        if self.settings.publish_enriched and self.pipeline.last_stored is not None:
            self._publish_enriched(self.pipeline.last_stored)
        self.pipeline.totals.dead_lettered += len(outcome.letters)
        self._held_records += records
        self._held_ids += outcome.batch_ids
        due = self._flush_due_in()
        if not outcome.result.held or due == 0 or self.pipeline.sink.held_flows >= self.pipeline.sink.hold_flows:
            await self._flush_and_commit()

    async def _flush_and_commit(self) -> None:
        """Held rows into flows (with their letters, if the flows table refused some), then every offset
        handled since the last commit."""
        loop = asyncio.get_running_loop()
        if self.pipeline.sink.held_for() is not None:

            async def flush() -> Outcome:
                return await loop.run_in_executor(None, self.pipeline.flush)

            outcome = await self._retrying("flush", flush)
            if outcome.letters:
                await self._retrying("dead_letter", lambda: self._deliver(outcome.letters))
                self.pipeline.totals.dead_lettered += len(outcome.letters)
        records, ids = self._held_records, self._held_ids
        await self._retrying("commit", lambda: self._commit(records))
        self._held_records, self._held_ids = [], []
        await self._notify_stored(ids)
        self.pipeline.totals.messages += len(records)
        MESSAGES.inc(len(records))
        if self.on_stored is not None:
            self.on_stored()

    async def _store(self, messages: list[tuple[str, bytes]], hold: bool) -> Outcome:
        loop = asyncio.get_running_loop()
        self._in_flight = loop.run_in_executor(None, self.pipeline.process, messages, hold)
        # Shielded: a cancellation stops this task (no commit) but cannot stop the thread mid-insert.
        return await asyncio.shield(self._in_flight)

    async def _deliver(self, letters: list[DeadLetter]) -> None:
        assert self.producer is not None
        started = time.perf_counter()
        futures = [
            await self.producer.send(self.settings.dlq_topic, letter.to_json(), key=letter.cluster.encode())
            for letter in letters
        ]
        await asyncio.gather(*futures)  # acknowledged by the broker before the batch may be committed
        DLQ_SECONDS.observe(time.perf_counter() - started)
        for letter in letters:
            DEAD.labels(letter.reason.split(":", 1)[0][:40]).inc()

    async def _retrying(self, stage: str, attempt: Callable[[], Any]) -> Any:
        delay = 0.2
        while True:
            try:
                return await attempt()
            except (RetriableError, KafkaError, OSError) as exc:
                RETRIES.labels(stage).inc()
                log.error("%s failed, retrying in %.1fs (nothing committed): %s", stage, delay, exc)
            BACKING_OFF.labels(stage).set(1)
            try:
                await asyncio.sleep(delay)
            finally:
                BACKING_OFF.labels(stage).set(0)
            delay = min(delay * 2, self.settings.max_backoff_s)

    async def _commit(self, records: Sequence[ConsumerRecord]) -> None:
        assert self.consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        started = time.perf_counter()
        try:
            await self.consumer.commit(offsets)
            COMMITS.labels("ok").inc()
        except CommitFailedError as exc:
            # The group moved on (rebalance): the new owner is handed these records again and their
            # twins collapse in ClickHouse. Nothing is lost.
            COMMITS.labels("rebalanced").inc()
            log.warning("commit of %s refused after a rebalance: %s", offsets, exc)
        finally:
            COMMIT_SECONDS.observe(time.perf_counter() - started)

    async def _notify_stored(self, batch_ids: list[tuple[str, int]]) -> None:
        """Tell the collectors which of their batches are stored and committed (collectors.stored_acks): only
        these move their checkpoints. Best effort: a collector that hears nothing reads them again."""
        assert self.producer is not None
        try:
            futures = [
                await self.producer.send(FLOWS_STORED, n.to_json(), key=n.collector.encode())
                for n in notices(batch_ids)
            ]
            await asyncio.gather(*futures)
        except (KafkaError, OSError) as exc:
            NOTICE_FAILURES.inc()
            log.warning("flows.stored notice not sent (the collectors will read those batches again): %s", exc)

    def _publish_enriched(self, table: pa.Table) -> None:
        assert self.producer is not None
        # Live stream hook: best effort, not awaited; the history in ClickHouse is the record.
        for value in enriched_values(table):
            task = asyncio.ensure_future(self.producer.send(FLOWS_ENRICHED, value))
            task.add_done_callback(_ignore_result)


_closing: set[asyncio.Future[Any]] = set()  # Kafka clients of abandoned workers, closing in the background


def _ignore_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("flows.enriched publish failed: %s", fut.exception())


def build_app(
    settings: StreamSettings,
    pipeline: FlowPipeline,
    on_stored: Callable[[], None] | None = None,
) -> FlowWorker:
    """A fresh worker (a new one per broker generation, see netwarden.embedded)."""
    return FlowWorker(settings, pipeline, on_stored)


__all__ = [
    "FlowPipeline",
    "FlowWorker",
    "Outcome",
    "StreamSettings",
    "StreamTotals",
    "build_app",
    "enriched_values",
    "hold_seconds_from",
]

"""The Faust app: flows.raw -> decode -> (enrich) -> ClickHouse, bad records -> flows.dlq.

A thin shell: decoding lives in streams.decode, storage in streams.sink. Offsets are committed only after
rows are in ClickHouse: `take_events` acks a buffer's events only when the body has finished with it, and
the body never raises on a sink failure (it retries), so an ack never precedes the insert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
import pyarrow as pa
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge, Histogram

from schemas.dead_letter import DeadLetter
from schemas.messages.batch_pb2 import FlowBatch
from schemas.topics import FLOWS_DLQ, FLOWS_ENRICHED, FLOWS_RAW
from streams.decode import FlowDecoder
from streams.sink import ClickHouseSink

log = logging.getLogger("netwarden.streams")

STORED = Counter("netwarden_stream_flows_stored_total", "Flows inserted into ClickHouse", ["cluster"])
DEAD = Counter("netwarden_stream_dead_lettered_total", "Records sent to flows.dlq", ["reason_kind"])
MESSAGES = Counter("netwarden_stream_messages_total", "flows.raw messages processed")
LOST = Counter("netwarden_stream_lost_events_total", "Lost-event responses seen in batches", ["cluster"])
INSERT_SECONDS = Histogram("netwarden_stream_insert_seconds", "ClickHouse insert latency")
SINK_RETRIES = Counter("netwarden_stream_sink_retries_total", "Failed inserts retried")
LAST_INSERT = Gauge("netwarden_stream_last_insert_timestamp_seconds", "When rows were last stored")


class Enricher(Protocol):
    """The seam for ownership and policy-verdict enrichment: adds columns, never drops rows."""

    def enrich(self, table: pa.Table) -> pa.Table: ...


@dataclass
class StreamSettings:
    broker: str  # host:port[,host:port]
    group_id: str = "netwarden-sink"
    buffer_messages: int = 64  # flush after this many flows.raw messages ...
    flush_seconds: float = 0.25  # ... or this long after the first one
    session_timeout_s: float = 6.0  # Tansu: a group join takes about half of it
    # Live stream hook (query_api.live): publish each stored table to flows.enriched for API replicas in
    # scale mode. Off in embedded mode, where the API reads the pipeline in-process (FlowPipeline hook).
    publish_enriched: bool = False
    # Live stream latency: how long a fetch may wait at the broker for records (see _shorten_fetch_wait).
    fetch_max_wait_s: float = 0.1


@dataclass
class StreamTotals:
    """Counts for this process, for `netwarden ingest`'s summary and for tests."""

    stored: int = 0
    dead_lettered: int = 0
    messages: int = 0
    by_cluster: dict[str, int] = field(default_factory=dict)


class FlowPipeline:
    """Pure-ish core of the agent: one buffer of flows.raw values -> rows inserted + dead letters."""

    def __init__(self, sink: ClickHouseSink, enrichers: Sequence[Enricher] = ()):
        self.sink = sink
        self.enrichers = list(enrichers)
        self.decoder = FlowDecoder()
        self.totals = StreamTotals()
        # Live stream hook (query_api.live): called with each table right after it is stored. Listeners
        # must not block (LiveHub.publish_table only enqueues); `last_stored` feeds flows.enriched.
        self.stored_listeners: list[Callable[[pa.Table], None]] = []
        self.last_stored: pa.Table | None = None

    def process(self, messages: Sequence[tuple[str, bytes]]) -> list[DeadLetter]:
        """messages: (origin, value) pairs. Inserts what decodes, returns what must be dead-lettered."""
        letters: list[DeadLetter] = []
        tables: list[pa.Table] = []
        per_cluster: dict[str, int] = {}
        self.last_stored = None
        for origin, value in messages:
            try:
                batch = FlowBatch.FromString(value)
            except DecodeError as exc:
                letters.append(DeadLetter(f"flows.raw value is not a FlowBatch: {exc}", origin, "", value))
                continue
            decoded = self.decoder.decode(batch.cluster, batch.responses)
            for rej in decoded.rejected:
                where = batch.origins[rej.index] if rej.index < len(batch.origins) else f"{origin}#{rej.index}"
                letters.append(DeadLetter(rej.reason, where, batch.cluster, rej.payload))
            if decoded.lost_events:
                LOST.labels(batch.cluster).inc(decoded.lost_events)
            if decoded.table.num_rows:
                tables.append(decoded.table)
                per_cluster[batch.cluster] = per_cluster.get(batch.cluster, 0) + decoded.table.num_rows
        if tables:
            table = pa.concat_tables(tables)
            for enricher in self.enrichers:
                table = enricher.enrich(table)
            self._insert_until_done(table)
            # Counted only once the rows are in ClickHouse: `ingest` and tests wait on these totals.
            for cluster, rows in per_cluster.items():
                self.totals.by_cluster[cluster] = self.totals.by_cluster.get(cluster, 0) + rows
                STORED.labels(cluster).inc(rows)
            self.totals.stored += table.num_rows
            self.last_stored = table
            for listener in self.stored_listeners:
                try:
                    listener(table)
                except Exception:  # the live feed is best effort; storage has already succeeded
                    log.exception("stored-table listener failed")
        self.totals.messages += len(messages)
        self.totals.dead_lettered += len(letters)
        MESSAGES.inc(len(messages))
        return letters

    def _insert_until_done(self, table: pa.Table) -> None:
        # Never give up: raising would let Faust ack events whose rows are not stored.
        delay = 0.2
        while True:
            try:
                with INSERT_SECONDS.time():
                    self.sink.insert(table)
                LAST_INSERT.set(time.time())
                return
            except Exception as exc:  # the sink's client raises many kinds; all are retried
                SINK_RETRIES.inc()
                log.error("ClickHouse insert of %d rows failed, retrying in %.1fs: %s", table.num_rows, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


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


def _shorten_fetch_wait() -> None:
    """Let apps choose the consumer's fetch_max_wait (Faust hardcodes 1500 ms).

    Tansu does not answer a waiting fetch when records arrive, only at its deadline, so with 1500 ms a
    flow could sit up to 1.5 s in flows.raw before the worker saw it (the live stream's target is 1 s
    end to end). Against Kafka a shorter wait only adds an empty fetch per interval. Installed once;
    apps without `netwarden_fetch_max_wait_ms` keep Faust's value.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "netwarden_patched", False):
        return

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait_ms = getattr(self.app, "netwarden_fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # read by aiokafka's Fetcher at consumer.start()
        return consumer

    create_worker_consumer.netwarden_patched = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def build_app(
    settings: StreamSettings,
    pipeline: FlowPipeline,
    on_stored: Callable[[], None] | None = None,
) -> faust.App:
    """A fresh Faust app (a new one per broker generation, see netwarden.broker)."""
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{b}" for b in settings.broker.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        store="memory://",
        topic_allow_declare=False,  # topics are created explicitly: Tansu auto-creates with 4 partitions
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        consumer_max_fetch_size=16 * 1024 * 1024,
        producer_max_request_size=16 * 1024 * 1024,
        stream_wait_empty=False,
    )
    _shorten_fetch_wait()
    app.netwarden_fetch_max_wait_ms = int(settings.fetch_max_wait_s * 1000)  # type: ignore[attr-defined]
    raw_topic = app.topic(FLOWS_RAW, key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(FLOWS_DLQ, key_type=bytes, value_type=bytes)
    enriched_topic = app.topic(FLOWS_ENRICHED, key_type=bytes, value_type=bytes)

    @app.agent(raw_topic)
    async def store_flows(stream: Any) -> None:
        async for events in stream.take_events(settings.buffer_messages, within=settings.flush_seconds):
            messages = [
                (f"{FLOWS_RAW}[{e.message.partition}]@{e.message.offset}", e.value) for e in events
            ]
            letters = await asyncio.to_thread(pipeline.process, messages)
            for letter in letters:
                DEAD.labels(letter.reason.split(":", 1)[0][:40]).inc()
                fut = await dlq_topic.send(key=letter.cluster.encode(), value=letter.to_json())
                await fut  # delivered before the events are acked
            if settings.publish_enriched and pipeline.last_stored is not None:
                # Live stream hook: best effort, not awaited; the history in ClickHouse is the record.
                for value in enriched_values(pipeline.last_stored):
                    await enriched_topic.send(value=value)
            if on_stored is not None:
                on_stored()

    return app

"""Sink bench: the worker alone draining flows.raw, against the same bytes inserted straight (the ceiling).

`netwarden bench ingest` calls `measure_sink(stack, flows)` after its end-to-end run, when flows.raw still
holds the flows. Both measurements write into copies of the flows table (`CREATE TABLE ... AS flows`: same
columns, codecs, sort key and partitioning, no materialized views), so the history and its rollups are not
touched and neither side pays for rollups:

  sink_flows_per_s          a fresh worker (new consumer group) reads every flows.raw message from the start
                            and runs its stages (decode, enrich, write, commit) until all are committed; timed
                            from its first batch to its last commit.
  sink_ceiling_flows_per_s  the same messages' framed bytes, in the same per-batch chunks, inserted straight
                            (`INSERT ... SELECT <transforms> FROM <Protobuf>`): no stage, no enrichment,
                            no Kafka; framing is done before the clock starts.

Each is run `repeat` times, interleaved, and the best run counts (the machine may be shared).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from netwarden.broker import true_end_offsets
from schemas.clickhouse import FLOWS_TABLE
from schemas.messages.batch_pb2 import FlowBatch
from schemas.topics import FLOWS_RAW
from streams.app import FlowPipeline, FlowWorker, StreamSettings
from streams.enrichment import KeyEnricher
from streams.sink import ClickHouseSink, Part, Run

SINK_TABLE = "_nw_bench_sink_flows"
CEILING_TABLE = "_nw_bench_ceiling_flows"


async def measure_sink(stack: Any, flows: int | None = None, **options: Any) -> dict[str, Any]:
    """For `netwarden bench ingest`: measure_sink_on(stack.bootstrap, stack.clickhouse, enricher=the stack's)."""
    enricher = getattr(getattr(stack, "pipeline", None), "enricher", None)
    options.setdefault("enricher", enricher)
    return await measure_sink_on(stack.bootstrap, stack.clickhouse, flows, **options)


async def measure_sink_on(
    bootstrap: str,
    client: Any,
    flows: int | None = None,
    *,
    enricher: KeyEnricher | None = None,
    buffer_messages: int = 64,
    repeat: int = 2,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """{"sink_flows_per_s", "sink_ceiling_flows_per_s", "sink_ratio", "sink_flows", "sink_messages",
    "sink_cpu_us_per_flow", "sink_ceiling_cpu_us_per_flow", "sink_seconds", "sink_ceiling_seconds"}: rates
    and CPU from the best of `repeat` interleaved runs of each, the seconds of every run. `flows`: expected
    count (checked when given)."""
    ends = await true_end_offsets(bootstrap, FLOWS_RAW)
    total_messages = sum(ends.values())
    ceiling = ClickHouseSink(client, flows_table=CEILING_TABLE)  # its way of handing bytes to ClickHouse
    chunks = await _framed_chunks(bootstrap, ends, buffer_messages, ceiling)
    sink_runs: list[float] = []
    ceiling_runs: list[float] = []
    sink_cpu: list[float] = []  # this process's CPU (all threads, chDB's included): robust to neighbours
    ceiling_cpu: list[float] = []
    sink_flows = 0
    try:
        # Interleaved and repeated: on a shared machine a single pair says more about the neighbours.
        for _ in range(max(1, repeat)):
            for table in (SINK_TABLE, CEILING_TABLE):
                client.command(f"DROP TABLE IF EXISTS {table}")
                client.command(f"CREATE TABLE {table} AS {FLOWS_TABLE}")
            cpu = time.process_time()
            sink_flows, seconds = await _drain(
                bootstrap, client, enricher, buffer_messages, total_messages, timeout
            )
            sink_cpu.append(time.process_time() - cpu)
            sink_runs.append(seconds)
            cpu = time.process_time()
            ceiling_runs.append(_insert_straight(ceiling, chunks))
            ceiling_cpu.append(time.process_time() - cpu)
    finally:
        ceiling.close()
        for table in (SINK_TABLE, CEILING_TABLE):
            client.command(f"DROP TABLE IF EXISTS {table}")
    if flows is not None and sink_flows < flows:
        raise RuntimeError(f"the sink stored {sink_flows} flows, expected {flows}")
    sink_rate = sink_flows / min(sink_runs) if min(sink_runs) else 0.0
    ceiling_rate = sink_flows / min(ceiling_runs) if min(ceiling_runs) else 0.0
    return {
        "sink_flows_per_s": round(sink_rate),
        "sink_ceiling_flows_per_s": round(ceiling_rate),
        "sink_ratio": round(sink_rate / ceiling_rate, 3) if ceiling_rate else None,
        "sink_flows": sink_flows,
        "sink_messages": total_messages,
        "sink_cpu_us_per_flow": round(min(sink_cpu) / max(1, sink_flows) * 1e6, 2),
        "sink_ceiling_cpu_us_per_flow": round(min(ceiling_cpu) / max(1, sink_flows) * 1e6, 2),
        "sink_seconds": [round(x, 3) for x in sink_runs],
        "sink_ceiling_seconds": [round(x, 3) for x in ceiling_runs],
    }


async def _drain(
    bootstrap: str,
    client: Any,
    enricher: KeyEnricher | None,
    buffer_messages: int,
    total: int,
    timeout: float,
) -> tuple[int, float]:
    sink = ClickHouseSink(client, enricher, flows_table=SINK_TABLE)
    pipeline = FlowPipeline(sink)
    done = asyncio.Event()
    first: list[float] = []
    last: list[float] = []

    def on_committed() -> None:
        last[:] = [time.perf_counter()]
        if pipeline.totals.messages >= total:
            done.set()

    settings = StreamSettings(
        broker=bootstrap,
        group_id=f"netwarden-sink-bench-{uuid.uuid4().hex[:8]}",
        buffer_messages=buffer_messages,
    )
    worker = FlowWorker(settings, pipeline, on_stored=on_committed)
    worker.on_batch_start = lambda: first or first.append(time.perf_counter())
    await worker.start()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await worker.stop()
        sink.close()
    return pipeline.totals.stored, (last[0] - first[0]) if first and last else 0.0


async def _framed_chunks(
    bootstrap: str, ends: dict[int, int], buffer_messages: int, sink: ClickHouseSink
) -> list[list[tuple[str, list[bytes]]]]:
    """flows.raw read again from the start, framed per cluster in chunks of `buffer_messages` messages,
    cut in files exactly as the sink cuts them."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        tps = [TopicPartition(FLOWS_RAW, p) for p in ends]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        want = sum(ends.values())
        while len(values) < want:
            got = await consumer.getmany(timeout_ms=1000)
            for records in got.values():
                values += [r.value or b"" for r in records]
    finally:
        await consumer.stop()
    chunks = []
    for i in range(0, len(values), buffer_messages):
        by_cluster: dict[str, list[Run]] = {}
        for value in values[i : i + buffer_messages]:
            batch = FlowBatch.FromString(value)
            part = Part(batch.cluster, "", batch.responses, framed=batch.framed)
            by_cluster.setdefault(batch.cluster, []).append((part, 0, None))
        chunks.append([(cluster, sink.frames(runs)) for cluster, runs in by_cluster.items()])
    return chunks


def _insert_straight(sink: ClickHouseSink, chunks: list[list[tuple[str, list[bytes]]]]) -> float:
    started = time.perf_counter()
    for chunk in chunks:
        for cluster, framed in chunk:
            sink.insert_framed(CEILING_TABLE, cluster, framed)
    return time.perf_counter() - started

"""`netwarden bench ingest`: generated Hubble servers -> collectors -> broker -> worker -> ClickHouse.

K demo Hubble servers and K collectors run in their own processes (as in `netwarden up`), the broker
is the embedded Tansu (or --kafka), the worker and chDB run in this process. CPU per flow comes from
each process's own accounting (user + system): /proc/<pid>/stat for the children, os.times() for
this process (the worker, with chDB's threads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netwarden.cli import CommandError

if TYPE_CHECKING:
    from netwarden.embedded import PipelineStack


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = groups["bench"].add_parser(
        "ingest", help="throughput and CPU/flow of Hubble gRPC -> collectors -> Kafka -> worker -> ClickHouse")
    p.add_argument("--flows", type=int, default=300_000, help="flows to drive through, all clusters (default 300000)")
    p.add_argument("--clusters", type=int, default=2, help="generated Hubble servers, one collector each (default 2)")
    p.add_argument("--kafka", help="external Kafka bootstrap (default: embedded Tansu)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every flow to be stored")
    p.set_defaults(handler=cmd_bench_ingest)


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    if args.flows < 1 or args.clusters < 1:
        raise CommandError("--flows and --clusters must be >= 1")
    with tempfile.TemporaryDirectory(prefix="netwarden-bench-") as tmp:
        result = asyncio.run(bench_ingest(Path(tmp), args.flows, args.clusters, args.kafka, args.timeout))
    print(json.dumps(result))
    return 0


def _progress(text: str, end: str = "") -> None:
    print(f"\r{text}", end=end, file=sys.stderr, flush=True)


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _stored(stack: PipelineStack) -> int:
    totals = getattr(stack.pipeline, "totals", None)
    if totals is not None and hasattr(totals, "stored"):
        return int(totals.stored)
    return int(stack.clickhouse.query("SELECT count() FROM flows").result_rows[0][0])


async def bench_ingest(data_dir: Path, n: int, clusters: int = 2, kafka: str | None = None,
                       timeout: float = 900.0) -> dict[str, Any]:
    from netwarden.embedded import PipelineStack, StackConfig

    names = [f"bench-{i + 1}" for i in range(clusters)]
    per_cluster = [n // clusters + (1 if i < n % clusters else 0) for i in range(clusters)]
    # No broker rotation during a bench: the sink measurement re-reads flows.raw afterwards.
    stack = PipelineStack(StackConfig(data_dir=data_dir, kafka=kafka, partitions=2, rotate_seconds=1e9))
    await stack.start()
    try:
        _progress(f"bench ingest: generating {n} flows in {clusters} Hubble server process(es)...")
        targets = await asyncio.gather(*(
            stack.spawn_demo_server(name, preload=count, seed=i + 1, timeout_s=300)
            for i, (name, count) in enumerate(zip(names, per_cluster, strict=True))))
        servers = list(stack.server_children.values())
        broker_pid = stack.broker.process.pid if stack.broker and stack.broker.process else None
        from netwarden.supervise import cpu_seconds

        cpu0 = {"broker": cpu_seconds(broker_pid) if broker_pid else 0.0, "worker": _self_cpu(),
                "servers": sum(s.cpu_seconds() for s in servers)}
        started = time.perf_counter()
        collectors = [await stack.spawn_collector(name, target, checkpoint=True)
                      for name, target in zip(names, targets, strict=True)]
        deadline = time.monotonic() + timeout
        shown = -1
        while (stored := _stored(stack)) < n:
            if stored != shown:
                shown = stored
                _progress(f"bench ingest: {stored}/{n} flows stored")
            if time.monotonic() > deadline:
                raise CommandError(f"timed out after {timeout:.0f}s: {stored} of {n} flows stored")
            if stack.failed.is_set():
                raise CommandError("a child process kept failing (see the log)")
            await asyncio.sleep(0.1)
        seconds = time.perf_counter() - started
        cpu = {
            "collector": sum(c.cpu_seconds() for c in collectors),
            "broker": (cpu_seconds(broker_pid) if broker_pid else 0.0) - cpu0["broker"],
            "worker": _self_cpu() - cpu0["worker"],
            "servers": sum(s.cpu_seconds() for s in servers) - cpu0["servers"],
        }
        _progress(f"bench ingest: {n}/{n} flows stored in {seconds:.1f}s", end="\n")
        await asyncio.gather(*(c.stop() for c in collectors))
        await asyncio.gather(*(s.stop() for s in servers))

        ch = stack.clickhouse
        ch.command("OPTIMIZE TABLE flows FINAL")
        stored_bytes = ch.query(
            "SELECT sum(data_compressed_bytes), sum(rows) FROM system.parts WHERE table = 'flows' AND active"
        ).result_rows[0]
        _progress("bench ingest: measuring the raw insert ceiling...")
        try:
            raw_insert = _raw_insert_flows_per_s(ch, names, per_cluster)
        except Exception as exc:  # a figure for comparison only: the run's own figures stand without it
            print(f"\nbench ingest: raw insert ceiling not measured: {exc}", file=sys.stderr)
            raw_insert = None
        _progress("bench ingest: measuring the sink alone...")
        sink = await _sink_figures(stack, n)
        _progress("bench ingest: done", end="\n")
    finally:
        await stack.stop()
    us = {k: round(v / n * 1e6, 2) for k, v in cpu.items()}
    us["total"] = round(us["collector"] + us["broker"] + us["worker"], 2)
    return {
        "flows": n,
        "clusters": clusters,
        "seconds": round(seconds, 3),
        "flows_per_s": round(n / seconds),
        "bytes_per_flow": round(int(stored_bytes[0]) / max(1, int(stored_bytes[1])), 1),
        "raw_insert_flows_per_s": raw_insert,
        "sink_flows_per_s": sink.get("sink_flows_per_s"),
        "sink_ceiling_flows_per_s": sink.get("sink_ceiling_flows_per_s"),
        "cpu_us_per_flow": us,
        "cores": os.cpu_count(),
    }


def _raw_insert_flows_per_s(ch: Any, names: list[str], counts: list[int]) -> int | None:
    """The same kind of flows, already decoded in Python, inserted straight into an identical table."""
    try:
        import pyarrow as pa

        from collectors.traffic import DemoTraffic
        from schemas.clickhouse import flows_table_ddl
        from streams.decode import FlowDecoder
    except ImportError:
        return None
    decoder = FlowDecoder()
    tables = []
    for i, (name, count) in enumerate(zip(names, counts, strict=True)):
        entries = DemoTraffic(name, seed=i + 1).serialized(count)
        tables.append(decoder.decode(name, [raw for _, _, raw in entries]).table)
    table = pa.concat_tables(tables)
    ch.command(flows_table_ddl(table="flows_ceiling"))
    try:
        chunks = table.to_batches(max_chunksize=50_000)
        t0 = time.perf_counter()
        for chunk in chunks:
            ch.insert_arrow("flows_ceiling", pa.Table.from_batches([chunk]))
        return round(table.num_rows / (time.perf_counter() - t0))
    finally:
        ch.command("DROP TABLE IF EXISTS flows_ceiling")


async def _sink_figures(stack: PipelineStack, n: int) -> dict[str, Any]:
    """The worker alone draining flows.raw, and the same bytes inserted straight (streams.bench, helper
    SINK's measurement); null until that module exists."""
    try:
        from streams.bench import measure_sink  # type: ignore[import-not-found]
    except ImportError:
        return {}
    result = measure_sink(stack, n)
    if asyncio.iscoroutine(result):
        result = await result
    return dict(result)

"""`netwarden bench ingest`: generated flows over gRPC through the whole path, with the raw insert ceiling."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = groups["bench"].add_parser("ingest", help="throughput of Hubble gRPC -> Kafka -> Faust -> ClickHouse")
    p.add_argument("--flows", type=int, default=100_000, help="flows to drive through (default 100000)")
    p.add_argument("--kafka", help="external Kafka bootstrap (default: embedded Tansu)")
    p.set_defaults(handler=cmd_bench_ingest)


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="netwarden-bench-") as tmp:
        result = asyncio.run(bench_ingest(Path(tmp), args.flows, args.kafka))
    print(json.dumps(result))
    return 0


def _progress(text: str) -> None:
    print(f"\r{text}", end="", file=sys.stderr, flush=True)


async def bench_ingest(data_dir: Path, n: int, kafka: str | None = None) -> dict[str, float | int]:
    import pyarrow as pa

    from collectors.hubble_server import HubbleServer
    from collectors.traffic import DemoTraffic
    from netwarden.embedded import PipelineStack, StackConfig
    from schemas.clickhouse import flows_table_ddl
    from streams.decode import FlowDecoder

    traffic = DemoTraffic("bench", seed=1)
    entries = traffic.serialized(n)
    server = HubbleServer(ring_capacity=n + 1)
    server.add_serialized(entries)
    port = await server.start("127.0.0.1", 0)

    stack = PipelineStack(StackConfig(data_dir=data_dir, kafka=kafka, partitions=2))
    await stack.start()
    try:
        assert stack.pipeline is not None
        started = time.perf_counter()
        await stack.add_collector("bench", f"127.0.0.1:{port}", checkpoint=False)
        shown = -1
        while stack.pipeline.totals.stored < n:
            if stack.pipeline.totals.stored != shown:
                shown = stack.pipeline.totals.stored
                _progress(f"bench ingest: {shown}/{n} flows stored")
            await asyncio.sleep(0.2)
        seconds = time.perf_counter() - started
        _progress(f"bench ingest: {n}/{n} flows stored\n")
        ch = stack.clickhouse
        ch.command("OPTIMIZE TABLE flows FINAL")
        stored_bytes = ch.query(
            "SELECT sum(data_compressed_bytes), sum(rows) FROM system.parts WHERE table = 'flows' AND active"
        ).result_rows[0]

        # The ceiling: the same rows, already decoded, inserted straight into an identical table.
        table = FlowDecoder().decode("bench", [raw for _, _, raw in entries]).table
        ch.command(flows_table_ddl().replace("EXISTS flows", "EXISTS flows_ceiling", 1))
        chunks = table.to_batches(max_chunksize=50_000)
        t0 = time.perf_counter()
        for chunk in chunks:
            ch.insert_arrow("flows_ceiling", pa.Table.from_batches([chunk]))
        raw_seconds = time.perf_counter() - t0
        ch.command("DROP TABLE flows_ceiling")
    finally:
        await stack.stop()
        await server.stop()
    return {
        "flows": n,
        "seconds": round(seconds, 3),
        "flows_per_s": round(n / seconds),
        "bytes_per_flow": round(int(stored_bytes[0]) / max(1, int(stored_bytes[1])), 1),
        "raw_insert_flows_per_s": round(n / raw_seconds),
    }

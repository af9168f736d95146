"""Workarounds for Tansu 0.6 (memory storage) bugs, tested against the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from collectors.traffic import DemoTraffic
from netwarden.broker import ensure_topics, true_end_offsets
from netwarden.embedded import PipelineStack, StackConfig
from schemas.topics import TopicSpec


def test_true_end_offset_counts_every_record_of_the_last_batch(tansu: object) -> None:
    async def run() -> dict[int, int]:
        await ensure_topics(tansu.bootstrap, [TopicSpec("ends", 1)])
        producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, linger_ms=200)
        await producer.start()
        try:
            await producer.send_and_wait("ends", b"first", partition=0)
            # One multi-record batch at the end: Tansu reports "latest" as that batch's start + 1.
            futures = [await producer.send("ends", b"r%d" % i, partition=0) for i in range(9)]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return await true_end_offsets(tansu.bootstrap, "ends")

    assert asyncio.run(run()) == {0: 10}


@pytest.mark.slow
def test_rotation_frees_broker_memory_and_loses_no_flow(tmp_path: Path, chdb_dsn: str) -> None:
    traffic = DemoTraffic("rot", seed=3)

    async def ship(stack: PipelineStack, batches: int) -> int:
        shipper = stack.shipper("rot")
        sent = 0
        for _ in range(batches):
            entries = traffic.serialized(2000)
            await shipper.ship("rot/node", [raw for _, _, raw in entries])
            stack.shipped_messages += 1
            sent += len(entries)
        return sent

    async def stored(stack: PipelineStack, want: int) -> int:
        query = "SELECT count() FROM flows FINAL WHERE cluster = 'rot'"
        for _ in range(600):
            count = int(stack.clickhouse.query(query).result_rows[0][0])
            if count >= want:
                return count
            await asyncio.sleep(0.1)
        return count

    async def run() -> None:
        stack = PipelineStack(StackConfig(data_dir=tmp_path, clickhouse_dsn=chdb_dsn, rotate_seconds=3600))
        await stack.start()
        try:
            assert stack.broker is not None
            baseline = stack.broker.rss_bytes()
            total = await ship(stack, 60)  # ~100 MB of flows, ~6 MB as the producer compresses them (zstd)
            assert await stored(stack, total) == total
            grown = stack.broker.rss_bytes()
            assert grown - baseline > 3 * 1024 * 1024, "the payload should sit in the broker's RAM"

            await stack.rotate()
            await asyncio.sleep(0.5)
            after = stack.broker.rss_bytes()
            assert grown - after > (grown - baseline) / 2, (baseline, grown, after)

            total += await ship(stack, 3)  # the new generation's worker picks up where the old one left
            assert await stored(stack, total) == total
        finally:
            await stack.stop()

    asyncio.run(run())

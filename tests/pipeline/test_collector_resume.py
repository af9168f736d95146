"""Killing the collector mid-stream and starting it again stores no flow twice and misses none the server held."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from collectors.hubble_server import HubbleServer
from collectors.traffic import DemoTraffic
from netwarden.embedded import PipelineStack, StackConfig
from tests.conftest import REPO_ROOT


async def start_collector(port: int, bootstrap: str, data_dir: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netwarden", "collect", "--cluster", "kc", "--hubble", f"127.0.0.1:{port}",
        "--kafka", bootstrap, "--data-dir", str(data_dir),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


def counts(stack: PipelineStack) -> tuple[int, int, int]:
    final = stack.clickhouse.query("SELECT count() FROM flows FINAL WHERE cluster = 'kc'").result_rows[0][0]
    raw, unique = stack.clickhouse.query(
        "SELECT count(), uniqExact(uuid) FROM flows WHERE cluster = 'kc'"
    ).result_rows[0]
    return int(final), int(raw), int(unique)


@pytest.mark.slow
def test_collector_killed_mid_stream_resumes_without_loss_or_duplicates(
    tmp_path: Path, tansu: object, chdb_dsn: str
) -> None:
    async def run() -> None:
        server = HubbleServer(ring_capacity=20_000)
        port = await server.start("127.0.0.1", 0)
        traffic = DemoTraffic("kc", seed=7)
        stack = PipelineStack(StackConfig(data_dir=tmp_path / "worker", kafka=tansu.bootstrap, clickhouse_dsn=chdb_dsn))
        await stack.start()
        collector_dir = tmp_path / "collector"
        try:
            total = 0

            async def feed(n: int, seconds: float) -> None:
                nonlocal total
                for _ in range(int(seconds * 10)):
                    server.add_serialized(traffic.serialized(n // int(seconds * 10)))
                    total += n // int(seconds * 10)
                    await asyncio.sleep(0.1)

            proc = await start_collector(port, tansu.bootstrap, collector_dir)
            checkpoint = collector_dir / "checkpoint-kc.json"
            feeding = asyncio.create_task(feed(3000, 3.0))
            for _ in range(300):  # until the collector is streaming (it has shipped and checkpointed)
                if checkpoint.exists():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGKILL)  # mid-stream: no chance to flush or save anything
            await proc.wait()
            await feeding
            assert checkpoint.exists(), "the collector saved no checkpoint before it was killed"
            await feed(2000, 2.0)  # flows the server holds while the collector is down

            proc = await start_collector(port, tansu.bootstrap, collector_dir)
            try:
                await feed(1000, 1.0)
                for _ in range(300):
                    if counts(stack)[0] >= total:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # anything duplicated would arrive by now
            finally:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
            final, raw, unique = counts(stack)
            assert unique == total, f"missed {total - unique} of {total} flows"
            assert final == total
            # The collector skipped what it had shipped before the kill (uuid set in its checkpoint),
            # so the table holds no second copy even before ClickHouse merges duplicates away.
            assert raw == total, f"{raw - total} flows stored twice"
        finally:
            await stack.stop()
            await server.stop()

    asyncio.run(run())
    assert os.path.exists(tmp_path / "collector" / "checkpoint-kc.json")

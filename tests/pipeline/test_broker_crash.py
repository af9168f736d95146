"""The embedded broker killed with -9 mid-stream (Tansu keeps everything in memory): the stack restarts it,
and every flow Hubble still holds is stored exactly once. Real Tansu, real collector process, real chDB."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from prometheus_client import REGISTRY

from collectors.hubble_server import HubbleServer
from collectors.traffic import DemoTraffic
from netwarden.embedded import PipelineStack, StackConfig


def counts(stack: PipelineStack, cluster: str) -> tuple[int, int]:
    final, unique = stack.clickhouse.query(
        "SELECT (SELECT count() FROM flows FINAL WHERE cluster = {c:String}), "
        "(SELECT uniqExact(uuid) FROM flows WHERE cluster = {c:String})",
        parameters={"c": cluster},
    ).result_rows[0]
    return int(final), int(unique)


def test_broker_killed_mid_stream_is_restarted_and_nothing_is_lost(tmp_path: Path, chdb_dsn: str) -> None:
    cluster = "crash"

    async def run() -> None:
        server = HubbleServer(ring_capacity=50_000)
        port = await server.start("127.0.0.1", 0)
        traffic = DemoTraffic(cluster, seed=21)
        stack = PipelineStack(StackConfig(data_dir=tmp_path / "stack", clickhouse_dsn=chdb_dsn))
        await stack.start()
        restarts = REGISTRY.get_sample_value("netwarden_broker_restarts_total") or 0.0
        total = 0

        async def feed(n: int, steps: int) -> None:
            nonlocal total
            for _ in range(steps):
                server.add_serialized(traffic.serialized(n))
                total += n
                await asyncio.sleep(0.1)

        try:
            await stack.spawn_collector(cluster, f"127.0.0.1:{port}")
            await feed(100, 20)
            deadline = time.monotonic() + 60
            while counts(stack, cluster)[1] == 0:  # the pipeline is storing
                assert time.monotonic() < deadline, "nothing stored"
                await asyncio.sleep(0.1)
            assert stack.broker is not None and stack.broker.process is not None
            os.kill(stack.broker.process.pid, signal.SIGKILL)  # everything it held is gone
            await feed(100, 20)
            deadline = time.monotonic() + 120
            while counts(stack, cluster)[1] < total:
                assert time.monotonic() < deadline, f"stored {counts(stack, cluster)} of {total}"
                assert not stack.failed.is_set(), "the stack gave up instead of restarting the broker"
                await asyncio.sleep(0.2)
            final, unique = counts(stack, cluster)
            assert unique == final == total
            assert (REGISTRY.get_sample_value("netwarden_broker_restarts_total") or 0.0) == restarts + 1
        finally:
            await stack.stop()
            await server.stop()

    asyncio.run(run())

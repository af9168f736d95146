"""Ships collector batches and dead letters to Kafka (aiokafka; plain producer, Tansu refuses idempotence)."""

from __future__ import annotations

import itertools
import uuid

from aiokafka import AIOKafkaProducer

from schemas.dead_letter import DeadLetter
from schemas.framing import frame
from schemas.messages.batch_pb2 import FlowBatch
from schemas.topics import FLOWS_DLQ, FLOWS_RAW, batch_key

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def new_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=MAX_MESSAGE_BYTES,
        request_timeout_ms=30_000,
        # Flows compress ~18x: measured per flow, the producer pays +0.8 us, the broker saves ~5.5 us
        # (produce + fetch), consumers ~1.5 us; Tansu's memory storage holds ~7x less. Consumers
        # decompress transparently.
        compression_type="zstd",
    )


class FlowBatchProducer:
    """`ship(node, responses)` returns once the batch is acknowledged: only then may a checkpoint move."""

    def __init__(self, producer: AIOKafkaProducer, cluster: str, collector_id: str | None = None):
        self.producer = producer
        self.cluster = cluster
        self.collector_id = collector_id or f"{cluster}-{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count()

    async def ship(self, node: str, responses: list[bytes], origins: list[str] | None = None) -> int:
        """Returns the batch's sequence (with collector_id, its name in flows.stored notices)."""
        # Framed here once, so the worker hands the entries to ClickHouse untouched (no per-entry Python).
        batch = FlowBatch(
            cluster=self.cluster, collector=self.collector_id, framed=frame(responses), sequence=next(self._seq)
        )
        if origins:
            batch.origins.extend(origins)
        await self.producer.send_and_wait(FLOWS_RAW, batch.SerializeToString(), key=batch_key(self.cluster, node))
        return batch.sequence

    async def ship_lost_ranges(self, ranges: list[tuple[str, int, int]]) -> int:
        """(node, after_ns, before_ns) ranges Hubble no longer held: a FlowBatch without flows."""
        batch = FlowBatch(cluster=self.cluster, collector=self.collector_id, sequence=next(self._seq))
        for node, after_ns, before_ns in ranges:
            batch.lost_ranges.add(node=node, after_ns=after_ns, before_ns=before_ns)
        node = ranges[0][0] if ranges else ""
        await self.producer.send_and_wait(FLOWS_RAW, batch.SerializeToString(), key=batch_key(self.cluster, node))
        return batch.sequence

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self.producer.send_and_wait(FLOWS_DLQ, letter.to_json(), key=self.cluster.encode())

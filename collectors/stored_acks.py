"""End-to-end acknowledgement: which of a collector's Kafka batches the worker has stored (or dead-lettered)
and committed.

Kafka's acknowledgement only says the broker holds a batch; Tansu holds it in memory, so a broker crash
loses what it acknowledged. The worker therefore publishes, after each commit, the (collector, sequence)
names of the batches it committed to `flows.stored` (streams.app). A collector advances its checkpoint
only over batches named there, oldest first (collectors.hubble_client): what Kafka lost is still behind the
checkpoint and is read from Hubble again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.stored_notice import StoredNotice
from schemas.topics import FLOWS_STORED

log = logging.getLogger("netwarden.collector")


class StoredAcks:
    """Follows flows.stored and keeps the (collector, sequence) names stored for the collectors it follows:
    this process's `collector_id`, and those a previous run of the collector shipped under (`follow`).
    Starts at the positions given (a previous run's, from its checkpoint) or at the end, before the
    collector ships anything. `changed` is set on every notice for them; `positions` is how far it read."""

    def __init__(self, bootstrap: str, collector_id: str):
        self.bootstrap = bootstrap
        self.collector_id = collector_id
        self.ids = {collector_id}
        self.stored: set[tuple[str, int]] = set()
        self.positions: dict[int, int] = {}
        self.changed = asyncio.Event()
        self.last_notice = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._consumer is not None

    def follow(self, collector_ids: Iterable[str]) -> None:
        self.ids.update(collector_ids)

    async def start(self, positions: dict[int, int] | None = None) -> None:
        from netwarden.broker import true_end_offsets  # the broker module imports collectors: import late

        ends = await true_end_offsets(self.bootstrap, FLOWS_STORED)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        tps = [TopicPartition(FLOWS_STORED, p) for p in sorted(ends)]
        consumer.assign(tps)
        for tp in tps:
            # A saved position past the end belongs to a broker that has since lost its topics.
            at = (positions or {}).get(tp.partition, ends[tp.partition])
            self.positions[tp.partition] = at if at <= ends[tp.partition] else ends[tp.partition]
            consumer.seek(tp, self.positions[tp.partition])
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(), name=f"stored-acks-{self.collector_id}")

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                got = await self._consumer.getmany(timeout_ms=1000)
            except Exception as exc:  # the broker is away: the collector's ack timeout decides what to do
                log.warning("flows.stored: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in got.items():
                for record in records:
                    self.positions[tp.partition] = record.offset + 1
                    if record.key is not None and record.key.decode(errors="replace") not in self.ids:
                        continue
                    try:
                        notice = StoredNotice.from_json(record.value or b"")
                    except (ValueError, KeyError, TypeError):
                        log.warning("flows.stored: ignoring a malformed notice at offset %d", record.offset)
                        continue
                    if notice.collector in self.ids:
                        self.stored.update((notice.collector, s) for s in notice.sequences)
                        self.last_notice = time.monotonic()
                        self.changed.set()

    def take(self, collector: str, sequences: tuple[int, ...]) -> bool:
        """True (and forgets them) when every one of the batches is stored."""
        names = [(collector, s) for s in sequences]
        if all(n in self.stored for n in names):
            self.stored.difference_update(names)
            return True
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

"""The Kafka shell of the inventory: sends what the control-plane outbox holds to the compacted `inventory`
topic (policy_engine.inventory is the pure side).

- `InventoryPublisher.run(stop)`: the long-running loop (`netwarden up`, and in scale mode next to the
  control-plane store). At start it records the inventory once (a data dir from before the outbox existed)
  and republishes everything: an embedded Tansu starts empty, and on a compacted topic a republish is
  harmless. Then it sends pending messages every `poll_seconds`, and everything again after a failed send
  (the broker may have restarted empty) and every `resync_seconds` (hourly: a broker that silently lost its
  data heals). Kafka down: the outbox keeps the messages, the loop backs off and retries; writes are never
  affected.
- `publish_pending_now(store, bootstrap)`: a CLI write's best-effort immediate send (scale mode,
  NETWARDEN_KAFKA); whatever it cannot send the running publisher sends.

Several publishers may run at once: messages are whole states with revisions, so duplicates are harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from policy_engine.inventory import (
    OutboxMessage,
    all_messages,
    mark_published,
    pending_messages,
    record_inventory,
)
from policy_engine.store import ControlPlaneStore
from schemas.topics import INVENTORY

log = logging.getLogger("netwarden.inventory")

PUBLISHED = Counter("netwarden_inventory_published_total", "Inventory messages sent to the inventory topic")
PUBLISH_FAILURES = Counter("netwarden_inventory_publish_failures_total", "Failed attempts to send inventory messages")
PENDING = Gauge("netwarden_inventory_pending_messages", "Inventory messages recorded but not yet published")


def new_inventory_producer(bootstrap: str) -> AIOKafkaProducer:
    # Not idempotent: Tansu refuses aiokafka's idempotent producer. Duplicates are harmless here.
    # gzip: a cluster's message is JSON policy objects (10x smaller compressed); Kafka's default 1 MB message
    # limit then holds thousands of rendered objects.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000, compression_type="gzip",
        max_request_size=16 * 1024 * 1024,
    )


async def send_messages(producer: AIOKafkaProducer, messages: Sequence[OutboxMessage], topic: str = INVENTORY) -> None:
    """Send and wait for every message (raises on the first failure)."""
    futures = [await producer.send(topic, key=m.key, value=m.value) for m in messages]
    for future in futures:
        await future
    PUBLISHED.inc(len(messages))


# Creates the compacted topic when missing (Tansu would auto-create it with 4 partitions, uncompacted);
# the composition root passes netwarden.broker's topic administration.
EnsureTopic = Callable[[str], Awaitable[None]]


class InventoryPublisher:
    def __init__(
        self,
        open_store: Callable[[], ControlPlaneStore],
        bootstrap: str,
        *,
        poll_seconds: float = 1.0,
        resync_seconds: float = 3600.0,
        topic: str = INVENTORY,
        ensure_topic: EnsureTopic | None = None,
    ) -> None:
        self._open_store = open_store
        self._ensure_topic = ensure_topic
        self.bootstrap = bootstrap
        self.poll_seconds = poll_seconds
        self.resync_seconds = resync_seconds
        self.topic = topic
        self.published = 0  # messages sent by this publisher (tests wait on it)
        self.sent_event = asyncio.Event()  # set after every successful send

    async def run(self, stop: asyncio.Event) -> None:
        store = await asyncio.to_thread(self._open_store)
        producer: AIOKafkaProducer | None = None
        resync_due = 0.0  # republish everything at the first chance
        backoff = self.poll_seconds
        loop = asyncio.get_running_loop()
        recorded = False
        try:
            while not stop.is_set():
                try:
                    if not recorded:  # retried like a send: SQLite may be busy with a CLI write
                        await asyncio.to_thread(self._record, store)
                        recorded = True
                    if producer is None:
                        if self._ensure_topic is not None:
                            await self._ensure_topic(self.bootstrap)
                        producer = new_inventory_producer(self.bootstrap)
                        await producer.start()
                    full = loop.time() >= resync_due
                    messages = await asyncio.to_thread(all_messages if full else pending_messages, store)
                    if messages:
                        await send_messages(producer, messages, self.topic)
                        await asyncio.to_thread(mark_published, store, messages)
                        self.published += len(messages)
                        self.sent_event.set()
                    if full:
                        resync_due = loop.time() + self.resync_seconds
                    PENDING.set(len(await asyncio.to_thread(pending_messages, store)))
                    backoff = self.poll_seconds
                except Exception as exc:  # Kafka unreachable, timeouts, a busy store: the outbox keeps everything
                    PUBLISH_FAILURES.inc()
                    log.warning("inventory: cannot publish to %s (retrying in %.1fs): %s", self.bootstrap, backoff, exc)
                    if producer is not None:
                        await _stop_quietly(producer)
                        producer = None
                    resync_due = 0.0  # the broker may have lost the topic: republish all once it is back
                    backoff = min(backoff * 2, 30.0)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                except TimeoutError:
                    pass
        finally:
            if producer is not None:
                await _stop_quietly(producer)
            await asyncio.to_thread(store.close)

    @staticmethod
    def _record(store: ControlPlaneStore) -> None:
        with store.transaction():
            record_inventory(store)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception:  # already broken; nothing to flush
        pass


def publish_pending_now(
    store: ControlPlaneStore, bootstrap: str, timeout_s: float = 5.0, ensure_topic: EnsureTopic | None = None
) -> int:
    """Send the outbox's pending messages now (a CLI write in scale mode). Returns how many were sent;
    raises on failure (the caller reports it; the messages stay pending for the running publisher)."""
    messages = pending_messages(store)
    if not messages:
        return 0

    async def send() -> None:
        if ensure_topic is not None:
            await ensure_topic(bootstrap)
        producer = new_inventory_producer(bootstrap)
        await producer.start()
        try:
            await send_messages(producer, messages)
        finally:
            await _stop_quietly(producer)

    asyncio.run(asyncio.wait_for(send(), timeout_s))
    mark_published(store, messages)
    return len(messages)

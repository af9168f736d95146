"""The worker's copy of the inventory: the latest message of every cluster on the compacted `inventory` topic.

`InventoryView` is the in-memory state (pure: `apply(key, value)`); the enricher reads a `snapshot()` once per
batch, so one batch sees one consistent inventory and never waits for it. `InventoryConsumer` is the thin
shell: a plain aiokafka consumer without a group (every worker reads everything; no offsets are committed),
assigned to all partitions and sought to the beginning at each (re)start, so a restarted worker rebuilds the
inventory from the topic. Compaction keeps the topic to one message per cluster; a broker that does not
compact (Tansu) only makes the replay longer, and the last message per key still wins.

"Caught up" (`view.ready`) is the first fetch that returns nothing once every partition's fetch response has
told its high watermark and the position is at or past it: records present are returned at once, so an empty
fetch then means the end was reached. This avoids ListOffsets ("latest"), which Tansu 0.6 answers wrong
(the last batch's start + 1). Until then, and for clusters never published, flows are stored with
empty ownership and verdict 0 (not evaluated), never held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge

from schemas.inventory import ClusterInventory, InventoryFormatError, cluster_of_key
from schemas.topics import INVENTORY

log = logging.getLogger("netwarden.streams.inventory")

APPLIED = Counter("netwarden_inventory_messages_applied_total", "Inventory messages applied by the worker")
REJECTED = Counter(
    "netwarden_inventory_messages_rejected_total", "Inventory messages the worker could not read"
)
CLUSTERS = Gauge("netwarden_inventory_clusters", "Clusters the worker's inventory knows")


class InventoryView:
    """cluster -> its latest ClusterInventory. Updated by one writer (the consumer task), read from any
    thread (the sink runs batches in a worker thread): each update swaps in a new mapping."""

    def __init__(self) -> None:
        self._clusters: Mapping[str, ClusterInventory] = MappingProxyType({})
        self._lock = threading.Lock()
        self.ready = asyncio.Event()  # caught up with the topic once since start
        self.applied = 0
        self._listeners: list[Callable[[], None]] = []

    def snapshot(self) -> Mapping[str, ClusterInventory]:
        return self._clusters

    def get(self, cluster: str) -> ClusterInventory | None:
        return self._clusters.get(cluster)

    def apply(self, key: bytes | None, value: bytes | None) -> ClusterInventory | None:
        """Apply one topic record (None value: the cluster was deleted). Raises InventoryFormatError."""
        cluster = cluster_of_key(key)
        inventory = None if value is None else ClusterInventory.from_json(value)
        if inventory is not None and inventory.cluster != cluster:
            raise InventoryFormatError(f"cluster: {inventory.cluster!r} does not match the key {cluster!r}")
        with self._lock:
            clusters = dict(self._clusters)
            current = clusters.get(cluster)
            # Replays and concurrent publishers may repeat old states: keep the newest revision.
            if inventory is not None and current is not None and inventory.revision < current.revision:
                return current
            if inventory is None:
                clusters.pop(cluster, None)
            else:
                clusters[cluster] = inventory
            self._clusters = MappingProxyType(clusters)
        self.applied += 1
        CLUSTERS.set(len(clusters))
        for listener in self._listeners:
            listener()
        return inventory

    async def wait_for(
        self, predicate: Callable[[Mapping[str, ClusterInventory]], bool], timeout: float
    ) -> None:
        """Until `predicate(snapshot)` holds (tests, start-up diagnostics); never used on the batch path."""
        changed = asyncio.Event()
        self._listeners.append(changed.set)
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self._clusters):
                    await changed.wait()
                    changed.clear()
        finally:
            self._listeners.remove(changed.set)


class InventoryConsumer:
    """Reads the inventory topic from the beginning into `view`, then follows it."""

    def __init__(
        self, bootstrap: str, view: InventoryView, *, topic: str = INVENTORY, poll_ms: int = 500
    ) -> None:
        self.bootstrap = bootstrap
        self.view = view
        self.topic = topic
        self.poll_ms = poll_ms
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="netwarden-inventory-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=self.poll_ms,
                max_partition_fetch_bytes=16 * 1024 * 1024,  # one cluster's message may be large
            )
            try:
                await consumer.start()
                await self._follow(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker unreachable or restarted: start over from the beginning
                log.warning("inventory: reading %s failed (retrying in %.1fs): %s", self.topic, backoff, exc)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        partitions: set[int] = set()
        while not partitions:  # the topic may not exist yet: wait for it without blocking anyone
            if self.topic in await consumer.topics():  # topics() refreshes the cluster metadata
                partitions = consumer.partitions_for_topic(self.topic) or set()
            if not partitions:
                await asyncio.sleep(self.poll_ms / 1000)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batches = await consumer.getmany(*tps, timeout_ms=self.poll_ms)
            if not any(batches.values()):
                if not self.view.ready.is_set() and await _caught_up(consumer, tps):
                    self.view.ready.set()
                continue
            for records in batches.values():
                for record in records:
                    try:
                        self.view.apply(record.key, record.value)
                        APPLIED.inc()
                    except InventoryFormatError as exc:
                        REJECTED.inc()
                        log.error(
                            "inventory: %s[%d]@%d refused: %s",
                            record.topic,
                            record.partition,
                            record.offset,
                            exc,
                        )


async def _caught_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    """An empty fetch only counts once a fetch response arrived for every partition (its high watermark is
    known) and we are at or past it (Tansu's watermark may lag the true end; never ahead of it)."""
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


class InventoryFeed:
    """A started consumer and its view (what `start_inventory` returns)."""

    def __init__(self, view: InventoryView, consumer: InventoryConsumer) -> None:
        self.view = view
        self.consumer = consumer

    async def stop(self) -> None:
        await self.consumer.stop()


async def start_inventory(bootstrap: str, *, topic: str = INVENTORY) -> InventoryFeed:
    """Start following the inventory topic; returns at once (the view fills in the background)."""
    view = InventoryView()
    consumer = InventoryConsumer(bootstrap, view, topic=topic)
    await consumer.start()
    return InventoryFeed(view, consumer)

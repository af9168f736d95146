"""The live hub: fan-out of stored flows to subscriptions, on one dispatcher thread (query_api.live).

The pipeline never waits for a client: `publish_table` only queues the table for the dispatcher (and does
nothing when nobody listens). The dispatcher turns the table into rows once, then offers each row to every
subscription, whose filter and scope decide; an accepted row goes into that subscription's bounded queue. A
full queue drops the row and counts it, and the client receives `{"missed": N}` where the gap is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from prometheus_client import Counter, Gauge

from query_api.live_filter import Row
from query_api.live_rows import StoredRow, stored_rows
from schemas.flow_render import row_jsonpb_line

log = logging.getLogger("netwarden.query_api.live")

DEFAULT_QUEUE_FLOWS = 10_000  # per subscriber; rows are shared between subscribers, so this is pointers
RENDER_CACHE_ROWS = 10_000  # recent renderings kept for other clients of the same rows
DEFAULT_BACKLOG_ROWS = 500_000  # rows waiting for the dispatcher before the hub itself sheds load

SUBSCRIBERS = Gauge("netwarden_live_subscribers", "Open live flow stream subscriptions")
SENT = Counter("netwarden_live_flows_sent_total", "Flows delivered to live stream clients", ["transport"])
MISSED = Counter("netwarden_live_flows_missed_total", "Flows dropped for live clients that fell behind")
HUB_SHED = Counter(
    "netwarden_live_hub_shed_rows_total", "Rows the hub dropped before filtering (backlog full)"
)


@dataclass(frozen=True)
class Missed:
    """A gap in one client's stream: `count` flows that matched were dropped because it fell behind."""

    count: int

    def to_json(self) -> str:
        return json.dumps({"missed": self.count})


LiveMessage = Row | Missed


class LiveSubscription:
    """One client's bounded queue of accepted rows, with gaps recorded in place as `Missed` markers.

    `offer` runs on the hub's dispatcher thread; `next` on the client's event loop.
    """

    def __init__(
        self,
        hub: LiveHub,
        accept: Callable[[Row], Row | None],
        queue_flows: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        if queue_flows < 1:
            raise ValueError(f"queue_flows must be >= 1, got {queue_flows}")
        self.hub = hub
        self.accept = accept
        self.queue_flows = queue_flows
        self.missed_total = 0
        self.delivered = 0
        self.closed = False
        self._loop = loop
        self._items: collections.deque[Row | list[int]] = collections.deque()  # list[int]: a gap counter
        self._flows = 0  # rows in _items (gap markers do not count toward the bound)
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._waiting = False

    def offer(self, rows: Iterable[Row]) -> None:
        """Accepted rows go in while there is room; the rest only bump the gap counter."""
        accepted: list[Row] = []
        for row in rows:  # filtering runs outside the lock: the client's loop may take meanwhile
            if self.closed:
                return
            try:
                shown = self.accept(row)
            except Exception:  # a scope or filter bug must not stop the stream for everyone
                log.exception("live stream filter failed on a row; row skipped")
                continue
            if shown is None:
                continue
            if shown is not row and shown == row:
                shown = row  # unredacted: share the row, and so its rendering (LiveHub.text_of)
            accepted.append(shown)
        if not accepted:
            return
        with self._lock:
            if self.closed:
                return
            room = max(0, self.queue_flows - self._flows)
            kept = accepted[:room]
            self._items.extend(kept)
            self._flows += len(kept)
            dropped = len(accepted) - len(kept)
            if dropped:
                self._gap(dropped)
            wake = self._wake_if_waiting(len(accepted))
        if dropped:
            MISSED.inc(dropped)
        if wake:
            self._wake_up()

    def add_gap(self, count: int) -> None:
        """Record `count` flows this client missed without them being offered (hub overload)."""
        with self._lock:
            if self.closed:
                return
            self._gap(count)
            wake = self._wake_if_waiting(count)
        MISSED.inc(count)
        if wake:
            self._wake_up()

    def _wake_up(self) -> None:
        with contextlib.suppress(RuntimeError):  # the client's loop is already gone
            self._loop.call_soon_threadsafe(self._wake.set)

    def _gap(self, count: int) -> None:
        # Consecutive drops share one marker, placed after the last row that made it into the queue.
        last = self._items[-1] if self._items else None
        if isinstance(last, list):
            last[0] += count
        else:
            self._items.append([count])
        self.missed_total += count

    def _wake_if_waiting(self, changed: int) -> bool:
        if changed and self._waiting:
            self._waiting = False
            return True
        return False

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            wake = self._waiting
        self.hub._remove(self)
        if wake:
            self._wake_up()

    def _take(self, limit: int) -> list[LiveMessage]:
        out: list[LiveMessage] = []
        with self._lock:
            while self._items and len(out) < limit:
                item = self._items.popleft()
                if isinstance(item, list):
                    out.append(Missed(item[0]))
                else:
                    self._flows -= 1
                    out.append(item)
            if not out and not self.closed:
                self._waiting = True
                self._wake.clear()
        return out

    async def next_batch(self, limit: int = 256, timeout: float | None = None) -> list[LiveMessage] | None:
        """Up to `limit` messages in order; [] on timeout; None once closed and drained."""
        while True:
            out = self._take(limit)
            if out:
                self.delivered += sum(1 for m in out if not isinstance(m, Missed))
                return out
            if self.closed:
                return None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return []

    async def __aiter__(self) -> AsyncIterator[LiveMessage]:
        while (batch := await self.next_batch()) is not None:
            for message in batch:
                yield message


class LiveHub:
    """Fan-out of stored flows to live subscribers; thread-safe, never blocks the publisher."""

    def __init__(self, backlog_rows: int = DEFAULT_BACKLOG_ROWS) -> None:
        self.backlog_rows = backlog_rows
        self.published_rows = 0
        self.shed_rows = 0
        self._subs: list[LiveSubscription] = []
        self._subs_lock = threading.Lock()
        # Batches waiting for the dispatcher; an int is a shed batch (a gap of that many rows), kept in
        # order so every client sees the gap where it happened.
        self._pending: collections.deque[pa.Table | list[Row] | int] = collections.deque()
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # id(row) -> (row, jsonpb text): clients seeing the same unredacted row share one rendering.
        # The entry holds the row, so its id cannot be reused while cached.
        self._texts: collections.OrderedDict[int, tuple[Row, str]] = collections.OrderedDict()
        self._texts_lock = threading.Lock()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def subscribe(
        self, accept: Callable[[Row], Row | None], queue_flows: int = DEFAULT_QUEUE_FLOWS
    ) -> LiveSubscription:
        """Call from the event loop that will read the subscription."""
        sub = LiveSubscription(self, accept, queue_flows, asyncio.get_running_loop())
        with self._subs_lock:
            if self._closed:
                sub.closed = True
                return sub
            self._subs = [*self._subs, sub]  # copy on write: the dispatcher iterates a snapshot
        SUBSCRIBERS.inc()
        self._ensure_thread()
        return sub

    def _remove(self, sub: LiveSubscription) -> None:
        with self._subs_lock:
            if sub in self._subs:
                self._subs = [s for s in self._subs if s is not sub]
                SUBSCRIBERS.dec()

    def publish_table(self, table: pa.Table) -> None:
        """Hand over a stored batch. Free when nobody listens; otherwise O(1) for the caller."""
        self._publish(table, table.num_rows)

    def publish_rows(self, rows: Sequence[Row]) -> None:
        """Rows already in `table_rows` shape (tests, other feeds)."""
        self._publish(list(rows), len(rows))

    def _publish(self, item: pa.Table | list[Row], n: int) -> None:
        if not self._subs or not n:
            return
        with self._cond:
            if self._pending_rows + n > self.backlog_rows:
                # The dispatcher itself is behind (CPU-starved): shed here rather than grow without bound.
                # Every subscriber is told about rows it may have missed (an upper bound: unfiltered).
                self.shed_rows += n
                HUB_SHED.inc(n)
                if self._pending and isinstance(self._pending[-1], int):
                    self._pending[-1] += n
                else:
                    self._pending.append(n)
                self._cond.notify()
                return
            self._pending.append(item)
            self._pending_rows += n
            self.published_rows += n
            self._cond.notify()

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._dispatch, name="netwarden-live-hub", daemon=True)
                self._thread.start()

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                item = self._pending.popleft()
            try:
                subs = self._subs
                if not subs:
                    continue
                if isinstance(item, int):
                    for sub in subs:
                        sub.add_gap(item)
                    continue
                rows = stored_rows(item) if isinstance(item, pa.Table) else item
                for sub in subs:
                    sub.offer(rows)
            except Exception:
                log.exception("live hub: dispatching a batch failed")
            finally:
                with self._cond:
                    self._pending_rows -= _rows_of(item)

    def close(self) -> None:
        """End every subscription (clients see the stream end) and stop the dispatcher."""
        with self._subs_lock:
            self._closed = True
            subs = self._subs
        for sub in subs:
            sub.close()
        with self._cond:
            self._cond.notify_all()

    def text_of(self, row: Row) -> str:
        """The jsonpb line of a delivered row, rendered once however many clients receive it."""
        if isinstance(row, StoredRow) and row.jsonpb:
            return row.jsonpb  # rendered by ClickHouse (streams.jsonpb_sql)
        key = id(row)
        with self._texts_lock:
            hit = self._texts.get(key)
            if hit is not None and hit[0] is row:
                return hit[1]
        text = row_jsonpb_line(row)
        with self._texts_lock:
            self._texts[key] = (row, text)
            while len(self._texts) > RENDER_CACHE_ROWS:
                self._texts.popitem(last=False)
        return text

    def drained(self) -> bool:
        """True when every published row has been offered to the subscribers (tests, benchmarks)."""
        with self._cond:
            return self._pending_rows == 0


def _rows_of(item: pa.Table | list[Row] | int) -> int:
    if isinstance(item, int):
        return 0  # a gap marker holds no rows
    return item.num_rows if isinstance(item, pa.Table) else len(item)

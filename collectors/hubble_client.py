"""The collector: follows one cluster's Hubble Observer API and ships flows to Kafka in batches.

Flows stay as the bytes Hubble sent (never re-encoded); only time, node and uuid are read
(collectors.envelope), for the checkpoint and de-duplication. `since` is inclusive and evaluated per
node through Relay, so on resume the collector rewinds a little and skips the uuids it already shipped
(persisted with the checkpoint). The gRPC receive is collectors.grpc_stream (h2, messages cut out of
DATA frames and handled synchronously): the cheapest measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge

from collectors.checkpoint import BatchName, Checkpoint
from collectors.envelope import parse_envelope
from collectors.grpc_stream import ServerStream
from collectors.grpc_wire import client_ssl_context, split_target
from collectors.stored_acks import StoredAcks
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2

log = logging.getLogger("netwarden.collector")

GET_FLOWS = "/observer.Observer/GetFlows"

FLOWS = Counter("netwarden_collector_flows_total", "Flows read from Hubble and shipped", ["cluster"])
LOST = Counter(
    "netwarden_collector_lost_events_total", "Events Hubble reported lost", ["cluster", "node", "source"]
)
DUPLICATES = Counter(
    "netwarden_collector_duplicates_skipped_total", "Flows re-sent after a resume and skipped", ["cluster"]
)
RECONNECTS = Counter("netwarden_collector_reconnects_total", "Stream (re)connections", ["cluster"])
UNDECODABLE = Counter(
    "netwarden_collector_undecodable_total", "Responses shipped without reading (undecodable)", ["cluster"]
)
WATERMARK = Gauge("netwarden_collector_watermark_seconds", "Time of the newest flow stored", ["cluster"])
UNSTORED = Gauge(
    "netwarden_collector_unstored_batches", "Batches Kafka acknowledged that the worker has not yet stored", ["cluster"]
)
REWINDS = Counter(
    "netwarden_collector_rewinds_total",
    "Reconnects from the stored checkpoint because shipped batches were never stored (e.g. the broker lost them)",
    ["cluster"],
)
GAPS = Counter(
    "netwarden_collector_gaps_total",
    "Ranges of a node's flows Hubble no longer held when the collector resumed (lost, not stored)",
    ["cluster", "node"],
)
GAP_SECONDS = Counter(
    "netwarden_collector_gap_seconds_total", "Length of those ranges, in flow time", ["cluster", "node"]
)


@dataclass(frozen=True)
class ClientTLS:
    ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None  # Relay's cert is *.hubble-relay.cilium.io, not the Service DNS name

    @classmethod
    def from_files(
        cls, ca: str | None, cert: str | None, key: str | None, server_name: str | None
    ) -> ClientTLS:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca), read(cert), read(key), server_name)


# Receives (node, [serialized GetFlowsResponse]) and returns once Kafka acknowledged the batch, with the
# batch's sequence (its name in flows.stored notices, collectors.stored_acks) when it has one.
ShipBatch = Callable[[str, list[bytes]], Awaitable[int | None]]


STOP_ACK_WAIT_S = 2.5


# Sends (node, after_ns, before_ns) lost ranges on to the worker; returns once Kafka acknowledged them.
ShipLost = Callable[[list[tuple[str, int, int]]], Awaitable[int | None]]


class UnstoredError(Exception):
    """Shipped batches were not stored in time: resume from the stored checkpoint."""


@dataclass(frozen=True)
class LostRange:
    """Flows of `node` Hubble no longer held when the collector resumed: after the last stored flow
    (`after_ns`) and before the first flow the server returned (`before_ns`)."""

    node: str
    after_ns: int
    before_ns: int


@dataclass
class CollectorStats:
    flows: int = 0
    lost_events: int = 0
    duplicates: int = 0
    connections: int = 0
    batches: int = 0
    last_error: str = ""
    rewinds: int = 0
    gaps: deque[LostRange] = field(default_factory=lambda: deque(maxlen=100))
    connected: asyncio.Event = field(default_factory=asyncio.Event)


class HubbleCollector:
    def __init__(
        self,
        cluster: str,
        target: str,
        ship: ShipBatch,
        *,
        checkpoint: Checkpoint | None = None,
        tls: ClientTLS | None = None,
        batch_max: int = 2000,
        linger_s: float = 0.2,
        queue_max: int = 20_000,
        backoff_max_s: float = 10.0,
        acks: StoredAcks | None = None,
        ack_timeout_s: float = 10.0,
        ship_lost: ShipLost | None = None,
    ):
        self.cluster = cluster
        self.target = target
        self.ship = ship
        self.checkpoint = checkpoint or Checkpoint(None)
        self.tls = tls
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.queue_max = queue_max
        self.backoff_max_s = backoff_max_s
        # With acks, the checkpoint moves only over batches the worker stored (flows.stored); batches shipped
        # and never stored within ack_timeout_s (no notice at all meanwhile) are read from Hubble again.
        self.acks = acks
        self.ack_timeout_s = ack_timeout_s
        self.ship_lost = ship_lost  # lost ranges to the worker (the validation report's health section)
        self._lost_to_ship: list[LostRange] = []
        self._shipped_at: dict[BatchName, float] = {}  # pending batch -> when shipped (monotonic)
        self.stats = CollectorStats()

    def _call(self, on_messages: Callable[[list[bytes]], bool]) -> ServerStream:
        host, port = split_target(self.target)
        ctx = None
        if self.tls is not None:
            ctx = client_ssl_context(self.tls.ca_cert, self.tls.client_cert, self.tls.client_key)
        # The override is the name the certificate is checked against (and SNI), not the address dialled.
        return ServerStream(host, port, GET_FLOWS, self._request(), on_messages, ssl_context=ctx,
                            server_hostname=self.tls.server_name if self.tls else None)

    def _request(self) -> bytes:
        req = observer_pb2.GetFlowsRequest(follow=True)
        since = self.checkpoint.since_ns()
        # No checkpoint: start from the oldest flow the server still holds, not from "now".
        req.since.FromNanoseconds(since if since is not None else 0)
        return req.SerializeToString()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream until `stop` is set, reconnecting with backoff."""
        if self.acks is not None and not self.acks.started:
            # Notices for batches a previous run shipped are read again from where that run had read.
            self.acks.follow(c for c, _ in self.checkpoint.pending)
            await self.acks.start(self.checkpoint.ack_positions)
        started = time.monotonic()
        for name in self.checkpoint.pending:
            self._shipped_at.setdefault(name, started)
        backoff = 0.2
        while not stop.is_set():
            try:
                await self._follow_once(stop)
                backoff = 0.2
            except Exception as exc:  # any failure (gRPC, TLS, Kafka): log, keep the error, reconnect
                self.stats.last_error = _describe(exc)
                log.warning("cluster %s: stream from %s failed: %s", self.cluster, self.target, self.stats.last_error)
            self.stats.connected.clear()
            if stop.is_set():
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _follow_once(self, stop: asyncio.Event) -> None:
        buffer = _Buffer(self.batch_max, self.queue_max)
        call = self._call(self._reader(buffer))
        buffer.on_room = call.resume_reading
        shipper = asyncio.create_task(self._ship_loop(buffer))
        reader = asyncio.create_task(call.run())
        stopper = asyncio.create_task(stop.wait())
        tasks = {reader, stopper, shipper}
        watcher = asyncio.create_task(self._watch_stored()) if self.acks is not None else None
        if watcher is not None:
            tasks.add(watcher)
        RECONNECTS.labels(self.cluster).inc()
        self.stats.connections += 1
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()  # re-raise stream errors
            if watcher is not None and watcher in done:
                watcher.result()  # UnstoredError: reconnect from the stored checkpoint
        finally:
            stopper.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            buffer.close()
            try:
                await shipper  # ships what was read before stopping, then saves the checkpoint; re-raises ship errors
            finally:
                if watcher is not None:
                    if stop.is_set() and self.checkpoint.pending:
                        # A clean stop: give the worker a moment to store what is in flight (bounded: the
                        # process must exit promptly; what is not confirmed is read again next time).
                        await self._await_stored(min(self.ack_timeout_s, STOP_ACK_WAIT_S))
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)

    def _reader(self, buffer: _Buffer) -> Callable[[list[bytes]], bool]:
        """The per-message work, run synchronously on each read's messages; True = pause reading."""
        parse = parse_envelope
        stats = self.stats
        cluster = self.cluster
        # A flow newer than its node's watermark at (re)connect was never shipped; only older ones
        # can be repeats of what the rewind re-sends.
        # Shipped counts as seen, stored or not: batches still awaiting their notice are not sent twice
        # on a reconnect (a rewind forgets them first, so that they are).
        replay = dict(self.checkpoint.nodes)
        seen = self.checkpoint.recent_uuids()
        for newest, uuids in self.checkpoint.pending.values():
            for node, t in newest.items():
                replay[node] = max(t, replay.get(node, -1))
            seen.update(uuids)
        if not replay:
            seen = set()
        first_seen: set[str] = set()  # nodes with a flow on this connection (gap check: the first only)
        gap = self._gap

        def on_messages(messages: list[bytes]) -> bool:
            if not stats.connected.is_set():
                stats.connected.set()
            pending = buffer.pending
            by_node, newest, uuids = pending.by_node, pending.newest, pending.uuids
            for raw in messages:
                try:
                    env = parse(raw)
                except DecodeError:
                    # Ship it anyway: the stream stage dead-letters it with the reason and counts it.
                    UNDECODABLE.labels(cluster).inc()
                    by_node.setdefault("", []).append(raw)
                    pending.count += 1
                    continue
                if env.HasField("flow"):
                    flow = env.flow
                    node = env.node_name or flow.node_name
                    ts = env.time if env.HasField("time") else flow.time
                    t = ts.seconds * 1_000_000_000 + ts.nanos
                    uuid = flow.uuid
                    if node not in first_seen:
                        first_seen.add(node)
                        last = replay.get(node)
                        if last is not None and t > last:
                            gap(node, last, t)
                    if replay and uuid and t <= replay.get(node, -1) and uuid in seen:
                        stats.duplicates += 1
                        DUPLICATES.labels(cluster).inc()
                        continue
                    raws = by_node.get(node)
                    if raws is None:
                        raws = by_node[node] = []
                        newest[node] = t
                    raws.append(raw)
                    if t > newest[node]:
                        newest[node] = t
                    if uuid:
                        uuids.append(uuid)
                    pending.count += 1
                elif env.HasField("lost_events"):
                    lost = env.lost_events
                    n = lost.num_events_lost or 1
                    stats.lost_events += n
                    LOST.labels(cluster, env.node_name, flow_pb2.LostEventSource.Name(lost.source)).inc(n)
                # node_status (Relay only) carries no flows; nodes missing from it simply send nothing.
            buffer.added()
            return buffer.over_limit

        return on_messages

    def _gap(self, node: str, after_ns: int, before_ns: int) -> None:
        """The resume read from before the node's last stored flow (`since` rewinds), yet its first flow is
        newer: Hubble's ring no longer reaches back (server restarted, ring overwritten). Recorded, not
        silently skipped. A node idle since its last stored flow looks the same; Hubble gives no way to
        tell, so the range is reported as possibly lost."""
        gap = LostRange(node, after_ns, before_ns)
        self.stats.gaps.append(gap)
        self._lost_to_ship.append(gap)
        GAPS.labels(self.cluster, node).inc()
        GAP_SECONDS.labels(self.cluster, node).inc((before_ns - after_ns) / 1e9)
        log.warning(
            "cluster %s node %s: flows from %s to %s are no longer held by Hubble: lost range (%.1f s)",
            self.cluster, node, _iso(after_ns), _iso(before_ns), (before_ns - after_ns) / 1e9,
        )

    async def _ship_loop(self, buffer: _Buffer) -> None:
        step = self.batch_max
        while True:
            batch = await buffer.take(self.linger_s)
            if self._lost_to_ship and self.ship_lost is not None:
                # Best effort (not checkpointed): the range is in the metrics and the log as well.
                ranges, self._lost_to_ship = self._lost_to_ship, []
                await self.ship_lost([(r.node, r.after_ns, r.before_ns) for r in ranges])
            if batch is None:
                return
            # One Kafka message per node (the key) and at most batch_max flows.
            sends = [self.ship(node, raws[i:i + step]) for node, raws in batch.by_node.items()
                     for i in range(0, len(raws), step)]
            sequences = await asyncio.gather(*sends)
            self.stats.batches += len(sends)
            self.stats.flows += batch.count
            FLOWS.labels(self.cluster).inc(batch.count)
            batch.newest.pop("", None)
            if self.acks is None or any(s is None for s in sequences):
                self._stored(batch.newest, batch.uuids)  # Kafka's acknowledgement is all there is
                continue
            name = (self.acks.collector_id, tuple(s for s in sequences if s is not None))
            self._shipped_at[name] = time.monotonic()
            self.checkpoint.record_shipped(name, batch.newest, batch.uuids)
            self._advance()  # saves the shipped line too

    def _stored(self, newest: dict[str, int], uuids: list[str]) -> None:
        """Only what is stored moves the checkpoint."""
        self.checkpoint.record_batch(newest, uuids)
        self.checkpoint.save()
        if self.checkpoint.nodes:
            WATERMARK.labels(self.cluster).set(max(self.checkpoint.nodes.values()) / 1e9)

    def _advance(self) -> None:
        """Oldest first: the checkpoint never skips a batch that is not stored yet."""
        assert self.acks is not None
        pending = self.checkpoint.pending
        while pending:
            name = next(iter(pending))
            if not self.acks.take(*name):
                break
            newest, uuids = pending[name]
            self.checkpoint.record_batch(newest, uuids, done=name, positions=self.acks.positions)
            self._shipped_at.pop(name, None)
        self.checkpoint.save()
        if self.checkpoint.nodes:
            WATERMARK.labels(self.cluster).set(max(self.checkpoint.nodes.values()) / 1e9)
        UNSTORED.labels(self.cluster).set(len(pending))

    async def _watch_stored(self) -> None:
        """Moves the checkpoint as notices arrive; raises UnstoredError when the oldest shipped batch waited
        ack_timeout_s with no notice at all meanwhile (the worker is not storing, or the broker lost it)."""
        assert self.acks is not None
        while True:
            self.acks.changed.clear()
            self._advance()
            pending = self.checkpoint.pending
            if pending:
                oldest = self._shipped_at.get(next(iter(pending)), time.monotonic())
                waited = time.monotonic() - max(oldest, self.acks.last_notice)
                if waited >= self.ack_timeout_s:
                    self.stats.rewinds += 1
                    REWINDS.labels(self.cluster).inc()
                    count = len(pending)
                    # Forgotten (on disk too): the next connection reads them again from the stored checkpoint.
                    self.checkpoint.forget_pending()
                    self.checkpoint.save()
                    self._shipped_at.clear()
                    UNSTORED.labels(self.cluster).set(0)
                    raise UnstoredError(
                        f"{count} shipped batches not stored after {self.ack_timeout_s:g}s: "
                        "reading them again from the stored checkpoint"
                    )
                timeout = self.ack_timeout_s - waited
            else:
                timeout = self.ack_timeout_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acks.changed.wait(), timeout)

    async def _await_stored(self, timeout_s: float) -> None:
        assert self.acks is not None
        deadline = time.monotonic() + timeout_s
        while self.checkpoint.pending and time.monotonic() < deadline:
            self.acks.changed.clear()
            self._advance()
            if not self.checkpoint.pending:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acks.changed.wait(), max(0.01, deadline - time.monotonic()))


def _iso(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).isoformat()


@dataclass
class _Batch:
    """Flows read and not yet shipped, already split the way they are shipped: per node (the Kafka key),
    with each node's newest time and the uuids (for the checkpoint)."""

    by_node: dict[str, list[bytes]] = field(default_factory=dict)
    newest: dict[str, int] = field(default_factory=dict)
    uuids: list[str] = field(default_factory=list)
    count: int = 0


class _Buffer:
    """The reader fills `pending`; the shipper takes it whole once it holds `batch_max` flows or `linger_s`
    after its first one. Past `limit` the reader pauses the socket (TCP and HTTP/2 flow control then hold
    the server back) until a take makes room."""

    def __init__(self, batch_max: int, limit: int):
        self.pending = _Batch()
        self.batch_max = batch_max
        self.limit = max(limit, batch_max)
        self.closed = False
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self.on_room: Callable[[], None] | None = None  # resumes a reader paused at the limit

    def added(self) -> None:
        """Wake the shipper after the reader added flows (once per read, not per flow)."""
        n = self.pending.count
        if n:
            self._nonempty.set()
        if n >= self.batch_max:
            self._full.set()

    @property
    def over_limit(self) -> bool:
        return self.pending.count >= self.limit

    def close(self) -> None:
        self.closed = True
        self._nonempty.set()
        self._full.set()

    async def take(self, linger_s: float) -> _Batch | None:
        """Everything read so far; None once closed and empty."""
        await self._nonempty.wait()
        if not self.closed and self.pending.count < self.batch_max:
            try:
                await asyncio.wait_for(self._full.wait(), linger_s)
            except TimeoutError:
                pass
        batch, self.pending = self.pending, _Batch()
        if not self.closed:
            self._nonempty.clear()
            self._full.clear()
        if self.on_room is not None:
            self.on_room()
        return batch if batch.count else None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

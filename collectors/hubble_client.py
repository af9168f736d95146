"""The collector: follows one cluster's Hubble Observer API and ships flows to Kafka in batches.

Flows stay as the bytes Hubble sent (never re-encoded); only time, node and uuid are read
(collectors.envelope), for the checkpoint and de-duplication. `since` is inclusive and evaluated per
node through Relay, so on resume the collector rewinds a little and skips the uuids it already shipped
(persisted with the checkpoint). The gRPC receive is collectors.grpc_stream (h2, messages cut out of
DATA frames and handled synchronously): the cheapest measured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge

from collectors.envelope import parse_envelope
from collectors.grpc_stream import ServerStream
from collectors.grpc_wire import client_ssl_context, split_target
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
WATERMARK = Gauge("netwarden_collector_watermark_seconds", "Time of the newest flow shipped", ["cluster"])


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


class Checkpoint:
    """Per-node watermark plus the uuids shipped in the last `window_ns`, as an append-only journal.

    Each shipped batch appends one JSON line (every node's watermark, the batch's newest time, its
    uuids): cost per batch, not per flow held (at 30k flows/s the window holds 150k uuids). The file is
    rewritten with only the batches inside the window every `compact_every` lines or `compact_bytes`
    appended, whichever comes first. A torn last line
    (killed mid-write) is ignored: its batch is re-sent and de-duplicated by the store.
    """

    def __init__(self, path: Path | None, window_ns: int = 5_000_000_000, compact_every: int = 500,
                 compact_bytes: int = 8 << 20):
        self.path = path
        self.window_ns = window_ns
        self.compact_every = compact_every
        self.compact_bytes = compact_bytes
        self._appended = 0
        self.nodes: dict[str, int] = {}
        self.batches: deque[tuple[int, list[str]]] = deque()  # (newest time in batch, uuids), oldest first
        self._lines = 0
        self._unsaved: tuple[int, list[str]] | None = None
        if path and path.exists():
            for line in path.read_text().splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                self.nodes = {k: int(v) for k, v in doc.get("nodes", {}).items()}
                if "recent" in doc:  # the single-document format of earlier versions
                    for t, u in doc["recent"]:
                        self.batches.append((int(t), [u]))
                else:
                    self.batches.append((int(doc.get("t", 0)), list(doc.get("u", []))))
                self._lines += 1
            self._prune()

    def since_ns(self) -> int | None:
        # Rewind by the window: Relay merges nodes only within ~1 s, so a node may lag the others.
        return max(0, min(self.nodes.values()) - self.window_ns) if self.nodes else None

    def recent_uuids(self) -> set[str]:
        """Uuids shipped within the window (what a resumed stream may send again)."""
        return {u for _, uuids in self.batches for u in uuids}

    def record_batch(self, node_times: dict[str, int], uuids: list[str]) -> None:
        """A batch Kafka acknowledged: the newest time per node in it, and its uuids."""
        for node, t in node_times.items():
            if t > self.nodes.get(node, -1):
                self.nodes[node] = t
        newest = max(node_times.values(), default=0)
        if uuids:
            self.batches.append((newest, uuids))
        self._unsaved = (newest, uuids)

    def _prune(self) -> None:
        horizon = max(self.nodes.values(), default=0) - self.window_ns
        while self.batches and self.batches[0][0] < horizon:
            self.batches.popleft()

    def save(self) -> None:
        self._prune()
        if not self.path:
            return
        if self._lines >= self.compact_every or self._appended >= self.compact_bytes or not self.batches:
            lines = [json.dumps({"nodes": self.nodes, "t": t, "u": u}) for t, u in self.batches] or [
                json.dumps({"nodes": self.nodes, "t": 0, "u": []})]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, self.path)
            self._lines = len(lines)
            self._appended = 0
            self._unsaved = None
            return
        if self._unsaved is None:
            return
        (t, uuids), self._unsaved = self._unsaved, None
        line = json.dumps({"nodes": self.nodes, "t": t, "u": uuids}) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
        self._lines += 1
        self._appended += len(line)


# Receives (node, [serialized GetFlowsResponse]) and returns once the batch is durably in Kafka.
ShipBatch = Callable[[str, list[bytes]], Awaitable[None]]


@dataclass
class CollectorStats:
    flows: int = 0
    lost_events: int = 0
    duplicates: int = 0
    connections: int = 0
    batches: int = 0
    last_error: str = ""
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
        RECONNECTS.labels(self.cluster).inc()
        self.stats.connections += 1
        try:
            done, _ = await asyncio.wait({reader, stopper, shipper}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()  # re-raise stream errors
        finally:
            stopper.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            buffer.close()
            await shipper  # ships what was read before stopping, then saves the checkpoint; re-raises ship errors

    def _reader(self, buffer: _Buffer) -> Callable[[list[bytes]], bool]:
        """The per-message work, run synchronously on each read's messages; True = pause reading."""
        parse = parse_envelope
        stats = self.stats
        cluster = self.cluster
        # A flow newer than its node's watermark at (re)connect was never shipped; only older ones
        # can be repeats of what the rewind re-sends.
        replay = dict(self.checkpoint.nodes)
        seen = self.checkpoint.recent_uuids() if replay else set()

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

    async def _ship_loop(self, buffer: _Buffer) -> None:
        step = self.batch_max
        while True:
            batch = await buffer.take(self.linger_s)
            if batch is None:
                return
            # One Kafka message per node (the key) and at most batch_max flows.
            sends = [self.ship(node, raws[i:i + step]) for node, raws in batch.by_node.items()
                     for i in range(0, len(raws), step)]
            await asyncio.gather(*sends)
            self.stats.batches += len(sends)
            # Only what Kafka acknowledged moves the checkpoint.
            batch.newest.pop("", None)
            self.checkpoint.record_batch(batch.newest, batch.uuids)
            self.checkpoint.save()
            self.stats.flows += batch.count
            FLOWS.labels(self.cluster).inc(batch.count)
            if self.checkpoint.nodes:
                WATERMARK.labels(self.cluster).set(max(self.checkpoint.nodes.values()) / 1e9)


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

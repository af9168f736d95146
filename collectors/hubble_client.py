"""The collector: follows one cluster's Hubble Observer API and ships flows to Kafka in batches.

Flows stay as the bytes Hubble sent (never re-encoded); only time, node and uuid are read, for the
checkpoint and de-duplication. `since` is inclusive and evaluated per node through Relay, so on resume
the collector rewinds a little and skips the uuids it already shipped (persisted with the checkpoint).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge

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
    """Per-node watermark plus the uuids shipped in the last `window_ns`, persisted atomically as JSON."""

    def __init__(self, path: Path | None, window_ns: int = 5_000_000_000):
        self.path = path
        self.window_ns = window_ns
        self.nodes: dict[str, int] = {}
        self.recent: deque[tuple[int, str]] = deque()  # (time_ns, uuid), oldest first
        self._recent_set: set[str] = set()
        if path and path.exists():
            doc = json.loads(path.read_text())
            self.nodes = {k: int(v) for k, v in doc.get("nodes", {}).items()}
            for t, u in doc.get("recent", []):
                self.recent.append((int(t), u))
                self._recent_set.add(u)

    def since_ns(self) -> int | None:
        # Rewind by the window: Relay merges nodes only within ~1 s, so a node may lag the others.
        return max(0, min(self.nodes.values()) - self.window_ns) if self.nodes else None

    def seen(self, uuid: str) -> bool:
        return uuid in self._recent_set

    def record(self, node: str, time_ns: int, uuid: str) -> None:
        if time_ns > self.nodes.get(node, -1):
            self.nodes[node] = time_ns
        if uuid:
            self.recent.append((time_ns, uuid))
            self._recent_set.add(uuid)

    def save(self) -> None:
        horizon = max(self.nodes.values(), default=0) - self.window_ns
        while self.recent and self.recent[0][0] < horizon:
            self._recent_set.discard(self.recent.popleft()[1])
        if not self.path:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"nodes": self.nodes, "recent": list(self.recent)}))
        os.replace(tmp, self.path)


# (node, time_ns, uuid, serialized response) as read from the stream.
_Item = tuple[str, int, str, bytes]

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

    def _channel(self) -> grpc.aio.Channel:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca_cert,
            private_key=self.tls.client_key,
            certificate_chain=self.tls.client_cert,
        )
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(self.target, creds, options)

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
            except (grpc.aio.AioRpcError, OSError) as exc:
                self.stats.last_error = str(exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc)
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
        queue: asyncio.Queue[_Item | None] = asyncio.Queue(self.queue_max)
        async with self._channel() as channel:
            call = channel.unary_stream(GET_FLOWS, request_serializer=None, response_deserializer=None)(
                self._request()
            )
            RECONNECTS.labels(self.cluster).inc()
            self.stats.connections += 1
            shipper = asyncio.create_task(self._ship_loop(queue))
            stopper = asyncio.create_task(stop.wait())
            try:
                reader = asyncio.create_task(self._read(call, queue))
                done, _ = await asyncio.wait({reader, stopper, shipper}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reader.result()  # re-raise stream errors
                else:
                    call.cancel()
                    reader.cancel()
            finally:
                stopper.cancel()
                await queue.put(None)
                await shipper  # ships what was read before stopping, then saves the checkpoint

    async def _read(self, call: grpc.aio.UnaryStreamCall, queue: asyncio.Queue[_Item | None]) -> None:
        parse = observer_pb2.GetFlowsResponse.FromString
        async for raw in call:
            self.stats.connected.set()
            try:
                resp = parse(raw)
            except DecodeError:
                # Ship it anyway: the stream stage dead-letters it with the reason and counts it.
                UNDECODABLE.labels(self.cluster).inc()
                await queue.put(("", 0, "", raw))
                continue
            kind = resp.WhichOneof("response_types")
            if kind == "flow":
                uuid = resp.flow.uuid
                if uuid and self.checkpoint.seen(uuid):
                    self.stats.duplicates += 1
                    DUPLICATES.labels(self.cluster).inc()
                    continue
                flow = resp.flow
                await queue.put((resp.node_name or flow.node_name, flow.time.ToNanoseconds(), uuid, raw))
            elif kind == "lost_events":
                n = resp.lost_events.num_events_lost or 1
                self.stats.lost_events += n
                source = flow_pb2.LostEventSource.Name(resp.lost_events.source)
                LOST.labels(self.cluster, resp.node_name, source).inc(n)
            # node_status (Relay only) carries no flows; nodes missing from it simply send nothing.

    async def _ship_loop(self, queue: asyncio.Queue[_Item | None]) -> None:
        done = False
        while not done:
            batch: list[_Item] = []
            deadline = None
            while len(batch) < self.batch_max:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
                if deadline is None:
                    deadline = time.monotonic() + self.linger_s
            if not batch:
                continue
            by_node: dict[str, list[bytes]] = {}
            for node, _, _, raw in batch:
                by_node.setdefault(node, []).append(raw)
            for node, raws in by_node.items():
                await self.ship(node, raws)
                self.stats.batches += 1
            # Only what Kafka acknowledged moves the checkpoint.
            for node, time_ns, uuid, _ in batch:
                if node:
                    self.checkpoint.record(node, time_ns, uuid)
            self.checkpoint.save()
            self.stats.flows += len(batch)
            FLOWS.labels(self.cluster).inc(len(batch))
            if self.checkpoint.nodes:
                WATERMARK.labels(self.cluster).set(max(self.checkpoint.nodes.values()) / 1e9)

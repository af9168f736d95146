"""A Hubble-compatible gRPC server (`observer.Observer`) serving recorded or generated flows.

It behaves like Hubble Relay in front of one Hubble server per node (hubble-api.md sections 2, 3, 10):
one ring buffer per node, `since` inclusive and evaluated per node, `until` ends a node's stream at
its first later event, `number` per node (most recent N, or the first N with `first`), `follow`
tails new flows, and a follower lapped by the writer gets a `lost_events` response
(HUBBLE_RING_BUFFER) instead of the overwritten flows. Demos and tests use it so the real collector
talks real gRPC.

Speed: rings hold already-serialized `GetFlowsResponse` bytes plus their time, GetFlows sends them
through a pass-through codec, many per HTTP/2 write (collectors.grpc_wire), so an unfiltered stream
never re-encodes and appending costs one list store. Responses are decoded only when a filter or field
mask asks for it. The gRPC stack is grpclib (chosen by measurement, see collectors.grpc_wire); grpcio
clients such as the hubble CLI talk to it as to Relay.
Everything here runs on the server's event loop: call `add_flows`/`add_serialized` from that loop.
"""

from __future__ import annotations

import asyncio
import heapq
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import field_mask_pb2, wrappers_pb2
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from collectors.flow_filter import FlowFilterError, FlowPredicate, compile_filters, node_name_matcher
from collectors.grpc_wire import RawCodec, send_raw, server_ssl_context
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2
from schemas.hubble.relay import relay_pb2

DEFAULT_RING_CAPACITY = 4095
DEFAULT_NODE_NAME = "netwarden-hubble"
VERSION_HEADER = "hubble-server-version"
# Like Hubble's ring reader feeding a 1000-event channel: how far one follower reads ahead per round.
READ_AHEAD = 1000

Entry = tuple[int, bytes]  # (time_ns, serialized GetFlowsResponse)


def response_time_ns(resp: observer_pb2.GetFlowsResponse) -> int:
    """The envelope time, else the flow's time, in ns since the epoch (0 when neither is set)."""
    ts = resp.time if resp.HasField("time") else resp.flow.time
    return ts.seconds * 1_000_000_000 + ts.nanos


def _complete_envelope(resp: observer_pb2.GetFlowsResponse) -> observer_pb2.GetFlowsResponse:
    """Hubble always fills `node_name`/`time` of a flow response from the flow; captures may not."""
    if resp.HasField("flow") and (not resp.node_name or not resp.HasField("time")):
        resp = observer_pb2.GetFlowsResponse.FromString(resp.SerializeToString())
        if not resp.node_name:
            resp.node_name = resp.flow.node_name
        if not resp.HasField("time") and resp.flow.HasField("time"):
            resp.time.CopyFrom(resp.flow.time)
    return resp


class FlowRing:
    """One node's ring buffer of serialized GetFlowsResponse, oldest entries overwritten first.

    `written` counts every append ever made; entry `seq` lives in slot `seq % capacity` while
    `seq >= written - capacity`. Non-flow entries (lost events or node status from a capture) are
    kept in order but bypass filters and do not count toward `number`, like Hubble.
    """

    def __init__(self, capacity: int = DEFAULT_RING_CAPACITY, node_name: str = "",
                 on_append: Callable[[], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.node_name = node_name
        self.written = 0
        self._times = [0] * capacity
        self._data = [b""] * capacity
        self._is_flow = bytearray(capacity)
        self._on_append = on_append

    def __len__(self) -> int:
        return min(self.written, self.capacity)

    @property
    def oldest(self) -> int:
        """Sequence number of the oldest entry still held."""
        return max(0, self.written - self.capacity)

    def append(self, resp: observer_pb2.GetFlowsResponse) -> None:
        resp = _complete_envelope(resp)
        self._store(response_time_ns(resp), resp.SerializeToString(), resp.HasField("flow"))
        if self._on_append:
            self._on_append()

    def append_many(self, responses: Iterable[observer_pb2.GetFlowsResponse]) -> int:
        n = 0
        for resp in responses:
            resp = _complete_envelope(resp)
            self._store(response_time_ns(resp), resp.SerializeToString(), resp.HasField("flow"))
            n += 1
        if n and self._on_append:
            self._on_append()
        return n

    def append_serialized(self, time_ns: int, data: bytes, is_flow: bool = True) -> None:
        """Fast path: `data` is a serialized GetFlowsResponse whose envelope is already complete."""
        self._store(time_ns, data, is_flow)
        if self._on_append:
            self._on_append()

    def _store(self, time_ns: int, data: bytes, is_flow: bool) -> None:
        slot = self.written % self.capacity
        self._times[slot] = time_ns
        self._data[slot] = data
        self._is_flow[slot] = is_flow
        self.written += 1

    def entry(self, seq: int) -> tuple[int, bytes, bool]:
        slot = seq % self.capacity
        return self._times[slot], self._data[slot], bool(self._is_flow[slot])

    def times_since(self, since_ns: int) -> int:
        """Hubble's rewind: walk back from the newest entry until one older than `since`."""
        seq = self.written - 1
        while seq >= self.oldest and self._times[seq % self.capacity] >= since_ns:
            seq -= 1
        return seq + 1


@dataclass(frozen=True)
class ServerTLS:
    """PEM server certificate chain and key; with `client_ca`, clients must present a cert it signed."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> ServerTLS:
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(),
                   Path(client_ca).read_bytes() if client_ca else None)

    def ssl_context(self) -> ssl.SSLContext:
        return server_ssl_context(self.cert_chain, self.private_key, self.client_ca)


@dataclass
class _NodeCursor:
    """Read position of one GetFlows call in one node's ring."""

    pos: int
    end: int | None  # None = follow
    remaining: int | None  # `number` cap for non-follow output
    done: bool = False


class _Query:
    """A validated GetFlowsRequest: time bounds, filters and field mask."""

    def __init__(self, req: observer_pb2.GetFlowsRequest) -> None:
        if req.first and req.follow:
            raise FlowFilterError("first cannot be specified with follow")
        self.req = req
        self.since_ns = (req.since.seconds * 1_000_000_000 + req.since.nanos) if req.HasField("since") else None
        self.until_ns = (req.until.seconds * 1_000_000_000 + req.until.nanos) if req.HasField("until") else None
        self.predicate: FlowPredicate | None = compile_filters(req.whitelist, req.blacklist)
        # Only node_name in the whitelist (a collector reading one stream per node): rings are per node,
        # so choose rings and keep the no-decode path instead of decoding every flow.
        self.node_match: Callable[[str], bool] | None = None
        if req.whitelist and not req.blacklist and all(
            [fd.name for fd, _ in f.ListFields()] == ["node_name"] for f in req.whitelist
        ):
            self.node_match = node_name_matcher([p for f in req.whitelist for p in f.node_name])
            self.predicate = None
        self.mask: field_mask_pb2.FieldMask | None = None
        if req.HasField("field_mask") and req.field_mask.paths:
            if not req.field_mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
                raise FlowFilterError(f"field_mask: invalid paths for flow.Flow: {list(req.field_mask.paths)}")
            self.mask = req.field_mask

    @property
    def decodes(self) -> bool:
        return self.predicate is not None or self.mask is not None

    def matches(self, data: bytes) -> tuple[bool, bytes]:
        """Whether a flow entry passes the filters, and the bytes to send for it."""
        resp = observer_pb2.GetFlowsResponse.FromString(data)
        if self.predicate is not None and not self.predicate(resp.flow):
            return False, data
        if self.mask is not None:
            masked = flow_pb2.Flow()
            self.mask.MergeMessage(resp.flow, masked)
            resp.flow.CopyFrom(masked)
            return True, resp.SerializeToString()
        return True, data

    def start(self, ring: FlowRing) -> int:
        """Where this request starts reading in `ring` (hubble-api.md 10.4)."""
        req = self.req
        if req.first:
            return ring.oldest
        if self.since_ns is not None:
            return ring.times_since(self.since_ns)
        if req.number == 0:
            return ring.written if req.follow else ring.oldest
        if self.predicate is None and self.until_ns is None:
            return max(ring.oldest, ring.written - req.number)
        # Walk back until `number` matching flows before `until` are behind us.
        found, seq = 0, ring.written - 1
        while seq >= ring.oldest:
            time_ns, data, is_flow = ring.entry(seq)
            if is_flow and (self.until_ns is None or time_ns <= self.until_ns) and (
                self.predicate is None or self.matches(data)[0]
            ):
                found += 1
                if found == req.number:
                    break
            seq -= 1
        return max(seq, ring.oldest)


def _lost_event(node: str, count: int) -> bytes:
    now = time.time_ns()
    resp = observer_pb2.GetFlowsResponse(
        lost_events=flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=count),
        node_name=node,
    )
    resp.time.FromNanoseconds(now)
    return resp.SerializeToString()


class HubbleServer:
    """`observer.Observer` over one FlowRing per node, like a Relay in front of its nodes."""

    def __init__(self, node_names: list[str] | None = None, ring_capacity: int = DEFAULT_RING_CAPACITY,
                 version: str = "netwarden-hubble/0.1") -> None:
        self.ring_capacity = ring_capacity
        self.version = version
        self.rings: dict[str, FlowRing] = {}
        for name in node_names or []:
            self.ring(name)
        self._default_node = (node_names or [DEFAULT_NODE_NAME])[0]
        self._new_data = asyncio.Event()
        self._waiting = 0
        self._stopping = False
        self._server: Server | None = None
        self._streams = 0  # GetFlows calls in progress (stop lets them end before closing)
        self._started_ns = time.monotonic_ns()
        self._tls: ServerTLS | None = None
        self.host = ""
        self.port = 0

    # -- the store --------------------------------------------------------------------------------

    def ring(self, node: str) -> FlowRing:
        """The ring of `node`, created on first use (a capture may name nodes nobody declared)."""
        ring = self.rings.get(node)
        if ring is None:
            ring = self.rings[node] = FlowRing(self.ring_capacity, node, on_append=self._wake)
        return ring

    def add_flows(self, responses: Iterable[observer_pb2.GetFlowsResponse]) -> int:
        """Append responses to their node's ring and wake followers; returns how many."""
        n = 0
        for resp in responses:
            resp = _complete_envelope(resp)
            node = resp.node_name or resp.flow.node_name or self._default_node
            self.ring(node)._store(response_time_ns(resp), resp.SerializeToString(), resp.HasField("flow"))
            n += 1
        if n:
            self._wake()
        return n

    def add_serialized(self, entries: Iterable[tuple[int, str, bytes]]) -> int:
        """Fast path for generated traffic: (time_ns, node_name, serialized flow response)."""
        n = 0
        rings = self.rings
        for time_ns, node, data in entries:
            ring = rings.get(node)
            if ring is None:  # (not `or`: an empty ring is falsy and would cost a len() per flow)
                ring = self.ring(node)
            ring._store(time_ns, data, True)
            n += 1
        if n:
            self._wake()
        return n

    def _wake(self) -> None:
        # Followers wait on the current event; setting it and starting a fresh one wakes exactly them.
        if self._waiting:
            self._new_data.set()
            self._new_data = asyncio.Event()
            self._waiting = 0

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, tls: ServerTLS | None = None) -> int:
        """Listen on host:port (0 = any free port) and return the bound port."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        server = Server([self], codec=RawCodec())
        await server.start(sock=sock, ssl=tls.ssl_context() if tls else None)
        self._server, self._tls, self.host = server, tls, host
        self.port = int(sock.getsockname()[1])
        self._started_ns = time.monotonic_ns()
        self._stopping = False
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        """End follow streams cleanly (OK status), then close the server."""
        self._stopping = True
        self._new_data.set()
        self._new_data = asyncio.Event()
        if self._server is None:
            return
        deadline = time.monotonic() + grace
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        server, self._server = self._server, None
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            pass

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    def __mapping__(self) -> dict[str, Handler]:
        """The Observer service for grpclib; GetFlows replies are pre-serialized bytes (type None)."""
        unary, stream = Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM
        o = observer_pb2
        return {
            "/observer.Observer/GetFlows": Handler(self._get_flows, stream, o.GetFlowsRequest, None),
            "/observer.Observer/ServerStatus": Handler(
                self._server_status, unary, o.ServerStatusRequest, o.ServerStatusResponse),
            "/observer.Observer/GetNodes": Handler(self._get_nodes, unary, o.GetNodesRequest, o.GetNodesResponse),
            "/observer.Observer/GetNamespaces": Handler(
                self._get_namespaces, unary, o.GetNamespacesRequest, o.GetNamespacesResponse),
            "/observer.Observer/GetAgentEvents": Handler(
                self._unimplemented, stream, o.GetAgentEventsRequest, o.GetAgentEventsResponse),
            "/observer.Observer/GetDebugEvents": Handler(
                self._unimplemented, stream, o.GetDebugEventsRequest, o.GetDebugEventsResponse),
        }

    async def _send_version(self, stream: Stream[Any, Any]) -> None:
        await stream.send_initial_metadata(metadata={VERSION_HEADER: self.version})

    # -- GetFlows ---------------------------------------------------------------------------------

    async def _get_flows(self, stream: Stream[observer_pb2.GetFlowsRequest, bytes]) -> None:
        req = await stream.recv_message()
        assert req is not None
        try:
            query = _Query(req)
        except FlowFilterError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        self._streams += 1
        try:
            await self._send_version(stream)
            cursors: dict[str, _NodeCursor] = {}
            for node, ring in self.rings.items():
                cursors[node] = self._cursor(query, ring)
            if not req.follow:
                # Snapshot every node now (synchronously, so nothing is overwritten meanwhile), merge by time.
                per_node = [self._read(query, node, ring, cursors[node], None)[1]
                            for node, ring in list(self.rings.items())]
                if not per_node:
                    return
                merged = per_node[0] if len(per_node) == 1 else heapq.merge(*per_node, key=lambda e: e[0])
                await send_raw(stream, [data for _, data in merged])
                return
            async for batch in self._follow(query, cursors):
                await send_raw(stream, batch)
        finally:
            self._streams -= 1

    def _cursor(self, query: _Query, ring: FlowRing, new_ring: bool = False) -> _NodeCursor:
        req = query.req
        if query.node_match is not None and not query.node_match(ring.node_name):
            return _NodeCursor(ring.written, ring.written, None, done=True)
        pos = ring.oldest if new_ring else query.start(ring)
        end = None if req.follow else ring.written
        remaining = None if (req.follow or req.number == 0) else req.number
        return _NodeCursor(pos, end, remaining)

    def _read(self, query: _Query, node: str, ring: FlowRing, cur: _NodeCursor,
              limit: int | None) -> tuple[int, list[Entry]]:
        """Advance `cur` through `ring`: (events lost to the writer, entries to send)."""
        lost = 0
        if cur.pos < ring.oldest:
            lost, cur.pos = ring.oldest - cur.pos, ring.oldest
        stop = ring.written if cur.end is None else min(cur.end, ring.written)
        if limit is not None:
            stop = min(stop, cur.pos + limit)
        out: list[Entry] = []
        since, until, decodes = query.since_ns, query.until_ns, query.decodes
        cap = ring.capacity
        times, datas, flags = ring._times, ring._data, ring._is_flow
        pos = cur.pos
        while pos < stop:
            slot = pos % cap
            pos += 1
            if not flags[slot]:
                out.append((times[slot], datas[slot]))  # lost events etc.: no filters, no time range
                continue
            t = times[slot]
            if since is not None and t < since:
                continue
            if until is not None and t > until:
                cur.done = True
                break
            data = datas[slot]
            if decodes:
                ok, data = query.matches(data)
                if not ok:
                    continue
            out.append((t, data))
            if cur.remaining is not None:
                cur.remaining -= 1
                if cur.remaining == 0:
                    cur.done = True
                    break
        cur.pos = pos
        if cur.end is not None and pos >= stop:
            cur.done = True
        return lost, out

    async def _follow(self, query: _Query, cursors: dict[str, _NodeCursor]) -> AsyncIterator[list[bytes]]:
        """Batches of responses to send, in time order across nodes, until `until` or stop."""
        while not self._stopping:
            wake = self._new_data
            lost_events: list[bytes] = []
            batches: list[list[Entry]] = []
            for node, ring in list(self.rings.items()):
                cur = cursors.get(node)
                if cur is None:  # a node that appeared after the call started: all of it is new
                    cur = cursors[node] = self._cursor(query, ring, new_ring=True)
                if cur.done:
                    continue
                lost, entries = self._read(query, node, ring, cur, READ_AHEAD)
                if lost:
                    lost_events.append(_lost_event(node, lost))
                if entries:
                    batches.append(entries)
            if lost_events:
                yield lost_events
            if batches:
                merged = batches[0] if len(batches) == 1 else sorted(
                    (e for b in batches for e in b), key=lambda e: e[0])
                yield [data for _, data in merged]
                continue
            if lost_events:
                continue
            if query.until_ns is not None and cursors and all(c.done for c in cursors.values()):
                return  # every node passed `until`
            self._waiting += 1
            await wake.wait()

    # -- unary ------------------------------------------------------------------------------------

    def _flows_rate(self) -> float:
        """Flows per second over the last minute of ring contents, like Hubble's flows_rate."""
        cutoff = time.time_ns() - 60_000_000_000
        count = 0
        for ring in self.rings.values():
            count += ring.written - ring.times_since(cutoff)
        return count / 60.0

    async def _server_status(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await self._send_version(stream)
        rings = list(self.rings.values())
        await stream.send_message(observer_pb2.ServerStatusResponse(
            num_flows=sum(len(r) for r in rings),
            max_flows=self.ring_capacity * len(rings),
            seen_flows=sum(r.written for r in rings),
            uptime_ns=time.monotonic_ns() - self._started_ns,
            num_connected_nodes=wrappers_pb2.UInt32Value(value=len(rings)),
            num_unavailable_nodes=wrappers_pb2.UInt32Value(value=0),
            version=self.version,
            flows_rate=self._flows_rate(),
        ))

    async def _get_nodes(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await self._send_version(stream)
        uptime = time.monotonic_ns() - self._started_ns
        tls = observer_pb2.TLS(enabled=self._tls is not None)
        await stream.send_message(observer_pb2.GetNodesResponse(nodes=[
            observer_pb2.Node(
                name=node, version=self.version, address=f"{self.host}:{self.port}",
                state=relay_pb2.NODE_CONNECTED, tls=tls, uptime_ns=uptime,
                num_flows=len(ring), max_flows=ring.capacity, seen_flows=ring.written)
            for node, ring in sorted(self.rings.items())
        ]))

    async def _get_namespaces(self, stream: Stream[Any, Any]) -> None:
        """Namespaces seen in flows of the last hour (decodes the rings; this call is rare)."""
        await stream.recv_message()
        await self._send_version(stream)
        cutoff = time.time_ns() - 3600 * 1_000_000_000
        seen: set[tuple[str, str]] = set()
        for node, ring in self.rings.items():
            node_cluster = node.split("/", 1)[0] if "/" in node else "default"
            for seq in range(ring.times_since(cutoff), ring.written):
                _, data, is_flow = ring.entry(seq)
                if not is_flow:
                    continue
                flow = observer_pb2.GetFlowsResponse.FromString(data).flow
                for ep in (flow.source, flow.destination):
                    if ep.namespace:
                        seen.add((ep.cluster_name or node_cluster, ep.namespace))
        await stream.send_message(observer_pb2.GetNamespacesResponse(namespaces=[
            observer_pb2.Namespace(cluster=c, namespace=ns) for c, ns in sorted(seen)]))

    async def _unimplemented(self, stream: Stream[Any, Any]) -> None:
        # Like Hubble Relay: agent and debug events are not relayed.
        raise GRPCError(Status.UNIMPLEMENTED, "agent and debug events are not served by this server")

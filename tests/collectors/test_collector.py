"""The collector's receive path against servers it did not grow up with, and its checkpoint journal.

The demo server (grpclib) coalesces many messages per HTTP/2 write; grpcio's server (C core, like
grpc-go in Hubble Relay) sends one DATA frame per message, reports errors as trailers-only responses
and PINGs. The collector must read both the same way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from collectors.grpc_stream import GrpcCallError, ServerStream
from collectors.hubble_client import Checkpoint, HubbleCollector
from collectors.hubble_server import HubbleServer
from collectors.traffic import DemoTraffic
from schemas.hubble.observer import observer_pb2


class GrpcioObserver:
    """A minimal grpcio Observer: GetFlows sends `flows` after `since`, then holds the stream open."""

    def __init__(self, flows: list[tuple[int, str, bytes]]):
        self.flows = flows
        self.requests: list[observer_pb2.GetFlowsRequest] = []
        self.server: grpc.aio.Server | None = None

    async def get_flows(self, req: observer_pb2.GetFlowsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self.requests.append(req)
        if req.number == 7:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "seven is right out: 100%")
        since = req.since.ToNanoseconds() if req.HasField("since") else 0
        for t, _, data in self.flows:
            if t >= since:
                yield data
        await asyncio.sleep(3600)  # follow: nothing new

    async def start(self) -> int:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("observer.Observer", {
            "GetFlows": grpc.unary_stream_rpc_method_handler(
                self.get_flows, request_deserializer=observer_pb2.GetFlowsRequest.FromString,
                response_serializer=lambda b: b)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.server = server
        return port


async def follow(target: str, n: int, checkpoint: Checkpoint | None = None,
                 skipped: int = 0) -> tuple[HubbleCollector, list[bytes]]:
    """Run a collector until it shipped `n` flows and skipped `skipped` (or 10 s passed), then stop it."""
    shipped: list[bytes] = []

    async def ship(node: str, responses: list[bytes]) -> None:
        shipped.extend(responses)

    collector = HubbleCollector("t", target, ship, checkpoint=checkpoint, linger_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    for _ in range(200):
        if len(shipped) >= n and collector.stats.duplicates >= skipped:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # anything beyond n would arrive by now
    stop.set()
    await asyncio.wait_for(task, 10)
    return collector, shipped


async def test_collector_reads_a_grpcio_server_frame_per_message_and_resumes_without_repeats(tmp_path: Path) -> None:
    flows = DemoTraffic("demo-west", seed=5).serialized(3000)
    observer = GrpcioObserver(flows)
    port = await observer.start()
    try:
        path = tmp_path / "checkpoint.json"
        collector, shipped = await follow(f"127.0.0.1:{port}", 3000, Checkpoint(path))
        # Byte for byte; batches are split per node (the Kafka key), each node's flows in order.
        assert sorted(shipped) == sorted(data for _, _, data in flows)
        for node in {n for _, n, _ in flows}:
            mine = [data for _, n, data in flows if n == node]
            assert [d for d in shipped if d in set(mine)] == mine
        assert collector.stats.flows == 3000 and not collector.stats.last_error
        # Resumed from the checkpoint: the request rewinds, the repeats are skipped by uuid.
        last_per_node = {n: t for t, n, _ in flows}
        rewound_to = min(last_per_node.values()) - 5_000_000_000
        repeats = sum(1 for t, _, _ in flows if t >= rewound_to)
        resumed, again = await follow(f"127.0.0.1:{port}", 0, Checkpoint(path), skipped=repeats)
        assert observer.requests[-1].since.ToNanoseconds() == rewound_to
        assert again == [] and resumed.stats.duplicates == repeats
    finally:
        assert observer.server is not None
        await observer.server.stop(0)


async def test_grpc_status_and_message_reach_the_caller() -> None:
    observer = GrpcioObserver([])
    port = await observer.start()
    try:
        call = ServerStream("127.0.0.1", port, "/observer.Observer/GetFlows",
                            observer_pb2.GetFlowsRequest(number=7).SerializeToString(), lambda m: False)
        with pytest.raises(GrpcCallError) as err:
            await asyncio.wait_for(call.run(), 10)
        assert err.value.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert err.value.message == "seven is right out: 100%"  # percent-decoded, as sent
        missing = ServerStream("127.0.0.1", port, "/observer.Observer/Nope", b"", lambda m: False)
        with pytest.raises(GrpcCallError) as err:
            await asyncio.wait_for(missing.run(), 10)
        assert err.value.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
    finally:
        assert observer.server is not None
        await observer.server.stop(0)


async def test_demo_server_stream_ends_ok_and_slow_reader_loses_nothing() -> None:
    """A non-follow call ends with OK; a reader that pauses (its buffer is full) resumes where it was."""
    server = HubbleServer(ring_capacity=50_000)
    entries = DemoTraffic("demo-east", seed=2).serialized(20_000)
    server.add_serialized(entries)
    port = await server.start()
    got: list[bytes] = []
    pauses = 0
    call: ServerStream | None = None

    def on_messages(messages: list[bytes]) -> bool:
        nonlocal pauses
        got.extend(messages)
        pauses += 1
        asyncio.get_running_loop().call_later(0.01, call.resume_reading)  # type: ignore[union-attr]
        return True  # pause after every read

    try:
        call = ServerStream("127.0.0.1", port, "/observer.Observer/GetFlows",
                            observer_pb2.GetFlowsRequest().SerializeToString(), on_messages)
        await asyncio.wait_for(call.run(), 30)
        assert got == [data for _, _, data in entries] and pauses > 1
    finally:
        await server.stop(0.5)


async def test_connection_refused_is_an_error_not_a_hang() -> None:
    from netwarden.broker import free_port

    call = ServerStream("127.0.0.1", free_port(), "/observer.Observer/GetFlows", b"", lambda m: False)
    with pytest.raises(OSError):
        await asyncio.wait_for(call.run(), 10)


def test_checkpoint_journal_survives_restarts_torn_lines_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    cp = Checkpoint(path, window_ns=10, compact_every=4)
    for i in range(1, 8):
        cp.record_batch({"n1": i * 5, "n2": i * 5 - 1}, [f"u{i}a", f"u{i}b"])
        cp.save()
    # Compacted: at most compact_every lines plus what arrived since; only batches inside the window.
    assert len(path.read_text().splitlines()) <= 5
    again = Checkpoint(path, window_ns=10)
    assert again.nodes == {"n1": 35, "n2": 34}
    assert again.since_ns() == 24
    assert again.recent_uuids() == {"u5a", "u5b", "u6a", "u6b", "u7a", "u7b"}
    with path.open("a") as f:
        f.write('{"nodes": {"n1": 99}, "t": 99, "u": ["torn')  # killed mid-write
    torn = Checkpoint(path, window_ns=10)
    assert torn.nodes == {"n1": 35, "n2": 34} and "u7a" in torn.recent_uuids()
    # The single-document format of earlier versions still loads.
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"nodes": {"n": 100}, "recent": [[10, "gone"], [95, "x"], [99, "y"]]}))
    assert Checkpoint(old, window_ns=10).recent_uuids() == {"x", "y"}

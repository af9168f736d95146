"""The Hubble-compatible server over real gRPC on loopback, read with the generated ObserverStub."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2

from collectors.hubble_server import VERSION_HEADER, FlowRing, HubbleServer
from collectors.traffic import DemoTraffic
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2

from .conftest import BASE_NS, Running, collect, make_flow, seconds, start, ts


async def test_since_is_inclusive_and_version_header_is_sent(hubble: Running) -> None:
    hubble.server.add_flows(make_flow(t) for t in range(10))
    call = hubble.stub.GetFlows(ts(5))
    got = [r async for r in call]
    assert [seconds(r) for r in got] == [5, 6, 7, 8, 9]
    metadata = dict(await call.initial_metadata())
    assert metadata[VERSION_HEADER] == hubble.server.version


async def test_until_ends_stream_at_first_later_event(hubble: Running) -> None:
    hubble.server.add_flows(make_flow(t) for t in range(10))
    req = ts(2)
    req.until.FromNanoseconds(BASE_NS + 4 * 1_000_000_000)
    assert [seconds(r) for r in await collect(hubble.stub, req)] == [2, 3, 4]


async def test_number_most_recent_first_and_whole_buffer(hubble: Running) -> None:
    hubble.server.add_flows(make_flow(t) for t in range(10))
    last = await collect(hubble.stub, observer_pb2.GetFlowsRequest(number=3))
    first = await collect(hubble.stub, observer_pb2.GetFlowsRequest(number=3, first=True))
    everything = await collect(hubble.stub, observer_pb2.GetFlowsRequest())
    assert [seconds(r) for r in last] == [7, 8, 9]
    assert [seconds(r) for r in first] == [0, 1, 2]
    assert [seconds(r) for r in everything] == list(range(10))


async def test_number_is_per_node_and_nodes_are_merged_by_time(hubble: Running) -> None:
    hubble.server.add_flows(make_flow(t, "test/node-a" if t % 2 else "test/node-b") for t in range(10))
    got = await collect(hubble.stub, observer_pb2.GetFlowsRequest(number=2))
    assert [seconds(r) for r in got] == [6, 7, 8, 9]  # 2 per node, like Relay
    assert {r.node_name for r in got} == {"test/node-a", "test/node-b"}
    assert all(r.node_name == r.flow.node_name for r in got)


async def test_first_with_follow_is_invalid_argument(hubble: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(hubble.stub, observer_pb2.GetFlowsRequest(first=True, follow=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first cannot be specified with follow" in (err.value.details() or "")


async def test_follow_receives_new_flows_then_ends_on_stop(hubble: Running) -> None:
    hubble.server.add_flows([make_flow(0)])
    req = ts(0)
    req.follow = True
    stream = hubble.stub.GetFlows(req)
    it = stream.__aiter__()
    assert seconds(await asyncio.wait_for(it.__anext__(), 5)) == 0
    hubble.server.add_flows(make_flow(t, "test/node-b") for t in (1, 2, 3))
    got = [await asyncio.wait_for(it.__anext__(), 5) for _ in range(3)]
    assert [seconds(r) for r in got] == [1, 2, 3]
    # Plain follow (no since/number) starts at the newest entry: only flows added later arrive.
    tail = hubble.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
    tail_it = tail.__aiter__()
    await asyncio.sleep(0.2)
    hubble.server.add_flows([make_flow(4)])
    assert seconds(await asyncio.wait_for(tail_it.__anext__(), 5)) == 4
    assert seconds(await asyncio.wait_for(it.__anext__(), 5)) == 4
    # Stopping the server ends follow streams cleanly instead of hanging for the grace period.
    await hubble.server.stop(grace=5)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(it.__anext__(), 5)


async def test_lost_events_when_follower_is_lapped() -> None:
    running = await start(HubbleServer(node_names=["test/node-a"], ring_capacity=10))
    try:
        running.server.add_flows([make_flow(0)])
        req = ts(0)
        req.follow = True
        it = running.stub.GetFlows(req).__aiter__()
        assert seconds(await asyncio.wait_for(it.__anext__(), 5)) == 0
        # The follower waits at position 1; 100 appends in one go overwrite 90 entries it never read.
        running.server.add_flows(make_flow(t) for t in range(1, 101))
        lost = await asyncio.wait_for(it.__anext__(), 5)
        assert lost.WhichOneof("response_types") == "lost_events"
        assert lost.lost_events.source == flow_pb2.HUBBLE_RING_BUFFER
        assert lost.lost_events.num_events_lost == 90
        assert lost.node_name == "test/node-a"
        rest = [await asyncio.wait_for(it.__anext__(), 5) for _ in range(10)]
        assert [seconds(r) for r in rest] == list(range(91, 101))
    finally:
        await running.channel.close()
        await running.server.stop(grace=0.5)


async def test_whitelist_and_blacklist_filters(hubble: Running) -> None:
    flows = [
        make_flow(0),  # shop/frontend -> shop/cart TCP 80, node-a
        make_flow(1, src_ns="data", src_pod="postgres-0", src_ip="10.0.2.7", proto="UDP", dport=53,
                  src_labels=("k8s:app=postgres", "k8s:io.kubernetes.pod.namespace=data")),
        make_flow(2, "test/node-b", verdict=flow_pb2.DROPPED, event_type=1, drop_code=133, dst_ip="192.168.5.5"),
        make_flow(3, "test/node-b", src_pod="frontend-def", proto="ICMP", verdict=flow_pb2.DROPPED,
                  event_type=1, drop_code=181),
        make_flow(4, src_ns="kube-system", src_pod="coredns-1", src_labels=("reserved:host",)),
    ]
    hubble.server.add_flows(flows)

    async def query(white: list[flow_pb2.FlowFilter], black: list[flow_pb2.FlowFilter] = ()) -> list[int]:
        got = await collect(hubble.stub, observer_pb2.GetFlowsRequest(whitelist=white, blacklist=black))
        return [seconds(r) for r in got]

    F = flow_pb2.FlowFilter
    assert await query([F(source_pod=["shop/frontend"])]) == [0, 2, 3]
    assert await query([F(source_pod=["frontend-d"])]) == [3]
    assert await query([F(source_pod=["kube-system/"])]) == [4]
    assert await query([F(destination_pod=["/cart"])]) == [0, 1, 2, 3, 4]
    assert await query([F(verdict=[flow_pb2.DROPPED])]) == [2, 3]
    assert await query([F(protocol=["udp"]), F(protocol=["icmp"])]) == [1, 3]  # OR across filters
    assert await query([F(source_ip=["10.0.2.0/24"])]) == [1]
    assert await query([F(destination_ip=["192.168.5.5"])]) == [2]
    assert await query([F(node_name=["test/node-b"])]) == [2, 3]
    assert await query([F(node_name=["node-*"], verdict=[flow_pb2.FORWARDED])]) == [0, 1, 4]  # AND inside
    assert await query([F(uuid=[flows[4].flow.uuid])]) == [4]
    assert await query([F(source_label=["k8s:app=postgres"])]) == [1]
    assert await query([F(source_label=["app=frontend"])]) == [0, 2, 3]
    assert await query([F(source_label=["reserved:host"])]) == [4]
    assert await query([F(event_type=[flow_pb2.EventTypeFilter(type=1, match_sub_type=True, sub_type=181)])]) == [3]
    assert await query([F(event_type=[flow_pb2.EventTypeFilter(type=1)])]) == [2, 3]
    assert await query([F(destination_port=["53"])]) == [1]
    assert await query([], [F(verdict=[flow_pb2.DROPPED])]) == [0, 1, 4]
    assert await query([F(source_pod=["shop/"])], [F(protocol=["icmp"])]) == [0, 2]
    # `number` counts matching flows only.
    got = await collect(hubble.stub, observer_pb2.GetFlowsRequest(
        number=1, whitelist=[F(verdict=[flow_pb2.FORWARDED])]))
    assert [seconds(r) for r in got] == [4]


async def test_unsupported_or_malformed_filter_is_refused(hubble: Running) -> None:
    for bad, word in ((flow_pb2.FlowFilter(http_method=["GET"]), "http_method"),
                      (flow_pb2.FlowFilter(source_ip=["10.0.0.300"]), "source_ip")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(hubble.stub, observer_pb2.GetFlowsRequest(whitelist=[bad]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert word in (err.value.details() or "")


async def test_field_mask_trims_the_flow(hubble: Running) -> None:
    hubble.server.add_flows([make_flow(0)])
    req = observer_pb2.GetFlowsRequest(field_mask=field_mask_pb2.FieldMask(paths=["time", "verdict", "source.pod_name"]))
    (resp,) = await collect(hubble.stub, req)
    assert resp.flow.source.pod_name == "frontend-abc" and resp.flow.verdict == flow_pb2.FORWARDED
    assert not resp.flow.uuid and not resp.flow.HasField("IP") and not resp.flow.source.namespace
    assert resp.node_name == "test/node-a"


async def test_pass_through_bytes_decode_identically(hubble: Running) -> None:
    demo = DemoTraffic("demo-east", seed=3)
    sent = demo.flows(300)
    hubble.server.add_flows(sent)
    serialized = demo.serialized(300)
    hubble.server.add_serialized(serialized)
    got = await collect(hubble.stub, observer_pb2.GetFlowsRequest())
    assert len(got) == 600
    by_uuid = {r.flow.uuid: r for r in got}
    assert all(by_uuid[r.flow.uuid] == r for r in sent)
    for _, _, data in serialized:
        original = observer_pb2.GetFlowsResponse.FromString(data)
        assert by_uuid[original.flow.uuid] == original


async def test_envelope_is_filled_from_the_flow(hubble: Running) -> None:
    bare = make_flow(0, "test/node-c")
    bare.ClearField("node_name")
    bare.ClearField("time")
    hubble.server.add_flows([bare])
    (resp,) = await collect(hubble.stub, observer_pb2.GetFlowsRequest())
    assert resp.node_name == "test/node-c" and resp.time == resp.flow.time
    assert "test/node-c" in hubble.server.rings


async def test_server_status_nodes_namespaces_and_unimplemented() -> None:
    running = await start(HubbleServer(node_names=["test/a", "test/b"], ring_capacity=5, version="v-test"))
    try:
        now = observer_pb2.GetFlowsResponse()
        now.time.GetCurrentTime()
        recent = (now.time.ToNanoseconds() - BASE_NS) // 1_000_000_000
        running.server.add_flows([make_flow(recent - i, "test/a") for i in range(7, 0, -1)])
        running.server.add_flows([make_flow(recent - i, "test/b", dst_ns="data") for i in (2, 1)])
        status = await running.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
        assert (status.num_flows, status.max_flows, status.seen_flows) == (7, 10, 9)
        assert status.num_connected_nodes.value == 2 and status.num_unavailable_nodes.value == 0
        assert status.version == "v-test" and status.uptime_ns > 0
        assert status.flows_rate == pytest.approx(7 / 60)
        nodes = await running.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)
        assert [(n.name, n.num_flows, n.max_flows, n.seen_flows) for n in nodes.nodes] == [
            ("test/a", 5, 5, 7), ("test/b", 2, 5, 2)]
        assert all(n.state == 1 and not n.tls.enabled for n in nodes.nodes)  # NODE_CONNECTED
        namespaces = await running.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5)
        assert {(n.cluster, n.namespace) for n in namespaces.namespaces} == {("test", "shop"), ("test", "data")}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in running.stub.GetAgentEvents(observer_pb2.GetAgentEventsRequest(), timeout=5):
                pass
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await running.channel.close()
        await running.server.stop(grace=0.5)


def test_flow_ring_overwrites_oldest_and_counts() -> None:
    ring = FlowRing(capacity=3, node_name="n")
    ring.append(make_flow(0, "n"))
    assert ring.append_many(make_flow(t, "n") for t in range(1, 5)) == 4
    assert (len(ring), ring.written, ring.oldest) == (3, 5, 2)
    assert [observer_pb2.GetFlowsResponse.FromString(ring.entry(s)[1]).time.ToNanoseconds() for s in range(2, 5)] == [
        BASE_NS + t * 1_000_000_000 for t in (2, 3, 4)]
    assert ring.times_since(BASE_NS + 3 * 1_000_000_000) == 3
    with pytest.raises(ValueError):
        FlowRing(capacity=0)


async def test_node_only_filter_selects_rings_for_per_node_streams(hubble: Running) -> None:
    hubble.server.add_flows(make_flow(t, "test/node-a" if t % 2 else "test/node-b") for t in range(6))
    only_b = observer_pb2.GetFlowsRequest(whitelist=[flow_pb2.FlowFilter(node_name=["test/node-b"])])
    assert [seconds(r) for r in await collect(hubble.stub, only_b)] == [0, 2, 4]
    only_b.number = 1
    assert [seconds(r) for r in await collect(hubble.stub, only_b)] == [4]
    # Following one node: flows of other nodes never arrive, and the stream stays open for new ones.
    follow_a = observer_pb2.GetFlowsRequest(follow=True, whitelist=[flow_pb2.FlowFilter(node_name=["node-a"])])
    it = hubble.stub.GetFlows(follow_a).__aiter__()
    await asyncio.sleep(0.2)
    hubble.server.add_flows([make_flow(6, "test/node-b"), make_flow(7, "test/node-a")])
    assert seconds(await asyncio.wait_for(it.__anext__(), 5)) == 7

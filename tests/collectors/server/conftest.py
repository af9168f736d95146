"""Helpers for the Hubble-compatible server tests: flows with chosen fields, a running server, a stub."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import grpc
import pytest

from collectors.hubble_server import HubbleServer
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2, observer_pb2_grpc

BASE_NS = 1_700_000_000 * 1_000_000_000


def make_flow(
    t: int, node: str = "test/node-a", *, src_ns: str = "shop", src_pod: str = "frontend-abc",
    dst_ns: str = "shop", dst_pod: str = "cart-xyz", src_ip: str = "10.0.0.1", dst_ip: str = "10.0.1.1",
    verdict: int = flow_pb2.FORWARDED, proto: str = "TCP", dport: int = 80,
    src_labels: Iterable[str] = ("k8s:app=frontend",), event_type: int = 4, drop_code: int = 0,
) -> observer_pb2.GetFlowsResponse:
    """A flow at BASE_NS + t seconds with the fields the filter tests need."""
    flow = flow_pb2.Flow(
        verdict=verdict, uuid=str(uuid.uuid4()), node_name=node,
        IP=flow_pb2.IP(source=src_ip, destination=dst_ip, ipVersion=flow_pb2.IPv4),
        source=flow_pb2.Endpoint(namespace=src_ns, pod_name=src_pod, labels=list(src_labels), identity=1234),
        destination=flow_pb2.Endpoint(namespace=dst_ns, pod_name=dst_pod, identity=5678),
        Type=flow_pb2.L3_L4,
    )
    flow.time.FromNanoseconds(BASE_NS + t * 1_000_000_000)
    flow.event_type.type = event_type
    if drop_code:
        flow.drop_reason_desc = drop_code
        flow.event_type.sub_type = drop_code
    if proto == "TCP":
        flow.l4.TCP.source_port, flow.l4.TCP.destination_port = 40000, dport
    elif proto == "UDP":
        flow.l4.UDP.source_port, flow.l4.UDP.destination_port = 40000, dport
    else:
        flow.l4.ICMPv4.type = 8
    resp = observer_pb2.GetFlowsResponse(flow=flow, node_name=node)
    resp.time.CopyFrom(flow.time)
    return resp


def ts(t: int) -> observer_pb2.GetFlowsRequest:
    """A request whose `since` field is BASE_NS + t seconds (merge into the request under test)."""
    req = observer_pb2.GetFlowsRequest()
    req.since.FromNanoseconds(BASE_NS + t * 1_000_000_000)
    return req


def seconds(resp: observer_pb2.GetFlowsResponse) -> int:
    return (resp.time.ToNanoseconds() - BASE_NS) // 1_000_000_000


@dataclass
class Running:
    server: HubbleServer
    stub: observer_pb2_grpc.ObserverStub
    channel: grpc.aio.Channel


async def start(server: HubbleServer) -> Running:
    port = await server.start("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Running(server, observer_pb2_grpc.ObserverStub(channel), channel)


async def collect(stub: observer_pb2_grpc.ObserverStub, req: observer_pb2.GetFlowsRequest,
                  timeout: float = 5.0) -> list[observer_pb2.GetFlowsResponse]:
    return [r async for r in stub.GetFlows(req, timeout=timeout)]


@pytest.fixture
async def hubble() -> AsyncIterator[Running]:
    """A server with nodes test/node-a and test/node-b and a plaintext stub."""
    running = await start(HubbleServer(node_names=["test/node-a", "test/node-b"]))
    try:
        yield running
    finally:
        await running.channel.close()
        await running.server.stop(grace=0.5)

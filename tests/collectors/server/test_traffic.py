"""DemoTraffic: believable Hubble flows for the demo clusters, and a steady feed into the server."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from collectors.hubble_server import HubbleServer
from collectors.traffic import DEMO_CLUSTERS, ConnectionVerdict, DemoConnection, DemoTraffic, Enforcement
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2


@pytest.fixture(scope="module", params=DEMO_CLUSTERS)
def sample(request: pytest.FixtureRequest) -> tuple[DemoTraffic, list[observer_pb2.GetFlowsResponse]]:
    demo = DemoTraffic(request.param, seed=1)
    return demo, demo.flows(20_000)


def test_topology_nodes_and_envelope(sample: tuple[DemoTraffic, list[observer_pb2.GetFlowsResponse]]) -> None:
    demo, flows = sample
    assert 2 <= len(demo.node_names) <= 3
    assert all(re.fullmatch(rf"{demo.cluster}/{demo.cluster}-[a-z0-9-]+", n) for n in demo.node_names)
    assert {r.node_name for r in flows} == set(demo.node_names)
    assert all(r.node_name == r.flow.node_name and r.time == r.flow.time for r in flows)
    times = [r.time.ToNanoseconds() for r in flows]
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    uuids = [r.flow.uuid for r in flows]
    assert len(set(uuids)) == len(uuids) and all(uuid.UUID(u).version == 4 for u in uuids[:500])
    # Pod names and labels look like Kubernetes and Cilium.
    pods = {r.flow.source.pod_name for r in flows if r.flow.source.pod_name}
    assert any(re.fullmatch(r"cart-[a-z0-9]{10}-[a-z0-9]{5}", p) for p in pods)
    assert "postgres-0" in pods or any(r.flow.destination.pod_name == "postgres-0" for r in flows)
    labels = {label for r in flows for label in r.flow.source.labels}
    assert {"k8s:app=cart", "k8s:io.kubernetes.pod.namespace=shop", "reserved:host", "reserved:world"} <= labels
    namespaces = {ep.namespace for r in flows for ep in (r.flow.source, r.flow.destination) if ep.namespace}
    assert {"shop", "data", "monitoring", "kube-system"} <= namespaces
    kinds = {w.kind for r in flows for w in r.flow.source.workloads}
    assert {"Deployment", "StatefulSet"} <= kinds
    # One identity per workload, pods of a node inside that node's pod CIDR.
    ident: dict[str, set[int]] = {}
    for r in flows:
        for ep in (r.flow.source, r.flow.destination):
            if ep.workloads:
                ident.setdefault(f"{ep.namespace}/{ep.workloads[0].name}", set()).add(ep.identity)
    assert all(len(ids) == 1 and min(ids) >= 256 for ids in ident.values())


def test_protocols_verdicts_and_drops(sample: tuple[DemoTraffic, list[observer_pb2.GetFlowsResponse]]) -> None:
    _, flows = sample
    f = [r.flow for r in flows]
    assert {x.verdict for x in f} >= {flow_pb2.FORWARDED, flow_pb2.DROPPED}
    assert {x.l4.WhichOneof("protocol") for x in f} >= {"TCP", "UDP", "ICMPv4"}
    assert {x.event_type.type for x in f} >= {1, 4, 5, 129}
    assert {x.traffic_direction for x in f} >= {flow_pb2.INGRESS, flow_pb2.EGRESS}
    assert {x.trace_observation_point for x in f if x.event_type.type == 4} >= {flow_pb2.TO_ENDPOINT, flow_pb2.TO_OVERLAY}
    # TCP handshakes and teardowns with reply marking.
    tcp = [(x.l4.TCP.flags, x.is_reply.value) for x in f if x.l4.HasField("TCP") and x.event_type.type == 4]
    assert any(fl.SYN and not fl.ACK and not reply for fl, reply in tcp)
    assert any(fl.SYN and fl.ACK and reply for fl, reply in tcp)
    assert any(fl.FIN for fl, _ in tcp) and any(fl.PSH and fl.ACK for fl, _ in tcp)
    assert all(x.HasField("is_reply") for x in f)
    # Drops by policy: both codes, event type 1 with sub_type = code, and the policy that decided it.
    drops = [x for x in f if x.verdict == flow_pb2.DROPPED]
    assert {x.drop_reason_desc for x in drops} == {133, 181}
    for x in drops:
        assert x.drop_reason == x.drop_reason_desc
        assert x.event_type.type in (1, 5)
        if x.event_type.type == 1:
            assert x.event_type.sub_type == x.drop_reason_desc
        # Hubble names the policy of a deny rule (181); default deny (133) has none to name.
        denied = list(x.ingress_denied_by) + list(x.egress_denied_by)
        if x.drop_reason_desc == 181:
            assert denied and all(p.name and p.kind and p.revision for p in denied)
        else:
            assert not denied
    denied_kinds = {p.kind for x in drops for p in list(x.ingress_denied_by) + list(x.egress_denied_by)}
    assert denied_kinds == {"CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"}
    assert any(x.ingress_denied_by for x in drops) and any(x.egress_denied_by for x in drops)
    ccnp = [p for x in drops for p in x.egress_denied_by if p.kind == "CiliumClusterwideNetworkPolicy"]
    assert ccnp and all(not p.namespace for p in ccnp)
    allowed = [p for x in f for p in list(x.ingress_allowed_by) + list(x.egress_allowed_by)]
    assert {p.kind for p in allowed} >= {"CiliumNetworkPolicy", "NetworkPolicy"}
    share = len(drops) / len(f)
    assert 0.01 < share < 0.25, share


def test_dns_and_world_egress(sample: tuple[DemoTraffic, list[observer_pb2.GetFlowsResponse]]) -> None:
    _, flows = sample
    f = [r.flow for r in flows]
    dns = [x for x in f if x.l7.HasField("dns")]
    assert dns and all(x.Type == flow_pb2.L7 and x.event_type.type == 129 for x in dns)
    assert all(x.l4.UDP.destination_port == 53 or x.l4.UDP.source_port == 53 for x in dns)
    assert any(x.l7.type == flow_pb2.REQUEST and x.l7.dns.query == "api.stripe.com." for x in dns)
    answers = [x for x in dns if x.l7.type == flow_pb2.RESPONSE and x.l7.dns.ips]
    assert answers and all(x.is_reply.value for x in answers)
    assert any("k8s:k8s-app=kube-dns" in x.destination.labels for x in dns if not x.is_reply.value)
    assert any(x.destination_service.name == "kube-dns" for x in f)
    world = [x for x in f if "reserved:world" in x.destination.labels and x.destination_names]
    assert any("api.stripe.com" in x.destination_names for x in world)
    assert any(x.traffic_direction == flow_pb2.EGRESS for x in world)


def test_serialized_is_canonical_protobuf() -> None:
    demo = DemoTraffic("demo-east")
    entries = demo.serialized(2000, now_ns=1_700_000_000_123_456_789, spacing_ns=777)
    for t, node, data in entries:
        resp = observer_pb2.GetFlowsResponse.FromString(data)
        assert observer_pb2.GetFlowsResponse.FromString(resp.SerializeToString()) == resp
        assert resp.time.ToNanoseconds() == t == resp.flow.time.ToNanoseconds() and resp.node_name == node
    assert entries[-1][0] == 1_700_000_000_123_456_789
    # The next batch continues after the last time even when the clock says otherwise.
    assert demo.serialized(1, now_ns=0)[0][0] > entries[-1][0]


def test_same_seed_same_topology() -> None:
    a, b = DemoTraffic("demo-west", seed=7), DemoTraffic("demo-west", seed=7)
    assert [p.endpoint.pod_name for ps in a.pods.values() for p in ps] == [
        p.endpoint.pod_name for ps in b.pods.values() for p in ps]
    assert DemoTraffic("demo-east").pods["shop/cart"][0].ip.startswith("10.10.")
    assert DemoTraffic("demo-west").pods["shop/cart"][0].ip.startswith("10.20.")


async def test_run_feeds_server_at_steady_rate() -> None:
    demo = DemoTraffic("demo-east")
    server = HubbleServer(node_names=demo.node_names, ring_capacity=10_000)
    stop = asyncio.Event()
    task = asyncio.create_task(demo.run(server, 2000, stop))
    await asyncio.sleep(1.0)
    stop.set()
    sent = await asyncio.wait_for(task, 2)
    seen = sum(r.written for r in server.rings.values())
    assert seen == sent and 1500 <= sent <= 2300, sent
    assert {n for n, r in server.rings.items() if r.written} == set(demo.node_names)


class _DenyJudge:
    """A datapath that drops what `denies` says (egress, 181, by a CCNP) and allows the rest."""

    def __init__(self, denies: object) -> None:
        self.denies, self.revision, self.asked = denies, 7, set()

    def __call__(self, connection: DemoConnection) -> ConnectionVerdict:
        self.asked.add(connection)
        if self.denies(connection):  # type: ignore[operator]
            return ConnectionVerdict(egress=Enforcement(False, 181, ("CiliumClusterwideNetworkPolicy", "", "deny-x")))
        return ConnectionVerdict()


def test_a_judge_decides_every_connection_and_its_flows_follow() -> None:
    judge = _DenyJudge(lambda c: c.protocol == "ICMPv4" or c.server.side.workload == "cart")
    demo = DemoTraffic("demo-west", judge=judge)
    flows = [r.flow for r in demo.flows(15_000)]
    assert judge.asked == set(demo.connections())  # each distinct connection asked (once per revision)
    protocols = {c.protocol for c in judge.asked}
    assert protocols == {"TCP", "UDP", "ICMPv4"}
    icmp = [f for f in flows if f.l4.HasField("ICMPv4")]
    assert icmp and all(f.verdict == flow_pb2.DROPPED and f.l4.ICMPv4.type == 8 for f in icmp)
    to_cart = [f for f in flows if f.destination.workloads and f.destination.workloads[0].name == "cart"
               and not f.is_reply.value]
    assert to_cart and {(f.verdict, f.drop_reason_desc) for f in to_cart} == {(flow_pb2.DROPPED, 181)}
    assert all([(p.name, p.revision) for p in f.egress_denied_by] == [("deny-x", 7)] for f in to_cart)
    # Everything else goes through, with no attribution from a judge that names no allowing policy.
    others = [f for f in flows if f.verdict != flow_pb2.DROPPED]
    assert len(others) + len(to_cart) + len(icmp) == len(flows)
    assert {f.verdict for f in others} <= {flow_pb2.FORWARDED, flow_pb2.REDIRECTED}
    assert not any(f.ingress_allowed_by or f.egress_allowed_by for f in others)

"""Believable Hubble flows for the two demo clusters (`demo-east`, `demo-west`).

Each cluster has kind-style nodes, namespaces with Deployments/StatefulSets/DaemonSets, pods with
realistic names and IPs from their node's pod CIDR, Cilium labels and security identities, services,
and policies. Traffic is a mix of conversations, each emitted as the flows Hubble shows for it: TCP
SYN / SYN-ACK / ACK / PSH / FIN sequences observed on the client's and the server's node, DNS to
kube-dns (L3/L4 plus L7 DNS records with names), UDP to upstream resolvers, ICMPv4 health probes,
egress to the internet with destination names, and connections DROPPED by policy (drop reasons 133
POLICY_DENIED and 181 POLICY_DENY) with the policy attribution of a v1.19 agent.

Who decides the verdicts: a `PolicyJudge` given by the composition root (netwarden.demo.enforcement judges
with policy_engine's evaluator over the policy objects on the demo cluster's kube API stand-in, as Cilium
enforces what is on its cluster). The conversations are what the applications attempt; the judge says,
per distinct connection and per direction, allowed or dropped (133/181) and by which policy, or nothing
for pods Cilium does not manage. Without a judge each conversation keeps the verdict it was written with
(`nominal`: the demo as it was before policies, for tests and benchmarks).

Speed: every observation of every conversation is built once as a protobuf template and serialized;
a generated flow is that template's bytes plus a freshly encoded time, l4 (ephemeral port) and uuid,
concatenated (protobuf parses concatenated fields as one message), so 100k+ flows/s is affordable.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from google.protobuf import wrappers_pb2

from schemas.conversation import Side
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2

if TYPE_CHECKING:
    from collectors.hubble_server import HubbleServer

DEMO_CLUSTERS = ("demo-east", "demo-west")
HUBBLE_VERSION = "1.19.4"

# Reserved security identities (Cilium).
ID_HOST, ID_WORLD, ID_HEALTH, ID_REMOTE_NODE = 1, 2, 4, 6

_TRACE, _DROP, _POLICY_VERDICT, _L7 = 4, 1, 5, 129
# trace sub_type -> observation point (hubble-api.md section 7)
_TO_ENDPOINT, _TO_PROXY, _TO_STACK, _TO_OVERLAY = 0, 1, 3, 4
_OBS_POINT = {_TO_ENDPOINT: flow_pb2.TO_ENDPOINT, _TO_PROXY: flow_pb2.TO_PROXY,
              _TO_STACK: flow_pb2.TO_STACK, _TO_OVERLAY: flow_pb2.TO_OVERLAY}


# -- protobuf wire encoding (just what the fast path needs) ------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _ld(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


# Lookup tables instead of a loop per varint: ports, lengths and (in two halves) nanoseconds.
_VARINT16 = [_varint(v) for v in range(65536)]
_LOW14 = [bytes(((v & 0x7F) | 0x80, ((v >> 7) & 0x7F) | 0x80)) for v in range(16384)]


def _varint_nanos(v: int) -> bytes:
    return _VARINT16[v] if v < 16384 else _LOW14[v & 0x3FFF] + _VARINT16[v >> 14]


_FLOW_TIME_TAG = _tag(1, 2)  # Flow.time and GetFlowsResponse.flow are both field 1
_ENVELOPE_TIME_TAG = _tag(1001, 2)
_UUID_FIELD = _tag(34, 2) + _varint(36)
_L4_TAG = _tag(6, 2)
_HEX_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _uuid4_strings(n: int) -> list[str]:
    """n random RFC 4122 version-4 uuids, formatted like uuid.uuid4() (faster in bulk)."""
    h = os.urandom(16 * n).hex()
    out = []
    for i in range(0, 32 * n, 32):
        s = h[i:i + 32]
        out.append(f"{s[:8]}-{s[8:12]}-4{s[13:16]}-{_HEX_VARIANT[s[16]]}{s[17:20]}-{s[20:]}")
    return out


# -- the demo clusters -----------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkloadSpec:
    namespace: str
    name: str
    kind: str  # Deployment | StatefulSet | DaemonSet
    replicas: int
    app_label: tuple[str, str] = ("app", "")
    service: str | None = None
    part_of: str | None = None


WORKLOADS = (
    WorkloadSpec("shop", "frontend", "Deployment", 2, service="frontend", part_of="shop"),
    WorkloadSpec("shop", "cart", "Deployment", 2, service="cart", part_of="shop"),
    WorkloadSpec("shop", "checkout", "Deployment", 1, service="checkout", part_of="shop"),
    WorkloadSpec("shop", "payments", "Deployment", 1, service="payments", part_of="shop"),
    WorkloadSpec("data", "postgres", "StatefulSet", 1, service="postgres"),
    WorkloadSpec("data", "redis", "StatefulSet", 1, service="redis"),
    WorkloadSpec("monitoring", "prometheus", "StatefulSet", 1, app_label=("app.kubernetes.io/name", "prometheus"),
                 service="prometheus"),
    WorkloadSpec("kube-system", "coredns", "Deployment", 2, app_label=("k8s-app", "kube-dns"), service="kube-dns"),
)


@dataclass
class Pod:
    """An endpoint the generator can put on either side of a flow (pods, host, world, health)."""

    ip: str
    node: str  # bare node name ("" for world)
    endpoint: flow_pb2.Endpoint
    service: flow_pb2.Service | None = None
    names: tuple[str, ...] = ()  # DNS names of a world IP


@dataclass
class _Step:
    """One observation of one packet: static flow bytes plus how to encode the varying l4."""

    envelope_node: bytes
    node: str
    prefix: bytes
    l4_kind: int  # 0: l4 is static (inside prefix); 1: TCP; 2: UDP
    client_is_source: bool
    server_port: int
    flags: bytes


# -- what the datapath enforces (the judge's questions and answers) ---------------------------------

@dataclass(frozen=True)
class Peer:
    """One side of a demo connection as the judge sees it: Hubble's view of it plus the pod's name."""

    side: Side
    pod: str = ""  # "" for sides that are not pods


@dataclass(frozen=True)
class DemoConnection:
    client: Peer
    server: Peer
    port: int
    protocol: str  # "TCP" | "UDP" | "ICMPv4" (port: the ICMP type)


PolicyName = tuple[str, str, str]  # (kind, namespace, name), as Hubble attributes; namespace "" for CCNPs


@dataclass(frozen=True)
class Enforcement:
    """One direction's decision at its enforcement point."""

    allowed: bool = True
    drop_reason: int = 0  # 133 POLICY_DENIED (default deny) or 181 POLICY_DENY (deny rule)
    policy: PolicyName | None = None  # Hubble's *_allowed_by / *_denied_by (None: nothing attributed)


@dataclass(frozen=True)
class ConnectionVerdict:
    egress: Enforcement = Enforcement()
    ingress: Enforcement = Enforcement()

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed


class PolicyJudge(Protocol):
    """What the demo cluster's datapath decides for a connection. `revision` (Cilium's policy revision,
    shown in Hubble's attribution) changes whenever an answer may have; answers are cached per revision."""

    @property
    def revision(self) -> int: ...

    def __call__(self, connection: DemoConnection) -> ConnectionVerdict: ...


ALLOWED = ConnectionVerdict()


@dataclass
class _Exchange:
    """One connection of a conversation: who talks to whom, and its flows under a given verdict."""

    connection: DemoConnection | None  # None: not judged
    nominal: ConnectionVerdict
    build: Callable[[ConnectionVerdict, int], list[_Step]]  # (verdict, policy revision) -> steps


@dataclass
class _Variant:
    exchanges: list[_Exchange]
    revision: int = -1  # policy revision `steps` were built for
    steps: list[_Step] = field(default_factory=list)


@dataclass
class _Conversation:
    weight: float
    variants: list[_Variant] = field(default_factory=list)


_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def _policy(kind: str, name: str, namespace: str, revision: int) -> flow_pb2.Policy:
    labels = [f"k8s:io.cilium.k8s.policy.derived-from={kind}", f"k8s:io.cilium.k8s.policy.name={name}"]
    if namespace:
        labels.append(f"k8s:io.cilium.k8s.policy.namespace={namespace}")
    return flow_pb2.Policy(name=name, namespace=namespace, labels=sorted(labels), revision=revision, kind=kind)


_RESERVED_NAMES = {ID_HOST: "host", ID_WORLD: "world", ID_HEALTH: "health", ID_REMOTE_NODE: "remote-node"}


def _peer(pod: Pod) -> Peer:
    ep = pod.endpoint
    workload = ep.workloads[0] if ep.workloads else None
    return Peer(Side(
        namespace=ep.namespace, workload=workload.name if workload else "", workload_kind=workload.kind if workload else "",
        labels=tuple(ep.labels), identity=ep.identity, ip="" if ep.namespace else pod.ip,
        reserved="" if ep.namespace else _RESERVED_NAMES.get(ep.identity, "world"),
    ), ep.pod_name)


class DemoTraffic:
    """Generated Hubble traffic of one demo cluster; deterministic topology for a given seed."""

    def __init__(self, cluster: str, seed: int = 0, judge: PolicyJudge | None = None) -> None:
        self.cluster = cluster
        self.judge = judge  # settable: the composition root may attach it once the topology is known
        # demo-east/demo-west get 10.10/16 and 10.20/16; any other name a stable block in 10.30-10.229.
        index = DEMO_CLUSTERS.index(cluster) if cluster in DEMO_CLUSTERS else 2 + sum(map(ord, cluster)) % 200
        self._rng = random.Random(f"{cluster}/{seed}")
        self._build_rng = random.Random(f"{cluster}/{seed}/build")  # flows built lazily: their own stream
        node_count = 3 if index % 2 == 0 else 2
        self.nodes = [f"{cluster}-control-plane"] + [
            f"{cluster}-worker" + (str(i + 1) if i else "") for i in range(node_count - 1)]
        self.node_names = [f"{cluster}/{n}" for n in self.nodes]
        self._pod_octet = 10 + 10 * index if index < 2 else 28 + index  # pods: 10.<o>.<node>.0/24
        self._node_ips = {n: f"172.{18 + index % 14}.0.{2 + i}" for i, n in enumerate(self.nodes)}
        self.revision = 3 + self._rng.randrange(20)
        self.pods: dict[str, list[Pod]] = {}
        self._identities: dict[str, int] = {}
        self._build_pods()
        self._conversations = self._build_conversations()
        self._weights = [c.weight for c in self._conversations]
        self._pending: deque[tuple[_Step, int]] = deque()
        self._last_ns = 0

    # -- topology ----------------------------------------------------------------------------------

    def _pod_name(self, spec: WorkloadSpec, replica: int) -> str:
        rnd = self._rng
        if spec.kind == "StatefulSet":
            return f"{spec.name}-{replica}"
        suffix = "".join(rnd.choice(_NAME_CHARS) for _ in range(5))
        if spec.kind == "DaemonSet":
            return f"{spec.name}-{suffix}"
        template_hash = self._template_hashes.setdefault(spec.name, "".join(rnd.choice(_NAME_CHARS) for _ in range(10)))
        return f"{spec.name}-{template_hash}-{suffix}"

    def _build_pods(self) -> None:
        self._template_hashes: dict[str, str] = {}
        next_host = {n: 10 for n in self.nodes}
        used_ids: set[int] = set()
        placement = 1  # workloads start on the first worker, like a kind cluster with a tainted-free CP
        for spec in WORKLOADS:
            key, value = spec.app_label
            labels = [
                f"k8s:{key}={value or spec.name}",
                f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={spec.namespace}",
                f"k8s:io.cilium.k8s.policy.cluster={self.cluster}",
                f"k8s:io.cilium.k8s.policy.serviceaccount={spec.name}",
                f"k8s:io.kubernetes.pod.namespace={spec.namespace}",
            ]
            if spec.part_of:
                labels.append(f"k8s:app.kubernetes.io/part-of={spec.part_of}")
            identity = 10000 + self._rng.randrange(50000)
            self._identities[f"{spec.namespace}/{spec.name}"] = identity
            pods = []
            for replica in range(spec.replicas):
                node = self.nodes[placement % len(self.nodes)]
                placement += 1
                node_i = self.nodes.index(node)
                ip = f"10.{self._pod_octet}.{node_i}.{next_host[node]}"
                next_host[node] += 1 + self._rng.randrange(7)
                endpoint_id = self._rng.randrange(100, 4096)
                while endpoint_id in used_ids:
                    endpoint_id = self._rng.randrange(100, 4096)
                used_ids.add(endpoint_id)
                ep = flow_pb2.Endpoint(
                    ID=endpoint_id, identity=identity, cluster_name=self.cluster, namespace=spec.namespace,
                    labels=sorted(labels), pod_name=self._pod_name(spec, replica),
                    workloads=[flow_pb2.Workload(name=spec.name, kind=spec.kind)])
                service = flow_pb2.Service(name=spec.service, namespace=spec.namespace) if spec.service else None
                pods.append(Pod(ip, node, ep, service))
            self.pods[f"{spec.namespace}/{spec.name}"] = pods
        # cilium-agent runs with hostNetwork: its traffic is the node itself (reserved:host).
        self.pods["kube-system/cilium"] = [
            Pod(self._node_ips[n], n, flow_pb2.Endpoint(
                identity=ID_HOST, labels=["reserved:host"])) for n in self.nodes]
        self.pods["health"] = [
            Pod(f"10.{self._pod_octet}.{i}.250", n, flow_pb2.Endpoint(
                ID=self._rng.randrange(100, 4096), identity=ID_HEALTH, labels=["reserved:health"]))
            for i, n in enumerate(self.nodes)]

    @staticmethod
    def _world(ip: str, *names: str) -> Pod:
        return Pod(ip, "", flow_pb2.Endpoint(identity=ID_WORLD, labels=["reserved:world"]), names=names)

    # -- flow templates ----------------------------------------------------------------------------

    def _step(self, node: str, flow: flow_pb2.Flow, l4_kind: int, client_is_source: bool,
              server_port: int, flags: flow_pb2.TCPFlags | None = None) -> _Step:
        full_node = f"{self.cluster}/{node}"
        flow.node_name = full_node
        flow.emitter.name = "Hubble"
        flow.emitter.version = HUBBLE_VERSION
        flags_bytes = _ld(3, flags.SerializeToString()) if flags is not None else b""
        return _Step(_ld(1000, full_node.encode()), full_node, flow.SerializeToString(), l4_kind,
                     client_is_source, server_port, flags_bytes)

    def _base(self, src: Pod, dst: Pod, reply: bool, direction: int) -> flow_pb2.Flow:
        flow = flow_pb2.Flow(
            verdict=flow_pb2.FORWARDED, Type=flow_pb2.L3_L4,
            IP=flow_pb2.IP(source=src.ip, destination=dst.ip, ipVersion=flow_pb2.IPv4),
            source=src.endpoint, destination=dst.endpoint, traffic_direction=direction,
            is_reply=wrappers_pb2.BoolValue(value=reply))
        if reply:
            flow.reply = True
        if src.service and reply:
            flow.source_service.CopyFrom(src.service)
        if dst.service and not reply:
            flow.destination_service.CopyFrom(dst.service)
        if src.names:
            flow.source_names.extend(src.names)
        if dst.names:
            flow.destination_names.extend(dst.names)
        return flow

    def _observations(self, client: Pod, server: Pod, reply: bool) -> list[tuple[str, int, int]]:
        """(node, trace sub_type, traffic direction) where Hubble sees one packet of client->server."""
        sender, receiver = (server, client) if reply else (client, server)
        out = []
        # Direction belongs to the connection: EGRESS at the client's endpoint, INGRESS at the server's.
        if sender.node and sender.endpoint.identity not in (ID_HOST,) and sender.node != receiver.node:
            point = _TO_OVERLAY if receiver.node else _TO_STACK
            out.append((sender.node, point, flow_pb2.INGRESS if reply else flow_pb2.EGRESS))
        if receiver.node:
            point = _TO_STACK if receiver.endpoint.identity == ID_HOST else _TO_ENDPOINT
            out.append((receiver.node, point, flow_pb2.EGRESS if reply else flow_pb2.INGRESS))
        return out

    def _tcp(self, client: Pod, server: Pod, port: int, egress_by: list[flow_pb2.Policy],
             ingress_by: list[flow_pb2.Policy], data_packets: int = 1) -> list[_Step]:
        packets: list[tuple[bool, flow_pb2.TCPFlags, str, int]] = [
            (False, flow_pb2.TCPFlags(SYN=True), "SYN", flow_pb2.NEW),
            (True, flow_pb2.TCPFlags(SYN=True, ACK=True), "SYN, ACK", flow_pb2.REPLY),
            (False, flow_pb2.TCPFlags(ACK=True), "ACK", flow_pb2.ESTABLISHED),
        ]
        for _ in range(data_packets):
            packets.append((False, flow_pb2.TCPFlags(ACK=True, PSH=True), "ACK, PSH", flow_pb2.ESTABLISHED))
            packets.append((True, flow_pb2.TCPFlags(ACK=True, PSH=True), "ACK, PSH", flow_pb2.REPLY))
        packets += [
            (False, flow_pb2.TCPFlags(ACK=True, FIN=True), "ACK, FIN", flow_pb2.ESTABLISHED),
            (True, flow_pb2.TCPFlags(ACK=True, FIN=True), "ACK, FIN", flow_pb2.REPLY),
            (False, flow_pb2.TCPFlags(ACK=True), "ACK", flow_pb2.ESTABLISHED),
        ]
        steps = []
        # The first packet of a connection gets a policy-verdict event at each endpoint where policy
        # applies: egress at the client's, ingress at the server's (also when both share a node).
        verdict_events = [(client.node, flow_pb2.EGRESS, egress_by), (server.node, flow_pb2.INGRESS, ingress_by)]
        for reply, flags, summary, reason in packets:
            src, dst = (server, client) if reply else (client, server)
            if flags.SYN and not reply:
                for node, direction, allowed in verdict_events:
                    if allowed and node:
                        pv = self._base(src, dst, False, direction)
                        pv.event_type.type = _POLICY_VERDICT
                        pv.policy_match_type = 2  # L3-L4
                        pv.Summary = f"TCP Flags: {summary}"
                        (pv.egress_allowed_by if direction == flow_pb2.EGRESS else pv.ingress_allowed_by).extend(
                            allowed)
                        steps.append(self._step(node, pv, 1, True, port, flags))
            for node, point, direction in self._observations(client, server, reply):
                flow = self._base(src, dst, reply, direction)
                flow.event_type.type = _TRACE
                flow.event_type.sub_type = point
                flow.trace_observation_point = _OBS_POINT[point]
                flow.trace_reason = reason
                flow.Summary = f"TCP Flags: {summary}"
                steps.append(self._step(node, flow, 1, not reply, port, flags))
        return steps

    def _denied(self, client: Pod, server: Pod, port: int, code: int, egress: bool,
                policies: list[flow_pb2.Policy], attempts: int = 3, *, l4_kind: int = 1,
                egress_allowed: list[flow_pb2.Policy] | None = None) -> list[_Step]:
        """A connect retried `attempts` times, each first packet (TCP SYN, or UDP) denied by policy on
        egress at the client or on ingress at the server; no reply ever comes. `policies` are Hubble's
        *_denied_by (a deny rule's policy; empty for default deny), `egress_allowed` the policies that let
        it out of the client when ingress drops it."""
        steps = []
        syn = flow_pb2.TCPFlags(SYN=True) if l4_kind == 1 else None
        summary = {0: "ICMPv4 EchoRequest", 1: "TCP Flags: SYN", 2: "UDP"}[l4_kind]
        node = client.node if egress else server.node
        direction = flow_pb2.EGRESS if egress else flow_pb2.INGRESS
        for _ in range(attempts):
            if not egress and egress_allowed and client.node:
                pv = self._base(client, server, False, flow_pb2.EGRESS)
                if l4_kind == 0:
                    pv.l4.ICMPv4.type = 8
                pv.event_type.type = _POLICY_VERDICT
                pv.policy_match_type = 2  # L3-L4
                pv.Summary = summary
                pv.egress_allowed_by.extend(egress_allowed)
                steps.append(self._step(client.node, pv, l4_kind, True, port, syn))
            if not egress and client.node and client.node != server.node:
                fwd = self._base(client, server, False, flow_pb2.EGRESS)
                if l4_kind == 0:
                    fwd.l4.ICMPv4.type = 8
                fwd.event_type.type, fwd.event_type.sub_type = _TRACE, _TO_OVERLAY
                fwd.trace_observation_point = flow_pb2.TO_OVERLAY
                fwd.trace_reason = flow_pb2.NEW
                fwd.Summary = summary
                steps.append(self._step(client.node, fwd, l4_kind, True, port, syn))
            for event in (_POLICY_VERDICT, _DROP):
                flow = self._base(client, server, False, direction)
                if l4_kind == 0:  # ICMP: the echo request's type is static, in the template
                    flow.l4.ICMPv4.type = 8
                flow.verdict = flow_pb2.DROPPED
                flow.drop_reason = code
                flow.drop_reason_desc = code
                flow.event_type.type = event
                if event == _DROP:
                    flow.event_type.sub_type = code
                    flow.file.name = "bpf_lxc.c"
                    flow.file.line = 2129 if egress else 2341
                flow.Summary = summary
                (flow.egress_denied_by if egress else flow.ingress_denied_by).extend(policies)
                steps.append(self._step(node, flow, l4_kind, True, port, syn))
        return steps

    def _dns(self, client: Pod, dns_pod: Pod, query: str, answers: list[str],
             allowed: list[flow_pb2.Policy]) -> list[_Step]:
        """UDP/53 to kube-dns through Cilium's DNS proxy: L3/L4 redirects plus L7 DNS records."""
        node = client.node
        fqdn = query if query.endswith(".") else query + "."
        steps = []
        req = self._base(client, dns_pod, False, flow_pb2.EGRESS)
        req.verdict = flow_pb2.REDIRECTED
        req.event_type.type, req.event_type.sub_type = _TRACE, _TO_PROXY
        req.trace_observation_point = flow_pb2.TO_PROXY
        req.trace_reason = flow_pb2.NEW
        req.Summary = "UDP"
        req.egress_allowed_by.extend(allowed)
        steps.append(self._step(node, req, 2, True, 53))
        for qtype in ("A", "AAAA"):
            l7_req = self._base(client, dns_pod, False, flow_pb2.EGRESS)
            l7_req.Type = flow_pb2.L7
            l7_req.event_type.type = _L7
            l7_req.l7.type = flow_pb2.REQUEST
            l7_req.l7.dns.query = fqdn
            l7_req.l7.dns.observation_source = "proxy"
            l7_req.l7.dns.qtypes.append(qtype)
            l7_req.Summary = f"DNS Query {fqdn} {qtype}"
            steps.append(self._step(node, l7_req, 2, True, 53))
            l7_resp = self._base(dns_pod, client, True, flow_pb2.EGRESS)
            l7_resp.Type = flow_pb2.L7
            l7_resp.event_type.type = _L7
            l7_resp.l7.type = flow_pb2.RESPONSE
            l7_resp.l7.latency_ns = 180_000 + self._build_rng.randrange(2_500_000)
            dns = l7_resp.l7.dns
            dns.query, dns.observation_source, dns.rcode = fqdn, "proxy", 0
            dns.qtypes.append(qtype)
            ips = answers if qtype == "A" else []
            dns.ips.extend(ips)
            if ips:
                dns.ttl = 30
                dns.rrtypes.append("A")
            l7_resp.Summary = (f"DNS Answer \"{','.join(ips)}\" TTL: {dns.ttl} (Proxy {fqdn} {qtype})"
                               if ips else f"DNS Answer  TTL: 0 (Proxy {fqdn} {qtype})")
            steps.append(self._step(node, l7_resp, 2, False, 53))
        resp = self._base(dns_pod, client, True, flow_pb2.EGRESS)
        resp.event_type.type = _TRACE
        resp.trace_observation_point = flow_pb2.TO_ENDPOINT
        resp.trace_reason = flow_pb2.REPLY
        resp.Summary = "UDP"
        steps.append(self._step(node, resp, 2, False, 53))
        return steps

    def _udp(self, client: Pod, server: Pod, port: int) -> list[_Step]:
        steps = []
        for reply in (False, True):
            src, dst = (server, client) if reply else (client, server)
            for node, point, direction in self._observations(client, server, reply):
                flow = self._base(src, dst, reply, direction)
                flow.event_type.type, flow.event_type.sub_type = _TRACE, point
                flow.trace_observation_point = _OBS_POINT[point]
                flow.trace_reason = flow_pb2.REPLY if reply else flow_pb2.NEW
                flow.Summary = "UDP"
                steps.append(self._step(node, flow, 2, not reply, port))
        return steps

    def _icmp(self, client: Pod, server: Pod) -> list[_Step]:
        steps = []
        for reply, icmp_type, summary in ((False, 8, "ICMPv4 EchoRequest"), (True, 0, "ICMPv4 EchoReply")):
            src, dst = (server, client) if reply else (client, server)
            for node, point, direction in self._observations(client, server, reply):
                flow = self._base(src, dst, reply, direction)
                flow.l4.ICMPv4.type = icmp_type
                flow.event_type.type, flow.event_type.sub_type = _TRACE, point
                flow.trace_observation_point = _OBS_POINT[point]
                flow.trace_reason = flow_pb2.REPLY if reply else flow_pb2.NEW
                flow.Summary = summary
                steps.append(self._step(node, flow, 0, True, 0))
        return steps

    # -- conversations: what the applications attempt; the judge decides what gets through ----------

    def _policies(self, enforcement: Enforcement, revision: int) -> list[flow_pb2.Policy]:
        if enforcement.policy is None:
            return []
        kind, namespace, name = enforcement.policy
        return [_policy(kind, name, namespace, revision)]

    def _connection(self, client: Pod, server: Pod, port: int, protocol: str) -> DemoConnection:
        return DemoConnection(_peer(client), _peer(server), port, protocol)

    def _denial(self, client: Pod, server: Pod, port: int, verdict: ConnectionVerdict, revision: int,
                l4_kind: int) -> list[_Step]:
        egress = not verdict.egress.allowed
        decided = verdict.egress if egress else verdict.ingress
        # Hubble attributes a drop only to a deny rule (181); default deny (133) names no policy.
        denied_by = self._policies(decided, revision) if decided.drop_reason == 181 else []
        return self._denied(client, server, port, decided.drop_reason or 133, egress, denied_by,
                            l4_kind=l4_kind, egress_allowed=self._policies(verdict.egress, revision))

    def _tcp_exchange(self, client: Pod, server: Pod, port: int, nominal: ConnectionVerdict = ALLOWED,
                      data_packets: int = 1) -> _Exchange:
        def build(v: ConnectionVerdict, rev: int) -> list[_Step]:
            if not v.allowed:
                return self._denial(client, server, port, v, rev, 1)
            return self._tcp(client, server, port, self._policies(v.egress, rev), self._policies(v.ingress, rev),
                             data_packets)
        return _Exchange(self._connection(client, server, port, "TCP"), nominal, build)

    def _udp_exchange(self, client: Pod, server: Pod, port: int, nominal: ConnectionVerdict = ALLOWED) -> _Exchange:
        def build(v: ConnectionVerdict, rev: int) -> list[_Step]:
            return self._udp(client, server, port) if v.allowed else self._denial(client, server, port, v, rev, 2)
        return _Exchange(self._connection(client, server, port, "UDP"), nominal, build)

    def _dns_exchange(self, client: Pod, query: str, answers: list[str], nominal: ConnectionVerdict) -> _Exchange:
        dns_pod = self._rng.choice(self.pods["kube-system/coredns"])

        def build(v: ConnectionVerdict, rev: int) -> list[_Step]:
            if not v.allowed:
                return self._denial(client, dns_pod, 53, v, rev, 2)
            return self._dns(client, dns_pod, query, answers, self._policies(v.egress, rev))
        return _Exchange(self._connection(client, dns_pod, 53, "UDP"), nominal, build)

    def _icmp_exchange(self, client: Pod, server: Pod) -> _Exchange:
        def build(v: ConnectionVerdict, rev: int) -> list[_Step]:
            return self._icmp(client, server) if v.allowed else self._denial(client, server, 0, v, rev, 0)
        # Judged as an echo request (ICMP type 8 in the port's place, as the flow enricher keys ICMP).
        return _Exchange(self._connection(client, server, 8, "ICMPv4"), ALLOWED, build)

    def _build_conversations(self) -> list[_Conversation]:
        p = self.pods
        cnp, ccnp, knp = "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"

        # The verdicts this demo was written with (used without a judge).
        def ingress_by(kind: str, namespace: str, name: str) -> ConnectionVerdict:
            return ConnectionVerdict(ingress=Enforcement(policy=(kind, namespace, name)))

        def egress_by(kind: str, namespace: str, name: str) -> ConnectionVerdict:
            return ConnectionVerdict(egress=Enforcement(policy=(kind, namespace, name)))

        def denied(egress: bool, code: int, policy: PolicyName | None = None) -> ConnectionVerdict:
            drop = Enforcement(False, code, policy)
            return ConnectionVerdict(egress=drop) if egress else ConnectionVerdict(ingress=drop)

        allow_dns = egress_by(ccnp, "", "allow-kube-dns")
        scrape = ingress_by(ccnp, "", "allow-prometheus-scrape")

        stripe = self._world("54.187.174.169", "api.stripe.com")
        cdn = self._world("151.101.65.195", "images.fastly-cdn.net")
        upstream = self._world("1.1.1.1")
        metadata = self._world("169.254.169.254")
        miner = self._world("45.9.148.108", "pool.minexmr.com")
        shoppers = [self._world(f"203.0.113.{i}") for i in (7, 23, 54, 91, 188)]

        def pairs(a: list[Pod], b: list[Pod]) -> list[tuple[Pod, Pod]]:
            return [(x, y) for x in a for y in b]

        convs: list[_Conversation] = []

        def add(weight: float, variants: list[list[_Exchange]]) -> None:
            convs.append(_Conversation(weight, [_Variant(v) for v in variants]))

        def tcp(pairs_: list[tuple[Pod, Pod]], port: int, nominal: ConnectionVerdict = ALLOWED,
                data_packets: int = 1) -> list[list[_Exchange]]:
            return [[self._tcp_exchange(c, s, port, nominal, data_packets)] for c, s in pairs_]

        add(14, tcp(pairs(p["shop/frontend"], p["shop/cart"]), 7070, ingress_by(cnp, "shop", "cart-allow-frontend"), 2))
        add(8, tcp(pairs(p["shop/frontend"], p["shop/checkout"]), 5050,
                   ingress_by(cnp, "shop", "checkout-allow-frontend")))
        add(5, tcp(pairs(p["shop/checkout"], p["shop/payments"]), 8443,
                   ingress_by(cnp, "shop", "payments-allow-checkout")))
        add(10, tcp(pairs(p["shop/cart"], p["data/redis"]), 6379, ingress_by(knp, "data", "redis-allow-shop"), 3))
        add(5, tcp(pairs(p["shop/payments"], p["data/postgres"]), 5432,
                   ingress_by(knp, "data", "postgres-allow-payments"), 2))
        add(3, [[self._dns_exchange(c, "api.stripe.com", [stripe.ip], allow_dns),
                 self._tcp_exchange(c, stripe, 443, egress_by(cnp, "shop", "payments-egress-stripe"))]
                for c in p["shop/payments"]])
        add(3, tcp([(c, cdn) for c in p["shop/frontend"]], 443))
        add(8, tcp(pairs(shoppers, p["shop/frontend"]), 8080, ingress_by(cnp, "shop", "frontend-allow-world"), 2))
        add(10, [[self._dns_exchange(c, f"{svc}.{ns}.svc.cluster.local", [self._service_ip(ns, svc)], allow_dns)]
                 for c, (ns, svc) in ((c, t) for c in p["shop/frontend"] + p["shop/cart"] + p["shop/checkout"]
                                      for t in (("shop", "cart"), ("shop", "checkout"), ("data", "redis")))])
        add(3, [[self._udp_exchange(c, upstream, 53)] for c in p["kube-system/coredns"]])
        add(4, [[self._tcp_exchange(c, s, port, scrape)] for c in p["monitoring/prometheus"]
                for key, port in (("shop/frontend", 8080), ("shop/cart", 7070), ("data/redis", 6379))
                for s in p[key]])
        # kubelet readiness probes come from the node itself (reserved:host).
        add(4, [[self._tcp_exchange(host, s, port)]
                for key, port in (("shop/frontend", 8080), ("shop/cart", 7070), ("data/postgres", 5432))
                for s in p[key] for host in p["kube-system/cilium"] if host.node == s.node])
        add(3, [[self._icmp_exchange(a, b)] for a, b in pairs(p["health"], p["health"]) if a is not b] or
            [[self._icmp_exchange(p["health"][0], p["health"][0])]])
        # Attempts policy is meant to stop: 133 = an allow policy selects the endpoint and nothing allows
        # this peer; 181 = an explicit deny rule (ingressDeny/egressDeny) matched.
        add(1.5, tcp(pairs(p["shop/frontend"], p["data/postgres"]), 5432, denied(False, 133)))
        add(1.5, tcp(pairs(p["shop/checkout"], p["data/redis"]), 6379, denied(True, 133)))
        add(1, tcp([(c, metadata) for c in p["shop/cart"]], 80, denied(True, 181, (ccnp, "", "deny-cloud-metadata"))))
        add(1, tcp([(c, miner) for c in p["shop/frontend"]], 3333,
                     denied(True, 181, (ccnp, "", "deny-blocklisted-egress"))))
        add(1, tcp(pairs(p["monitoring/prometheus"], p["data/redis"]), 6379,
                   denied(False, 181, (cnp, "data", "redis-deny-monitoring"))))
        return convs

    def connections(self) -> list[DemoConnection]:
        """Every distinct connection the applications attempt (what a judge is asked)."""
        seen: dict[DemoConnection, None] = {}
        for conv in self._conversations:
            for variant in conv.variants:
                for x in variant.exchanges:
                    if x.connection is not None:
                        seen.setdefault(x.connection)
        return list(seen)

    def _variant_steps(self, variant: _Variant) -> list[_Step]:
        """The variant's flows under the current verdicts: rebuilt only when the policy revision moved."""
        judge = self.judge
        revision = judge.revision if judge is not None else self.revision
        if variant.revision != revision:
            steps: list[_Step] = []
            for x in variant.exchanges:
                verdict = judge(x.connection) if judge is not None and x.connection is not None else x.nominal
                steps.extend(x.build(verdict, revision))
            variant.steps, variant.revision = steps, revision
        return variant.steps

    def _service_ip(self, namespace: str, name: str) -> str:
        h = sum(map(ord, f"{namespace}/{name}"))
        return f"10.96.{h % 200}.{10 + h % 240}"

    # -- generation --------------------------------------------------------------------------------

    def _steps(self) -> Iterator[tuple[_Step, int]]:
        """Conversation after conversation, each with its own ephemeral client port."""
        rng = self._rng
        while True:
            while self._pending:
                yield self._pending.popleft()
            conv = rng.choices(self._conversations, self._weights)[0]
            variant = rng.choice(conv.variants)
            port = rng.randrange(32768, 61000)
            self._pending.extend((step, port) for step in self._variant_steps(variant))

    def serialized(self, n: int, now_ns: int | None = None, spacing_ns: int = 1000) -> list[tuple[int, str, bytes]]:
        """n flows as (time_ns, node_name, serialized GetFlowsResponse), times increasing, the last at now."""
        if n <= 0:
            return []
        now = time.time_ns() if now_ns is None else now_ns
        t = max(now - (n - 1) * spacing_ns, self._last_ns + 1)
        uuids = _uuid4_strings(n)
        steps = self._steps()
        out = []
        sec_cache: tuple[int, bytes] = (-1, b"")
        small = _VARINT16
        for i in range(n):
            step, eph = next(steps)
            sec, nanos = divmod(t, 1_000_000_000)
            if sec != sec_cache[0]:
                sec_cache = (sec, b"\x08" + _varint(sec))
            ts = sec_cache[1] + (b"\x10" + _varint_nanos(nanos) if nanos else b"")
            ts = small[len(ts)] + ts
            kind = step.l4_kind
            if kind:
                sport, dport = (eph, step.server_port) if step.client_is_source else (step.server_port, eph)
                inner = b"\x08" + small[sport] + b"\x10" + small[dport] + step.flags
                proto = (b"\x0a" if kind == 1 else b"\x12") + small[len(inner)] + inner
                l4 = _L4_TAG + small[len(proto)] + proto
            else:
                l4 = b""
            flow = b"".join((_FLOW_TIME_TAG, ts, step.prefix, l4, _UUID_FIELD, uuids[i].encode()))
            out.append((t, step.node, b"".join(
                (_FLOW_TIME_TAG, small[len(flow)], flow, step.envelope_node, _ENVELOPE_TIME_TAG, ts))))
            t += spacing_ns
        self._last_ns = t - spacing_ns
        return out

    def flows(self, n: int, now_ns: int | None = None, spacing_ns: int = 1000) -> list[observer_pb2.GetFlowsResponse]:
        """n GetFlowsResponse with increasing times (the same bytes as `serialized`, decoded)."""
        parse = observer_pb2.GetFlowsResponse.FromString
        return [parse(data) for _, _, data in self.serialized(n, now_ns, spacing_ns)]

    async def run(self, server: HubbleServer, rate_per_s: float, stop: asyncio.Event) -> int:
        """Feed `server` at a steady `rate_per_s` until `stop` is set; returns the flows sent."""
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        # ~500 flows per wake-up, 20 Hz at least: at high rates every wake-up of the server, its
        # followers and the collectors behind them carries more flows (less CPU per flow), for at most
        # 50 ms of added latency.
        tick = min(0.05, max(0.005, 500 / rate_per_s))
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        last_ns = time.time_ns()
        while not stop.is_set():
            due = int((loop.time() - started) * rate_per_s) - sent
            if due > 0:
                now = time.time_ns()
                spacing = max(1, (now - last_ns) // due)
                server.add_serialized(self.serialized(due, now, spacing))
                sent += due
                last_ns = now
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except TimeoutError:
                pass
        return sent

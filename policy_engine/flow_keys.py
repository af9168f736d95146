"""From what Hubble saw to what the evaluator judges: the one place for the rules that turn a side of a flow key
(or of a history Conversation) into the evaluator's Endpoint, a key into its Connection, and a policy set's
answer into the stored verdict columns. The stream (streams.verdicts.PolicyEnricher) and everything that judges
history again (what-if, reports, why) call these, so a conversation decided here equals what the stream stored
for the same key.

Endpoints are rebuilt from Hubble's view of each side, as Cilium enforces on it:
- a pod (namespace set): its identity labels `k8s:K=V` are the pod labels, `k8s:io.kubernetes.pod.namespace`
  names the namespace and `k8s:io.cilium.k8s.namespace.labels.K=V` are namespace labels (merged over the
  labels the inventory knows, e.g. netwarden.io/workspace; the evaluator's kubernetes.io/metadata.name too);
  pod IPs are not in the key: CIDR rules never select pods under Cilium (under a primary CNI's
  NetworkPolicy, ipBlock rules covering pod IPs are therefore not seen: a documented limit);
- anything else: its `reserved:` labels (or, without any, its reserved identity number: 1 host, 2 world,
  3 unmanaged, 4 health, 5 init, 6 remote-node, 7 kube-apiserver, 8 ingress, 9/10 world-ipv4/-ipv6) as
  entities, and its IP for CIDR rules; CIDR identities and unknown identities are world.
This is what `netwarden policy check` builds for a pod (pod labels + namespace labels) and for an IP with
entities, so a key's verdict equals `policy check` on the same connection.

Which connection and which direction decides:
- A reply belongs to its connection: the sides are swapped back (client -> server) and the port is the
  connection's server port. Cilium decides a connection on its first packet; replies pass by conntrack, so a
  reply carries its connection's verdict. Conversations are stored folded already, with the point of
  observation (Conversation.traffic_direction), so they are judged exactly as their keys were.
- Cilium enforces the source's egress policy where the packet leaves the source endpoint and the
  destination's ingress policy where it enters the destination endpoint. Both directions are evaluated
  (`egress_*`, `ingress_*`); the verdict is what the set says at the point Hubble observed the flow: at
  EGRESS (a request leaving its source) the egress decision alone, since the packet has not met ingress
  enforcement yet; at INGRESS, for replies and when unknown, the connection's: egress first, then ingress. The drop reason is the deciding direction's (133 POLICY_DENIED
  for default deny, 181 POLICY_DENY for a deny rule).
- TCP, UDP and SCTP with a port, and ICMP/ICMPv6 with the type as the port (the sink keys an echo reply on
  its request's type) are evaluated; other protocols get verdict 0.

Attribution per direction: the policy "Kind/namespace/name" (namespace empty for clusterwide policies), the
rule that decided ("ingress[0]", "egressDeny[1]", "default-deny", ...; empty when no policy selects the
endpoint) and the netwarden policy version it was rendered from (PolicySet.rendered_from).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from policy_engine.evaluator import (
    CILIUM_NS_LABEL,
    CILIUM_NS_LABELS_PREFIX,
    IP_ENTITIES,
    NAMESPACE_NAME_LABEL,
    Connection,
    DirectionDecision,
    Endpoint,
    EvaluatorInputError,
    IPAddress,
    Pod,
    PolicyEvaluator,
    pod_cilium_labels,
)
from schemas.conversation import Conversation, SetDecision, Side
from schemas.inventory import PolicySet

log = logging.getLogger("netwarden.policy_engine.flow_keys")

NOT_EVALUATED, FORWARDED, DROPPED = 0, 1, 2
TRAFFIC_UNKNOWN, TRAFFIC_INGRESS, TRAFFIC_EGRESS = 0, 1, 2  # Hubble's TrafficDirection
# schemas.flow_record.L4_PROTOCOLS numbers -> evaluator protocol; for ICMP the port is the type (the evaluator
# reads "ICMPv4" as ICMP)
L4_EVALUATED = {1: "TCP", 2: "UDP", 5: "SCTP", 3: "ICMPv4", 4: "ICMPv6"}
EVALUATED_PROTOCOLS = frozenset(L4_EVALUATED.values())
RESERVED_IDENTITIES = {
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world",
    10: "world",
}
# Reserved entities of the cluster itself (they share its project); world does not.
CLUSTER_ENDPOINT_ENTITIES = frozenset(IP_ENTITIES - {"world"})
CACHE_LIMIT = 200_000  # entries kept per memo before it starts over
MAX_SLOTS = 256  # unnamed policy sets an EvaluatorCache keeps evaluators for

_ZERO_IP = bytes(16)
_BY_IDENTITY = object()  # slot names of policy sets cached by identity (no caller-given name)
_V4_MAPPED = bytes(10) + b"\xff\xff"
_K8S = "k8s:"
_NS_LABEL_KEY = f"{_K8S}{CILIUM_NS_LABELS_PREFIX}"


# -- sides ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySide:
    """One side of a key as Hubble saw it (hashable: the evaluator memoizes selections by it)."""

    identity: int
    namespace: str
    labels: tuple[str, ...]
    ip: bytes  # 16 bytes, IPv4-mapped for IPv4; all zero for pods


def ip16(text: str) -> bytes:
    """An IP as the store keeps it (16 bytes, IPv4-mapped); '' -> all zero. Raises ValueError."""
    if not text:
        return _ZERO_IP
    ip = ipaddress.ip_address(text)
    return _V4_MAPPED + ip.packed if ip.version == 4 else ip.packed


def _ip(ip16_bytes: bytes) -> IPAddress | None:
    if not ip16_bytes or ip16_bytes == _ZERO_IP:
        return None
    ip = ipaddress.IPv6Address(ip16_bytes)
    return ip.ipv4_mapped or ip


def key_side(side: Side) -> KeySide:
    """A Conversation's side as the stream keyed it: IPs only for sides that are not pods. A hand-built side
    with only `reserved` set (no labels, no identity) stands for that reserved entity."""
    labels = side.labels
    if not labels and not side.identity and side.reserved and not side.namespace:
        labels = (f"reserved:{side.reserved}",)
    return KeySide(side.identity, side.namespace, tuple(labels), _ZERO_IP if side.namespace else ip16(side.ip))


def side_endpoint(side: KeySide, known_namespace_labels: Mapping[str, Mapping[str, str]]) -> Endpoint:
    """The evaluator's Endpoint for one side of a key (see the module notes)."""
    pod_labels: dict[str, str] = {}
    ns_labels: dict[str, str] = {}
    other: dict[str, str] = {}
    reserved: set[str] = set()
    namespace = side.namespace
    for label in side.labels:
        key, _, value = label.partition("=")
        if key.startswith(_NS_LABEL_KEY):
            ns_labels[key[len(_NS_LABEL_KEY) :]] = value
        elif key == f"{_K8S}{CILIUM_NS_LABEL}":
            namespace = namespace or value
        elif key.startswith(_K8S):
            pod_labels[key[len(_K8S) :]] = value
        elif key.startswith("reserved:"):
            reserved.add(key[len("reserved:") :])
        else:
            other[key] = value
    if namespace:
        labels = {NAMESPACE_NAME_LABEL: namespace, **known_namespace_labels.get(namespace, {}), **ns_labels}
        pod = Pod(namespace, "", pod_labels, None)
        return Endpoint(
            pod, None, labels, frozenset(), {**other, **pod_cilium_labels(pod, labels)}, memo_key=side
        )
    entities = {"world" if e in ("world-ipv4", "world-ipv6") else e for e in reserved}
    entities &= IP_ENTITIES
    if not entities:
        entities = {RESERVED_IDENTITIES.get(side.identity, "world")}
    return Endpoint(
        None,
        _ip(side.ip),
        entities=frozenset(entities),
        cilium_labels={f"reserved:{e}": "" for e in entities},
        memo_key=side,
    )


def side_endpoint_of(side: Side, known_namespace_labels: Mapping[str, Mapping[str, str]]) -> Endpoint:
    """The evaluator's Endpoint for one side of a Conversation (as the stream built it for the same key).
    A redacted side has lost its labels: judge conversations read without redaction."""
    return side_endpoint(key_side(side), known_namespace_labels)


def is_cluster_endpoint(labels: Sequence[str], identity: int) -> bool:
    """A side that is one of the cluster's own reserved endpoints (host, remote-node, ...), not the world."""
    reserved = {
        label.partition("=")[0][len("reserved:") :] for label in labels if label.startswith("reserved:")
    }
    if reserved:
        return bool(reserved & CLUSTER_ENDPOINT_ENTITIES)
    return RESERVED_IDENTITIES.get(identity, "world") in CLUSTER_ENDPOINT_ENTITIES


# -- connections ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyConnection:
    """The connection a key belongs to (client -> server) and where Hubble observed it."""

    source: KeySide
    destination: KeySide
    port: int
    protocol: str
    reply: bool
    traffic_direction: int

    @property
    def egress_decides(self) -> bool:
        """Observed as a request leaving its source: the egress decision alone is the verdict there."""
        return not self.reply and self.traffic_direction == TRAFFIC_EGRESS


def key_connection(
    src: KeySide, dst: KeySide, l4_protocol: int, dst_port: int, is_reply: bool | None, traffic_direction: int
) -> KeyConnection | None:
    """A stream key's connection; None when the evaluator cannot judge it (not TCP/UDP/SCTP/ICMP, or no
    port). `dst_port` is the key's (the server port for replies, ICMP's request type, as the sink keys them)."""
    protocol = L4_EVALUATED.get(l4_protocol)
    lowest = 0 if protocol and protocol.startswith("ICMP") else 1  # ICMP type 0 (EchoReply) is a type
    if protocol is None or not lowest <= dst_port <= 65535:
        return None
    reply = bool(is_reply)
    client, server = (dst, src) if reply else (src, dst)
    return KeyConnection(client, server, dst_port, protocol, reply, traffic_direction)


def conversation_key_connection(conv: Conversation, traffic_direction: int | None = None) -> KeyConnection | None:
    """A Conversation's connection (already client -> server), observed where the conversation says
    (`traffic_direction` overrides it; 0: unknown, the connection's verdict decides). None when not evaluable."""
    lowest = 0 if conv.protocol.startswith("ICMP") else 1  # ICMP type 0 (EchoReply) is a type
    if conv.protocol not in EVALUATED_PROTOCOLS or not lowest <= conv.port <= 65535:
        return None
    direction = conv.traffic_direction if traffic_direction is None else traffic_direction
    return KeyConnection(
        key_side(conv.source), key_side(conv.destination), conv.port, conv.protocol, False, direction
    )


def conversation_connection(
    conv: Conversation, known_namespace_labels: Mapping[str, Mapping[str, str]]
) -> Connection | None:
    """The evaluator's Connection for a Conversation (None for protocols the evaluator does not judge:
    ICMP and others, or no port); `known_namespace_labels` is the policy set's `namespace_labels`."""
    conn = conversation_key_connection(conv)
    if conn is None:
        return None
    return Connection(
        side_endpoint(conn.source, known_namespace_labels),
        side_endpoint(conn.destination, known_namespace_labels),
        conn.port,
        conn.protocol,
    )


# -- deciding ---------------------------------------------------------------------------------------


def policy_evaluator(policy_set: PolicySet) -> PolicyEvaluator:
    """The evaluator of a cluster's policy set (schemas.inventory.PolicySet). Raises EvaluatorInputError."""
    return PolicyEvaluator(
        policy_set.namespace_labels,
        [],
        policy_set.policies,
        policy_set.engine,  # type: ignore[arg-type]
        enforcement_mode=policy_set.enforcement_mode,  # type: ignore[arg-type]
    )


def set_decision(
    policy_set: PolicySet, egress: DirectionDecision, ingress: DirectionDecision, *, egress_decides: bool
) -> SetDecision:
    """The stored answer of one set: the deciding direction's verdict and drop reason, both directions'
    attribution."""
    decider = egress if egress_decides or not egress.allowed else ingress
    e_policy, e_version = _attribution(egress, policy_set)
    i_policy, i_version = _attribution(ingress, policy_set)
    return SetDecision(
        verdict=FORWARDED if decider.allowed else DROPPED,
        drop_reason=0 if decider.allowed else decider.drop_reason,
        egress_verdict=FORWARDED if egress.allowed else DROPPED,
        egress_policy=e_policy,
        egress_rule=egress.rule,
        egress_version=e_version,
        ingress_verdict=FORWARDED if ingress.allowed else DROPPED,
        ingress_policy=i_policy,
        ingress_rule=ingress.rule,
        ingress_version=i_version,
        revision=policy_set.revision,
    )


def _attribution(decision: DirectionDecision, policy_set: PolicySet) -> tuple[str, int]:
    policy = decision.policy.key if decision.policy else ""
    origin = policy_set.rendered_from.get(policy)
    return policy, origin.version if origin else 0


@dataclass
class _Slot:
    revision: int
    policy_set: PolicySet  # held so an identity-keyed slot's id() stays valid
    evaluator: PolicyEvaluator | None
    endpoints: dict[KeySide, Endpoint] = field(default_factory=dict)
    decisions: dict[KeyConnection, SetDecision] = field(default_factory=dict)


class EvaluatorCache:
    """Evaluators built once per policy set, with the endpoints and decisions they produced.

    A slot is named by the caller: the stream uses (cluster, "desired"|"staged") and reuses a slot while the
    set's revision is unchanged (a new revision starts the slot over); without a name, the slot is the
    PolicySet object itself (what-if's scratch sets have no revisions of their own)."""

    def __init__(self) -> None:
        self._slots: dict[Hashable, _Slot] = {}
        self.built = 0  # evaluators built
        self.evaluations = 0  # connections judged by an evaluator
        self.hits = 0  # connections answered from the decision memo

    def _slot(self, policy_set: PolicySet, name: Hashable | None) -> _Slot:
        key = (_BY_IDENTITY, id(policy_set)) if name is None else name
        slot = self._slots.get(key)
        if slot is not None and (
            slot.policy_set is policy_set if name is None else slot.revision == policy_set.revision
        ):
            return slot
        self.built += 1
        if name is None and len(self._slots) >= MAX_SLOTS:
            # A long-lived cache fed many scratch sets: forget those (named slots are one per cluster and set).
            for old in [k for k in self._slots if isinstance(k, tuple) and k[:1] == (_BY_IDENTITY,)]:
                del self._slots[old]
        try:
            evaluator: PolicyEvaluator | None = policy_evaluator(policy_set)
        except EvaluatorInputError as exc:
            log.error("policy set %s revision %d cannot be evaluated: %s", key, policy_set.revision, exc)
            evaluator = None
        slot = self._slots[key] = _Slot(policy_set.revision, policy_set, evaluator)
        return slot

    def evaluator(self, policy_set: PolicySet, name: Hashable | None = None) -> PolicyEvaluator | None:
        """The set's evaluator (None when its objects cannot be evaluated: logged once per slot)."""
        return self._slot(policy_set, name).evaluator

    def decide_key(
        self, policy_set: PolicySet, conn: KeyConnection | None, name: Hashable | None = None
    ) -> SetDecision:
        """One set's decision for one key's connection (memoized per slot)."""
        if conn is None or policy_set.error:
            return SetDecision(revision=policy_set.revision)
        slot = self._slot(policy_set, name)
        hit = slot.decisions.get(conn)
        if hit is not None:
            self.hits += 1
            return hit
        if slot.evaluator is None:
            decision = SetDecision(revision=policy_set.revision)
        else:
            endpoints = slot.endpoints
            if len(endpoints) > CACHE_LIMIT:
                endpoints.clear()
            sides = []
            for side in (conn.source, conn.destination):
                endpoint = endpoints.get(side)
                if endpoint is None:
                    endpoint = endpoints[side] = side_endpoint(side, policy_set.namespace_labels)
                sides.append(endpoint)
            connection = Connection(sides[0], sides[1], conn.port, conn.protocol)
            decision = set_decision(
                policy_set,
                slot.evaluator.decide(connection, "egress"),
                slot.evaluator.decide(connection, "ingress"),
                egress_decides=conn.egress_decides,
            )
            self.evaluations += 1
        if len(slot.decisions) > CACHE_LIMIT:
            slot.decisions.clear()
        slot.decisions[conn] = decision
        return decision


def decide(
    conv: Conversation,
    policy_set: PolicySet | None,
    evaluators: EvaluatorCache | None = None,
    *,
    traffic_direction: int | None = None,
) -> SetDecision:
    """What `policy_set` decides for a conversation, by the stream's rules: equal to what the stream stored
    for the same key under the same set (SetDecision() when there is no set; verdict 0 with the set's
    revision when the set or the protocol cannot be evaluated). The verdict is the decision at the point
    Hubble observed the conversation (`conv.traffic_direction`: egress alone at EGRESS; at INGRESS or
    unknown, the connection's); pass `traffic_direction=TRAFFIC_UNKNOWN` for the connection's verdict
    whatever the point (what-if: "would this connection be denied"). Pass one EvaluatorCache for many
    conversations: each policy set's evaluator is then built once and each connection judged once."""
    if policy_set is None:
        return SetDecision()
    cache = evaluators if evaluators is not None else EvaluatorCache()
    return cache.decide_key(policy_set, conversation_key_connection(conv, traffic_direction))

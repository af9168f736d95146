"""Compiled policy parts: peer and port matchers, rules, and the policy sections that hold them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from policy_engine.evaluation.model import (
    CLUSTER_ENTITIES,
    K8S_PROTOCOLS,
    Connection,
    Direction,
    Endpoint,
    Engine,
    IPNetwork,
    PolicyRef,
)
from policy_engine.selectors import LabelSelector


class Notes(list[str]):
    def add(self, note: str) -> None:
        if note not in self:
            self.append(note)


class PeerMatcher(Protocol):
    def matches(self, peer: Endpoint, notes: Notes) -> bool: ...


@dataclass(frozen=True)
class K8sSelectorPeer:
    """A NetworkPolicyPeer with podSelector and/or namespaceSelector (both given: AND)."""

    policy_namespace: str
    pod_selector: LabelSelector | None
    namespace_selector: LabelSelector | None

    def matches(self, peer: Endpoint, notes: Notes) -> bool:
        if peer.pod is None:
            return False
        if self.namespace_selector is None:
            in_namespace = peer.pod.namespace == self.policy_namespace
        else:
            in_namespace = self.namespace_selector.matches_labels(peer.namespace_labels)
        return in_namespace and (
            self.pod_selector is None or self.pod_selector.matches_labels(peer.pod.labels)
        )


@dataclass(frozen=True)
class CIDRPeer:
    """ipBlock (NetworkPolicy) or fromCIDR/fromCIDRSet/toCIDR/toCIDRSet (Cilium), with except."""

    network: IPNetwork
    excepts: tuple[IPNetwork, ...]
    engine: Engine
    field_name: str

    def matches(self, peer: Endpoint, notes: Notes) -> bool:
        if peer.ip is None or peer.ip not in self.network or any(peer.ip in e for e in self.excepts):
            return False
        if self.engine == "cilium" and not peer.is_world:
            notes.add(
                f"{self.field_name} {self.network} contains {peer.ip} ({peer.describe()}), but Cilium does not "
                "apply CIDR rules to pods or nodes (cilium#9209); select them by labels or entities"
            )
            return False
        if self.engine == "kubernetes" and peer.pod is not None:
            notes.add(
                f"ipBlock {self.network} matched the pod IP of {peer.pod.ref}: Kubernetes leaves ipBlock on pod "
                "IPs implementation-defined; this evaluator follows the upstream e2e suite and matches it "
                "(Cilium would not)"
            )
        return True


@dataclass(frozen=True)
class CiliumEndpointPeer:
    """fromEndpoints/toEndpoints selector, already scoped to a namespace as Cilium does."""

    selector: LabelSelector

    def matches(self, peer: Endpoint, notes: Notes) -> bool:
        # Selectors match identity labels, reserved identities included: a NotIn/DoesNotExist on the
        # namespace label also selects world or host, which carry no namespace label.
        if not self.selector.matches(peer.cilium_label):
            return False
        if peer.pod is None and not any(k.startswith("reserved:") for k in self.selector.keys()):
            notes.add(
                f"endpoint selector {self.selector.describe()} also matches {peer.describe()}: reserved "
                "identities carry no namespace label, so NotIn/DoesNotExist selects them"
            )
        return True


@dataclass(frozen=True)
class EntityPeer:
    entity: str

    def matches(self, peer: Endpoint, notes: Notes) -> bool:
        e = self.entity
        if e == "all":
            return True
        if e == "none":
            return False
        if e == "cluster":
            return peer.pod is not None or bool(peer.entities & CLUSTER_ENTITIES)
        if e in ("world-ipv4", "world-ipv6"):
            version = 4 if e == "world-ipv4" else 6
            return peer.is_world and peer.ip is not None and peer.ip.version == version
        return peer.pod is None and e in peer.entities


@dataclass(frozen=True)
class UnevaluablePeer:
    """Peers the evaluator has no data for (toFQDNs, toServices, fromNodes, ...): they match nothing."""

    field_name: str

    def matches(self, peer: Endpoint, notes: Notes) -> bool:
        notes.add(f"{self.field_name} cannot be evaluated without runtime data; treated as matching nothing")
        return False


@dataclass(frozen=True)
class PortMatcher:
    """A port entry (toPorts, NetworkPolicy ports) or an ICMP type (Cilium icmps: protocol ICMP or ICMPv6,
    port the type)."""

    protocol: str  # TCP/UDP/SCTP, ICMP/ICMPv6; ANY for Cilium's "any protocol"
    port: int | None = None  # None: every port of the protocol
    end_port: int | None = None
    name: str | None = None  # a named port, resolved on the destination pod

    def matches(self, conn: Connection) -> bool:
        # Cilium expands ANY to TCP, UDP and SCTP (pkg/policy/rule.go): a port rule never admits ICMP.
        if not (self.protocol == conn.protocol or (self.protocol == "ANY" and conn.protocol in K8S_PROTOCOLS)):
            return False
        if self.name is not None:
            dest = conn.destination.pod
            if dest is None:
                return False
            return any(
                cp.name == self.name and cp.port == conn.port and cp.protocol == conn.protocol
                for cp in dest.ports
            )
        if self.port is None:
            return True
        return self.port <= conn.port <= (self.end_port if self.end_port is not None else self.port)


@dataclass(frozen=True)
class CompiledRule:
    deny: bool
    peers: tuple[PeerMatcher, ...] | None  # None: every peer
    ports: tuple[PortMatcher, ...] | None  # None: every port and protocol
    label: str = ""  # where the rule sits in its policy: "ingress[0]", "specs[1].egressDeny[0]"

    def matches(self, conn: Connection, peer: Endpoint, notes: Notes) -> bool:
        if self.ports is not None and not any(p.matches(conn) for p in self.ports):
            return False
        return self.peers is None or any(p.matches(peer, notes) for p in self.peers)


class PodSelection(Protocol):
    def __call__(self, endpoint: Endpoint) -> bool: ...


@dataclass(frozen=True)
class Subject:
    """One policy's section for one direction: which pods it selects, whether it turns default deny on
    for them, and its rules."""

    ref: PolicyRef
    direction: Direction
    selects: PodSelection
    default_deny: bool
    rules: tuple[CompiledRule, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class KnpSelects:
    namespace: str
    selector: LabelSelector

    def __call__(self, endpoint: Endpoint) -> bool:
        pod = endpoint.pod
        return (
            pod is not None and pod.namespace == self.namespace and self.selector.matches_labels(pod.labels)
        )


@dataclass(frozen=True)
class CiliumSelects:
    namespace: str | None  # None for CCNP: cluster-wide
    selector: LabelSelector

    def __call__(self, endpoint: Endpoint) -> bool:
        pod = endpoint.pod
        if pod is None or (self.namespace is not None and pod.namespace != self.namespace):
            return False
        return self.selector.matches(endpoint.cilium_label)



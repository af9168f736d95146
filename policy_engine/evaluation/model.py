"""Constants, input errors and the value types of evaluation: endpoints, connections, verdicts."""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Engine = Literal["kubernetes", "cilium"]
EnforcementMode = Literal["default", "always", "never"]
Direction = Literal["ingress", "egress"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DROP_NONE = 0
DROP_POLICY_DENIED = 133  # no allow rule matched while the endpoint is in default deny
DROP_POLICY_DENY = 181  # an explicit ingressDeny/egressDeny rule matched

ENGINES = ("kubernetes", "cilium")
ENFORCEMENT_MODES = ("default", "always", "never")
K8S_PROTOCOLS = ("TCP", "UDP", "SCTP")
# Connections carry one of these; for ICMP and ICMPv6 the "port" is the ICMP type (0-255).
PROBE_PROTOCOLS = (*K8S_PROTOCOLS, "ICMP", "ICMPv6")
CILIUM_PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP", "ICMPV6", "VRRP", "IGMP", "ANY")

KIND_KNP = "NetworkPolicy"
KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"
POLICY_KINDS = (KIND_KNP, KIND_CNP, KIND_CCNP)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
CILIUM_NS_LABEL = "io.kubernetes.pod.namespace"
CILIUM_NS_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
CILIUM_LABEL_SOURCES = ("k8s", "any", "reserved", "container", "cidr", "fqdn", "unspec", "cilium-generated")

# Cilium reserved entities (CRD enum plus world-ipv4/-ipv6 known to the code). `cluster` covers every
# pod of the cluster plus these identities (pkg/policy/api/entity.go InitEntities).
ENTITIES = (
    "all",
    "world",
    "world-ipv4",
    "world-ipv6",
    "cluster",
    "host",
    "init",
    "ingress",
    "unmanaged",
    "remote-node",
    "health",
    "none",
    "kube-apiserver",
)
CLUSTER_ENTITIES = frozenset(
    {"host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"}
)
IP_ENTITIES = frozenset(ENTITIES) - {"all", "cluster", "none", "world-ipv4", "world-ipv6"}


class EvaluatorInputError(ValueError):
    """Bad cluster, policy or probe input; the message names the field and the value at fault."""


@dataclass(frozen=True)
class ContainerPort:
    name: str | None
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: IPAddress | None
    ports: tuple[ContainerPort, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod, or an IP that is not a pod (world, or a reserved entity)."""

    pod: Pod | None
    ip: IPAddress | None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    entities: frozenset[str] = frozenset()  # for non-pod IPs: world, host, remote-node, ...
    cilium_labels: Mapping[str, str] = field(default_factory=dict)
    # Set by callers that judge many connections of the same endpoints (the flow enricher): equal keys
    # promise equal endpoints, so which policies select the endpoint is worked out once per key.
    memo_key: Hashable | None = field(default=None, compare=False)

    @property
    def is_world(self) -> bool:
        return self.pod is None and "world" in self.entities

    def describe(self) -> str:
        if self.pod is not None:
            return self.pod.ref
        return f"{self.ip} ({', '.join(sorted(self.entities))})"

    def cilium_label(self, key: str) -> str | None:
        """Look up a Cilium selector key: `k8s:app` needs source k8s, `app` / `any:app` any source."""
        source, bare = split_label_source(key)
        if source != "any":
            return self.cilium_labels.get(f"{source}:{bare}")
        for src in CILIUM_LABEL_SOURCES:
            value = self.cilium_labels.get(f"{src}:{bare}")
            if value is not None:
                return value
        return None


@dataclass(frozen=True)
class Connection:
    source: Endpoint
    destination: Endpoint
    port: int  # the server port; for ICMP and ICMPv6 the ICMP type
    protocol: str = "TCP"  # one of PROBE_PROTOCOLS ("ICMPv4", Hubble's name, is read as ICMP)


@dataclass(frozen=True)
class PolicyRef:
    kind: str
    namespace: str  # empty for CiliumClusterwideNetworkPolicy, as in Hubble's Policy message
    name: str

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"

    def attribution(self, direction: str) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "direction": direction}

    @property
    def key(self) -> str:
        """"Kind/namespace/name" (namespace empty for clusterwide policies): the stored attribution."""
        return f"{self.kind}/{self.namespace}/{self.name}"


# Rule names of decisions no rule of a policy made.
RULE_DEFAULT_DENY = "default-deny"
RULE_ALLOW_LOCALHOST = "allow-localhost"


@dataclass(frozen=True)
class DirectionDecision:
    """What one direction's enforcement point decides, and which policy rule decided it: the first
    matching deny rule, else the first matching allow rule, else default deny (policy: the first that
    isolates the endpoint; none under enforcement mode always). No policy and no rule: not isolated."""

    direction: Direction
    allowed: bool
    drop_reason: int = 0
    policy: PolicyRef | None = None
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "drop_reason": self.drop_reason,
            "policy": self.policy.key if self.policy else "",
            "rule": self.rule,
        }


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    allowed_by: list[dict[str, str]]
    denied_by: list[dict[str, str]]
    reason: str
    drop_reason: int = DROP_NONE
    notes: list[str] = field(default_factory=list)
    denied_direction: str | None = None
    # Policies that put the dropping endpoint into default deny. Hubble attributes nothing for 133
    # drops (only 181 fills *_denied_by), so these are reported separately.
    isolated_by: list[dict[str, str]] = field(default_factory=list)
    # Per direction, the rule that decided (ingress is None when egress already dropped).
    egress: DirectionDecision | None = None
    ingress: DirectionDecision | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "allowed_by": self.allowed_by,
            "denied_by": self.denied_by,
            "reason": self.reason,
            "drop_reason": self.drop_reason,
            "isolated_by": self.isolated_by,
            "notes": self.notes,
            "egress": self.egress.to_dict() if self.egress else None,
            "ingress": self.ingress.to_dict() if self.ingress else None,
        }



# -------------------------------------------------------------------------------------- label helpers


def split_label_source(key: str) -> tuple[str, str]:
    source, sep, bare = key.partition(":")
    if sep and source in CILIUM_LABEL_SOURCES:
        return source, bare
    return "any", key


def pod_cilium_labels(pod: Pod, namespace_labels: Mapping[str, str]) -> dict[str, str]:
    """The labels of a pod's Cilium security identity (pkg/k8s/utils, identity labels)."""
    labels = {f"k8s:{k}": v for k, v in pod.labels.items()}
    labels[f"k8s:{CILIUM_NS_LABEL}"] = pod.namespace
    for k, v in namespace_labels.items():
        labels[f"k8s:{CILIUM_NS_LABELS_PREFIX}{k}"] = v
    return labels


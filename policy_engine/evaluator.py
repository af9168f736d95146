"""The policy evaluator: the verdict of one L4 connection under a cluster's policy set, with attribution.

Pure logic: it takes namespaces, pods and policy objects (Kubernetes NetworkPolicy, CiliumNetworkPolicy,
CiliumClusterwideNetworkPolicy as plain dicts, as they appear in YAML) and answers, for a connection,
whether it is allowed, which policies allowed it on egress and on ingress, or which policy (or default
deny) dropped it, with Cilium's drop reason (133 POLICY_DENIED, 181 POLICY_DENY).

Both policy families compile to one internal form: a `Subject` (a policy section that selects pods in one
direction and may switch them into default deny) holding `CompiledRule`s (allow or deny; peers; ports).
The enforcement engine decides the few places where semantics differ:

- `kubernetes` (the primary CNI enforces): only NetworkPolicy is enforced; Cilium objects are ignored
  (and a note says so). `ipBlock` matches any IP, pod IPs included: the Kubernetes docs call ipBlock
  "typically cluster-external" but leave pod IPs implementation-defined, and the upstream e2e suite
  ("should allow egress access to server in CIDR block") expects pod IPs to match, so we follow it.
- `cilium`: NetworkPolicy, CNP and CCNP all add to each endpoint's policy; deny rules override allow;
  default deny is per direction and honours `enableDefaultDeny`; `ipBlock` and CIDR rules never match
  pods or nodes (cilium#9209, "CIDR rules do not apply to Cilium-managed endpoints"); traffic from the
  local host is allowed on ingress (agent default `--allow-localhost=always`).

Loopback (a pod connecting to itself) is evaluated like any other connection; implementations differ
(kubernetes#95879) and the verdict carries a note.

Each direction also reports the rule that decided (`DirectionDecision`): the first matching deny rule,
else the first matching allow rule, named by its place in the policy ("ingress[0]", "egressDeny[1]",
"specs[1].egress[0]"), else "default-deny" (attributed to a policy that only isolates, such as an empty
`{}` rule or a rule-less NetworkPolicy, else to the first that isolates) or "allow-localhost". The flow
enricher (streams.verdicts) stores these per flow; `policy check` prints them as `egress` and `ingress`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from policy_engine.selectors import LabelSelector, Requirement, SelectorError, parse_selector

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
PROBE_PROTOCOLS = ("TCP", "UDP", "SCTP")
K8S_PROTOCOLS = ("TCP", "UDP", "SCTP")
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


# ---------------------------------------------------------------------------------------------- model


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
    port: int
    protocol: str = "TCP"


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


# ------------------------------------------------------------------------------------------ matchers


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
    protocol: str  # TCP/UDP/SCTP...; ANY for Cilium's "any protocol"
    port: int | None = None  # None: every port of the protocol
    end_port: int | None = None
    name: str | None = None  # a named port, resolved on the destination pod

    def matches(self, conn: Connection) -> bool:
        if self.protocol not in ("ANY", conn.protocol):
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


# ------------------------------------------------------------------------------------------- parsing


def _require(obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj or obj[key] is None:
        raise EvaluatorInputError(f"{path}.{key}: missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise EvaluatorInputError(f"{path}.{key}: unexpected value {value!r}")
    return value


def _list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise EvaluatorInputError(f"{path}.{key}: expected a list, got {value!r}")
    return value


def _selector(obj: Any, path: str) -> LabelSelector:
    try:
        return parse_selector(obj, path)
    except SelectorError as exc:
        raise EvaluatorInputError(str(exc)) from None


def _network(value: Any, path: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise EvaluatorInputError(f"{path}: {value!r} is not a CIDR") from None


def _labels(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise EvaluatorInputError(f"{path}: labels must map strings to strings, got {value!r}")
    return dict(value)


def _port_number(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise EvaluatorInputError(f"{path}: {value!r} is not a port number (1-65535)")
    return value


def _policy_ref(policy: Mapping[str, Any], path: str) -> PolicyRef:
    kind = policy.get("kind")
    if kind not in POLICY_KINDS:
        raise EvaluatorInputError(f"{path}.kind: {kind!r} is not one of {', '.join(POLICY_KINDS)}")
    metadata = _require(policy, "metadata", path, dict)
    name = _require(metadata, "name", f"{path}.metadata", str)
    namespace = ""
    if kind != KIND_CCNP:
        namespace = _require(metadata, "namespace", f"{path}.metadata", str)
    return PolicyRef(kind, namespace, name)


# --------------------------------------------------------------------- Kubernetes NetworkPolicy compile


def _knp_ports(rule: Mapping[str, Any], path: str) -> tuple[PortMatcher, ...] | None:
    entries = _list(rule, "ports", path)
    if not entries:
        return None  # no ports: all ports
    matchers = []
    for i, entry in enumerate(entries):
        ppath = f"{path}.ports[{i}]"
        if not isinstance(entry, dict):
            raise EvaluatorInputError(f"{ppath}: expected an object, got {entry!r}")
        protocol = entry.get("protocol") or "TCP"  # NetworkPolicyPort.protocol defaults to TCP
        if protocol not in K8S_PROTOCOLS:
            raise EvaluatorInputError(
                f"{ppath}.protocol: {protocol!r} is not one of {', '.join(K8S_PROTOCOLS)}"
            )
        port = entry.get("port")
        end_port = entry.get("endPort")
        if isinstance(port, str) and not port.isdigit():
            if end_port is not None:
                raise EvaluatorInputError(f"{ppath}.endPort: not allowed with the named port {port!r}")
            matchers.append(PortMatcher(protocol, name=port))
            continue
        number = (
            None
            if port is None
            else _port_number(int(port) if isinstance(port, str) else port, f"{ppath}.port")
        )
        if end_port is not None:
            if number is None:
                raise EvaluatorInputError(f"{ppath}.endPort: {end_port!r} given without port")
            end_port = _port_number(end_port, f"{ppath}.endPort")
            if end_port < number:
                raise EvaluatorInputError(f"{ppath}.endPort: {end_port} is below port {number}")
        matchers.append(PortMatcher(protocol, number, end_port))
    return tuple(matchers)


def _knp_peers(
    rule: Mapping[str, Any], key: str, path: str, namespace: str, engine: Engine
) -> tuple[PeerMatcher, ...] | None:
    entries = _list(rule, key, path)
    if not entries:
        return None  # no from/to: every source/destination, in or out of the cluster
    peers: list[PeerMatcher] = []
    for i, entry in enumerate(entries):
        ppath = f"{path}.{key}[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise EvaluatorInputError(
                f"{ppath}: a peer needs podSelector, namespaceSelector or ipBlock, got {entry!r}"
            )
        unknown = set(entry) - {"podSelector", "namespaceSelector", "ipBlock"}
        if unknown:
            raise EvaluatorInputError(f"{ppath}: unknown peer field {sorted(unknown)[0]!r}")
        if "ipBlock" in entry:
            if "podSelector" in entry or "namespaceSelector" in entry:
                raise EvaluatorInputError(
                    f"{ppath}.ipBlock: may not be combined with podSelector/namespaceSelector"
                )
            block = _require(entry, "ipBlock", ppath, dict)
            network = _network(_require(block, "cidr", f"{ppath}.ipBlock", str), f"{ppath}.ipBlock.cidr")
            excepts = tuple(
                _network(e, f"{ppath}.ipBlock.except[{j}]")
                for j, e in enumerate(_list(block, "except", f"{ppath}.ipBlock"))
            )
            peers.append(CIDRPeer(network, excepts, engine, "ipBlock"))
            continue
        pod_sel = _selector(entry["podSelector"], f"{ppath}.podSelector") if "podSelector" in entry else None
        ns_sel = (
            _selector(entry["namespaceSelector"], f"{ppath}.namespaceSelector")
            if "namespaceSelector" in entry
            else None
        )
        peers.append(K8sSelectorPeer(namespace, pod_sel, ns_sel))
    return tuple(peers)


def compile_network_policy(policy: Mapping[str, Any], path: str, engine: Engine) -> list[Subject]:
    ref = _policy_ref(policy, path)
    spec = _require(policy, "spec", path, dict)
    spath = f"{path}.spec"
    selects = KnpSelects(
        ref.namespace, _selector(_require(spec, "podSelector", spath, dict), f"{spath}.podSelector")
    )
    types = spec.get("policyTypes")
    if types is None:
        # API defaulting: Ingress always; Egress only when egress rules are present.
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    if not isinstance(types, list) or any(t not in ("Ingress", "Egress") for t in types):
        raise EvaluatorInputError(f"{spath}.policyTypes: {types!r} must list Ingress and/or Egress")
    subjects = []
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        notes: tuple[str, ...] = ()
        if direction.capitalize() not in types:
            if spec.get(direction):
                notes = (
                    f"{ref.describe()} has {direction} rules but policyTypes {types} omits it; they are ignored",
                )
                subjects.append(Subject(ref, direction, selects, False, (), notes))  # type: ignore[arg-type]
            continue
        rules = []
        for i, rule in enumerate(_list(spec, direction, spath)):
            rpath = f"{spath}.{direction}[{i}]"
            if not isinstance(rule, dict):
                raise EvaluatorInputError(f"{rpath}: expected an object, got {rule!r}")
            rules.append(
                CompiledRule(
                    False,
                    _knp_peers(rule, peer_key, rpath, ref.namespace, engine),
                    _knp_ports(rule, rpath),
                    f"{direction}[{i}]",
                )
            )
        subjects.append(Subject(ref, direction, selects, True, tuple(rules), notes))  # type: ignore[arg-type]
    return subjects


# ----------------------------------------------------------------------------- Cilium policy compile


def _scoped_endpoint_selector(
    selector: LabelSelector, namespace: str | None
) -> tuple[LabelSelector, str | None]:
    """Cilium's getEndpointSelector: CNP peer selectors without a namespace label are limited to the
    policy's namespace; CCNP ones to namespaced (Cilium-managed) pods. Reserved-label selectors stay as is."""
    keys = [split_label_source(k) for k in selector.keys()]
    if any(source == "reserved" for source, _ in keys):
        return selector, None
    if any(bare == CILIUM_NS_LABEL and source in ("k8s", "any") for source, bare in keys):
        return selector, None
    if namespace is None:
        return selector.with_requirement(Requirement(f"k8s:{CILIUM_NS_LABEL}", "Exists", frozenset())), None
    note = None
    if any(bare.startswith(CILIUM_NS_LABELS_PREFIX) for _, bare in keys):
        note = (
            f"namespace-label selectors ({CILIUM_NS_LABELS_PREFIX}*) in a CiliumNetworkPolicy do not widen it "
            f"beyond namespace {namespace}; use a CiliumClusterwideNetworkPolicy"
        )
    return selector.with_requirement(
        Requirement(f"k8s:{CILIUM_NS_LABEL}", "In", frozenset([namespace]))
    ), note


def _cilium_ports(rule: Mapping[str, Any], path: str) -> tuple[tuple[PortMatcher, ...] | None, list[str]]:
    notes: list[str] = []
    to_ports = _list(rule, "toPorts", path)
    if not to_ports:
        if rule.get("icmps"):
            return (), [f"{path}: an icmps-only rule allows ICMP, not TCP/UDP/SCTP"]
        return None, notes
    matchers: list[PortMatcher] = []
    for i, item in enumerate(to_ports):
        ipath = f"{path}.toPorts[{i}]"
        if not isinstance(item, dict):
            raise EvaluatorInputError(f"{ipath}: expected an object, got {item!r}")
        if item.get("rules"):
            notes.append(
                f"{ipath}.rules: L7 rules are enforced by the proxy; the evaluator decides L3/L4 only"
            )
        ports = _list(item, "ports", ipath)
        if not ports:
            matchers.append(PortMatcher("ANY"))
        for j, entry in enumerate(ports):
            ppath = f"{ipath}.ports[{j}]"
            if not isinstance(entry, dict):
                raise EvaluatorInputError(f"{ppath}: expected an object, got {entry!r}")
            protocol = str(entry.get("protocol") or "ANY").upper()
            if protocol not in CILIUM_PROTOCOLS:
                raise EvaluatorInputError(
                    f"{ppath}.protocol: {entry.get('protocol')!r} is not one of TCP, UDP, SCTP, ANY"
                )
            port = entry.get("port")
            if port is None or str(port) == "0":
                matchers.append(PortMatcher(protocol))
                continue
            text = str(port)
            if not text.isdigit():
                matchers.append(PortMatcher(protocol, name=text))  # endPort is ignored for named ports
                continue
            number = _port_number(int(text), f"{ppath}.port")
            end_port = entry.get("endPort")
            if end_port is not None and end_port != 0:
                end_port = _port_number(end_port, f"{ppath}.endPort")
                if end_port < number:
                    raise EvaluatorInputError(f"{ppath}.endPort: {end_port} is below port {number}")
            else:
                end_port = None
            matchers.append(PortMatcher(protocol, number, end_port))
    return tuple(matchers), notes


def _cilium_rule(
    rule: Mapping[str, Any], path: str, direction: Direction, namespace: str | None, deny: bool, label: str = ""
) -> tuple[CompiledRule, list[str]]:
    side = "from" if direction == "ingress" else "to"
    peers: list[PeerMatcher] = []
    notes: list[str] = []
    has_l3 = False
    for i, sel in enumerate(_list(rule, f"{side}Endpoints", path)):
        has_l3 = True
        scoped, note = _scoped_endpoint_selector(_selector(sel, f"{path}.{side}Endpoints[{i}]"), namespace)
        if note:
            notes.append(note)
        peers.append(CiliumEndpointPeer(scoped))
    for i, cidr in enumerate(_list(rule, f"{side}CIDR", path)):
        has_l3 = True
        peers.append(CIDRPeer(_network(cidr, f"{path}.{side}CIDR[{i}]"), (), "cilium", f"{side}CIDR"))
    for i, entry in enumerate(_list(rule, f"{side}CIDRSet", path)):
        has_l3 = True
        epath = f"{path}.{side}CIDRSet[{i}]"
        if not isinstance(entry, dict):
            raise EvaluatorInputError(f"{epath}: expected an object, got {entry!r}")
        if "cidr" not in entry:
            peers.append(UnevaluablePeer(f"{epath} (cidrGroupRef)"))
            continue
        excepts = tuple(
            _network(e, f"{epath}.except[{j}]") for j, e in enumerate(_list(entry, "except", epath))
        )
        peers.append(CIDRPeer(_network(entry["cidr"], f"{epath}.cidr"), excepts, "cilium", f"{side}CIDRSet"))
    for i, entity in enumerate(_list(rule, f"{side}Entities", path)):
        has_l3 = True
        if entity not in ENTITIES:
            raise EvaluatorInputError(
                f"{path}.{side}Entities[{i}]: {entity!r} is not one of {', '.join(ENTITIES)}"
            )
        peers.append(EntityPeer(entity))
    for key in (f"{side}Requires", f"{side}Groups", f"{side}Nodes", "toFQDNs", "toServices"):
        if rule.get(key) and (key.startswith(side)):
            has_l3 = True
            peers.append(UnevaluablePeer(f"{path}.{key}"))
    ports, port_notes = _cilium_ports(rule, path)
    notes.extend(port_notes)
    if not has_l3 and ports is None:
        # An empty rule `{}` allows nothing in CNP/CCNP (unlike NetworkPolicy); it only switches
        # the endpoint into default deny.
        notes.append(f"{path}: an empty Cilium rule selects no peer (it only enables default deny)")
        return CompiledRule(deny, (), None, label), notes
    # An L4-only rule (toPorts without from*/to*) applies to every peer, world included.
    return CompiledRule(deny, tuple(peers) if has_l3 else None, ports, label), notes


def compile_cilium_policy(policy: Mapping[str, Any], path: str) -> tuple[list[Subject], list[str]]:
    ref = _policy_ref(policy, path)
    namespace = ref.namespace or None
    specs: list[tuple[str, Any]] = []
    if policy.get("spec") is not None:
        specs.append((f"{path}.spec", policy["spec"]))
    specs.extend((f"{path}.specs[{i}]", s) for i, s in enumerate(_list(policy, "specs", path)))
    if not specs:
        raise EvaluatorInputError(f"{path}.spec: missing (a Cilium policy needs spec or specs)")
    subjects: list[Subject] = []
    policy_notes: list[str] = []
    for spath, spec in specs:
        relative = spath[len(path) + 1 :]  # "spec" or "specs[i]"
        label_prefix = "" if relative == "spec" else f"{relative}."
        if not isinstance(spec, dict):
            raise EvaluatorInputError(f"{spath}: expected an object, got {spec!r}")
        if "nodeSelector" in spec:
            policy_notes.append(f"{ref.describe()}: host policy (nodeSelector) is not evaluated")
            continue
        selects = CiliumSelects(
            namespace, _selector(_require(spec, "endpointSelector", spath, dict), f"{spath}.endpointSelector")
        )
        edd = spec.get("enableDefaultDeny") or {}
        if not isinstance(edd, dict):
            raise EvaluatorInputError(f"{spath}.enableDefaultDeny: expected an object, got {edd!r}")
        for direction in ("ingress", "egress"):
            rules: list[CompiledRule] = []
            notes: list[str] = []
            for deny, key in ((False, direction), (True, f"{direction}Deny")):
                for i, rule in enumerate(_list(spec, key, spath)):
                    rpath = f"{spath}.{key}[{i}]"
                    if not isinstance(rule, dict):
                        raise EvaluatorInputError(f"{rpath}: expected an object, got {rule!r}")
                    compiled, rule_notes = _cilium_rule(
                        rule, rpath, direction, namespace, deny, f"{label_prefix}{key}[{i}]"  # type: ignore[arg-type]
                    )
                    rules.append(compiled)
                    notes.extend(rule_notes)
            explicit = edd.get(direction)
            if explicit is not None and not isinstance(explicit, bool):
                raise EvaluatorInputError(
                    f"{spath}.enableDefaultDeny.{direction}: {explicit!r} is not a boolean"
                )
            # Unset: default deny for each direction that has (allow or deny) rules.
            default_deny = bool(rules) if explicit is None else explicit
            if explicit is False and rules:
                notes.append(f"{ref.describe()} has enableDefaultDeny.{direction}=false: it does not isolate")
            if rules or default_deny:
                subjects.append(Subject(ref, direction, selects, default_deny, tuple(rules), tuple(notes)))  # type: ignore[arg-type]
    return subjects, policy_notes


# ------------------------------------------------------------------------------------------ evaluator


@dataclass(frozen=True)
class _DirectionVerdict:
    allowed: bool
    allowed_by: tuple[PolicyRef, ...] = ()
    denied_by: tuple[PolicyRef, ...] = ()
    isolated_by: tuple[PolicyRef, ...] = ()
    drop_reason: int = DROP_NONE
    why: str = ""
    policy: PolicyRef | None = None  # the deciding policy and rule (DirectionDecision)
    rule: str = ""

    def decision(self, direction: Direction) -> DirectionDecision:
        return DirectionDecision(direction, self.allowed, self.drop_reason, self.policy, self.rule)


def _default_deny_owner(subjects: Iterable[Subject]) -> PolicyRef | None:
    """The policy a default-deny drop is attributed to: one that only isolates (its rules, if any, are
    empty Cilium rules: a default-deny policy by intent), else the first that isolates."""
    isolating = [s for s in subjects if s.default_deny]
    pure = [s for s in isolating if all(r.peers == () and r.ports is None for r in s.rules)]
    chosen = pure or isolating
    return chosen[0].ref if chosen else None


def _unique(refs: Iterable[PolicyRef]) -> tuple[PolicyRef, ...]:
    return tuple(dict.fromkeys(refs))


def _refs_text(refs: Iterable[PolicyRef]) -> str:
    return ", ".join(r.describe() for r in refs)


class PolicyEvaluator:
    """Verdicts for connections in one cluster under one policy set and enforcement engine."""

    def __init__(
        self,
        namespaces: Mapping[str, Mapping[str, str]],
        pods: Iterable[Pod],
        policies: Iterable[Mapping[str, Any]],
        engine: Engine = "kubernetes",
        *,
        entities: Mapping[str, Iterable[str]] | None = None,
        enforcement_mode: EnforcementMode = "default",
    ) -> None:
        if engine not in ENGINES:
            raise EvaluatorInputError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
        if enforcement_mode not in ENFORCEMENT_MODES:
            raise EvaluatorInputError(
                f"policyEnforcementMode: {enforcement_mode!r} is not one of {', '.join(ENFORCEMENT_MODES)}"
            )
        self.engine: Engine = engine
        self.enforcement_mode: EnforcementMode = enforcement_mode
        # The API server labels every namespace with its name; selectors in the wild rely on it.
        self.namespaces = {
            name: {NAMESPACE_NAME_LABEL: name, **labels} for name, labels in namespaces.items()
        }
        self.pods: dict[str, Pod] = {}
        self.pods_by_ip: dict[IPAddress, Pod] = {}
        for pod in pods:
            if pod.namespace not in self.namespaces:
                raise EvaluatorInputError(f"pod {pod.ref}: namespace {pod.namespace!r} is not in namespaces")
            if pod.ref in self.pods:
                raise EvaluatorInputError(f"pod {pod.ref}: listed twice")
            self.pods[pod.ref] = pod
            if pod.ip is not None:
                self.pods_by_ip[pod.ip] = pod
        self.ip_entities: dict[IPAddress, frozenset[str]] = {}
        for ip_text, names in (entities or {}).items():
            ip = _parse_ip(ip_text, f"entities.{ip_text}")
            names = [names] if isinstance(names, str) else list(names)
            for name in names:
                if name not in IP_ENTITIES:
                    raise EvaluatorInputError(
                        f"entities.{ip_text}: {name!r} is not one of {', '.join(sorted(IP_ENTITIES))}"
                    )
            self.ip_entities[ip] = frozenset(names)
        self.subjects: list[Subject] = []
        self._selection_memo: dict[tuple[Hashable, str], list[Subject]] = {}
        self.global_notes: list[str] = []
        ignored: list[PolicyRef] = []
        for i, policy in enumerate(policies):
            path = f"policies[{i}]"
            if not isinstance(policy, dict):
                raise EvaluatorInputError(f"{path}: expected a policy object, got {policy!r}")
            if policy.get("kind") == KIND_KNP:
                self.subjects.extend(compile_network_policy(policy, path, engine))
                continue
            subjects, notes = compile_cilium_policy(policy, path)  # validates even when ignored
            if engine == "cilium":
                self.subjects.extend(subjects)
                self.global_notes.extend(notes)
            else:
                ignored.append(_policy_ref(policy, path))
        if ignored:
            self.global_notes.append(
                f"engine kubernetes does not enforce Cilium policies; ignored: {_refs_text(ignored)}"
            )

    # -- endpoints

    def endpoint(self, ref: str, path: str = "endpoint") -> Endpoint:
        """Resolve "ns/pod" or an IP address (a pod's IP resolves to that pod)."""
        if not isinstance(ref, str) or not ref:
            raise EvaluatorInputError(f'{path}: {ref!r} is neither "namespace/pod" nor an IP address')
        if "/" in ref and not _looks_like_ip(ref):
            pod = self.pods.get(ref)
            if pod is None:
                raise EvaluatorInputError(f"{path}: unknown pod {ref!r}")
            return self.pod_endpoint(pod)
        ip = _parse_ip(ref, path)
        pod = self.pods_by_ip.get(ip)
        if pod is not None:
            return self.pod_endpoint(pod)
        names = self.ip_entities.get(ip, frozenset({"world"}))
        return Endpoint(None, ip, entities=names, cilium_labels={f"reserved:{n}": "" for n in names})

    def pod_endpoint(self, pod: Pod) -> Endpoint:
        ns_labels = self.namespaces[pod.namespace]
        return Endpoint(pod, pod.ip, ns_labels, frozenset(), pod_cilium_labels(pod, ns_labels))

    # -- verdicts

    def check(self, source: str, destination: str, port: int, protocol: str = "TCP") -> Verdict:
        conn = Connection(self.endpoint(source, "from"), self.endpoint(destination, "to"), port, protocol)
        return self.evaluate(conn)

    def evaluate(self, conn: Connection) -> Verdict:
        if conn.protocol not in PROBE_PROTOCOLS:
            raise EvaluatorInputError(
                f"protocol: {conn.protocol!r} is not one of {', '.join(PROBE_PROTOCOLS)}"
            )
        _port_number(conn.port, "port")
        notes = Notes(self.global_notes)
        src, dst = conn.source, conn.destination
        if src.pod is not None and src.pod == dst.pod:
            notes.add(
                "loopback (a pod to itself): evaluated as any other connection; CNIs differ (kubernetes#95879)"
            )
        if self.engine == "cilium" and conn.protocol == "SCTP":
            notes.add("Cilium enforces SCTP only with sctp.enabled=true (v1.16 lists SCTP as unsupported)")
        if self.engine == "cilium" and self.enforcement_mode == "never":
            return Verdict(
                True, [], [], "allowed: Cilium policy enforcement mode is never", notes=list(notes),
                egress=DirectionDecision("egress", True), ingress=DirectionDecision("ingress", True),
            )
        egress = self._direction(conn, "egress", notes)
        if not egress.allowed:
            return self._denied(conn, "egress", egress, notes)
        ingress = self._direction(conn, "ingress", notes)
        if not ingress.allowed:
            return self._denied(conn, "ingress", ingress, notes, egress)
        allowed_by = [r.attribution("egress") for r in egress.allowed_by]
        allowed_by += [r.attribution("ingress") for r in ingress.allowed_by]
        return Verdict(
            True, allowed_by, [], f"allowed: {egress.why}; {ingress.why}", notes=list(notes),
            egress=egress.decision("egress"), ingress=ingress.decision("ingress"),
        )

    def decide(self, conn: Connection, direction: Direction) -> DirectionDecision:
        """One direction's decision on its own (the flow enricher evaluates both directions of every
        key, where `evaluate` stops at an egress drop). Same rules, no notes."""
        if conn.protocol not in PROBE_PROTOCOLS:
            raise EvaluatorInputError(
                f"protocol: {conn.protocol!r} is not one of {', '.join(PROBE_PROTOCOLS)}"
            )
        _port_number(conn.port, "port")
        if self.engine == "cilium" and self.enforcement_mode == "never":
            return DirectionDecision(direction, True)
        return self._direction(conn, direction, Notes()).decision(direction)

    def _denied(
        self,
        conn: Connection,
        direction: Direction,
        result: _DirectionVerdict,
        notes: Notes,
        egress: _DirectionVerdict | None = None,
    ) -> Verdict:
        return Verdict(
            False,
            [],
            [r.attribution(direction) for r in result.denied_by],
            f"denied: {result.why}",
            result.drop_reason,
            list(notes),
            direction,
            [r.attribution(direction) for r in result.isolated_by],
            egress=(egress or result).decision("egress"),
            ingress=result.decision("ingress") if direction == "ingress" else None,
        )

    def _selecting(self, endpoint: Endpoint, direction: Direction) -> list[Subject]:
        """The policy sections that select `endpoint` for `direction` (memoized by its memo_key)."""
        if endpoint.memo_key is None:
            return [s for s in self.subjects if s.direction == direction and s.selects(endpoint)]
        key = (endpoint.memo_key, direction)
        subjects = self._selection_memo.get(key)
        if subjects is None:
            if len(self._selection_memo) > 100_000:
                self._selection_memo.clear()
            subjects = [s for s in self.subjects if s.direction == direction and s.selects(endpoint)]
            self._selection_memo[key] = subjects
        return subjects

    def _direction(self, conn: Connection, direction: Direction, notes: Notes) -> _DirectionVerdict:
        subject_ep, peer = (
            (conn.source, conn.destination) if direction == "egress" else (conn.destination, conn.source)
        )
        what = f"{direction} {'from' if direction == 'egress' else 'to'} {subject_ep.describe()}"
        flow = f"{conn.protocol}/{conn.port} {'to' if direction == 'egress' else 'from'} {peer.describe()}"
        if subject_ep.pod is None:
            return _DirectionVerdict(True, why=f"{what}: not a pod, no {direction} policy applies")
        subjects = self._selecting(subject_ep, direction)
        for s in subjects:
            for n in s.notes:
                notes.add(n)
        # Every rule is matched (matching adds notes); the first match in policy order is the decider.
        denying = [(s.ref, r.label) for s in subjects for r in s.rules if r.deny and r.matches(conn, peer, notes)]
        if denying:
            deny = _unique(ref for ref, _ in denying)
            return _DirectionVerdict(
                False,
                denied_by=deny,
                drop_reason=DROP_POLICY_DENY,
                why=f"{what}: {flow} matches a deny rule of {_refs_text(deny)} (drop reason 181 POLICY_DENY)",
                policy=denying[0][0],
                rule=denying[0][1],
            )
        allowing = [
            (s.ref, r.label) for s in subjects for r in s.rules if not r.deny and r.matches(conn, peer, notes)
        ]
        if allowing:
            allow = _unique(ref for ref, _ in allowing)
            return _DirectionVerdict(
                True, allowed_by=allow, why=f"{what} allowed by {_refs_text(allow)}",
                policy=allowing[0][0], rule=allowing[0][1],
            )
        if self.engine == "cilium" and direction == "ingress" and "host" in peer.entities:
            notes.add(
                "Cilium allows traffic from the local host to its endpoints by default (--allow-localhost=always)"
            )
            return _DirectionVerdict(
                True, why=f"{what}: traffic from the local host is always allowed", rule=RULE_ALLOW_LOCALHOST
            )
        isolating = _unique(s.ref for s in subjects if s.default_deny)
        always = self.engine == "cilium" and self.enforcement_mode == "always"
        if isolating or always:
            by = f"isolated by {_refs_text(isolating)}" if isolating else "policy enforcement mode always"
            return _DirectionVerdict(
                False,
                isolated_by=isolating,
                drop_reason=DROP_POLICY_DENIED,
                policy=_default_deny_owner(subjects),
                rule=RULE_DEFAULT_DENY,
                why=f"{what} is in default deny ({by}) and no rule allows {flow} (drop reason 133 POLICY_DENIED)",
            )
        if subjects:
            return _DirectionVerdict(
                True, why=f"{what}: selecting rules do not enable default deny, not isolated"
            )
        return _DirectionVerdict(True, why=f"{what}: no policy selects it for {direction}, not isolated")


# ----------------------------------------------------------------------------------- input documents


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_ip(text: Any, path: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise EvaluatorInputError(f"{path}: {text!r} is not an IP address") from None


def parse_pod(obj: Any, path: str) -> Pod:
    if not isinstance(obj, dict):
        raise EvaluatorInputError(f"{path}: expected a pod object, got {obj!r}")
    namespace = _require(obj, "namespace", path, str)
    name = _require(obj, "name", path, str)
    ip = _parse_ip(obj["ip"], f"{path}.ip") if obj.get("ip") is not None else None
    ports = []
    for i, p in enumerate(_list(obj, "ports", path)):
        ppath = f"{path}.ports[{i}]"
        if not isinstance(p, dict):
            raise EvaluatorInputError(f"{ppath}: expected an object, got {p!r}")
        number = _port_number(p.get("containerPort"), f"{ppath}.containerPort")
        protocol = p.get("protocol") or "TCP"
        if protocol not in K8S_PROTOCOLS:
            raise EvaluatorInputError(
                f"{ppath}.protocol: {protocol!r} is not one of {', '.join(K8S_PROTOCOLS)}"
            )
        port_name = p.get("name")
        if port_name is not None and not isinstance(port_name, str):
            raise EvaluatorInputError(f"{ppath}.name: {port_name!r} is not a string")
        ports.append(ContainerPort(port_name, number, protocol))
    return Pod(namespace, name, _labels(obj.get("labels"), f"{path}.labels"), ip, tuple(ports))


def evaluator_from_document(doc: Mapping[str, Any]) -> PolicyEvaluator:
    """Build an evaluator from the `netwarden policy check` document (namespaces, pods, policies, engine,
    and optionally entities {ip: entity} and policyEnforcementMode)."""
    if not isinstance(doc, dict):
        raise EvaluatorInputError(f"document: expected a JSON object, got {type(doc).__name__}")
    namespaces = _require(doc, "namespaces", "document", dict)
    ns_labels = {str(k): _labels(v, f"namespaces.{k}") for k, v in namespaces.items()}
    pods = [parse_pod(p, f"pods[{i}]") for i, p in enumerate(_list(doc, "pods", "document"))]
    policies = _list(doc, "policies", "document")
    entities = doc.get("entities") or {}
    if not isinstance(entities, dict):
        raise EvaluatorInputError(f"entities: expected an object mapping IP to entity, got {entities!r}")
    return PolicyEvaluator(
        ns_labels,
        pods,
        policies,
        doc.get("engine") or "kubernetes",
        entities=entities,
        enforcement_mode=doc.get("policyEnforcementMode") or "default",
    )

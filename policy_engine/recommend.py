"""Least-privilege policies from observed traffic (pure core: conversations in, netwarden.io/v1 documents out).

For each namespace of the scope, one Policy (scope namespace) with one rule per workload plus a
namespace-wide default deny, and one Assignment placing it on (cluster, namespace). Each workload rule selects
its pods by their stable labels and allows, per direction, exactly the peers and ports its conversations that
passed (whatif.observed_passing: not dropped) used:

- the subject: a side of the namespace, grouped by workload ("kind/name"; pods without one by their label
  set), selected by the labels all its pods share, minus the labels that change per pod or rollout
  (UNSTABLE_LABELS) and Cilium's own (namespace, namespace labels, cluster, service account);
- a peer in the same namespace: its workload's selector; in another namespace: that namespace
  (`k8s:io.kubernetes.pod.namespace` / a namespaceSelector on kubernetes.io/metadata.name: other teams' pod
  labels are theirs to change, and a scoped caller sees them redacted anyway); kube-dns on port 53: the
  kube-dns pods on UDP and TCP 53 (resolvers retry over TCP);
- outside the cluster: the observed IPs as /32 (/128) CIDRs, or the `world` entity past MAX_WORLD_CIDRS
  (IPs unknown, e.g. redacted: `world`); other reserved identities (host, remote-node, kube-apiserver,
  health, ...) as entities in Cilium form, as their IPs in Kubernetes form (which has no entities);
- ports per peer and protocol, consecutive ones merged into ranges (port/endPort); ICMP as `icmps` of the
  observed types in Cilium form; in Kubernetes form, which cannot name ICMP, a rule without ports for those
  peers (with a note).

Peers with the same kind and the same ports share one rule. Cilium form (CiliumNetworkPolicy specs, empty
`{}` rules where a direction saw nothing: default deny, allowing nothing) where Cilium enforces; Kubernetes
form (NetworkPolicy with policyTypes [Ingress, Egress]) where the primary CNI does. The shell validates
every rule against the real schemas (control_plane.validate_policy) before printing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from policy_engine.model import PolicyRule, PolicySpec
from policy_engine.whatif import located, observed_passing
from schemas.conversation import Conversation, Side

Form = Literal["cilium", "kubernetes"]
API_VERSION = "netwarden.io/v1"

# Pod labels that differ between pods of one workload or between its rollouts.
UNSTABLE_LABELS = frozenset({
    "pod-template-hash", "controller-revision-hash", "pod-template-generation",
    "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid", "controller-uid", "batch.kubernetes.io/job-completion-index",
})
# Cilium's identity labels that are not pod labels.
CILIUM_LABEL_PREFIXES = ("io.kubernetes.pod.namespace", "io.cilium.k8s.", "io.cilium.")
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
KUBE_DNS = ("kube-system", (("k8s-app", "kube-dns"),))
DNS_PORT = 53
MAX_WORLD_CIDRS = 16  # per workload and direction; more distinct IPs: the world entity
ICMP_FAMILIES = {"ICMPv4": "IPv4", "ICMPv6": "IPv6"}
L4 = ("TCP", "UDP", "SCTP")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Peer:
    """Who a rule allows. kind: pod (same namespace, by labels), namespace, dns, entity, cidr."""

    kind: str
    labels: Labels = ()
    namespace: str = ""
    value: str = ""  # entity name or CIDR
    ip: str = ""  # an entity's address as a host CIDR, when known (Kubernetes form has no entities)


@dataclass(frozen=True)
class Subject:
    key: str  # workload "kind/name", or "labels:..." for pods without one
    selector: Labels


@dataclass
class _Direction:
    ports: dict[Peer, set[tuple[str, int]]] = field(default_factory=dict)
    world_ips: dict[str, set[tuple[str, int]]] = field(default_factory=dict)

    def add(self, peer: Peer, protocol: str, port: int) -> None:
        self.ports.setdefault(peer, set()).add((protocol, port))


@dataclass(frozen=True)
class Recommendation:
    documents: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()
    conversations: int = 0  # conversations the rules come from

    @property
    def policies(self) -> list[PolicySpec]:
        return [_spec(d) for d in self.documents if d["kind"] == "Policy"]


# -- labels ---------------------------------------------------------------------------------------------


def stable_labels(side: Side) -> Labels:
    """The pod labels a selector may rely on: k8s-source labels minus Cilium's and the per-pod ones."""
    out = []
    for label in side.labels:
        key, _, value = label.partition("=")
        if not key.startswith("k8s:"):
            continue
        key = key[4:]
        if key.startswith(CILIUM_LABEL_PREFIXES) or key in UNSTABLE_LABELS:
            continue
        out.append((key, value))
    return tuple(sorted(out))


def _subject_key(side: Side) -> str:
    if side.workload:
        return side.workload
    return "labels:" + ",".join(f"{k}={v}" for k, v in stable_labels(side))


def subjects_of(conversations: Iterable[Conversation], namespace: str) -> dict[str, Subject]:
    """Workloads of `namespace` seen in the conversations, each selected by the labels all its pods share."""
    shared: dict[str, set[tuple[str, str]]] = {}
    for conv in conversations:
        for side in (conv.source, conv.destination):
            if side.namespace != namespace or side.redacted:
                continue
            key = _subject_key(side)
            labels = set(stable_labels(side))
            shared[key] = shared[key] & labels if key in shared else labels
    return {k: Subject(k, tuple(sorted(v))) for k, v in shared.items()}


# -- the core -------------------------------------------------------------------------------------------


def recommend(
    conversations: Iterable[Conversation],
    cluster: str,
    namespaces: Sequence[str],
    form: Form,
) -> Recommendation:
    """Policies and assignments for `namespaces` of `cluster` from its conversations (any others ignored)."""
    convs = [
        c for c in map(located, conversations)
        if c.cluster == cluster and observed_passing(c)
        and (c.source.namespace in namespaces or c.destination.namespace in namespaces)
    ]
    documents: list[dict[str, Any]] = []
    notes: list[str] = []
    for namespace in sorted(set(namespaces)):
        mine = [c for c in convs if namespace in (c.source.namespace, c.destination.namespace)]
        if not mine:
            notes.append(f"{cluster}/{namespace}: no traffic observed in the window; nothing recommended")
            continue
        spec = _namespace_policy(mine, cluster, namespace, form, notes)
        documents.append(policy_document(spec))
        documents.append({
            "apiVersion": API_VERSION,
            "kind": "Assignment",
            "metadata": {"name": spec.name},
            "spec": {"policy": spec.name, "targets": [{"cluster": cluster, "namespace": namespace}]},
        })
    return Recommendation(tuple(documents), tuple(notes), len(convs))


def _namespace_policy(
    convs: Sequence[Conversation], cluster: str, namespace: str, form: Form, notes: list[str]
) -> PolicySpec:
    subjects = subjects_of(convs, namespace)
    ingress: dict[str, _Direction] = {k: _Direction() for k in subjects}
    egress: dict[str, _Direction] = {k: _Direction() for k in subjects}
    for conv in convs:
        src, dst = conv.source, conv.destination
        if src.namespace == namespace and not src.redacted:
            _observe(egress[_subject_key(src)], dst, conv, namespace, subjects)
        if dst.namespace == namespace and not dst.redacted:
            _observe(ingress[_subject_key(dst)], src, conv, namespace, subjects)
    rules = []
    names: set[str] = set()
    for key in sorted(subjects):
        subject = subjects[key]
        if not subject.selector:
            notes.append(
                f"{cluster}/{namespace}: {key} has no stable labels; its rule selects every pod of the namespace"
            )
        name = _unique(rule_name(key), names)
        build = _cilium_rule if form == "cilium" else _kubernetes_rule
        spec = build(subject, ingress[key], egress[key], namespace, notes, f"{cluster}/{namespace}: {key}")
        rules.append(PolicyRule(name, form, spec))
    default_deny: dict[str, Any] = (
        {"endpointSelector": {}, "ingress": [{}], "egress": [{}]}
        if form == "cilium"
        else {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    )
    rules.append(PolicyRule(_unique("default-deny", names), form, default_deny))
    return PolicySpec(
        policy_name(cluster, namespace),
        "namespace",
        tuple(rules),
        f"Least privilege for {namespace} on {cluster}, recommended from {len(convs)} observed conversation(s).",
        ("cilium",) if form == "cilium" else ("cilium", "kubernetes"),
    )


def _observe(
    direction: _Direction, peer: Side, conv: Conversation, namespace: str, subjects: Mapping[str, Subject]
) -> None:
    protocol, port = conv.protocol, conv.port
    if peer.namespace:
        if peer.namespace == namespace and not peer.redacted:
            direction.add(Peer("pod", labels=subjects[_subject_key(peer)].selector), protocol, port)
        elif (peer.namespace, port) == (KUBE_DNS[0], DNS_PORT) and protocol in ("UDP", "TCP") and (
            peer.redacted or set(KUBE_DNS[1]) <= set(stable_labels(peer))
        ):
            direction.add(Peer("dns"), "UDP", DNS_PORT)
            direction.add(Peer("dns"), "TCP", DNS_PORT)
        else:
            direction.add(Peer("namespace", namespace=peer.namespace), protocol, port)
        return
    entity = peer.reserved or "world"
    if entity.startswith("world"):
        if peer.ip and not _unspecified(peer.ip):
            direction.world_ips.setdefault(peer.ip, set()).add((protocol, port))
        else:
            direction.add(Peer("entity", value="world"), protocol, port)
        return
    ip = peer.ip if peer.ip and not _unspecified(peer.ip) else ""
    direction.add(Peer("entity", value=entity, ip=_host_cidr(ip) if ip else ""), protocol, port)


def _unspecified(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_unspecified
    except ValueError:
        return True


def _host_cidr(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{addr.max_prefixlen}"


def _world_peers(direction: _Direction) -> dict[Peer, set[tuple[str, int]]]:
    ips = direction.world_ips
    if len(ips) > MAX_WORLD_CIDRS:
        merged: set[tuple[str, int]] = set().union(*ips.values())
        return {Peer("entity", value="world"): merged}
    return {Peer("cidr", value=_host_cidr(ip)): ports for ip, ports in ips.items()}


def _peer_ports(
    direction: _Direction, form: Form, notes: list[str], what: str
) -> dict[Peer, set[tuple[str, int]]]:
    """Every peer with its ports; in Kubernetes form reserved identities become their IPs (any IP when
    unknown: NetworkPolicy cannot name them otherwise)."""
    out: dict[Peer, set[tuple[str, int]]] = {}
    for peer, ports in [*direction.ports.items(), *_world_peers(direction).items()]:
        if peer.kind == "entity":
            if form == "cilium":
                peer = Peer("entity", value=peer.value)
            elif peer.ip:
                peer = Peer("cidr", value=peer.ip)
            else:
                if peer.value != "world":
                    notes.append(f"{what}: {peer.value} has no known address; allowed as any address")
                peer = Peer("cidr", value="0.0.0.0/0")
        out.setdefault(peer, set()).update(ports)
    return out


# -- ports ----------------------------------------------------------------------------------------------


def port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ports with consecutive runs merged: [80, 81, 82, 443] -> [(80, 82), (443, 443)]."""
    out: list[tuple[int, int]] = []
    for p in sorted(set(ports)):
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def _grouped(peers: Mapping[Peer, set[tuple[str, int]]]) -> list[tuple[str, tuple[tuple[str, int], ...], list[Peer]]]:
    """Peers of one kind with the same ports share a rule: (kind, ports, peers), in a stable order."""
    groups: dict[tuple[str, tuple[tuple[str, int], ...]], list[Peer]] = {}
    for peer, ports in peers.items():
        groups.setdefault((peer.kind, tuple(sorted(ports))), []).append(peer)
    return [
        (kind, ports, sorted(ps, key=lambda p: (p.namespace, p.labels, p.value)))
        for (kind, ports), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]


def _cilium_ports(ports: Sequence[tuple[str, int]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(toPorts entries, icmps entries)."""
    port_entries: list[dict[str, Any]] = []
    icmp_fields: list[dict[str, Any]] = []
    for protocol in L4:
        numbers = [p for proto, p in ports if proto == protocol and p > 0]
        for first, last in port_ranges(numbers):
            entry: dict[str, Any] = {"port": str(first), "protocol": protocol}
            if last > first:
                entry["endPort"] = last
            port_entries.append(entry)
    for protocol, family in ICMP_FAMILIES.items():
        types = sorted({p for proto, p in ports if proto == protocol})  # the port of ICMP is its type
        icmp_fields += [{"type": t, "family": family} for t in types]
    to_ports = [{"ports": port_entries}] if port_entries else []
    icmps = [{"fields": icmp_fields}] if icmp_fields else []
    return to_ports, icmps


def _kubernetes_ports(ports: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for protocol in L4:
        for first, last in port_ranges(p for proto, p in ports if proto == protocol and p > 0):
            entry: dict[str, Any] = {"protocol": protocol, "port": first}
            if last > first:
                entry["endPort"] = last
            out.append(entry)
    return out


# -- rule bodies ----------------------------------------------------------------------------------------


def _match_labels(labels: Labels) -> dict[str, Any]:
    return {"matchLabels": dict(labels)} if labels else {}


def _cilium_peer(peer: Peer) -> dict[str, Any]:
    if peer.kind == "pod":
        return _match_labels(peer.labels)
    if peer.kind == "namespace":
        return {"matchLabels": {NAMESPACE_LABEL: peer.namespace}}
    # dns
    return {"matchLabels": {NAMESPACE_LABEL: KUBE_DNS[0], **{f"k8s:{k}": v for k, v in KUBE_DNS[1]}}}


def _cilium_section(peers: Mapping[Peer, set[tuple[str, int]]], direction: str, notes: list[str], what: str) -> list[dict[str, Any]]:
    to = "from" if direction == "ingress" else "to"
    rules: list[dict[str, Any]] = []
    for kind, ports, group in _grouped(peers):
        to_ports, icmps = _cilium_ports(ports)
        if kind in ("pod", "namespace", "dns"):
            l3: dict[str, Any] = {f"{to}Endpoints": [_cilium_peer(p) for p in group]}
        elif kind == "entity":
            l3 = {f"{to}Entities": sorted({p.value for p in group})}
        else:
            l3 = {f"{to}CIDRSet": [{"cidr": p.value} for p in group]}
        if to_ports:
            rules.append({**l3, "toPorts": to_ports})
        if icmps:
            rules.append({**l3, "icmps": icmps})
        if not to_ports and not icmps:
            notes.append(f"{what}: {direction} on ports Cilium cannot name ({ports}) left out")
    return rules or [{}]


def _cilium_rule(
    subject: Subject, ingress: _Direction, egress: _Direction, namespace: str, notes: list[str], what: str
) -> dict[str, Any]:
    return {
        "endpointSelector": _match_labels(subject.selector),
        "ingress": _cilium_section(_peer_ports(ingress, "cilium", notes, what), "ingress", notes, what),
        "egress": _cilium_section(_peer_ports(egress, "cilium", notes, what), "egress", notes, what),
    }


def _kubernetes_peer(peer: Peer) -> dict[str, Any]:
    if peer.kind == "pod":
        return {"podSelector": _match_labels(peer.labels)}
    if peer.kind == "namespace":
        return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: peer.namespace}}}
    if peer.kind == "dns":
        return {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: KUBE_DNS[0]}},
            "podSelector": {"matchLabels": dict(KUBE_DNS[1])},
        }
    return {"ipBlock": {"cidr": peer.value}}


def _kubernetes_section(peers: Mapping[Peer, set[tuple[str, int]]], direction: str, notes: list[str], what: str) -> list[dict[str, Any]]:
    key = "from" if direction == "ingress" else "to"
    rules: list[dict[str, Any]] = []
    for _kind, ports, group in _grouped(peers):
        port_entries = _kubernetes_ports(ports)
        selectors = [_kubernetes_peer(p) for p in group]
        if any(p.value == "0.0.0.0/0" for p in group):
            selectors.append({"ipBlock": {"cidr": "::/0"}})
        if port_entries:
            rules.append({key: selectors, "ports": port_entries})
        unsaid = sorted({proto for proto, p in ports if proto not in L4})
        if unsaid:
            # A NetworkPolicy names no ICMP: only a rule without ports lets it through.
            notes.append(f"{what}: {direction} over {', '.join(unsaid)} needs a NetworkPolicy rule without ports "
                         "(every protocol and port of these peers)")
            rules.append({key: selectors})
    return rules


def _kubernetes_rule(
    subject: Subject, ingress: _Direction, egress: _Direction, namespace: str, notes: list[str], what: str
) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": _match_labels(subject.selector), "policyTypes": ["Ingress", "Egress"]}
    ingress_rules = _kubernetes_section(_peer_ports(ingress, "kubernetes", notes, what), "ingress", notes, what)
    egress_rules = _kubernetes_section(_peer_ports(egress, "kubernetes", notes, what), "egress", notes, what)
    if ingress_rules:
        spec["ingress"] = ingress_rules
    if egress_rules:
        spec["egress"] = egress_rules
    return spec


# -- names and documents --------------------------------------------------------------------------------

_NOT_NAME = re.compile(r"[^a-z0-9-]+")


def _name(text: str, limit: int = 63) -> str:
    name = _NOT_NAME.sub("-", text.lower()).strip("-") or "x"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def policy_name(cluster: str, namespace: str) -> str:
    return _name(f"recommended-{namespace}-{cluster}")


def rule_name(subject_key: str) -> str:
    """"Deployment/frontend" -> "frontend"; label-only subjects by their labels."""
    if subject_key.startswith("labels:"):
        return _name(subject_key[len("labels:"):].replace("=", "-").replace(",", "-") or "unlabelled", 40)
    return _name(subject_key.rpartition("/")[2], 40)


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate = f"{name}-{i}"
        i += 1
    taken.add(candidate)
    return candidate


def policy_document(spec: PolicySpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Policy",
        "metadata": {"name": spec.name},
        "spec": {
            "scope": spec.scope,
            "description": spec.description,
            "enforcers": list(spec.enforcers),
            "rules": [{"name": r.name, r.kind: _plain(r.spec)} for r in spec.rules],
        },
    }


def _spec(doc: Mapping[str, Any]) -> PolicySpec:
    s = doc["spec"]
    rules = tuple(
        PolicyRule(r["name"], "cilium" if "cilium" in r else "kubernetes", r["cilium"] if "cilium" in r else r["kubernetes"])
        for r in s["rules"]
    )
    return PolicySpec(doc["metadata"]["name"], s["scope"], rules, s.get("description", ""), tuple(s["enforcers"]))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

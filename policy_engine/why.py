"""Why: for one pair of endpoints and a port, what Hubble saw, what netwarden's sets decide, and the fix.

Pure core (no I/O): the shells (netwarden/commands/why.py, query_api/why_routes.py) read the pair's
conversations and the cluster's inventory, and hand them here.

- The pair: `--from`/`--to` are `NS/NAME` (a workload, or a pod resolved to its workload by the shell), an
  IP, or a reserved identity's name (kube-apiserver, host, world, ...). History is read by conversation (client -> server, server port; for ICMP the request's type), so
  `from` is the client and `to` the server.
- Each side is judged as Hubble identified it: from the pair's own conversations, else from any other
  conversation of that side in the window (its identity labels), else from its namespace alone (a note says
  label selectors could not be matched). An IP is world unless history shows it as a reserved identity.
- Desired and staged: both directions of the connection under the cluster's current sets (as the stream
  judges a key, policy_engine.flow_keys), each with the deciding policy, rule and the netwarden policy,
  version and rule it was rendered from. ICMP is judged too (the evaluator reads ICMPv4/ICMPv6 types).
- The fix, when the desired set denies: per denied direction the smallest allow rule, at the enforcement
  point (egress at the client, ingress at the server), selecting the subject by its stable labels and the
  peer by its labels and namespace (by namespace alone when the peer is outside the caller's scope), an IP by
  a /32 (/128), a reserved identity by its entity, and exactly the port and protocol (an ICMP type as
  `icmps`). It is a netwarden.io/v1 Policy (scope namespace) plus the Assignment placing it on
  (cluster, namespace), in Cilium form where Cilium enforces and Kubernetes form where the primary CNI does.
  It is checked here: the rule validates against the real schemas, and the desired set with the rendered
  objects added allows the pair (`verified`). A deny rule (181) cannot be outweighed by an allow: the answer
  names it instead. A direction enforced at a side outside the caller's scope gets no document (its
  selector would show the peer's labels), only who may write there.
- Who may write it: namespace policies in (cluster, namespace): org-admin, project-admin of the namespace's
  project, workspace-admin of its workspace (policy_engine.roles.Authorizer.require_namespace_write);
  cluster-wide policies: org-admin, infra-admin of the cluster's projects.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import yaml

from policy_engine.evaluator import (
    ECHO_REQUEST,
    PROTOCOL_ALIASES,
    Connection,
    EvaluatorInputError,
)
from policy_engine.flow_keys import (
    DROPPED,
    FORWARDED,
    NOT_EVALUATED,
    policy_evaluator,
    set_decision,
    side_endpoint_of,
)
from policy_engine.model import ENFORCERS, NamespaceRef, PolicyRule, PolicySpec
from policy_engine.recommend import stable_labels
from policy_engine.render import rule_object
from policy_engine.roles import Authorizer, Ownership
from policy_engine.traffic_report import drop_reason_name
from schemas.conversation import VERDICT_NAMES, Conversation, SetDecision, Side
from schemas.inventory import PolicySet

API_VERSION = "netwarden.io/v1"
# Conversation protocol names (schemas.flow_record.L4_PROTOCOLS) a why query may ask about.
PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6")
_PROTOCOL_INPUT = {p.upper(): p for p in PROTOCOLS} | {"ICMP": "ICMPv4"}
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
DENY_RULE_REASON = 181
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_NOT_NAME = re.compile(r"[^a-z0-9-]+")
# Reserved identities a Cilium rule names as entities (world is selected by CIDR when the IP is known).
_ENTITIES = {"host", "remote-node", "kube-apiserver", "health", "init", "ingress", "unmanaged", "world"}
PEER_FORMS = "NAMESPACE/WORKLOAD, NAMESPACE/POD, an IP or an entity (kube-apiserver, host, world, ...)"


class WhyInputError(ValueError):
    """A bad why parameter: names the parameter and the value."""

    def __init__(self, parameter: str, value: Any, reason: str) -> None:
        self.parameter, self.value, self.reason = parameter, value, reason
        super().__init__(f"{parameter}: {reason}")


# -- the question ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerSpec:
    """One side as asked: a namespaced workload or pod (`namespace`, `name`), an `ip`, or a reserved identity
    (`reserved`: kube-apiserver, host, world, ...)."""

    text: str
    namespace: str = ""
    name: str = ""
    ip: str = ""
    reserved: str = ""

    def describe(self) -> str:
        return self.ip or self.reserved or f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class WhyQuery:
    cluster: str
    source: PeerSpec
    destination: PeerSpec
    port: int  # the server port; for ICMP the type
    protocol: str  # one of PROTOCOLS

    @property
    def evaluator_protocol(self) -> str:
        return PROTOCOL_ALIASES.get(self.protocol, self.protocol)

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "from": self.source.text, "to": self.destination.text,
                "port": self.port, "protocol": self.protocol}


def parse_peer(text: str | None, parameter: str) -> PeerSpec:
    """`NS/NAME`, an IP address or a reserved identity's name."""
    if not text or not isinstance(text, str):
        raise WhyInputError(parameter, text, "missing: give NAMESPACE/WORKLOAD, NAMESPACE/POD, an IP or an entity")
    try:
        return PeerSpec(text, ip=str(ipaddress.ip_address(text)))
    except ValueError:
        pass
    if text in _ENTITIES:
        return PeerSpec(text, reserved=text)
    namespace, sep, name = text.partition("/")
    if not sep or not _NAME.match(namespace) or not name or "/" in name or not _NAME.match(name):
        raise WhyInputError(
            parameter, text, f"{text!r} is neither NAMESPACE/WORKLOAD, NAMESPACE/POD, an IP nor one of "
            f"{', '.join(sorted(_ENTITIES))}")
    return PeerSpec(text, namespace=namespace, name=name)


def parse_query(
    cluster: str | None, source: str | None, destination: str | None, port: int | None, protocol: str | None
) -> WhyQuery:
    """The question, checked: protocol TCP (default), UDP, SCTP, ICMP/ICMPv4 or ICMPv6; port 1-65535, or for
    ICMP the type (0-255, default echo request)."""
    if not cluster:
        raise WhyInputError("cluster", cluster, "missing: the cluster the pair lives in")
    proto = _PROTOCOL_INPUT.get((protocol or "TCP").upper())
    if proto is None:
        raise WhyInputError("protocol", protocol, f"{protocol!r} is not one of TCP, UDP, SCTP, ICMP, ICMPv6")
    if proto.startswith("ICMP"):
        evaluator_name = PROTOCOL_ALIASES.get(proto, proto)
        port = ECHO_REQUEST[evaluator_name] if port is None else port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 255:
            raise WhyInputError("port", port, f"{port!r} is not an ICMP type (0-255)")
    elif isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise WhyInputError("port", port, f"{port!r} is not a port number (1-65535)")
    return WhyQuery(cluster, parse_peer(source, "from"), parse_peer(destination, "to"), port, proto)


# -- sides ----------------------------------------------------------------------------------------------


def side_matches(side: Side, spec: PeerSpec, workload: str = "") -> bool:
    """`side` is the asked peer: same IP, or same namespace and workload (`workload`: the pod's, when the
    name given is a pod the shell resolved)."""
    if spec.ip:
        return not side.namespace and _same_ip(side.ip, spec.ip)
    if spec.reserved:
        return not side.namespace and (side.reserved or "world") == spec.reserved
    return side.namespace == spec.namespace and side.workload in {spec.name, workload} - {""}


def _same_ip(a: str, b: str) -> bool:
    try:
        return bool(a) and ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def pair_conversations(
    conversations: Iterable[Conversation], query: WhyQuery, workloads: Mapping[str, str] | None = None
) -> list[Conversation]:
    """The conversations of exactly this pair, port and protocol (`workloads`: pod name -> workload)."""
    workloads = workloads or {}
    return [
        c for c in conversations
        if c.cluster == query.cluster and c.port == query.port and c.protocol == query.protocol
        and side_matches(c.source, query.source, workloads.get(query.source.name, ""))
        and side_matches(c.destination, query.destination, workloads.get(query.destination.name, ""))
    ]


def known_side(
    spec: PeerSpec, conversations: Iterable[Conversation], workload: str = ""
) -> tuple[Side, str]:
    """The side as Hubble last identified it in any conversation of the window (unredacted), else built from
    what was asked; with a note when its labels are unknown."""
    best: tuple[datetime, Side] | None = None
    for conv in conversations:
        for side in (conv.source, conv.destination):
            if not side.redacted and side_matches(side, spec, workload) and (best is None or conv.last_seen > best[0]):
                best = (conv.last_seen, side)
    if best is not None:
        return best[1], ""
    if spec.ip:
        return Side(ip=spec.ip, reserved="world"), ""
    if spec.reserved:
        return Side(reserved=spec.reserved, labels=(f"reserved:{spec.reserved}",)), ""
    labels = (f"{NAMESPACE_LABEL}={spec.namespace}",)
    return Side(namespace=spec.namespace, workload=workload or spec.name, labels=labels), (
        f"{spec.describe()}: no flows of it in the window, so its pod labels are unknown; it was judged by its "
        "namespace alone (rules selecting pods by label do not match it)"
    )


def selector_side(side: Side, spec: PeerSpec, conversations: Iterable[Conversation], workload: str = "") -> Side:
    """`side` with only the labels every observed pod of it carried in the window: pods of one workload differ
    during a rollout (a version label), and a fix must select them all."""
    if not side.namespace:
        return side
    seen = [set(s.labels) for c in conversations for s in (c.source, c.destination)
            if not s.redacted and side_matches(s, spec, workload)]
    if not seen:
        return side
    common = set.intersection(*seen)
    return replace(side, labels=tuple(label for label in side.labels if label in common))


# -- decisions ------------------------------------------------------------------------------------------


def decide_pair(source: Side, destination: Side, port: int, protocol: str, policy_set: PolicySet | None) -> SetDecision:
    """What `policy_set` decides for the connection source -> destination (both directions; the verdict is the
    connection's: egress first, then ingress), as the stream judges a key. SetDecision() without a set;
    verdict 0 when the set cannot be evaluated."""
    if policy_set is None:
        return SetDecision()
    if policy_set.error:
        return SetDecision(revision=policy_set.revision)
    try:
        evaluator = policy_evaluator(policy_set)
        labels = policy_set.namespace_labels
        conn = Connection(side_endpoint_of(source, labels), side_endpoint_of(destination, labels), port,
                          PROTOCOL_ALIASES.get(protocol, protocol))
        egress, ingress = evaluator.decide(conn, "egress"), evaluator.decide(conn, "ingress")
    except EvaluatorInputError:
        return SetDecision(revision=policy_set.revision)
    return set_decision(policy_set, egress, ingress, egress_decides=False)


def decision_dict(decision: SetDecision, policy_set: PolicySet | None) -> dict[str, Any]:
    rendered = policy_set.rendered_from if policy_set is not None else {}

    def direction(prefix: str) -> dict[str, Any]:
        policy = getattr(decision, f"{prefix}_policy")
        origin = rendered.get(policy)
        return {
            "verdict": VERDICT_NAMES.get(getattr(decision, f"{prefix}_verdict"), ""),
            "policy": policy,
            "rule": getattr(decision, f"{prefix}_rule"),
            "netwarden_policy": origin.policy if origin else "",
            "netwarden_rule": origin.rule if origin else "",
            "version": origin.version if origin else getattr(decision, f"{prefix}_version"),
        }

    return {
        "verdict": VERDICT_NAMES.get(decision.verdict, "") or "NOT_EVALUATED",
        "drop_reason": drop_reason_name(decision.drop_reason),
        "revision": decision.revision,
        "egress": direction("egress"),
        "ingress": direction("ingress"),
    }


# -- what Hubble saw ------------------------------------------------------------------------------------


def observed(conversations: Sequence[Conversation]) -> dict[str, Any]:
    """Counts per Hubble verdict and drop reason, with Hubble's attribution and the stored desired verdict."""
    groups: dict[tuple[int, int, int], list[Conversation]] = {}
    for conv in conversations:
        groups.setdefault((conv.verdict, conv.drop_reason, conv.traffic_direction), []).append(conv)
    rows = []
    for (verdict, reason, direction), convs in groups.items():
        stored = max(convs, key=lambda c: c.last_seen).desired
        rows.append({
            "verdict": VERDICT_NAMES.get(verdict, str(verdict)),
            "drop_reason": drop_reason_name(reason),
            "observed_at": {1: "INGRESS", 2: "EGRESS"}.get(direction, ""),
            "flows": sum(c.flows for c in convs),
            "first_seen": _iso(min(c.first_seen for c in convs)),
            "last_seen": _iso(max(c.last_seen for c in convs)),
            "hubble_allowed_by": sorted({p for c in convs for p in c.hubble_allowed_by}),
            "hubble_denied_by": sorted({p for c in convs for p in c.hubble_denied_by}),
            "desired_then": {
                "verdict": VERDICT_NAMES.get(stored.verdict, "") or "NOT_EVALUATED",
                "drop_reason": drop_reason_name(stored.drop_reason),
                "revision": stored.revision,
            },
        })
    rows.sort(key=lambda r: (-r["flows"], r["verdict"]))
    return {
        "flows": sum(c.flows for c in conversations),
        "last_seen": _iso(max((c.last_seen for c in conversations), default=None)),
        "by_verdict": rows,
    }


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


# -- who may write --------------------------------------------------------------------------------------


# -- the fix --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Direction:
    direction: str  # "egress" (at the client) or "ingress" (at the server)
    subject: Side
    peer: Side
    peer_visible: bool
    subject_selector: Side  # whose stable labels select the subject / the peer (selector_side)
    peer_selector: Side


@dataclass
class Fix:
    directions: list[dict[str, Any]] = field(default_factory=list)
    documents: list[dict[str, Any]] = field(default_factory=list)
    verified: bool | None = None  # the desired set plus the documents allows the pair (None: nothing to check)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        text = yaml.safe_dump_all(self.documents, sort_keys=False) if self.documents else ""
        return {"directions": self.directions, "documents": self.documents, "yaml": text,
                "verified": self.verified, "notes": self.notes}


def _dns_name(text: str, limit: int = 63) -> str:
    name = _NOT_NAME.sub("-", text.lower()).strip("-") or "peer"
    if len(name) > limit:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: limit - 9].rstrip('-')}-{digest}"
    return name


def _side_name(side: Side) -> str:
    if side.workload:
        return side.workload
    if side.ip and side.reserved in ("", "world"):
        return side.ip.replace(":", "-").replace(".", "-")
    return side.reserved or side.namespace


def _shown(side: Side, visible: bool) -> Side:
    """What the caller may see of a side (its namespace and reserved identity when outside its scope)."""
    if visible or not side.namespace:
        return side
    return Side(namespace=side.namespace, reserved=side.reserved, cluster=side.cluster, redacted=True)


def fix_policy_name(query: WhyQuery, source: Side, destination: Side, namespace: str = "",
                    taken: Collection[str] = ()) -> str:
    """`allow-<client>-to-<server>-<protocol>-<port>[-<namespace>]`, unique among `taken` (policy names are
    global: a name already in the store would make `apply` replace that policy)."""
    base = f"allow-{_side_name(source)}-to-{_side_name(destination)}-{query.protocol.lower()}-{query.port}"
    name = _dns_name(f"{base}-{namespace}" if namespace else base)
    n = 2
    while name in taken:
        name, n = _dns_name(f"{base}-{namespace}-{n}" if namespace else f"{base}-{n}"), n + 1
    return name


def _labels(side: Side) -> dict[str, str]:
    return dict(stable_labels(side))


def _host_cidr(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    return f"{address}/{address.max_prefixlen}"


def _peer_reserved(peer: Side) -> str:
    return "" if peer.namespace else (peer.reserved or "world")


def _cilium_rule(d: _Direction, query: WhyQuery) -> dict[str, Any]:
    side = "to" if d.direction == "egress" else "from"
    peer = d.peer
    entry: dict[str, Any] = {}
    if peer.namespace:
        selector = {} if not d.peer_visible else _labels(d.peer_selector)
        if peer.namespace != d.subject.namespace or not d.peer_visible:
            selector[NAMESPACE_LABEL] = peer.namespace
        entry[f"{side}Endpoints"] = [{"matchLabels": selector}]
    elif _peer_reserved(peer) == "world" and peer.ip:
        entry[f"{side}CIDR"] = [_host_cidr(peer.ip)]
    else:
        entry[f"{side}Entities"] = [_peer_reserved(peer)]
    if query.protocol.startswith("ICMP"):
        family = "IPv6" if query.protocol == "ICMPv6" else "IPv4"
        entry["icmps"] = [{"fields": [{"type": query.port, "family": family}]}]
    else:
        entry["toPorts"] = [{"ports": [{"port": str(query.port), "protocol": query.protocol}]}]
    return {"endpointSelector": {"matchLabels": _labels(d.subject_selector)}, d.direction: [entry]}


def _kubernetes_rule(d: _Direction, query: WhyQuery, notes: list[str]) -> dict[str, Any] | None:
    side = "to" if d.direction == "egress" else "from"
    peer = d.peer
    entry: dict[str, Any] = {}
    if peer.namespace:
        item: dict[str, Any] = {"podSelector": {"matchLabels": _labels(d.peer_selector) if d.peer_visible else {}}}
        if peer.namespace != d.subject.namespace or not d.peer_visible:
            item["namespaceSelector"] = {"matchLabels": {NAMESPACE_NAME_LABEL: peer.namespace}}
        entry[side] = [item]
    elif peer.ip:
        entry[side] = [{"ipBlock": {"cidr": _host_cidr(peer.ip)}}]
    else:
        notes.append(f"{d.direction}: NetworkPolicy cannot name the {_peer_reserved(peer)} identity and its IP is "
                     "unknown; no rule proposed")
        return None
    if query.protocol.startswith("ICMP"):
        notes.append(f"{d.direction}: NetworkPolicy cannot name ICMP; the proposed rule has no ports, so it allows "
                     "every protocol to this peer (the smallest NetworkPolicy that allows ICMP)")
    else:
        entry["ports"] = [{"port": query.port, "protocol": query.protocol}]
    policy_type = "Egress" if d.direction == "egress" else "Ingress"
    return {"podSelector": {"matchLabels": _labels(d.subject_selector)}, "policyTypes": [policy_type],
            d.direction: [entry]}


def smallest_fix(
    query: WhyQuery,
    source: Side,
    destination: Side,
    decision: SetDecision,
    policy_set: PolicySet | None,
    *,
    visible: Callable[[str, str], bool],
    ownership: Ownership,
    policy_scope: Callable[[str], str] = lambda _name: "namespace",
    validate: Callable[[dict[str, Any]], None] | None = None,
    existing_policies: Collection[str] = (),
    selectors: tuple[Side, Side] | None = None,
) -> Fix | None:
    """The documents that would allow the pair (None when the desired set already allows it or did not
    judge it). `visible(cluster, namespace)`: the caller's scope; `policy_scope(name)`: "cluster" or
    "namespace" of a netwarden policy (who may change a deny rule); `validate`: the schema check of a
    rendered object (policy_engine.validation.validate_object); `existing_policies`: names already in the
    store (a new policy never takes one); `selectors`: the (source, destination) sides whose stable labels the
    rules select by (selector_side; default the sides themselves)."""
    if policy_set is None or decision.verdict != DROPPED:
        return None
    fix = Fix()
    kubernetes = policy_set.engine == "kubernetes"
    # Names, descriptions and places shown never carry more of a side than the caller may see.
    shown_source = _shown(source, visible(query.cluster, source.namespace))
    shown_destination = _shown(destination, visible(query.cluster, destination.namespace))
    rules_by_namespace: dict[str, list[PolicyRule]] = {}
    source_selector, destination_selector = selectors or (source, destination)
    for d in (
        _Direction("egress", source, destination, visible(query.cluster, destination.namespace),
                   source_selector, destination_selector),
        _Direction("ingress", destination, source, visible(query.cluster, source.namespace),
                   destination_selector, source_selector),
    ):
        if getattr(decision, f"{d.direction}_verdict") != DROPPED:
            continue
        where = NamespaceRef(query.cluster, d.subject.namespace)
        at = shown_source if d.direction == "egress" else shown_destination
        entry: dict[str, Any] = {"direction": d.direction, "at": at.describe(), "namespace": d.subject.namespace}
        fix.directions.append(entry)
        rule_label = getattr(decision, f"{d.direction}_rule")
        denying = getattr(decision, f"{d.direction}_policy")
        if "Deny[" in rule_label:
            # An allow never outweighs a deny rule: the deny rule itself must change.
            origin = policy_set.rendered_from.get(denying)
            name = origin.policy if origin else ""
            clusterwide = (policy_scope(name) if name else "") == "cluster" or denying.startswith(
                "CiliumClusterwideNetworkPolicy/")
            entry.update(
                blocked_by=denying, rule=rule_label, netwarden_policy=name,
                writers=Authorizer(ownership).cluster_writers(query.cluster) if clusterwide
                else Authorizer(ownership).namespace_writers(where),
                action=f"deny rule {rule_label} of {denying} drops it; no allow rule can outweigh it: change or "
                       f"remove that rule{f' (netwarden policy {name})' if name else ''}",
            )
            continue
        entry["writers"] = Authorizer(ownership).namespace_writers(where)
        if not visible(query.cluster, d.subject.namespace):
            entry["action"] = (f"{d.direction} is enforced in {query.cluster}/{d.subject.namespace}, outside your "
                               "scope: ask one of the writers to allow it")
            continue
        if not d.subject.namespace:
            continue  # not a pod: nothing is enforced there
        spec = _kubernetes_rule(d, query, fix.notes) if kubernetes else _cilium_rule(d, query)
        if spec is None:
            continue
        if not d.peer_visible and d.peer.namespace:
            fix.notes.append(f"{d.direction}: the peer is outside your scope, so it is selected by its namespace "
                             f"{d.peer.namespace} only")
        if not _labels(d.subject_selector):
            fix.notes.append(f"{d.direction}: {d.subject.describe()} has no stable labels known; the rule selects "
                             f"every pod of namespace {d.subject.namespace}")
        rules_by_namespace.setdefault(d.subject.namespace, []).append(
            PolicyRule(d.direction, "kubernetes" if kubernetes else "cilium", spec))
        entry["action"] = "apply the documents"
    if not rules_by_namespace:
        return fix
    added: list[dict[str, Any]] = []
    taken = set(existing_policies)
    for namespace, rules in rules_by_namespace.items():
        name = fix_policy_name(query, shown_source, shown_destination,
                               namespace if len(rules_by_namespace) > 1 else "", taken)
        taken.add(name)
        # A NetworkPolicy renders on every engine; Cilium form (entities, icmps) only where Cilium enforces.
        enforcers = ENFORCERS if kubernetes else ("cilium",)
        spec = PolicySpec(name, "namespace", tuple(rules),
                          f"allow {shown_source.describe()} -> {shown_destination.describe()} "
                          f"{query.protocol}/{query.port} (netwarden why)", enforcers)
        try:
            for rule in rules:
                obj = rule_object(spec, rule, 1, namespace)
                if validate is not None:
                    validate(obj)
                added.append(obj)
        except ValueError as exc:  # never expected: say so rather than offer a document apply would refuse
            fix.notes.append(f"the proposed rule for namespace {namespace} does not validate: {exc}")
            fix.verified = False
            return fix
        fix.documents.append({
            "apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": name},
            "spec": {"scope": "namespace", "description": spec.description, "enforcers": list(spec.enforcers),
                     "rules": [{"name": r.name, r.kind: dict(r.spec)} for r in rules]},
        })
        fix.documents.append({
            "apiVersion": API_VERSION, "kind": "Assignment", "metadata": {"name": name},
            "spec": {"policy": name, "targets": [{"cluster": query.cluster, "namespace": namespace}]},
        })
        for entry in fix.directions:
            if entry["namespace"] == namespace and entry.get("action") == "apply the documents":
                entry["policy"] = name
    fixed = replace(policy_set, policies=(*policy_set.policies, *added))
    after = decide_pair(source, destination, query.port, query.protocol, fixed)
    fix.verified = after.verdict == FORWARDED
    if not fix.verified:
        fix.notes.append("with these documents the pair is still denied in another direction (see directions)")
    return fix


# -- the answer -----------------------------------------------------------------------------------------


def _disagreements(
    pair: Sequence[Conversation], decision: SetDecision, cluster: str, namespaces: tuple[str, str]
) -> list[str]:
    """Where what Hubble saw and what the desired set says differ, the likely reasons; the validation report of
    the namespace where it happens (`namespaces`: the client's and the server's, "" when the caller may not read
    it) names the cause from the cluster's kube API."""

    def report(namespace: str) -> str:
        return f"`netwarden report validate --cluster {cluster}" + (f" --namespace {namespace}`" if namespace else "`")

    seen = {c.verdict for c in pair}
    notes = []
    if decision.verdict == DROPPED and FORWARDED in seen:
        at = namespaces[0] if decision.egress_verdict == DROPPED else namespaces[1]
        notes.append("Hubble forwarded flows the desired set denies: the policy is not in effect there (pods started "
                     "before Cilium, an object missing or edited on the cluster, or the cluster not synced); "
                     f"{report(at)} names the cause")
    if decision.verdict == FORWARDED and DROPPED in seen:
        dropped = [c for c in pair if c.verdict == DROPPED]
        at_egress = sum(c.flows for c in dropped if c.traffic_direction == 2) * 2 > sum(c.flows for c in dropped)
        denied_by = sorted({p for c in dropped for p in c.hubble_denied_by})
        by = f" (Hubble names {', '.join(denied_by)})" if denied_by else ""
        notes.append(f"Hubble dropped flows the desired set allows: something netwarden does not manage denies "
                     f"them{by}, an object is missing or edited on the cluster, or the cluster is not synced to the "
                     f"current version; {report(namespaces[0] if at_egress else namespaces[1])} names the cause")
    return notes


def _side_dict(side: Side, visible: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"namespace": side.namespace, "workload": side.workload if visible else "",
                           "workload_kind": side.workload_kind if visible else "",
                           "ip": side.ip if visible else "", "reserved": side.reserved, "in_scope": visible}
    if visible:
        out["labels"] = list(side.labels)
    return out


def explain(
    query: WhyQuery,
    conversations: Sequence[Conversation],
    desired: PolicySet | None,
    staged: PolicySet | None,
    *,
    window: tuple[datetime, datetime],
    visible: Callable[[str, str], bool],
    ownership: Ownership,
    workloads: Mapping[str, str] | None = None,
    policy_scope: Callable[[str], str] = lambda _name: "namespace",
    validate: Callable[[dict[str, Any]], None] | None = None,
    existing_policies: Collection[str] = (),
) -> dict[str, Any]:
    """The why document. `conversations`: the window's conversations of the cluster touching either side's
    namespace (unredacted: the labels are needed), `visible` the caller's scope (the shell has refused a pair
    that touches none of it)."""
    workloads = workloads or {}
    notes: list[str] = []
    pair = pair_conversations(conversations, query, workloads)
    source, source_note = known_side(query.source, pair or conversations, workloads.get(query.source.name, ""))
    destination, destination_note = known_side(
        query.destination, pair or conversations, workloads.get(query.destination.name, ""))
    notes += [n for n in (source_note, destination_note) if n]
    if not pair:
        notes.append("Hubble saw no flow of this pair, port and protocol in the window; the verdicts below are "
                     "what the current policy sets decide")
    source_visible = visible(query.cluster, source.namespace)
    destination_visible = visible(query.cluster, destination.namespace)
    decision = decide_pair(source, destination, query.port, query.protocol, desired)
    staged_decision = decide_pair(source, destination, query.port, query.protocol, staged)
    if desired is None:
        notes.append(f"cluster {query.cluster} has no desired policy set (no blueprint or policies assigned yet)")
    elif decision.verdict == NOT_EVALUATED:
        notes.append(f"the desired set of {query.cluster} cannot be evaluated: {desired.error or 'invalid objects'}")
    readable = (source.namespace if source_visible else "", destination.namespace if destination_visible else "")
    notes += _disagreements(pair, decision, query.cluster, readable)
    seen = pair or conversations
    selectors = (
        selector_side(source, query.source, seen, workloads.get(query.source.name, "")),
        selector_side(destination, query.destination, seen, workloads.get(query.destination.name, "")),
    )
    fix = smallest_fix(query, source, destination, decision, desired, visible=visible, ownership=ownership,
                       policy_scope=policy_scope, validate=validate, existing_policies=existing_policies,
                       selectors=selectors)
    staged_doc = decision_dict(staged_decision, staged) if staged is not None else None
    if staged_doc is not None:
        staged_doc["differs"] = staged_decision.verdict != decision.verdict
        staged_doc["staged_versions"] = [{"policy": v.policy, "version": v.version} for v in staged.staged_versions]
    return {
        "query": query.to_dict(),
        "window": {"since": _iso(window[0]), "until": _iso(window[1])},
        "source": _side_dict(source, source_visible),
        "destination": _side_dict(destination, destination_visible),
        "observed": observed(pair),
        "desired": decision_dict(decision, desired) if desired is not None else None,
        "staged": staged_doc,
        "fix": fix.to_dict() if fix is not None else None,
        "notes": notes,
    }


__all__ = [
    "PEER_FORMS",
    "PROTOCOLS",
    "Fix",
    "PeerSpec",
    "WhyInputError",
    "WhyQuery",
    "decide_pair",
    "explain",
    "known_side",
    "observed",
    "pair_conversations",
    "parse_peer",
    "selector_side",
    "parse_query",
    "side_matches",
    "smallest_fix",
]

"""`PolicyEvaluator`: verdicts for connections in one cluster under one policy set (decision procedure per direction)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from policy_engine.evaluation.compile_cilium import compile_cilium_policy
from policy_engine.evaluation.compile_kubernetes import compile_network_policy
from policy_engine.evaluation.documents import (
    list_field,
    looks_like_ip,
    parse_ip,
    parse_labels,
    parse_pod,
    policy_ref,
    port_number,
    require_field,
)
from policy_engine.evaluation.icmp import ICMP_PROTOCOLS, PROTOCOL_ALIASES
from policy_engine.evaluation.matchers import Notes, Subject
from policy_engine.evaluation.model import (
    DROP_NONE,
    DROP_POLICY_DENIED,
    DROP_POLICY_DENY,
    ENFORCEMENT_MODES,
    ENGINES,
    IP_ENTITIES,
    KIND_KNP,
    NAMESPACE_NAME_LABEL,
    PROBE_PROTOCOLS,
    RULE_ALLOW_LOCALHOST,
    RULE_DEFAULT_DENY,
    Connection,
    Direction,
    DirectionDecision,
    Endpoint,
    EnforcementMode,
    Engine,
    EvaluatorInputError,
    IPAddress,
    Pod,
    PolicyRef,
    Verdict,
    pod_cilium_labels,
)


def checked_connection(conn: Connection) -> Connection:
    """`conn` with its protocol in canonical form (ICMPv4 -> ICMP) after checking protocol and port: a port
    number for TCP/UDP/SCTP, an ICMP type (0-255) for ICMP and ICMPv6."""
    protocol = PROTOCOL_ALIASES.get(conn.protocol, conn.protocol)
    if protocol not in PROBE_PROTOCOLS:
        raise EvaluatorInputError(
            f"protocol: {conn.protocol!r} is not one of {', '.join((*PROBE_PROTOCOLS, *PROTOCOL_ALIASES))}"
        )
    if protocol in ICMP_PROTOCOLS:
        if isinstance(conn.port, bool) or not isinstance(conn.port, int) or not 0 <= conn.port <= 255:
            raise EvaluatorInputError(f"port: {conn.port!r} is not an ICMP type (0-255)")
    else:
        port_number(conn.port, "port")
    return conn if protocol == conn.protocol else replace(conn, protocol=protocol)


def describe_l4(conn: Connection) -> str:
    """"TCP/80", or "ICMP type 8" where the port is an ICMP type."""
    if conn.protocol in ICMP_PROTOCOLS:
        return f"{conn.protocol} type {conn.port}"
    return f"{conn.protocol}/{conn.port}"


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
            ip = parse_ip(ip_text, f"entities.{ip_text}")
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
                ignored.append(policy_ref(policy, path))
        if ignored:
            self.global_notes.append(
                f"engine kubernetes does not enforce Cilium policies; ignored: {_refs_text(ignored)}"
            )

    # -- endpoints

    def endpoint(self, ref: str, path: str = "endpoint") -> Endpoint:
        """Resolve "ns/pod" or an IP address (a pod's IP resolves to that pod)."""
        if not isinstance(ref, str) or not ref:
            raise EvaluatorInputError(f'{path}: {ref!r} is neither "namespace/pod" nor an IP address')
        if "/" in ref and not looks_like_ip(ref):
            pod = self.pods.get(ref)
            if pod is None:
                raise EvaluatorInputError(f"{path}: unknown pod {ref!r}")
            return self.pod_endpoint(pod)
        ip = parse_ip(ref, path)
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
        conn = checked_connection(conn)
        notes = Notes(self.global_notes)
        src, dst = conn.source, conn.destination
        if src.pod is not None and src.pod == dst.pod:
            notes.add(
                "loopback (a pod to itself): evaluated as any other connection; CNIs differ (kubernetes#95879)"
            )
        if self.engine == "cilium" and conn.protocol == "SCTP":
            notes.add("Cilium enforces SCTP only with sctp.enabled=true (v1.16 lists SCTP as unsupported)")
        if conn.protocol in ICMP_PROTOCOLS:
            self._icmp_notes(conn, notes)
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
        conn = checked_connection(conn)
        if self.engine == "cilium" and self.enforcement_mode == "never":
            return DirectionDecision(direction, True)
        return self._direction(conn, direction, Notes()).decision(direction)

    def _icmp_notes(self, conn: Connection, notes: Notes) -> None:
        if self.engine == "kubernetes":
            notes.add(
                "NetworkPolicy is defined for TCP, UDP and SCTP; for ICMP the behaviour may vary across network "
                "plugins (Kubernetes docs, 'Network traffic filtering'). This verdict reads it as most plugins "
                "do: a rule without ports allows ICMP, a rule with ports never does, an isolated pod drops the rest"
            )
        version = 6 if conn.protocol == "ICMPv6" else 4
        for side in (conn.source, conn.destination):
            if side.ip is not None and side.ip.version != version:
                notes.add(f"{conn.protocol} probe, but {side.describe()} has an IPv{side.ip.version} address")

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
        flow = f"{describe_l4(conn)} {'to' if direction == 'egress' else 'from'} {peer.describe()}"
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
            if self.engine == "cilium" and conn.protocol in ICMP_PROTOCOLS:
                notes.add(
                    f"Cilium admits {conn.protocol} only by a rule without an L4 part or by an icmps rule; toPorts "
                    "(protocol ANY included) never admits it"
                )
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



def evaluator_from_document(doc: Mapping[str, Any]) -> PolicyEvaluator:
    """Build an evaluator from the `netwarden policy check` document (namespaces, pods, policies, engine,
    and optionally entities {ip: entity} and policyEnforcementMode)."""
    if not isinstance(doc, dict):
        raise EvaluatorInputError(f"document: expected a JSON object, got {type(doc).__name__}")
    namespaces = require_field(doc, "namespaces", "document", dict)
    ns_labels = {str(k): parse_labels(v, f"namespaces.{k}") for k, v in namespaces.items()}
    pods = [parse_pod(p, f"pods[{i}]") for i, p in enumerate(list_field(doc, "pods", "document"))]
    policies = list_field(doc, "policies", "document")
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

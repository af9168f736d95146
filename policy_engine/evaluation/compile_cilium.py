"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy -> `Subject`s, with Cilium's peer scoping and rule semantics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy_engine.evaluation.documents import (
    list_field,
    parse_label_selector,
    parse_network,
    policy_ref,
    port_number,
    require_field,
)
from policy_engine.evaluation.icmp import (
    FAMILY_PROTOCOL,
    ICMP_FAMILIES,
    icmp_type_number,
    icmp_type_problem,
)
from policy_engine.evaluation.matchers import (
    CIDRPeer,
    CiliumEndpointPeer,
    CiliumSelects,
    CompiledRule,
    EntityPeer,
    PeerMatcher,
    PortMatcher,
    Subject,
    UnevaluablePeer,
)
from policy_engine.evaluation.model import (
    CILIUM_NS_LABEL,
    CILIUM_NS_LABELS_PREFIX,
    CILIUM_PROTOCOLS,
    ENTITIES,
    Direction,
    EvaluatorInputError,
    split_label_source,
)
from policy_engine.selectors import LabelSelector, Requirement


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
    """The rule's L4 part: None when it has neither toPorts nor icmps (every port and protocol, ICMP too)."""
    to_ports = list_field(rule, "toPorts", path)
    icmps = list_field(rule, "icmps", path)
    if icmps and to_ports:
        raise EvaluatorInputError(
            f"{path}.icmps: may not be combined with toPorts in one rule (the Cilium agent refuses it); "
            "define a separate rule for the ICMP types"
        )
    if icmps:
        return _icmp_matchers(icmps, f"{path}.icmps"), []
    if not to_ports:
        return None, []
    notes: list[str] = []
    matchers: list[PortMatcher] = []
    for i, item in enumerate(to_ports):
        ipath = f"{path}.toPorts[{i}]"
        if not isinstance(item, dict):
            raise EvaluatorInputError(f"{ipath}: expected an object, got {item!r}")
        if item.get("rules"):
            notes.append(
                f"{ipath}.rules: L7 rules are enforced by the proxy; the evaluator decides L3/L4 only"
            )
        ports = list_field(item, "ports", ipath)
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
            protocol = "ICMPv6" if protocol == "ICMPV6" else protocol
            port = entry.get("port")
            if port is None or str(port) == "0":
                matchers.append(PortMatcher(protocol))
                continue
            text = str(port)
            if not text.isdigit():
                matchers.append(PortMatcher(protocol, name=text))  # endPort is ignored for named ports
                continue
            number = port_number(int(text), f"{ppath}.port")
            end_port = entry.get("endPort")
            if end_port is not None and end_port != 0:
                end_port = port_number(end_port, f"{ppath}.endPort")
                if end_port < number:
                    raise EvaluatorInputError(f"{ppath}.endPort: {end_port} is below port {number}")
            else:
                end_port = None
            matchers.append(PortMatcher(protocol, number, end_port))
    return tuple(matchers), notes


def _icmp_matchers(icmps: list[Any], path: str) -> tuple[PortMatcher, ...]:
    """`icmps[].fields[]` -> one matcher per (family, type): protocol ICMP or ICMPv6, the type as port."""
    matchers: list[PortMatcher] = []
    for i, icmp in enumerate(icmps):
        if not isinstance(icmp, dict):
            raise EvaluatorInputError(f"{path}[{i}]: expected an object, got {icmp!r}")
        for j, entry in enumerate(list_field(icmp, "fields", f"{path}[{i}]")):
            fpath = f"{path}[{i}].fields[{j}]"
            if not isinstance(entry, dict) or entry.get("type") is None:
                raise EvaluatorInputError(f"{fpath}.type: missing")
            family = entry.get("family") or "IPv4"  # the CRD's default
            problem = icmp_type_problem(entry["type"], family)
            if problem:
                key = "family" if family not in ICMP_FAMILIES else "type"
                raise EvaluatorInputError(f"{fpath}.{key}: {problem}")
            number = icmp_type_number(entry["type"], family)
            matchers.append(PortMatcher(FAMILY_PROTOCOL[family], number))
    return tuple(matchers)


def _cilium_rule(
    rule: Mapping[str, Any], path: str, direction: Direction, namespace: str | None, deny: bool, label: str = ""
) -> tuple[CompiledRule, list[str]]:
    side = "from" if direction == "ingress" else "to"
    peers: list[PeerMatcher] = []
    notes: list[str] = []
    has_l3 = False
    for i, sel in enumerate(list_field(rule, f"{side}Endpoints", path)):
        has_l3 = True
        scoped, note = _scoped_endpoint_selector(parse_label_selector(sel, f"{path}.{side}Endpoints[{i}]"), namespace)
        if note:
            notes.append(note)
        peers.append(CiliumEndpointPeer(scoped))
    for i, cidr in enumerate(list_field(rule, f"{side}CIDR", path)):
        has_l3 = True
        peers.append(CIDRPeer(parse_network(cidr, f"{path}.{side}CIDR[{i}]"), (), "cilium", f"{side}CIDR"))
    for i, entry in enumerate(list_field(rule, f"{side}CIDRSet", path)):
        has_l3 = True
        epath = f"{path}.{side}CIDRSet[{i}]"
        if not isinstance(entry, dict):
            raise EvaluatorInputError(f"{epath}: expected an object, got {entry!r}")
        if "cidr" not in entry:
            peers.append(UnevaluablePeer(f"{epath} (cidrGroupRef)"))
            continue
        excepts = tuple(
            parse_network(e, f"{epath}.except[{j}]") for j, e in enumerate(list_field(entry, "except", epath))
        )
        peers.append(CIDRPeer(parse_network(entry["cidr"], f"{epath}.cidr"), excepts, "cilium", f"{side}CIDRSet"))
    for i, entity in enumerate(list_field(rule, f"{side}Entities", path)):
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
    ref = policy_ref(policy, path)
    namespace = ref.namespace or None
    specs: list[tuple[str, Any]] = []
    if policy.get("spec") is not None:
        specs.append((f"{path}.spec", policy["spec"]))
    specs.extend((f"{path}.specs[{i}]", s) for i, s in enumerate(list_field(policy, "specs", path)))
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
            namespace, parse_label_selector(require_field(spec, "endpointSelector", spath, dict), f"{spath}.endpointSelector")
        )
        edd = spec.get("enableDefaultDeny") or {}
        if not isinstance(edd, dict):
            raise EvaluatorInputError(f"{spath}.enableDefaultDeny: expected an object, got {edd!r}")
        for direction in ("ingress", "egress"):
            rules: list[CompiledRule] = []
            notes: list[str] = []
            for deny, key in ((False, direction), (True, f"{direction}Deny")):
                for i, rule in enumerate(list_field(spec, key, spath)):
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



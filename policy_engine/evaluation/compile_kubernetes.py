"""Kubernetes NetworkPolicy -> `Subject`s (API defaulting of policyTypes; peers and ports as the API means them)."""

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
from policy_engine.evaluation.matchers import (
    CIDRPeer,
    CompiledRule,
    K8sSelectorPeer,
    KnpSelects,
    PeerMatcher,
    PortMatcher,
    Subject,
)
from policy_engine.evaluation.model import K8S_PROTOCOLS, Engine, EvaluatorInputError


def _knp_ports(rule: Mapping[str, Any], path: str) -> tuple[PortMatcher, ...] | None:
    entries = list_field(rule, "ports", path)
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
            else port_number(int(port) if isinstance(port, str) else port, f"{ppath}.port")
        )
        if end_port is not None:
            if number is None:
                raise EvaluatorInputError(f"{ppath}.endPort: {end_port!r} given without port")
            end_port = port_number(end_port, f"{ppath}.endPort")
            if end_port < number:
                raise EvaluatorInputError(f"{ppath}.endPort: {end_port} is below port {number}")
        matchers.append(PortMatcher(protocol, number, end_port))
    return tuple(matchers)


def _knp_peers(
    rule: Mapping[str, Any], key: str, path: str, namespace: str, engine: Engine
) -> tuple[PeerMatcher, ...] | None:
    entries = list_field(rule, key, path)
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
            block = require_field(entry, "ipBlock", ppath, dict)
            network = parse_network(require_field(block, "cidr", f"{ppath}.ipBlock", str), f"{ppath}.ipBlock.cidr")
            excepts = tuple(
                parse_network(e, f"{ppath}.ipBlock.except[{j}]")
                for j, e in enumerate(list_field(block, "except", f"{ppath}.ipBlock"))
            )
            peers.append(CIDRPeer(network, excepts, engine, "ipBlock"))
            continue
        pod_sel = parse_label_selector(entry["podSelector"], f"{ppath}.podSelector") if "podSelector" in entry else None
        ns_sel = (
            parse_label_selector(entry["namespaceSelector"], f"{ppath}.namespaceSelector")
            if "namespaceSelector" in entry
            else None
        )
        peers.append(K8sSelectorPeer(namespace, pod_sel, ns_sel))
    return tuple(peers)


def compile_network_policy(policy: Mapping[str, Any], path: str, engine: Engine) -> list[Subject]:
    ref = policy_ref(policy, path)
    spec = require_field(policy, "spec", path, dict)
    spath = f"{path}.spec"
    selects = KnpSelects(
        ref.namespace, parse_label_selector(require_field(spec, "podSelector", spath, dict), f"{spath}.podSelector")
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
        for i, rule in enumerate(list_field(spec, direction, spath)):
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



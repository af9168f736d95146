"""Rendering: the Kubernetes objects one cluster should hold, from its resolved policy set.

Pure functions. Where Cilium enforces, Cilium rules become CiliumClusterwideNetworkPolicy (cluster
scope) or CiliumNetworkPolicy (namespace scope). Where the primary CNI enforces, everything
becomes Kubernetes NetworkPolicy: Cilium rules are translated when NetworkPolicy can express them
and refused otherwise, and a cluster-wide policy becomes one NetworkPolicy per namespace. Kubernetes
rules are NetworkPolicies everywhere (Cilium enforces those too).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy_engine.blueprints import cilium_enforces
from policy_engine.model import BlueprintVersion, Cluster, PolicyRule, PolicySpec, PolicyVersion, VersionInfo

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "netwarden"
POLICY_LABEL = "netwarden.io/policy"
POLICY_VERSION_LABEL = "netwarden.io/policy-version"
RULE_LABEL = "netwarden.io/rule"
BLUEPRINT_ANNOTATION = "netwarden.io/blueprint"
TRANSLATED_ANNOTATION = "netwarden.io/translated-from"

CNP = ("cilium.io/v2", "CiliumNetworkPolicy")
CCNP = ("cilium.io/v2", "CiliumClusterwideNetworkPolicy")
KNP = ("networking.k8s.io/v1", "NetworkPolicy")

# Kubernetes' own namespace name label, present on every namespace since 1.22.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
_POD_NAMESPACE = "io.kubernetes.pod.namespace"
_NAMESPACE_LABELS = "io.cilium.k8s.namespace.labels."
_ALL_PROTOCOLS = ("TCP", "UDP", "SCTP")


class RenderError(ValueError):
    """A policy cannot be rendered for a cluster: names policy, version, rule and field."""

    def __init__(self, policy: str, version: int, rule: str, path: str, message: str, cluster: str = "") -> None:
        self.policy, self.version, self.rule, self.path, self.cluster = policy, version, rule, path, cluster
        where = f" for cluster {cluster}" if cluster else ""
        super().__init__(f"policy {policy} v{version} rule {rule}{where}: {path}: {message}")


class Untranslatable(ValueError):
    """A Cilium rule feature Kubernetes NetworkPolicy cannot express."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class NamespacePlacement:
    policy: PolicyVersion
    namespaces: tuple[str, ...]
    via_blueprint: str = ""


@dataclass(frozen=True)
class ClusterPolicySet:
    """Everything resolved from the store that decides one cluster's desired objects."""

    cluster: Cluster
    engine: str
    blueprint: BlueprintVersion | None = None
    cluster_policies: tuple[PolicyVersion, ...] = ()
    namespace_policies: tuple[NamespacePlacement, ...] = ()
    # Every namespace known on the cluster (declared, owned by workspaces, assigned, or live).
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenderedCluster:
    cluster: str
    engine: str
    objects: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = field(default=())


Validator = Callable[[dict[str, Any]], None]


def render_cluster(policy_set: ClusterPolicySet, *, validate: Validator | None = None) -> RenderedCluster:
    """Desired objects for one cluster, sorted by (kind, namespace, name), plus notes for humans.

    `validate` (normally `policy_engine.validation.validate_object`) runs on every object so an
    invalid object is never sent to a cluster.
    """
    cluster, engine = policy_set.cluster, policy_set.engine
    cilium = cilium_enforces(engine)
    enforcer = "cilium" if cilium else "kubernetes"
    objects: dict[tuple[str, str, str], dict[str, Any]] = {}
    notes: list[str] = []
    bp = policy_set.blueprint
    excluded = set(bp.spec.exclude_namespaces) if bp else {"kube-system"}
    expand_to = sorted(ns for ns in set(policy_set.namespaces) if ns not in excluded)

    def add(obj: dict[str, Any], pv: PolicyVersion, rule: PolicyRule) -> None:
        if validate is not None:
            try:
                validate(obj)
            except ValueError as exc:
                raise RenderError(pv.name, pv.version, rule.name, "object", str(exc), cluster.name) from exc
        meta = obj["metadata"]
        objects[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj

    for pv in policy_set.cluster_policies:
        if enforcer not in pv.spec.enforcers:
            notes.append(f"policy {pv.name} skipped: it is for {'/'.join(pv.spec.enforcers)} only and "
                         f"{cluster.name} enforces with {_engine_text(cluster, engine)}")
            continue
        blueprint = bp.name if bp else ""
        per_namespace: list[str] = []
        for rule in pv.spec.rules:
            name = object_name(pv.spec, rule)
            if rule.kind == "cilium" and cilium:
                add(_object(CCNP, name, None, rule.spec, pv, rule, blueprint), pv, rule)
                continue
            np_spec, selects = _rule_as_network_policy(pv, rule, clusterwide=True, cluster=cluster.name)
            if np_spec is None:
                notes.append(f"policy {pv.name} rule {rule.name} has no ingress or egress section: nothing rendered")
                continue
            namespaces = [ns for ns in expand_to if selects(ns)]
            for ns in namespaces:
                add(_object(KNP, name, ns, np_spec, pv, rule, blueprint, translated=rule.kind == "cilium",
                            clusterwide=True), pv, rule)
            per_namespace.extend(namespaces)
        if per_namespace:
            count = len(per_namespace)
            notes.append(
                f"cluster-wide policy {pv.name} rendered as {count} NetworkPolicy object(s), one per namespace "
                f"({', '.join(sorted(set(per_namespace)))}), because {cluster.name} enforces with "
                f"{_engine_text(cluster, engine)}; namespaces created later are covered at the next sync"
            )

    for placement in policy_set.namespace_policies:
        pv = placement.policy
        if enforcer not in pv.spec.enforcers:
            notes.append(f"policy {pv.name} skipped: it is for {'/'.join(pv.spec.enforcers)} only and "
                         f"{cluster.name} enforces with {_engine_text(cluster, engine)}")
            continue
        for rule in pv.spec.rules:
            name = object_name(pv.spec, rule)
            if rule.kind == "cilium" and cilium:
                for ns in sorted(set(placement.namespaces)):
                    add(_object(CNP, name, ns, rule.spec, pv, rule, placement.via_blueprint), pv, rule)
                continue
            np_spec, selects = _rule_as_network_policy(pv, rule, clusterwide=False, cluster=cluster.name)
            if np_spec is None:
                notes.append(f"policy {pv.name} rule {rule.name} has no ingress or egress section: nothing rendered")
                continue
            for ns in sorted(set(placement.namespaces)):
                if selects(ns):
                    add(_object(KNP, name, ns, np_spec, pv, rule, placement.via_blueprint,
                                translated=rule.kind == "cilium"), pv, rule)

    ordered = tuple(objects[k] for k in sorted(objects))
    return RenderedCluster(cluster.name, engine, ordered, tuple(notes))


def rule_object(spec: PolicySpec, rule: PolicyRule, version: int = 1, namespace: str = "default") -> dict[str, Any]:
    """The object a rule renders to under its own kind (CNP/CCNP/NetworkPolicy): upload validation."""
    pv = PolicyVersion(spec, _placeholder_info(version))
    if rule.kind == "kubernetes":
        return _object(KNP, object_name(spec, rule), namespace, rule.spec, pv, rule, "")
    if spec.scope == "cluster":
        return _object(CCNP, object_name(spec, rule), None, rule.spec, pv, rule, "")
    return _object(CNP, object_name(spec, rule), namespace, rule.spec, pv, rule, "")


def object_name(spec: PolicySpec, rule: PolicyRule) -> str:
    """Policy name for a one-rule policy; `<policy>-<rule>` when a policy has several rules."""
    if len(spec.rules) == 1:
        return spec.name
    return f"{spec.name}-{rule.name}"[:253].rstrip("-.")


def managed_labels(pv: PolicyVersion, rule: PolicyRule) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        POLICY_LABEL: pv.name,
        POLICY_VERSION_LABEL: str(pv.version),
        RULE_LABEL: rule.name[:63].rstrip("-._") or "rule",
    }


def _object(
    kind: tuple[str, str],
    name: str,
    namespace: str | None,
    spec: Mapping[str, Any],
    pv: PolicyVersion,
    rule: PolicyRule,
    blueprint: str,
    *,
    translated: bool = False,
    clusterwide: bool = False,
) -> dict[str, Any]:
    annotations = {"netwarden.io/policy-scope": pv.spec.scope}
    if blueprint:
        annotations[BLUEPRINT_ANNOTATION] = blueprint
    if translated:
        source = CCNP[1] if pv.spec.scope == "cluster" else CNP[1]
        annotations[TRANSLATED_ANNOTATION] = f"{source} rule {rule.name}"
    if clusterwide:
        annotations["netwarden.io/note"] = (
            "cluster-wide policy rendered as one NetworkPolicy per namespace for the primary CNI"
        )
    metadata: dict[str, Any] = {"name": name, "labels": managed_labels(pv, rule), "annotations": annotations}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": kind[0], "kind": kind[1], "metadata": metadata, "spec": copy.deepcopy(dict(spec))}


def _engine_text(cluster: Cluster, engine: str) -> str:
    return {
        "cilium-chaining": f"Cilium chained over {cluster.primary_cni}",
        "cilium-primary": "Cilium as primary CNI",
    }.get(engine, f"{cluster.primary_cni}'s own NetworkPolicy enforcement")


def _placeholder_info(version: int) -> VersionInfo:
    return VersionInfo(version, "", "")


# -- Cilium rule -> Kubernetes NetworkPolicy ------------------------------------------------------

NamespacePredicate = Callable[[str], bool]


def _rule_as_network_policy(
    pv: PolicyVersion, rule: PolicyRule, *, clusterwide: bool, cluster: str
) -> tuple[dict[str, Any] | None, NamespacePredicate]:
    if rule.kind == "kubernetes":
        return copy.deepcopy(dict(rule.spec)), lambda _ns: True
    try:
        return cilium_to_network_policy(rule.spec, clusterwide=clusterwide)
    except Untranslatable as exc:
        raise RenderError(
            pv.name, pv.version, rule.name, f"spec.{exc.path}" if exc.path else "spec",
            f"{exc.reason}: Kubernetes NetworkPolicy cannot express this, and cluster "
            f"{cluster} enforces with its primary CNI (give the cluster a blueprint with a Cilium engine, "
            "or restrict the policy with enforcers: [cilium])",
            cluster,
        ) from exc


_SUPPORTED_SPEC_KEYS = {"endpointSelector", "ingress", "egress", "enableDefaultDeny", "description", "labels"}
_INGRESS_PEERS = {"fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"}
_EGRESS_PEERS = {"toEndpoints", "toCIDR", "toCIDRSet", "toEntities"}


def cilium_to_network_policy(
    spec: Mapping[str, Any], *, clusterwide: bool
) -> tuple[dict[str, Any] | None, NamespacePredicate]:
    """Translate a CNP/CCNP spec into a NetworkPolicy spec and the namespaces it applies to.

    Returns (None, ...) when the rule has no ingress/egress section (it has no effect in Cilium).
    Raises Untranslatable naming the first field NetworkPolicy cannot express.
    """
    for key in spec:
        if key not in _SUPPORTED_SPEC_KEYS:
            raise Untranslatable(key, _why_unsupported(key))
    if "endpointSelector" not in spec:
        raise Untranslatable("endpointSelector", "only endpointSelector rules translate (nodeSelector is host policy)")
    pod_selector, ns_requirements = _endpoint_selector(spec["endpointSelector"] or {}, "endpointSelector")
    result: dict[str, Any] = {"podSelector": pod_selector, "policyTypes": []}
    default_deny = spec.get("enableDefaultDeny") or {}
    for direction, peers, type_name in (("ingress", _INGRESS_PEERS, "Ingress"), ("egress", _EGRESS_PEERS, "Egress")):
        rules = spec.get(direction)
        if not rules:
            continue
        if default_deny.get(direction) is False:
            raise Untranslatable(
                f"enableDefaultDeny.{direction}", "allow rules without default deny (NetworkPolicy always isolates)"
            )
        translated = [
            r for i, raw in enumerate(rules)
            if (r := _translate_rule(raw or {}, f"{direction}[{i}]", peers, clusterwide)) is not None
        ]
        result["policyTypes"].append(type_name)
        result[direction] = translated
    if not result["policyTypes"]:
        return None, lambda _ns: True
    return result, _namespace_predicate(ns_requirements)


def _why_unsupported(key: str) -> str:
    return {
        "ingressDeny": "deny rules",
        "egressDeny": "deny rules",
        "nodeSelector": "host policies (nodeSelector)",
    }.get(key, f"the field {key}")


def _translate_rule(
    raw: Mapping[str, Any], path: str, peer_keys: set[str], clusterwide: bool
) -> dict[str, Any] | None:
    for key in raw:
        if key not in peer_keys and key != "toPorts":
            raise Untranslatable(f"{path}.{key}", _why_unsupported_peer(key))
    has_l3 = any(raw.get(k) for k in peer_keys)
    ports = _ports(raw.get("toPorts") or [], f"{path}.toPorts")
    if not has_l3 and not ports:
        # `{}` selects no peer in Cilium (it only turns on default deny); in NetworkPolicy `{}`
        # would allow everything, so it must be dropped, not copied.
        return None
    out: dict[str, Any] = {}
    if has_l3:
        peers: list[dict[str, Any]] = []
        wildcard = False
        for key in sorted(peer_keys):
            for i, item in enumerate(raw.get(key) or []):
                item_path = f"{path}.{key}[{i}]"
                if key.endswith("Endpoints"):
                    peers.append(_peer_selector(item or {}, item_path, clusterwide))
                elif key.endswith("CIDR"):
                    peers.append({"ipBlock": {"cidr": item}})
                elif key.endswith("CIDRSet"):
                    if "cidr" not in item:
                        raise Untranslatable(f"{item_path}.cidrGroupRef", "CIDR groups")
                    block = {"cidr": item["cidr"]}
                    if item.get("except"):
                        block["except"] = list(item["except"])
                    peers.append({"ipBlock": block})
                else:
                    entity = _entity_peers(item, item_path)
                    if entity is None:
                        wildcard = True
                    else:
                        peers.extend(entity)
        if not wildcard:
            out["from" if path.startswith("ingress") else "to"] = peers
    if ports:
        out["ports"] = ports
    return out


def _why_unsupported_peer(key: str) -> str:
    return {
        "toFQDNs": "DNS-name (toFQDNs) rules",
        "toServices": "service selectors (toServices)",
        # NetworkPolicy ports name TCP, UDP and SCTP only; dropping the ICMP types would allow less than
        # written and a port-less rule would allow every protocol, so the rule is refused.
        "icmps": "ICMP rules (NetworkPolicy ports name only TCP, UDP and SCTP)",
        "fromRequires": "requirement selectors (fromRequires)",
        "toRequires": "requirement selectors (toRequires)",
        "fromGroups": "cloud groups",
        "toGroups": "cloud groups",
        "fromNodes": "node selectors",
        "toNodes": "node selectors",
        "authentication": "mutual authentication",
    }.get(key, f"the field {key}")


def _entity_peers(entity: str, path: str) -> list[dict[str, Any]] | None:
    if entity == "all":
        return None
    if entity in ("world", "world-ipv4", "world-ipv6"):
        blocks = {"world": ("0.0.0.0/0", "::/0"), "world-ipv4": ("0.0.0.0/0",), "world-ipv6": ("::/0",)}[entity]
        return [{"ipBlock": {"cidr": b}} for b in blocks]
    if entity == "cluster":
        return [{"namespaceSelector": {}}]
    raise Untranslatable(path, f"the entity {entity!r}")


def _ports(to_ports: Sequence[Mapping[str, Any]], path: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(to_ports):
        for key in entry:
            if key != "ports":
                what = "L7 rules" if key == "rules" else f"the field {key}"
                raise Untranslatable(f"{path}[{i}].{key}", what)
        for j, port in enumerate(entry.get("ports") or []):
            p_path = f"{path}[{i}].ports[{j}]"
            raw_port = str(port.get("port", ""))
            if raw_port in ("", "0"):
                value: int | str | None = None
            elif raw_port.isdigit():
                value = int(raw_port)
            else:
                value = raw_port
            protocol = str(port.get("protocol", "ANY")).upper()
            protocols = _ALL_PROTOCOLS if protocol == "ANY" else (protocol,)
            if protocol not in (*_ALL_PROTOCOLS, "ANY"):
                raise Untranslatable(f"{p_path}.protocol", f"protocol {protocol}")
            for proto in protocols:
                item: dict[str, Any] = {"protocol": proto}
                if value is not None:
                    item["port"] = value
                    if port.get("endPort") and isinstance(value, int):
                        item["endPort"] = int(port["endPort"])
                out.append(item)
    return out


def _split_key(key: str, path: str) -> tuple[str, str]:
    """('pod'|'namespace-name'|'namespace-label', key) for a Cilium selector label key."""
    source, sep, rest = key.partition(":")
    if not sep:
        source, rest = "any", key
    if source not in ("k8s", "any"):
        raise Untranslatable(path, f"the {source}: label source in {key!r} (reserved/CIDR identities)")
    if rest == _POD_NAMESPACE:
        return "namespace-name", NAMESPACE_NAME_LABEL
    if rest.startswith(_NAMESPACE_LABELS):
        return "namespace-label", rest[len(_NAMESPACE_LABELS):]
    if rest.startswith("io.cilium."):
        raise Untranslatable(path, f"the Cilium-internal label {key!r}")
    return "pod", rest


Requirement = tuple[str, str, tuple[str, ...]]  # (key, operator, values)


def _selector_parts(selector: Mapping[str, Any], path: str) -> dict[str, list[Requirement]]:
    parts: dict[str, list[Requirement]] = {"pod": [], "namespace-name": [], "namespace-label": []}
    for key, value in (selector.get("matchLabels") or {}).items():
        kind, k = _split_key(key, f"{path}.matchLabels")
        parts[kind].append((k, "In", (str(value),)))
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        kind, k = _split_key(expr["key"], f"{path}.matchExpressions[{i}].key")
        parts[kind].append((k, expr["operator"], tuple(str(v) for v in expr.get("values") or ())))
    return parts


def _as_selector(reqs: Iterable[Requirement]) -> dict[str, Any]:
    labels: dict[str, str] = {}
    exprs: list[dict[str, Any]] = []
    for key, op, values in reqs:
        if op == "In" and len(values) == 1 and key not in labels:
            labels[key] = values[0]
        else:
            expr: dict[str, Any] = {"key": key, "operator": op}
            if op in ("In", "NotIn"):
                expr["values"] = list(values)
            exprs.append(expr)
    out: dict[str, Any] = {}
    if labels:
        out["matchLabels"] = labels
    if exprs:
        out["matchExpressions"] = exprs
    return out


def _endpoint_selector(selector: Mapping[str, Any], path: str) -> tuple[dict[str, Any], list[Requirement]]:
    parts = _selector_parts(selector, path)
    if parts["namespace-label"]:
        raise Untranslatable(path, "selecting the policy's own pods by namespace labels")
    return _as_selector(parts["pod"]), parts["namespace-name"]


def _peer_selector(selector: Mapping[str, Any], path: str, clusterwide: bool) -> dict[str, Any]:
    parts = _selector_parts(selector, path)
    peer: dict[str, Any] = {"podSelector": _as_selector(parts["pod"])}
    ns_reqs = parts["namespace-name"] + parts["namespace-label"]
    if ns_reqs:
        peer["namespaceSelector"] = _as_selector(ns_reqs)
    elif clusterwide:
        # A CCNP peer without a namespace means any namespace; a CNP peer means its own namespace,
        # which is also what a NetworkPolicy peer without namespaceSelector means.
        peer["namespaceSelector"] = {}
    return peer


def _namespace_predicate(reqs: Sequence[Requirement]) -> NamespacePredicate:
    def selects(namespace: str) -> bool:
        for _key, op, values in reqs:
            if op == "In" and namespace not in values:
                return False
            if op == "NotIn" and namespace in values:
                return False
            if op == "DoesNotExist":
                return False
        return True

    return selects

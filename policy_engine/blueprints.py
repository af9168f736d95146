"""Built-in blueprints and the engine choice a blueprint's install profile implies for a cluster."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from policy_engine.model import (
    ENFORCERS,
    BlueprintSpec,
    Cluster,
    InstallProfile,
    PolicyRef,
    PolicyRule,
    PolicySpec,
)

BUILTIN_DIR = Path(__file__).with_name("builtin_blueprints")
BUILTIN_AUTHOR = "netwarden (built-in)"
ZERO_TRUST_DAY0 = "zero-trust-day0"

CILIUM_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
KUBERNETES_KIND = "NetworkPolicy"


@dataclass(frozen=True)
class BuiltinBlueprint:
    blueprint: BlueprintSpec
    policies: tuple[PolicySpec, ...]


def rules_from_object(obj: Mapping[str, Any]) -> list[PolicyRule]:
    """The rules of a CNP/CCNP (`spec` and/or `specs`) or a NetworkPolicy manifest."""
    kind = obj.get("kind")
    name = str((obj.get("metadata") or {}).get("name") or "rule")
    if kind == KUBERNETES_KIND:
        return [PolicyRule(name, "kubernetes", dict(obj.get("spec") or {}))]
    if kind not in CILIUM_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join((*CILIUM_KINDS, KUBERNETES_KIND))}")
    specs = ([obj["spec"]] if obj.get("spec") is not None else []) + list(obj.get("specs") or [])
    if not specs:
        raise ValueError(f"{kind} {name} has neither spec nor specs")
    if len(specs) == 1:
        return [PolicyRule(name, "cilium", dict(specs[0]))]
    return [PolicyRule(f"{name}-{i}", "cilium", dict(s)) for i, s in enumerate(specs)]


def policy_from_object(obj: Mapping[str, Any]) -> PolicySpec:
    """A stored policy from one manifest; CCNP -> cluster scope, CNP/NetworkPolicy -> namespace."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    enforcers = tuple(e.strip() for e in annotations.get("netwarden.io/enforcers", ",".join(ENFORCERS)).split(","))
    return PolicySpec(
        name=meta["name"],
        scope="cluster" if obj.get("kind") == "CiliumClusterwideNetworkPolicy" else "namespace",
        rules=tuple(rules_from_object(obj)),
        description=" ".join(str(annotations.get("netwarden.io/description", "")).split()),
        enforcers=enforcers,
    )


@cache
def builtin_blueprints() -> tuple[BuiltinBlueprint, ...]:
    path = BUILTIN_DIR / f"{ZERO_TRUST_DAY0}.yaml"
    policies = tuple(policy_from_object(doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    day0 = BlueprintSpec(
        name=ZERO_TRUST_DAY0,
        description=(
            "Day-0 zero trust: default-deny ingress and egress in every namespace but kube-system, "
            "DNS to kube-dns, kube-system add-ons and Cilium health/host traffic allowed."
        ),
        # engine None: Cilium where it is installed (chaining or primary), else the CNI's own.
        install_profile=InstallProfile(engine=None, policy_enforcement_mode="default", audit_mode=False),
        cluster_policies=tuple(PolicyRef(p.name) for p in policies),
        namespace_policies=(),
        exclude_namespaces=("kube-system",),
    )
    return (BuiltinBlueprint(day0, policies),)


def effective_engine(cluster: Cluster, profile: InstallProfile | None) -> str:
    """Which engine enforces on `cluster`: the profile's choice, else Cilium when it is the CNI."""
    if profile is not None and profile.engine:
        return profile.engine
    return "cilium-primary" if cluster.primary_cni == "cilium" else "primary-cni"


def cilium_enforces(engine: str) -> bool:
    return engine in ("cilium-chaining", "cilium-primary")

"""Cilium installation profiles: which enforcement engine a cluster can use, and what to install for it.

The support matrix is the product's documented one (issue 4). The Helm values per primary CNI follow
the Cilium v1.16 chaining guides summarised in ../shared/reference/cilium-chaining.md; where upstream is
silent (Canal) the nearest documented path, generic-veth, is used and a note says so.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLUSTER_TYPES",
    "ENGINES",
    "POLICY_ENFORCEMENT_MODES",
    "PRIMARY_CNIS",
    "SUPPORT_MATRIX",
    "InstallPlan",
    "SupportDecision",
    "UnsupportedCombination",
    "check_support",
    "normalize_cluster_type",
    "render_install",
]

CLUSTER_TYPES = ("EKS", "AKS", "upstream", "bare-metal", "VM", "MicroK8s", "MKS")
PRIMARY_CNIS = ("aws-cni", "azure", "azure-cni-overlay", "kubenet", "calico", "canal", "cilium")
ENGINES = ("cilium-chaining", "cilium-primary", "primary-cni")
POLICY_ENFORCEMENT_MODES = ("default", "always", "never")
MANAGED_BY = {"app.kubernetes.io/managed-by": "netwarden"}
CNI_CONFIGMAP = "cni-configuration"

# "upstream / bare metal / VM" is one row family in the matrix: the same self-managed Kubernetes.
_SELF_MANAGED = ("upstream", "bare-metal", "VM")
_ALIASES = {
    "eks": "EKS",
    "aks": "AKS",
    "upstream": "upstream",
    "kubeadm": "upstream",
    "bare-metal": "bare-metal",
    "baremetal": "bare-metal",
    "bare metal": "bare-metal",
    "vm": "VM",
    "microk8s": "MicroK8s",
    "mks": "MKS",
}


@dataclass(frozen=True)
class SupportDecision:
    """The matrix's answer for one (cluster type, primary CNI)."""

    supported: bool
    chaining_supported: bool
    recommendation: str
    # Engines this combination may be rendered with (empty when unsupported).
    engines: tuple[str, ...] = ()


class UnsupportedCombination(ValueError):
    """Refusal of a cluster type / primary CNI / engine combination, carrying the recommendation."""

    def __init__(self, message: str, recommendation: str) -> None:
        super().__init__(f"{message}; recommendation: {recommendation}")
        self.recommendation = recommendation


_CHAIN = ("cilium-chaining",)
_OWN_OR_CHAIN = ("primary-cni", "cilium-chaining")

# (cluster type, primary CNI) -> decision, exactly the documented rows.
SUPPORT_MATRIX: dict[tuple[str, str], SupportDecision] = {
    ("AKS", "azure"): SupportDecision(
        True, True, "Azure's policy enforcement, or Cilium in chaining mode", _OWN_OR_CHAIN
    ),
    ("AKS", "calico"): SupportDecision(
        True, True, "Calico's enforcement, or Cilium in chaining mode", _OWN_OR_CHAIN
    ),
    ("AKS", "kubenet"): SupportDecision(False, False, "not supported"),
    # Chaining is not available on overlay; the combination is served by AKS's own Cilium dataplane
    # ("Azure CNI powered by Cilium"), which enforces Cilium policies with nothing for us to install.
    ("AKS", "azure-cni-overlay"): SupportDecision(
        True,
        False,
        "azure-cni-overlay with Cilium dataplane, or Cilium in chaining mode",
        ("primary-cni", "cilium-primary"),
    ),
    ("EKS", "aws-cni"): SupportDecision(
        True, True, "aws-cni's enforcement, or Cilium in chaining mode", _OWN_OR_CHAIN
    ),
    ("EKS", "calico"): SupportDecision(
        True, True, "Calico's enforcement, or Cilium in chaining mode", _OWN_OR_CHAIN
    ),
    **{
        (t, "calico"): SupportDecision(
            True, True, "Calico's enforcement, or Cilium in chaining mode", _OWN_OR_CHAIN
        )
        for t in ("MKS", *_SELF_MANAGED, "MicroK8s")
    },
    ("MKS", "canal"): SupportDecision(True, True, "Cilium in chaining mode", _CHAIN),
    **{
        (t, "cilium"): SupportDecision(
            True,
            False,
            "Cilium's own enforcement; install nothing",
            ("cilium-primary", "primary-cni", "cilium-chaining"),
        )
        for t in CLUSTER_TYPES
    },
}


def normalize_cluster_type(cluster_type: str) -> str:
    """Canonical spelling of a cluster type ('eks' -> 'EKS', 'bare metal' -> 'bare-metal')."""
    canonical = _ALIASES.get(cluster_type.strip().lower().replace("_", "-"))
    if canonical is None:
        raise ValueError(f"unknown cluster type {cluster_type!r}: expected one of {', '.join(CLUSTER_TYPES)}")
    return canonical


def _normalize_cni(primary_cni: str) -> str:
    cni = primary_cni.strip().lower()
    if cni not in PRIMARY_CNIS:
        raise ValueError(f"unknown primary CNI {primary_cni!r}: expected one of {', '.join(PRIMARY_CNIS)}")
    return cni


def check_support(cluster_type: str, primary_cni: str) -> SupportDecision:
    """Look a combination up in the support matrix; combinations it does not list are unsupported."""
    ctype, cni = normalize_cluster_type(cluster_type), _normalize_cni(primary_cni)
    decision = SUPPORT_MATRIX.get((ctype, cni))
    if decision is not None:
        return decision
    listed = sorted({c for (t, c) in SUPPORT_MATRIX if t == ctype})
    return SupportDecision(
        False,
        False,
        f"not supported: {cni} on {ctype} is not in the support matrix (supported primary CNIs on {ctype}: {', '.join(listed)})",
    )


@dataclass
class InstallPlan:
    """What netwarden installs on one cluster for its enforcement engine."""

    cluster_name: str
    cluster_type: str
    primary_cni: str
    engine: str
    helm_values: dict[str, Any] = field(default_factory=dict)
    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    installs_nothing: bool = False
    # Which policy kinds enforce on this cluster: Cilium's (CNP/CCNP) or Kubernetes NetworkPolicy.
    policy_kinds: tuple[str, ...] = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")

    def helm_set_args(self) -> list[str]:
        """The values as `--set key=value` arguments, in the guides' spelling."""
        return [f"--set {key}={_helm_scalar(value)}" for key, value in _flatten(self.helm_values)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster_name,
            "clusterType": self.cluster_type,
            "primaryCNI": self.primary_cni,
            "engine": self.engine,
            "installsNothing": self.installs_nothing,
            "policyKinds": list(self.policy_kinds),
            "helmValues": copy.deepcopy(self.helm_values),
            "objects": copy.deepcopy(self.objects),
            "notes": list(self.notes),
        }


# Chaining Helm values per primary CNI (cilium-chaining.md, v1.16.5 guides).
_CHAINING_VALUES: dict[str, dict[str, Any]] = {
    "aws-cni": {
        "cni": {"chainingMode": "aws-cni", "exclusive": False},
        "enableIPv4Masquerade": False,
        "routingMode": "native",
        "endpointRoutes": {"enabled": True},
    },
    "azure": {
        "cni": {
            "chainingMode": "generic-veth",
            "customConf": True,
            "exclusive": False,
            "configMap": CNI_CONFIGMAP,
        },
        "nodeinit": {"enabled": True},
        "routingMode": "native",
        "enableIPv4Masquerade": False,
        "endpointRoutes": {"enabled": True},
    },
    "calico": {
        "cni": {"chainingMode": "generic-veth", "customConf": True, "configMap": CNI_CONFIGMAP},
        "routingMode": "native",
        "enableIPv4Masquerade": False,
        "enableIdentityMark": False,
    },
    # Canal = Calico policy over flannel networking (veth). No upstream guide: generic-veth, and like
    # Calico it rewrites packet marks, so identity marks stay off.
    "canal": {
        "cni": {"chainingMode": "generic-veth", "customConf": True, "configMap": CNI_CONFIGMAP},
        "routingMode": "native",
        "enableIPv4Masquerade": False,
        "enableIdentityMark": False,
    },
}

# The CNI conflist each generic-veth guide puts in the `cni-configuration` ConfigMap (key cni-config).
_CONFLISTS: dict[str, dict[str, Any]] = {
    "azure": {
        "cniVersion": "0.3.0",
        "name": "azure",
        "plugins": [
            {"type": "azure-vnet", "mode": "transparent", "ipam": {"type": "azure-vnet-ipam"}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"name": "cilium", "type": "cilium-cni"},
        ],
    },
    "calico": {
        "cniVersion": "0.3.1",
        "name": "generic-veth",
        "plugins": [
            {
                "type": "calico",
                "log_level": "info",
                "datastore_type": "kubernetes",
                "mtu": 1440,
                "ipam": {"type": "calico-ipam"},
                "policy": {"type": "k8s"},
                "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"},
            },
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
            {"type": "cilium-cni"},
        ],
    },
    "canal": {
        "cniVersion": "0.3.1",
        "name": "generic-veth",
        "plugins": [
            {
                "type": "calico",
                "log_level": "info",
                "datastore_type": "kubernetes",
                "mtu": 1450,
                "ipam": {"type": "host-local", "subnet": "usePodCidr"},
                "policy": {"type": "k8s"},
                "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"},
            },
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
            {"type": "cilium-cni", "chaining-mode": "generic-veth"},
        ],
    },
}

_CNI_NOTES: dict[str, list[str]] = {
    "aws-cni": [
        "Requires AWS VPC CNI >= 1.11.2 and Cilium >= 1.14 (routingMode=native).",
        "Security groups for pods: attach AmazonEKSVPCResourceController and set DISABLE_TCP_EARLY_DEMUX=true "
        "(aws-node init container) and ENABLE_POD_ENI=true on aws-node.",
    ],
    "azure": [
        "Azure CNI (legacy) chaining; Cilium's guide recommends BYO CNI or Azure CNI powered by Cilium for new clusters.",
        "nodeinit mounts bpffs and switches Azure CNI to transparent mode.",
    ],
    "calico": [
        "L7 policy is limited under Calico chaining: Calico rewrites the packet marks Cilium's proxy relies on (cilium#12454)."
    ],
    "canal": [
        "Cilium documents no Canal chaining guide; Canal uses flannel veth networking, so the generic-veth guide "
        "is applied (an inference, not upstream text). Check `ip -d link` shows veth devices first."
    ],
}

_COMMON_CHAINING_NOTES = [
    "Chaining limits: L7 policy may be limited (cilium#12454); IPsec transparent encryption is not supported (cilium#15596); "
    "with WireGuard set cni.enableRouteMTUForCNIChaining=true (Cilium >= 1.16).",
    "Pods started before Cilium are not enforced until restarted: list them with KubeCluster.unmanaged_pods() "
    "and restart their workloads (--restart-unmanaged).",
]

_OWN_ENFORCEMENT_NOTES = {
    "aws-cni": "aws-cni enforces Kubernetes NetworkPolicy through the VPC CNI network policy agent "
    "(enable it with enableNetworkPolicy=true on the vpc-cni add-on).",
    "azure": "Azure Network Policy Manager enforces Kubernetes NetworkPolicy (cluster created with --network-policy azure).",
    "calico": "Calico enforces Kubernetes NetworkPolicy.",
    "azure-cni-overlay": "AKS's Cilium dataplane (Azure CNI powered by Cilium) enforces Cilium policies; it is managed by AKS.",
    "cilium": "Cilium is the primary CNI and enforces its own policies.",
}


def render_install(
    cluster_name: str,
    cluster_type: str,
    primary_cni: str,
    *,
    engine: str = "cilium-chaining",
    policy_enforcement_mode: str = "default",
    audit_mode: bool = False,
) -> InstallPlan:
    """The install plan for one cluster, or UnsupportedCombination with the matrix's recommendation."""
    ctype, cni = normalize_cluster_type(cluster_type), _normalize_cni(primary_cni)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if policy_enforcement_mode not in POLICY_ENFORCEMENT_MODES:
        raise ValueError(
            f"unknown policy enforcement mode {policy_enforcement_mode!r}: expected one of {', '.join(POLICY_ENFORCEMENT_MODES)}"
        )
    decision = check_support(ctype, cni)
    if not decision.supported:
        raise UnsupportedCombination(
            f"{ctype} with primary CNI {cni} is not supported", decision.recommendation
        )
    if engine not in decision.engines:
        raise UnsupportedCombination(
            f"engine {engine} is not available for {ctype} with primary CNI {cni}", decision.recommendation
        )
    plan = InstallPlan(cluster_name=cluster_name, cluster_type=ctype, primary_cni=cni, engine=engine)

    if cni in ("cilium", "azure-cni-overlay"):
        # Cilium already enforces (a self-installed one, or AKS's managed dataplane): nothing to install.
        plan.installs_nothing = True
        if cni == "azure-cni-overlay":
            # AKS supports Kubernetes NetworkPolicy on its Cilium dataplane; Cilium CRDs are AKS-managed.
            plan.policy_kinds = ("NetworkPolicy",)
        plan.notes.append(_OWN_ENFORCEMENT_NOTES[cni] + " netwarden installs nothing.")
        if engine == "cilium-chaining":
            plan.notes.append("Chaining does not apply: Cilium is already the primary CNI.")
        plan.notes.append(
            "Cilium's policyEnforcementMode and policyAuditMode are set by whoever installed Cilium; "
            f"the blueprint asks for {policy_enforcement_mode!r}, audit {'on' if audit_mode else 'off'}."
        )
        plan.notes.append(
            "Hubble Relay must be enabled (hubble.relay.enabled=true) for the flow collectors to connect."
        )
        return plan

    if engine == "primary-cni":
        plan.installs_nothing = True
        plan.policy_kinds = ("NetworkPolicy",)
        plan.notes.append(_OWN_ENFORCEMENT_NOTES[cni] + " netwarden installs nothing.")
        plan.notes.append(
            "Cluster-wide policies are rendered as one NetworkPolicy per namespace; Cilium-only features "
            "(deny rules, entities, FQDN, L7) cannot be expressed."
        )
        plan.notes.append("No Hubble on this cluster: flows are not visible unless Cilium is chained.")
        return plan

    # engine == "cilium-chaining"
    values = copy.deepcopy(_CHAINING_VALUES[cni])
    values["cluster"] = {"name": cluster_name}
    values["policyEnforcementMode"] = policy_enforcement_mode
    values["policyAuditMode"] = audit_mode
    # Relay on, so the collectors have one gRPC endpoint (port 4245) for the whole cluster.
    values["hubble"] = {"enabled": True, "relay": {"enabled": True}}
    plan.helm_values = values
    if cni in _CONFLISTS:
        plan.objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": CNI_CONFIGMAP, "namespace": "kube-system", "labels": dict(MANAGED_BY)},
                "data": {"cni-config": json.dumps(_CONFLISTS[cni], indent=2)},
            }
        )
        plan.notes.append(
            f"Create ConfigMap kube-system/{CNI_CONFIGMAP} (key cni-config) before installing Cilium."
        )
    plan.notes.extend(_CNI_NOTES.get(cni, []))
    plan.notes.extend(_COMMON_CHAINING_NOTES)
    if audit_mode:
        plan.notes.append("Audit mode: policy verdicts are logged (AUDIT) but nothing is dropped.")
    return plan


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def _helm_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

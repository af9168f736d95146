"""The control-plane model: clusters, projects, workspaces, policies, blueprints, assignments.

Plain frozen dataclasses with no I/O. Versioned things (policies, blueprints) are split into a spec
(what the user wrote, hashed to decide whether a change is a new version) and a version record
(the spec plus who/when/where it came from, which never takes part in the hash).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

SCOPES = ("cluster", "namespace")
# Where a rule is enforced: "cilium" renders CNP/CCNP, "kubernetes" renders NetworkPolicy.
ENFORCERS = ("cilium", "kubernetes")
RULE_KINDS = ("cilium", "kubernetes")
ENGINES = ("cilium-chaining", "cilium-primary", "primary-cni")
ENFORCEMENT_MODES = ("default", "always", "never")
# A policy version is enforced (rendered to clusters) or staged (evaluated on flows and in reports only).
POLICY_MODES = ("enforced", "staged")
CLUSTER_TYPES = ("eks", "aks", "upstream", "bare-metal", "vm", "microk8s", "mks")

Scope = Literal["cluster", "namespace"]
RuleKind = Literal["cilium", "kubernetes"]

# Names become Kubernetes object names and label values, so they follow RFC 1123 labels (<= 63).
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= 63 and bool(_NAME_RE.match(name))


def content_hash(content: Mapping[str, Any]) -> str:
    """Stable hash of JSON content: equal specs give equal hashes whatever the key order."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Cluster:
    name: str
    cluster_type: str
    primary_cni: str
    kube_context: str | None = None
    kubeconfig: str | None = None
    # Direct API URL (tests, or clusters reached without a kubeconfig).
    api_server: str | None = None
    # Namespaces known to exist; rendering also uses workspace and assignment namespaces.
    namespaces: tuple[str, ...] = ()

    def to_content(self) -> dict[str, Any]:
        return {
            "type": self.cluster_type,
            "primaryCNI": self.primary_cni,
            "kubeContext": self.kube_context,
            "kubeconfig": self.kubeconfig,
            "apiServer": self.api_server,
            "namespaces": list(self.namespaces),
        }


@dataclass(frozen=True)
class Project:
    name: str
    clusters: tuple[str, ...] = ()
    description: str = ""

    def to_content(self) -> dict[str, Any]:
        return {"clusters": sorted(self.clusters), "description": self.description}


@dataclass(frozen=True, order=True)
class NamespaceRef:
    cluster: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.cluster}/{self.namespace}"


@dataclass(frozen=True)
class Workspace:
    name: str
    project: str
    namespaces: tuple[NamespaceRef, ...] = ()
    description: str = ""

    def to_content(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "namespaces": [{"cluster": r.cluster, "namespace": r.namespace} for r in sorted(self.namespaces)],
            "description": self.description,
        }


@dataclass(frozen=True)
class NamespaceOwner:
    """Who owns a (cluster, namespace): the join key the flow pipeline and RBAC scope filters use."""

    cluster: str
    namespace: str
    project: str
    workspace: str


@dataclass(frozen=True)
class PolicyRule:
    """One rule: a CNP/CCNP spec (kind cilium) or a NetworkPolicy spec (kind kubernetes)."""

    name: str
    kind: RuleKind
    spec: Mapping[str, Any]

    def to_content(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "spec": _plain(self.spec)}


@dataclass(frozen=True)
class PolicySpec:
    name: str
    scope: Scope
    rules: tuple[PolicyRule, ...]
    description: str = ""
    # Enforcers this policy is rendered for; a Cilium-only policy (health, host entities) is
    # skipped, with a note, on clusters where the primary CNI enforces.
    enforcers: tuple[str, ...] = ENFORCERS

    def to_content(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "description": self.description,
            "enforcers": list(self.enforcers),
            "rules": [r.to_content() for r in self.rules],
        }

    @classmethod
    def from_content(cls, name: str, content: Mapping[str, Any]) -> PolicySpec:
        return cls(
            name=name,
            scope=content["scope"],
            description=content.get("description", ""),
            enforcers=tuple(content.get("enforcers", ENFORCERS)),
            rules=tuple(PolicyRule(r["name"], r["kind"], r["spec"]) for r in content["rules"]),
        )

    def hash(self) -> str:
        return content_hash(self.to_content())


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: str
    created_by: str
    source: str = ""
    message: str = ""
    mode: str = "enforced"  # POLICY_MODES; blueprints are always enforced


@dataclass(frozen=True)
class PolicyVersion:
    spec: PolicySpec
    info: VersionInfo
    builtin: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def staged(self) -> bool:
        return self.info.mode == "staged"


@dataclass(frozen=True)
class PolicyState:
    """A policy's versions in effect: the enforced current one (rendered to clusters) and the staged one
    (evaluated only); either may be missing (a new policy can be staged before it is ever enforced)."""

    name: str
    scope: Scope
    enforced: PolicyVersion | None = None
    staged: PolicyVersion | None = None

    @property
    def builtin(self) -> bool:
        return any(v.builtin for v in (self.enforced, self.staged) if v is not None)


@dataclass(frozen=True)
class InstallProfile:
    # None: pick from the primary CNI (cilium -> cilium-primary, else the CNI's own enforcement).
    engine: str | None = None
    policy_enforcement_mode: str = "default"
    audit_mode: bool = False

    def to_content(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "policyEnforcementMode": self.policy_enforcement_mode,
            "auditMode": self.audit_mode,
        }

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> InstallProfile:
        return cls(
            engine=content.get("engine"),
            policy_enforcement_mode=content.get("policyEnforcementMode", "default"),
            audit_mode=bool(content.get("auditMode", False)),
        )


@dataclass(frozen=True)
class PolicyRef:
    """A policy named by a blueprint; version None follows the policy's current version."""

    name: str
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> PolicyRef:
        name, _, version = text.partition("@")
        return cls(name, int(version) if version else None)


@dataclass(frozen=True)
class BlueprintSpec:
    name: str
    install_profile: InstallProfile = field(default_factory=InstallProfile)
    cluster_policies: tuple[PolicyRef, ...] = ()
    # Namespace policies rendered into every namespace of an assigned cluster but these.
    namespace_policies: tuple[PolicyRef, ...] = ()
    exclude_namespaces: tuple[str, ...] = ("kube-system",)
    description: str = ""

    def to_content(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "installProfile": self.install_profile.to_content(),
            "clusterPolicies": [str(r) for r in self.cluster_policies],
            "namespaceDefaults": {
                "policies": [str(r) for r in self.namespace_policies],
                "excludeNamespaces": list(self.exclude_namespaces),
            },
        }

    @classmethod
    def from_content(cls, name: str, content: Mapping[str, Any]) -> BlueprintSpec:
        defaults = content.get("namespaceDefaults", {})
        return cls(
            name=name,
            description=content.get("description", ""),
            install_profile=InstallProfile.from_content(content.get("installProfile", {})),
            cluster_policies=tuple(PolicyRef.parse(r) for r in content.get("clusterPolicies", [])),
            namespace_policies=tuple(PolicyRef.parse(r) for r in defaults.get("policies", [])),
            exclude_namespaces=tuple(defaults.get("excludeNamespaces", ["kube-system"])),
        )

    def hash(self) -> str:
        return content_hash(self.to_content())


@dataclass(frozen=True)
class BlueprintVersion:
    spec: BlueprintSpec
    info: VersionInfo
    builtin: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.info.version


@dataclass(frozen=True, order=True)
class AssignmentTarget:
    """Where a namespace policy goes: one (cluster, namespace), or every namespace of a workspace."""

    cluster: str = ""
    namespace: str = ""
    workspace: str = ""

    def __str__(self) -> str:
        return f"workspace {self.workspace}" if self.workspace else f"{self.cluster}/{self.namespace}"


@dataclass(frozen=True)
class Assignment:
    """Either blueprint -> clusters, or namespace policy -> targets."""

    name: str
    blueprint: str | None = None
    clusters: tuple[str, ...] = ()
    policy: str | None = None
    targets: tuple[AssignmentTarget, ...] = ()

    def to_content(self) -> dict[str, Any]:
        if self.blueprint is not None:
            return {"blueprint": self.blueprint, "clusters": sorted(self.clusters)}
        return {
            "policy": self.policy,
            "targets": [
                {k: v for k, v in (("cluster", t.cluster), ("namespace", t.namespace), ("workspace", t.workspace)) if v}
                for t in sorted(self.targets)
            ],
        }


def _plain(value: Any) -> Any:
    """Deep copy of JSON-like data as plain dicts/lists (specs may arrive as any Mapping)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

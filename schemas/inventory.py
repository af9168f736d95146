"""Messages of the compacted `inventory` topic: what the flow enricher needs to know of each cluster.

One message per cluster, key `cluster/<name>`, value the cluster's whole inventory as JSON, so compaction
keeps exactly the latest state of every cluster and a consumer reading the topic from the start ends with
the current inventory. A deleted cluster gets a tombstone (null value). Each message carries:

- `revision`: the message's revision for this cluster (monotonic; any change of the content bumps it);
- ownership: the cluster's project(s) and, per namespace, its workspace and that workspace's project;
- `desired`: the cluster's desired policy set, as the evaluator takes it (policy objects as plain dicts,
  the enforcing engine, policyEnforcementMode, namespace labels), with its own `revision` (bumped only when
  the set changes) and per object the netwarden policy, version and rule it was rendered from;
- `staged`: the same for the staged set: the desired set with every staged policy version in place of the
  enforced one (and staged-only policies added), with its own `revision` and `stagedVersions` (which staged
  versions it uses). With nothing staged on the cluster it has the desired set's content and no
  `stagedVersions` (so the stream copies the desired verdicts instead of evaluating twice). Null only in
  messages recorded before staging existed.

The format is versioned (`format`); readers refuse other versions with a clear error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INVENTORY_FORMAT = 1
KEY_PREFIX = "cluster/"


class InventoryFormatError(ValueError):
    """An inventory message that does not follow this format: names the field and the value."""


def cluster_key(cluster: str) -> bytes:
    return f"{KEY_PREFIX}{cluster}".encode()


def cluster_of_key(key: bytes | None) -> str:
    text = (key or b"").decode("utf-8", "replace")
    if not text.startswith(KEY_PREFIX) or len(text) == len(KEY_PREFIX):
        raise InventoryFormatError(f"key: {text!r} is not 'cluster/<name>'")
    return text[len(KEY_PREFIX) :]


@dataclass(frozen=True)
class NamespaceOwner:
    project: str
    workspace: str
    source: str = "store"  # "store" (a workspace declares it) or "label" (netwarden.io/workspace)


@dataclass(frozen=True)
class RenderedFrom:
    """Which netwarden policy (name, version, rule) a rendered object comes from."""

    policy: str
    version: int
    rule: str = ""


@dataclass(frozen=True)
class StagedVersion:
    """A staged policy version a staged set uses in place of the enforced one (0: the policy is staged only)."""

    policy: str
    version: int
    enforced_version: int = 0


@dataclass(frozen=True)
class PolicySet:
    """A cluster's policy set as the evaluator takes it (policy_engine.evaluator.PolicyEvaluator)."""

    revision: int
    engine: str  # evaluator engine: "cilium" (Cilium enforces) or "kubernetes" (the primary CNI does)
    netwarden_engine: str = ""  # cilium-primary, cilium-chaining, primary-cni
    enforcement_mode: str = "default"  # Cilium policyEnforcementMode
    blueprint: str = ""
    blueprint_version: int = 0
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    policies: tuple[Mapping[str, Any], ...] = ()  # CNP / CCNP / NetworkPolicy objects
    # "Kind/namespace/name" (namespace empty for clusterwide) -> where the object was rendered from
    rendered_from: Mapping[str, RenderedFrom] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    # Rendering failed: the set is unknown and flows of the cluster are not evaluated (verdict 0).
    error: str = ""
    # Staged sets: the staged versions overlaid on the desired set (empty: same content as the desired set).
    staged_versions: tuple[StagedVersion, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "engine": self.engine,
            "netwardenEngine": self.netwarden_engine,
            "policyEnforcementMode": self.enforcement_mode,
            "blueprint": self.blueprint,
            "blueprintVersion": self.blueprint_version,
            "namespaceLabels": {ns: dict(labels) for ns, labels in sorted(self.namespace_labels.items())},
            "policies": [dict(p) for p in self.policies],
            "renderedFrom": {
                k: {"policy": v.policy, "version": v.version, "rule": v.rule}
                for k, v in sorted(self.rendered_from.items())
            },
            "notes": list(self.notes),
            "error": self.error,
            "stagedVersions": [
                {"policy": v.policy, "version": v.version, "enforcedVersion": v.enforced_version}
                for v in self.staged_versions
            ],
        }

    @classmethod
    def from_dict(cls, d: Any, path: str) -> PolicySet:
        d = _object(d, path)
        rendered = _object(d.get("renderedFrom") or {}, f"{path}.renderedFrom")
        labels = _object(d.get("namespaceLabels") or {}, f"{path}.namespaceLabels")
        policies = d.get("policies") or []
        if not isinstance(policies, list) or not all(isinstance(p, dict) for p in policies):
            raise InventoryFormatError(f"{path}.policies: expected a list of policy objects")
        return cls(
            revision=_int(d.get("revision"), f"{path}.revision"),
            engine=_str(d.get("engine"), f"{path}.engine"),
            netwarden_engine=str(d.get("netwardenEngine") or ""),
            enforcement_mode=str(d.get("policyEnforcementMode") or "default"),
            blueprint=str(d.get("blueprint") or ""),
            blueprint_version=int(d.get("blueprintVersion") or 0),
            namespace_labels={
                str(ns): {str(k): str(v) for k, v in _object(lab, f"{path}.namespaceLabels.{ns}").items()}
                for ns, lab in labels.items()
            },
            policies=tuple(policies),
            rendered_from={
                str(k): RenderedFrom(
                    _str(_object(v, f"{path}.renderedFrom.{k}").get("policy"), f"{path}.renderedFrom.{k}.policy"),
                    _int(v.get("version"), f"{path}.renderedFrom.{k}.version"),
                    str(v.get("rule") or ""),
                )
                for k, v in rendered.items()
            },
            notes=tuple(str(n) for n in d.get("notes") or ()),
            error=str(d.get("error") or ""),
            staged_versions=tuple(
                StagedVersion(
                    _str(_object(v, f"{path}.stagedVersions[{i}]").get("policy"), f"{path}.stagedVersions[{i}].policy"),
                    _int(v.get("version"), f"{path}.stagedVersions[{i}].version"),
                    _int(v.get("enforcedVersion", 0), f"{path}.stagedVersions[{i}].enforcedVersion"),
                )
                for i, v in enumerate(d.get("stagedVersions") or ())
            ),
        )


@dataclass(frozen=True)
class ClusterInventory:
    cluster: str
    revision: int
    projects: tuple[str, ...] = ()  # a cluster may belong to several projects
    namespaces: Mapping[str, NamespaceOwner] = field(default_factory=dict)
    desired: PolicySet | None = None
    staged: PolicySet | None = None

    @property
    def project(self) -> str:
        """The cluster's project as one column value ("" when none; several joined by ",")."""
        return ",".join(self.projects)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": INVENTORY_FORMAT,
            "cluster": self.cluster,
            "revision": self.revision,
            "projects": list(self.projects),
            "namespaces": {
                ns: {"project": o.project, "workspace": o.workspace, "source": o.source}
                for ns, o in sorted(self.namespaces.items())
            },
            "desired": self.desired.to_dict() if self.desired else None,
            "staged": self.staged.to_dict() if self.staged else None,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: Any) -> ClusterInventory:
        d = _object(d, "inventory")
        if d.get("format") != INVENTORY_FORMAT:
            raise InventoryFormatError(f"format: {d.get('format')!r} is not {INVENTORY_FORMAT}")
        namespaces = _object(d.get("namespaces") or {}, "namespaces")
        return cls(
            cluster=_str(d.get("cluster"), "cluster"),
            revision=_int(d.get("revision"), "revision"),
            projects=tuple(str(p) for p in d.get("projects") or ()),
            namespaces={
                str(ns): NamespaceOwner(
                    str(_object(o, f"namespaces.{ns}").get("project") or ""),
                    _str(o.get("workspace"), f"namespaces.{ns}.workspace"),
                    str(o.get("source") or "store"),
                )
                for ns, o in namespaces.items()
            },
            desired=PolicySet.from_dict(d["desired"], "desired") if d.get("desired") is not None else None,
            staged=PolicySet.from_dict(d["staged"], "staged") if d.get("staged") is not None else None,
        )

    @classmethod
    def from_json(cls, value: bytes) -> ClusterInventory:
        try:
            data = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InventoryFormatError(f"value: not JSON: {exc}") from None
        return cls.from_dict(data)


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InventoryFormatError(f"{path}: expected an object, got {value!r:.80}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise InventoryFormatError(f"{path}: expected a non-empty string, got {value!r:.80}")
    return value


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InventoryFormatError(f"{path}: expected a non-negative integer, got {value!r:.80}")
    return value

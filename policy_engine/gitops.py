"""GitOps: load `netwarden.io/v1` YAML documents from a file or a Git working tree, and apply them
to the control plane (idempotently), or show what applying would change (`diff`).

Document kinds: Cluster, Project, Workspace, Policy, Blueprint, Assignment (format in README,
"Policies"). A Policy document has `spec.mode: enforced` (the default) or `staged`; the files are declarative
per policy: an enforced document sets the enforced version, a staged one the staged version (the enforced
version, which the files then do not hold, is left as it is), and a policy with an enforced document but no
staged one has nothing staged after apply (so promoting in Git is: delete the staged document, put its content
in the enforced one). One policy may have one document of each mode. `stage_documents` (`netwarden policy
stage`) stages Policy documents and refuses anything that would change what clusters enforce. Every problem is reported as one line naming the file, the document's index in that
file (1-based) and the field: `deploy/x.yaml: document 2 (Policy web): spec.rules[0].cilium...: ...`.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from policy_engine.blueprints import rules_from_object
from policy_engine.control_plane import ControlPlane, PolicyInvalid, resolve_policy_set
from policy_engine.model import (
    ENFORCEMENT_MODES,
    ENFORCERS,
    ENGINES,
    POLICY_MODES,
    SCOPES,
    Assignment,
    AssignmentTarget,
    BlueprintSpec,
    BlueprintVersion,
    Cluster,
    InstallProfile,
    NamespaceRef,
    PolicyRef,
    PolicyRule,
    PolicySpec,
    PolicyState,
    PolicyVersion,
    Project,
    Workspace,
    is_valid_name,
)
from policy_engine.render import RenderedCluster, RenderError, render_cluster
from policy_engine.roles import PermissionDenied
from policy_engine.store import StoreError

API_VERSION = "netwarden.io/v1"
# Apply order: what others refer to comes first; prune deletes in the reverse order.
KINDS = ("Cluster", "Project", "Workspace", "Policy", "Blueprint", "Assignment")

Model = Cluster | Project | Workspace | PolicySpec | BlueprintSpec | Assignment


@dataclass(frozen=True)
class DocumentRef:
    file: str
    index: int
    kind: str = ""
    name: str = ""

    def __str__(self) -> str:
        what = f" ({self.kind} {self.name})" if self.kind and self.name else f" ({self.kind})" if self.kind else ""
        return f"{self.file}: document {self.index}{what}" if self.index else f"{self.file}{what}"


class GitOpsError(ValueError):
    def __init__(self, ref: DocumentRef, field: str, message: str, *, denied: PermissionDenied | None = None) -> None:
        self.ref, self.field, self.message = ref, field, message
        self.denied = denied  # a role refusal (the API answers 403 for these)
        super().__init__(f"{ref}: {field}: {message}" if field else f"{ref}: {message}")


class GitOpsErrors(ValueError):
    """All problems found in one run, one line each."""

    def __init__(self, errors: Sequence[GitOpsError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    @property
    def denied(self) -> PermissionDenied | None:
        """The first role refusal among the problems, if any."""
        return next((e.denied for e in self.errors if e.denied is not None), None)


@dataclass(frozen=True)
class Document:
    ref: DocumentRef
    kind: str
    name: str
    model: Model
    source: str = ""
    mode: str = ""  # Policy: spec.mode as written ("" = not given, enforced)

    @property
    def staged(self) -> bool:
        return self.mode == "staged"


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # create | update | unchanged | delete | stage | unstage
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:9} {self.kind} {self.name}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class ObjectChange:
    action: str  # create | update | delete
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.action:6} {self.kind} {where}{self.name}"


@dataclass
class DiffReport:
    store: list[Change] = field(default_factory=list)
    clusters: dict[str, list[ObjectChange]] = field(default_factory=dict)
    rendered: dict[str, RenderedCluster] = field(default_factory=dict)
    # The staged sets' objects (evaluated on flows, never synced): only clusters where they change.
    staged: dict[str, list[ObjectChange]] = field(default_factory=dict)


# -- loading --------------------------------------------------------------------------------------


def load_documents(path: str | Path) -> list[Document]:
    """Parse every `*.yaml`/`*.yml` under `path` (or the one file). Raises GitOpsErrors."""
    root = Path(path)
    if not root.exists():
        raise GitOpsErrors([GitOpsError(DocumentRef(str(root), 0), "", "no such file or directory")])
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()) if root.is_dir() else [root]
    errors: list[GitOpsError] = []
    raw: list[tuple[Path, int, Any]] = []
    for file in files:
        try:
            for i, doc in enumerate(yaml.safe_load_all(file.read_text(encoding="utf-8")), start=1):
                if doc is not None:
                    raw.append((file, i, doc))
        except UnicodeDecodeError as exc:  # found by tests/fuzz: a traceback before
            errors.append(GitOpsError(DocumentRef(_display(file), 0), "", f"not UTF-8 text (byte {exc.start})"))
        except RecursionError:
            errors.append(GitOpsError(DocumentRef(_display(file), 0), "", "invalid YAML: nested too deeply"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            errors.append(GitOpsError(DocumentRef(_display(file), 0), "", f"invalid YAML{where}: {problem}"))
    # Files a Policy pulls rules from (`fromFile`) are raw CNP/CCNP/NetworkPolicy manifests, not documents.
    referenced = {
        (file.parent / r["fromFile"]).resolve()
        for file, _i, doc in raw
        if isinstance(doc, Mapping) and doc.get("kind") == "Policy"
        for r in ((doc.get("spec") or {}).get("rules") or [])
        if isinstance(r, Mapping) and isinstance(r.get("fromFile"), str)
    }
    revision = _git_revision(root if root.is_dir() else root.parent)
    return _parsed_once(
        ((doc, DocumentRef(_display(file), index), file.parent) for file, index, doc in raw
         if file.resolve() not in referenced),
        errors, revision,
    )


def parse_documents(raw: Iterable[Any], file: str, base_dir: Path | None = None) -> list[Document]:
    """Documents already read (an API request's body): `file` names them in errors, `fromFile` rules are
    read relative to `base_dir` (refused without one). Raises GitOpsErrors."""
    errors: list[GitOpsError] = []
    given: list[tuple[Any, DocumentRef, Path]] = []
    for index, doc in enumerate(raw, start=1):
        if doc is None:
            continue
        if base_dir is None and _reads_files(doc):
            meta = doc.get("metadata")
            name = str(meta.get("name", "")) if isinstance(meta, Mapping) else ""
            errors.append(GitOpsError(DocumentRef(file, index, "Policy", name), "spec.rules",
                                      "fromFile is not accepted here: put the rule inline (cilium: or kubernetes:)"))
            continue
        given.append((doc, DocumentRef(file, index), base_dir or Path(".")))
    return _parsed_once(given, errors)


def _parsed_once(
    given: Iterable[tuple[Any, DocumentRef, Path]], errors: list[GitOpsError], revision: str = ""
) -> list[Document]:
    """Each (raw document, where it is, the directory its `fromFile`s are read from) parsed; a second document
    of the same kind, name and mode is refused. Raises GitOpsErrors with `errors` and these problems."""
    docs: list[Document] = []
    seen: dict[tuple[str, str, str], DocumentRef] = {}
    for doc, ref, base in given:
        try:
            parsed = parse_document(doc, ref, base, revision)
        except GitOpsError as exc:
            errors.append(exc)
            continue
        key = (parsed.kind, parsed.name, parsed.mode or "enforced")
        if key in seen:
            what = f"{parsed.kind} {parsed.name}" + (" (staged)" if parsed.staged else "")
            errors.append(GitOpsError(parsed.ref, "metadata.name", f"duplicate {what}, first in {seen[key]}"))
            continue
        seen[key] = parsed.ref
        docs.append(parsed)
    if errors:
        raise GitOpsErrors(errors)
    return docs


def _reads_files(doc: Any) -> bool:
    spec = doc.get("spec") if isinstance(doc, Mapping) else None
    rules = spec.get("rules") if isinstance(spec, Mapping) else None
    return isinstance(rules, list) and any(isinstance(r, Mapping) and "fromFile" in r for r in rules)


# Bounds on one document, checked before anything walks it (found by tests/fuzz): a JSON body nested ~900 deep
# overflowed the stack further on (500), and YAML aliases nested 7 deep (10^7 values from a few lines) cost
# half a minute of validation per request. Real policies are a few levels and a few thousand values.
MAX_DEPTH = 64
MAX_VALUES = 100_000


def _size_problem(doc: Any) -> str | None:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    values = 0
    while stack:
        value, depth = stack.pop()
        values += 1
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if values > MAX_VALUES:
            return f"more than {MAX_VALUES} values (a YAML alias counts each time it is used)"
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def parse_document(doc: Any, ref: DocumentRef, base_dir: Path, revision: str = "") -> Document:
    if not isinstance(doc, Mapping):
        raise GitOpsError(ref, "", f"a document must be a mapping, found {type(doc).__name__}")
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), Mapping) else None
    if (problem := _size_problem(doc)) is not None:
        named = DocumentRef(ref.file, ref.index, *(v if isinstance(v, str) else "" for v in (kind, name)))
        raise GitOpsError(named, "", problem)
    ref = DocumentRef(ref.file, ref.index, str(kind or ""), str(name or ""))
    if doc.get("apiVersion") != API_VERSION:
        raise GitOpsError(ref, "apiVersion", f"expected {API_VERSION!r}, found {doc.get('apiVersion')!r}")
    if kind not in KINDS:
        raise GitOpsError(ref, "kind", f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if not is_valid_name(name):
        raise GitOpsError(ref, "metadata.name", f"{name!r} is not a valid name (lower-case RFC 1123 label, <= 63 characters)")
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        raise GitOpsError(ref, "spec", "missing or not a mapping")
    fields = _Fields(ref, spec)
    parser = _PARSERS[kind]
    model = parser(name, fields, base_dir)
    mode = ""
    if kind == "Policy":
        mode = fields.get("mode", str, "")
        if mode not in ("", *POLICY_MODES):
            raise fields.error("mode", f"expected one of {', '.join(POLICY_MODES)}, found {mode!r}")
    fields.refuse_unknown()
    source = f"{ref.file}#{ref.index}" + (f"@{revision}" if revision else "")
    return Document(ref, kind, name, model, source, mode)


class _Fields:
    """Typed access to `spec` that reports the field path, and refuses fields nobody read (typos)."""

    def __init__(self, ref: DocumentRef, spec: Mapping[str, Any]) -> None:
        self.ref, self.spec, self.read = ref, spec, set[str]()

    def error(self, path: str, message: str) -> GitOpsError:
        return GitOpsError(self.ref, f"spec.{path}", message)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        self.read.add(key)
        if key not in self.spec or self.spec[key] is None:
            if required:
                raise self.error(key, "required")
            return default
        value = self.spec[key]
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(key, f"expected {_type_word(names)}, found {value!r}")
        return value

    def str_list(self, key: str) -> list[str]:
        values = self.get(key, list, [])
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                raise self.error(f"{key}[{i}]", f"expected a name, found {v!r}")
        return list(values)

    def name_in(self, item: Mapping[str, Any], key: str, path: str) -> str:
        """`item[key]` as a name: any other type was turned into a name by str() before (found by tests/fuzz)."""
        value = item[key]
        if not isinstance(value, str) or not value:
            raise self.error(f"{path}.{key}", f"expected a name, found {value!r}")
        return value

    def refuse_unknown(self) -> None:
        for key in self.spec:
            if key not in self.read:
                raise self.error(str(key), f"unknown field (known: {', '.join(sorted(self.read))})")


def _type_word(name: str) -> str:
    return {"str": "a string", "list": "a list", "dict": "a mapping", "bool": "true or false", "Mapping": "a mapping"}.get(name, name)


def _parse_cluster(name: str, f: _Fields, _base: Path) -> Cluster:
    from policy_engine import install_profile

    raw_type = f.get("type", str, required=True)
    try:
        cluster_type = install_profile.normalize_cluster_type(raw_type)
    except ValueError as exc:
        raise f.error("type", str(exc)) from None
    cni = f.get("primaryCNI", str, required=True).strip().lower()
    if cni not in install_profile.PRIMARY_CNIS:
        raise f.error("primaryCNI", f"unknown primary CNI {cni!r}; one of {', '.join(install_profile.PRIMARY_CNIS)}")
    cluster = Cluster(
        name=name,
        cluster_type=cluster_type,
        primary_cni=cni,
        kube_context=f.get("kubeContext", str),
        kubeconfig=f.get("kubeconfig", str),
        api_server=f.get("apiServer", str),
        namespaces=tuple(sorted(set(f.str_list("namespaces")))),
    )
    return cluster


def _parse_project(name: str, f: _Fields, _base: Path) -> Project:
    return Project(name, tuple(sorted(set(f.str_list("clusters")))), f.get("description", str, ""))


def _parse_workspace(name: str, f: _Fields, _base: Path) -> Workspace:
    refs: list[NamespaceRef] = []
    for i, item in enumerate(f.get("namespaces", list, [])):
        if isinstance(item, str) and item.count("/") == 1:
            cluster, namespace = item.split("/")
        elif isinstance(item, Mapping) and set(item) == {"cluster", "namespace"}:
            cluster, namespace = (f.name_in(item, k, f"namespaces[{i}]") for k in ("cluster", "namespace"))
        else:
            raise f.error(f"namespaces[{i}]", f"expected {{cluster, namespace}} or 'cluster/namespace', found {item!r}")
        refs.append(NamespaceRef(cluster, namespace))
    return Workspace(name, f.get("project", str, required=True), tuple(sorted(set(refs))), f.get("description", str, ""))


def _parse_policy(name: str, f: _Fields, base: Path) -> PolicySpec:
    scope = f.get("scope", str, required=True)
    if scope not in SCOPES:
        raise f.error("scope", f"expected one of {', '.join(SCOPES)}, found {scope!r}")
    enforcers = tuple(f.str_list("enforcers")) or ENFORCERS
    for i, e in enumerate(enforcers):
        if e not in ENFORCERS:
            raise f.error(f"enforcers[{i}]", f"expected one of {', '.join(ENFORCERS)}, found {e!r}")
    raw_rules = f.get("rules", list, required=True)
    if not raw_rules:
        raise f.error("rules", "a policy needs at least one rule")
    rules: list[PolicyRule] = []
    for i, raw in enumerate(raw_rules):
        rules.extend(_parse_rule(raw, i, f, base))
    names = [r.name for r in rules]
    for i, r in enumerate(rules):
        if names.index(r.name) != i:
            raise f.error(f"rules[{i}].name", f"duplicate rule name {r.name!r}")
    return PolicySpec(name, scope, tuple(rules), " ".join(f.get("description", str, "").split()), enforcers)


def _parse_rule(raw: Any, i: int, f: _Fields, base: Path) -> list[PolicyRule]:
    path = f"rules[{i}]"
    if not isinstance(raw, Mapping):
        raise f.error(path, f"expected a mapping with cilium, kubernetes or fromFile, found {raw!r}")
    sources = [k for k in ("cilium", "kubernetes", "fromFile") if k in raw]
    unknown = [k for k in raw if k not in ("name", "cilium", "kubernetes", "fromFile")]
    if unknown:
        raise f.error(f"{path}.{unknown[0]}", "unknown field (known: name, cilium, kubernetes, fromFile)")
    if len(sources) != 1:
        raise f.error(path, "exactly one of cilium (a CNP/CCNP spec), kubernetes (a NetworkPolicy spec) or fromFile")
    rule_name = raw.get("name", f"rule-{i}")
    if not is_valid_name(rule_name):
        raise f.error(f"{path}.name", f"{rule_name!r} is not a valid name (lower-case RFC 1123 label)")
    kind = sources[0]
    if kind != "fromFile":
        if not isinstance(raw[kind], Mapping):
            raise f.error(f"{path}.{kind}", f"expected a mapping (the policy spec), found {raw[kind]!r}")
        return [PolicyRule(rule_name, kind, dict(raw[kind]))]
    file = base / str(raw["fromFile"])
    try:
        objects = [o for o in yaml.safe_load_all(file.read_text(encoding="utf-8")) if o is not None]
    except OSError as exc:
        raise f.error(f"{path}.fromFile", f"cannot read {file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise f.error(f"{path}.fromFile", f"invalid YAML in {file}: {str(exc).splitlines()[0]}") from None
    rules: list[PolicyRule] = []
    for j, obj in enumerate(objects, start=1):
        if not isinstance(obj, Mapping):
            raise f.error(f"{path}.fromFile", f"{file} document {j} is not a mapping")
        try:
            for r in rules_from_object(obj):
                rule = r if "name" not in raw or len(objects) > 1 else PolicyRule(rule_name, r.kind, r.spec)
                if not is_valid_name(rule.name):
                    raise ValueError(f"rule name {rule.name!r} from metadata.name is not a valid name")
                rules.append(rule)
        except (ValueError, KeyError) as exc:
            raise f.error(f"{path}.fromFile", f"{file} document {j}: {exc}") from None
    return rules


def _parse_blueprint(name: str, f: _Fields, _base: Path) -> BlueprintSpec:
    profile_raw = f.get("installProfile", Mapping, {})
    unknown = [k for k in profile_raw if k not in ("engine", "policyEnforcementMode", "auditMode")]
    if unknown:
        raise f.error(f"installProfile.{unknown[0]}", "unknown field (known: engine, policyEnforcementMode, auditMode)")
    engine = profile_raw.get("engine")
    if engine is not None and engine not in ENGINES:
        raise f.error("installProfile.engine", f"expected one of {', '.join(ENGINES)}, found {engine!r}")
    mode = profile_raw.get("policyEnforcementMode", "default")
    if mode not in ENFORCEMENT_MODES:
        raise f.error("installProfile.policyEnforcementMode", f"expected one of {', '.join(ENFORCEMENT_MODES)}, found {mode!r}")
    audit = profile_raw.get("auditMode", False)
    if not isinstance(audit, bool):
        raise f.error("installProfile.auditMode", f"expected true or false, found {audit!r}")
    defaults = f.get("namespaceDefaults", Mapping, {})
    unknown = [k for k in defaults if k not in ("policies", "excludeNamespaces")]
    if unknown:
        raise f.error(f"namespaceDefaults.{unknown[0]}", "unknown field (known: policies, excludeNamespaces)")

    def refs(values: Any, path: str) -> tuple[PolicyRef, ...]:
        if not isinstance(values, list):
            raise f.error(path, f"expected a list of policy names, found {values!r}")
        out = []
        for i, v in enumerate(values):
            try:
                ref = PolicyRef.parse(str(v))
            except ValueError:
                raise f.error(f"{path}[{i}]", f"expected NAME or NAME@VERSION, found {v!r}") from None
            out.append(ref)
        return tuple(out)

    return BlueprintSpec(
        name=name,
        description=" ".join(f.get("description", str, "").split()),
        install_profile=InstallProfile(engine, mode, audit),
        cluster_policies=refs(f.get("clusterPolicies", list, []), "clusterPolicies"),
        namespace_policies=refs(defaults.get("policies", []), "namespaceDefaults.policies"),
        exclude_namespaces=tuple(defaults.get("excludeNamespaces", ["kube-system"])),
    )


def _parse_assignment(name: str, f: _Fields, _base: Path) -> Assignment:
    blueprint = f.get("blueprint", str)
    policy = f.get("policy", str)
    if (blueprint is None) == (policy is None):
        raise f.error("blueprint", "exactly one of blueprint (with clusters) or policy (with targets)")
    if blueprint is not None:
        clusters = f.str_list("clusters")
        if not clusters:
            raise f.error("clusters", "a blueprint assignment needs at least one cluster")
        return Assignment(name, blueprint=blueprint, clusters=tuple(sorted(set(clusters))))
    targets: list[AssignmentTarget] = []
    for i, t in enumerate(f.get("targets", list, required=True)):
        if isinstance(t, Mapping) and set(t) == {"workspace"}:
            targets.append(AssignmentTarget(workspace=f.name_in(t, "workspace", f"targets[{i}]")))
        elif isinstance(t, Mapping) and set(t) == {"cluster", "namespace"}:
            cluster, namespace = (f.name_in(t, k, f"targets[{i}]") for k in ("cluster", "namespace"))
            targets.append(AssignmentTarget(cluster=cluster, namespace=namespace))
        else:
            raise f.error(f"targets[{i}]", f"expected {{cluster, namespace}} or {{workspace}}, found {t!r}")
    if not targets:
        raise f.error("targets", "a policy assignment needs at least one target")
    return Assignment(name, policy=policy, targets=tuple(sorted(set(targets))))


_PARSERS: dict[str, Callable[[str, _Fields, Path], Model]] = {
    "Cluster": _parse_cluster,
    "Project": _parse_project,
    "Workspace": _parse_workspace,
    "Policy": _parse_policy,
    "Blueprint": _parse_blueprint,
    "Assignment": _parse_assignment,
}


# -- applying -------------------------------------------------------------------------------------


def apply_documents(cp: ControlPlane, docs: Sequence[Document], *, prune: bool = False, dry_run: bool = False) -> list[Change]:
    """Write the documents to the store in one transaction (all or nothing). Raises GitOpsErrors."""
    with cp.store.transaction(rollback=dry_run):
        return _apply(cp, docs, prune)


def stage_documents(cp: ControlPlane, docs: Sequence[Document], *, dry_run: bool = False) -> list[Change]:
    """`netwarden policy stage`: stage every Policy document (spec.mode staged or not given) in one transaction.
    Other documents (e.g. the Assignment placing a new policy) are applied too, as long as nothing a cluster
    enforces changes: staging never reaches a cluster. Raises GitOpsErrors."""
    errors = [
        GitOpsError(d.ref, "spec.mode", "enforced: `policy stage` stages policies; use `netwarden apply` to enforce")
        for d in docs if d.kind == "Policy" and d.mode == "enforced"
    ]
    if errors:
        raise GitOpsErrors(errors)
    staged = [replace(d, mode="staged") if d.kind == "Policy" else d for d in docs]
    with cp.store.transaction(rollback=dry_run):
        before = _render_all(cp, strict=False)
        changes = _apply(cp, staged, prune=False, unstage_missing=False)
        after = _render_all(cp, strict=False)
        for name in sorted(set(before) | set(after)):
            old, new = before.get(name), after.get(name)
            moved = object_changes(
                old.objects if isinstance(old, RenderedCluster) else (),
                new.objects if isinstance(new, RenderedCluster) else (),
            )
            if moved:
                others = [d for d in staged if d.kind != "Policy"] or list(staged)
                errors += [
                    GitOpsError(d.ref, "", f"would change what cluster {name} enforces ({', '.join(' '.join(str(m).split()) for m in moved[:3])}"
                                f"{', ...' if len(moved) > 3 else ''}); `policy stage` never does: use `netwarden apply`")
                    for d in others
                ]
        if errors:
            raise GitOpsErrors(errors)
    return changes


def diff_documents(cp: ControlPlane, docs: Sequence[Document], *, prune: bool = False) -> DiffReport:
    """What applying would change in the store, in each cluster's desired objects and in its staged set
    (nothing is written)."""
    report = DiffReport()
    with cp.store.transaction(rollback=True):
        before = _render_all(cp, strict=False)
        staged_before = _render_all(cp, strict=False, staged=True, desired=before)
        report.store = _apply(cp, docs, prune)
        after = _render_all(cp, strict=True)
        staged_after = _render_all(cp, strict=False, staged=True, desired=after)
    report.rendered = {name: r for name, r in after.items() if isinstance(r, RenderedCluster)}
    for name in sorted(set(before) | set(after)):
        old = before.get(name)
        new = report.rendered.get(name)
        report.clusters[name] = object_changes(
            old.objects if isinstance(old, RenderedCluster) else (), new.objects if new else ()
        )
    for name in sorted(set(staged_before) | set(staged_after)):
        old, new = staged_before.get(name), staged_after.get(name)
        changes = object_changes(
            old.objects if isinstance(old, RenderedCluster) else (),
            new.objects if isinstance(new, RenderedCluster) else (),
        )
        if changes != report.clusters.get(name, []):
            report.staged[name] = changes
    return report


def object_changes(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[ObjectChange]:
    def key(o: Mapping[str, Any]) -> tuple[str, str, str]:
        return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])

    def content(o: Mapping[str, Any]) -> Any:
        return (o.get("spec"), o["metadata"].get("labels"), o["metadata"].get("annotations"))

    before, after = {key(o): o for o in old}, {key(o): o for o in new}
    changes = [ObjectChange("create", *k) for k in after if k not in before]
    changes += [ObjectChange("update", *k) for k in after if k in before and content(after[k]) != content(before[k])]
    changes += [ObjectChange("delete", *k) for k in before if k not in after]
    return sorted(changes, key=lambda c: (c.kind, c.namespace, c.name, c.action))


def _apply(cp: ControlPlane, docs: Sequence[Document], prune: bool, *, unstage_missing: bool = True) -> list[Change]:
    changes: list[Change] = []
    errors: list[GitOpsError] = []
    # Enforced policy versions before staged ones, so a staged document's checks see its enforced version.
    by_kind = {k: sorted((d for d in docs if d.kind == k), key=lambda d: d.staged) for k in KINDS}
    staged_names = {d.name for d in by_kind["Policy"] if d.staged}
    for kind in KINDS:
        for doc in by_kind[kind]:
            try:
                changes.append(_put(cp, doc))
                if unstage_missing and doc.kind == "Policy" and not doc.staged and doc.name not in staged_names:
                    # Declarative: the files hold no staged version of this policy.
                    if (staged := cp.store.get_staged_policy(doc.name)) is not None:
                        cp.unstage_policy(doc.name)
                        changes.append(Change(doc.kind, doc.name, "unstage", f"staged version {staged.version}"))
            except PolicyInvalid as exc:
                shown = f" (value {exc.value!r})" if exc.value is not None else ""
                field = f"spec.rules[{exc.rule_index}].{exc.rule_kind}.{exc.path}"
                errors.append(GitOpsError(doc.ref, field, f"{exc.message}{shown}"))
            except (PermissionDenied, StoreError, ValueError) as exc:
                errors.append(_doc_error(doc, exc))
    if prune and not errors:
        wanted = {(d.kind, d.name) for d in docs}  # a policy is kept by a document of either mode
        for kind in reversed(KINDS):
            for name in _store_names(cp, kind):
                if (kind, name) in wanted:
                    continue
                try:
                    _delete(cp, kind, name)
                    changes.append(Change(kind, name, "delete", "pruned: not in the applied files"))
                except (PermissionDenied, StoreError) as exc:
                    errors.append(GitOpsError(DocumentRef("store", 0, kind, name), "", f"cannot prune: {exc}"))
    if not errors:
        errors += _render_errors(cp, docs)
    if errors:
        raise GitOpsErrors(errors)
    return changes


def _put(cp: ControlPlane, doc: Document) -> Change:
    m = doc.model
    if isinstance(m, Cluster):
        return Change(doc.kind, doc.name, _verb(cp.put_cluster(m)))
    if isinstance(m, Project):
        return Change(doc.kind, doc.name, _verb(cp.put_project(m)))
    if isinstance(m, Workspace):
        return Change(doc.kind, doc.name, _verb(cp.put_workspace(m)))
    if isinstance(m, PolicySpec) and doc.staged:
        pv, result = cp.stage_policy(m, source=doc.source)
        return Change(doc.kind, doc.name, "unchanged" if result == "unchanged" else "stage", f"staged version {pv.version}")
    if isinstance(m, PolicySpec):
        pv, result = cp.put_policy(m, source=doc.source)
        return Change(doc.kind, doc.name, _verb(result), f"version {pv.version}")
    if isinstance(m, BlueprintSpec):
        bv, result = cp.put_blueprint(m, source=doc.source)
        return Change(doc.kind, doc.name, _verb(result), f"version {bv.version}")
    return Change(doc.kind, doc.name, _verb(cp.put_assignment(m)))


def _verb(result: str) -> str:
    return {"created": "create", "updated": "update"}.get(result, result)


def _store_names(cp: ControlPlane, kind: str) -> list[str]:
    store = cp.store
    if kind == "Cluster":
        return [c.name for c in store.list_clusters()]
    if kind == "Project":
        return [p.name for p in store.list_projects()]
    if kind == "Workspace":
        return [w.name for w in store.list_workspaces()]
    if kind == "Policy":
        return [p.name for p in store.list_policy_states() if not p.builtin]
    if kind == "Blueprint":
        return [b.name for b in store.list_blueprints() if not b.builtin]
    return [a.name for a in store.list_assignments()]


def _delete(cp: ControlPlane, kind: str, name: str) -> None:
    {
        "Cluster": cp.delete_cluster,
        "Project": cp.delete_project,
        "Workspace": cp.delete_workspace,
        "Policy": cp.delete_policy,
        "Blueprint": cp.delete_blueprint,
        "Assignment": cp.delete_assignment,
    }[kind](name)


_PERMISSION_FIELD = {
    "Cluster": "metadata.name",
    "Project": "metadata.name",
    "Workspace": "spec.project",
    "Policy": "spec.scope",
    "Blueprint": "metadata.name",
    "Assignment": "spec",
}


def _doc_error(doc: Document, exc: Exception) -> GitOpsError:
    text = str(exc)
    if isinstance(exc, PermissionDenied):
        m = doc.model
        field = _PERMISSION_FIELD[doc.kind]
        if isinstance(m, Assignment):
            field = "spec.clusters" if m.blueprint else "spec.targets"
        return GitOpsError(doc.ref, field, text, denied=exc)
    head, sep, rest = text.partition(": ")
    if sep and head.startswith("spec.") and " " not in head:
        return GitOpsError(doc.ref, head, rest)
    return GitOpsError(doc.ref, _default_field(doc, text), text)


def _default_field(doc: Document, text: str) -> str:
    m = doc.model
    if isinstance(m, Project):
        return "spec.clusters"
    if isinstance(m, Workspace):
        return "spec.namespaces" if "namespace" in text else "spec.project"
    if isinstance(m, Assignment):
        return "spec.clusters" if m.blueprint else "spec.targets"
    if isinstance(m, PolicySpec):
        return "spec.scope" if "scope" in text else "metadata.name"
    if isinstance(m, BlueprintSpec) and "engine" in text:
        return "spec.installProfile.engine"
    return "metadata.name"


def _render_all(
    cp: ControlPlane,
    *,
    strict: bool,
    staged: bool = False,
    desired: Mapping[str, RenderedCluster | RenderError] | None = None,
) -> dict[str, RenderedCluster | RenderError]:
    """Every cluster's desired set rendered (`staged`: its staged set; a cluster with nothing staged takes its
    result from `desired` when given, rather than rendering the same set again)."""
    from policy_engine import validation
    from policy_engine.control_plane import staged_versions

    out: dict[str, RenderedCluster | RenderError] = {}
    for cluster in cp.store.list_clusters():
        try:
            policy_set = resolve_policy_set(cp.store, cluster.name, staged=staged)
            if staged and desired is not None and cluster.name in desired and not staged_versions(policy_set):
                out[cluster.name] = desired[cluster.name]
                continue
            out[cluster.name] = render_cluster(policy_set, validate=validation.validate_object)
        except RenderError as exc:
            if strict:
                raise
            out[cluster.name] = exc
    return out


def _render_errors(cp: ControlPlane, docs: Sequence[Document]) -> list[GitOpsError]:
    """Refuse, at apply time, what some cluster could not enforce (e.g. L7 rules on a NetworkPolicy cluster),
    in the desired set and in the staged set (a staged policy must be renderable to be evaluated)."""
    errors: list[GitOpsError] = []
    desired = _render_all(cp, strict=False)
    results = [(False, name, r) for name, r in desired.items()]
    results += [(True, name, r) for name, r in _render_all(cp, strict=False, staged=True, desired=desired).items()]
    seen: set[str] = set()
    for staged, name, result in results:
        if not isinstance(result, RenderError) or str(result) in seen:
            continue
        seen.add(str(result))
        docs_of = [d for d in docs if d.kind == "Policy" and d.name == result.policy]
        doc = next((d for d in docs_of if d.staged == staged), docs_of[0] if docs_of else None)
        if doc is None:
            errors.append(GitOpsError(DocumentRef("store", 0, "Policy", result.policy), "", f"cluster {name}: {result}"))
            continue
        assert isinstance(doc.model, PolicySpec)
        index = next((i for i, r in enumerate(doc.model.rules) if r.name == result.rule), 0)
        kind = doc.model.rules[index].kind
        path = result.path.removeprefix("spec.").removeprefix("spec")
        field = f"spec.rules[{index}].{kind}" + (f".{path}" if path else "")
        errors.append(GitOpsError(doc.ref, field, str(result).split(": ", 2)[-1] + f" (cluster {name})"))
    return errors


# -- documents of the store ----------------------------------------------------------------------


def policy_document(p: PolicyVersion) -> dict[str, Any]:
    """A policy version as a `netwarden.io/v1` Policy document plus `status` (staged: `spec.mode: staged`)."""
    rules = [{"name": r.name, r.kind: dict(r.spec)} for r in p.spec.rules]
    spec: dict[str, Any] = {"scope": p.spec.scope}
    if p.staged:
        spec["mode"] = "staged"
    if p.spec.description:
        spec["description"] = p.spec.description
    spec["enforcers"] = list(p.spec.enforcers)
    spec["rules"] = rules
    return {"apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": p.name}, "spec": spec,
            "status": {"version": p.version, "mode": p.info.mode, "builtin": p.builtin,
                       "updatedAt": p.info.created_at, "updatedBy": p.info.created_by, "source": p.info.source}}


def blueprint_document(b: BlueprintVersion) -> dict[str, Any]:
    """A blueprint version as a `netwarden.io/v1` Blueprint document plus `status`; applying it back changes
    nothing (an engine left to the cluster is not written)."""
    content = b.spec.to_content()
    if content["installProfile"]["engine"] is None:
        del content["installProfile"]["engine"]
    return {"apiVersion": API_VERSION, "kind": "Blueprint", "metadata": {"name": b.name}, "spec": content,
            "status": {"version": b.version, "builtin": b.builtin, "updatedAt": b.info.created_at}}


def policy_documents(states: Sequence[PolicyState]) -> list[dict[str, Any]]:
    """Documents of every policy: its enforced version and, when one is staged, a second document with
    `spec.mode: staged`; applying them back changes nothing."""
    docs = []
    for state in states:
        for pv in (state.enforced, state.staged):
            if pv is not None:
                doc = policy_document(pv)
                doc["status"]["enforcedVersion"] = state.enforced.version if state.enforced else None
                doc["status"]["stagedVersion"] = state.staged.version if state.staged else None
                docs.append(doc)
    return docs


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@functools.cache
def _git_revision(directory: Path) -> str:
    """The commit of the Git working tree the documents come from, recorded with each version."""
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""

"""The policy engine's API: every read and write of the control plane, checked against the
caller's roles before it reaches the store. The CLI (and later the query API) call this; nothing
outside policy_engine should write the store directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from policy_engine import validation
from policy_engine.blueprints import BUILTIN_AUTHOR, builtin_blueprints, effective_engine
from policy_engine.model import (
    Assignment,
    AssignmentTarget,
    BlueprintSpec,
    BlueprintVersion,
    Cluster,
    NamespaceRef,
    PolicyRef,
    PolicySpec,
    PolicyState,
    PolicyVersion,
    Project,
    Workspace,
)
from policy_engine.render import (
    ClusterPolicySet,
    NamespacePlacement,
    RenderedCluster,
    render_cluster,
    rule_object,
)
from policy_engine.roles import Authorizer, Principal
from policy_engine.store import ControlPlaneStore, PutResult, StoreError


class PolicyInvalid(ValueError):
    """A rule refused at upload: which rule, the schema path inside the rule's spec, the value."""

    def __init__(self, policy: str, rule_index: int, rule_kind: str, path: str, value: object, message: str) -> None:
        self.policy, self.rule_index, self.rule_kind = policy, rule_index, rule_kind
        self.path, self.value, self.message = path, value, message
        super().__init__(f"policy {policy}: spec.rules[{rule_index}].{rule_kind}.{path}: {message}")


@dataclass
class ControlPlane:
    store: ControlPlaneStore
    principal: Principal

    def __post_init__(self) -> None:
        seed_builtins(self.store)

    @property
    def authorizer(self) -> Authorizer:
        # Fresh each time: role checks must see tenancy written earlier in the same transaction.
        return Authorizer(self.store.ownership())

    # -- reads ----------------------------------------------------------------------------------
    def list_clusters(self) -> list[Cluster]:
        self.authorizer.require_read(self.principal, "listing clusters")
        auth = self.authorizer
        return [c for c in self.store.list_clusters() if auth.can_see_cluster(self.principal, c.name)]

    def list_projects(self) -> list[Project]:
        self.authorizer.require_read(self.principal, "listing projects")
        return self.store.list_projects()

    def list_workspaces(self) -> list[Workspace]:
        self.authorizer.require_read(self.principal, "listing workspaces")
        return self.store.list_workspaces()

    def list_policies(self) -> list[PolicyVersion]:
        # The policy catalogue is org-wide knowledge, like a shared Git repository.
        self.authorizer.require_read(self.principal, "listing policies")
        return self.store.list_policies()

    def get_policy(self, name: str, version: int | None = None) -> PolicyVersion:
        self.authorizer.require_read(self.principal, f"reading policy {name}")
        pv = self.store.get_policy(name, version)
        if pv is None:
            raise StoreError(f"no policy named {name!r}" + (f" with version {version}" if version else ""))
        return pv

    def list_policy_states(self) -> list[PolicyState]:
        """Every policy with its enforced and staged versions."""
        self.authorizer.require_read(self.principal, "listing policies")
        return self.store.list_policy_states()

    def policy_history(self, name: str) -> list[PolicyVersion]:
        self.authorizer.require_read(self.principal, f"reading the history of policy {name}")
        return self.store.policy_history(name)

    def list_blueprints(self) -> list[BlueprintVersion]:
        self.authorizer.require_read(self.principal, "listing blueprints")
        return self.store.list_blueprints()

    def list_assignments(self) -> list[Assignment]:
        self.authorizer.require_read(self.principal, "listing assignments")
        auth = self.authorizer
        visible = []
        for a in self.store.list_assignments():
            if a.blueprint is not None:
                if any(auth.can_see_cluster(self.principal, c) for c in a.clusters):
                    visible.append(a)
            elif any(auth.can_see_namespace(self.principal, r) for r in self._target_namespaces(a.targets)):
                visible.append(a)
        return visible

    # -- infrastructure -------------------------------------------------------------------------
    # Writing what is already stored is not a write: re-applying a whole Git tree must succeed for
    # a principal whose changes are in scope, so every put checks "unchanged" before roles.
    def put_cluster(self, cluster: Cluster) -> PutResult:
        if self.store.get_cluster(cluster.name) == cluster:
            return "unchanged"
        self.authorizer.require_cluster_write(self.principal, f"writing cluster {cluster.name}", [cluster.name])
        return self.store.put_cluster(cluster)

    def delete_cluster(self, name: str) -> None:
        self.authorizer.require_cluster_write(self.principal, f"deleting cluster {name}", [name])
        self.store.delete_cluster(name)

    def put_project(self, project: Project) -> PutResult:
        old = self.store.get_project(project.name)
        if old is not None and old.to_content() == project.to_content():
            return "unchanged"
        self.authorizer.require_project_write(self.principal, f"writing project {project.name}")
        missing = [c for c in project.clusters if self.store.get_cluster(c) is None]
        if missing:
            raise StoreError(f"project {project.name} names unknown cluster(s) {', '.join(missing)}")
        return self.store.put_project(project)

    def delete_project(self, name: str) -> None:
        self.authorizer.require_project_write(self.principal, f"deleting project {name}")
        users = [w.name for w in self.store.list_workspaces() if w.project == name]
        if users:
            raise StoreError(f"project {name} still has workspace(s) {', '.join(users)}")
        self.store.delete_project(name)

    def put_workspace(self, workspace: Workspace) -> PutResult:
        action = f"writing workspace {workspace.name}"
        old = self.store.get_workspace(workspace.name)
        if old is not None and old.to_content() == workspace.to_content():
            return "unchanged"
        self.authorizer.require_workspace_write(self.principal, action, workspace.project)
        if old is not None and old.project != workspace.project:
            self.authorizer.require_workspace_write(self.principal, action, old.project)
        project = self.store.get_project(workspace.project)
        if project is None:
            raise StoreError(f"unknown project {workspace.project!r}")
        for ref in workspace.namespaces:
            if ref.cluster not in project.clusters:
                raise StoreError(f"cluster {ref.cluster} of namespace {ref} is not in project {project.name}")
        return self.store.put_workspace(workspace)

    def delete_workspace(self, name: str) -> None:
        old = self.store.get_workspace(name)
        if old is not None:
            self.authorizer.require_workspace_write(self.principal, f"deleting workspace {name}", old.project)
            self.store.delete_workspace(name)

    # -- policies -------------------------------------------------------------------------------
    def put_policy(self, spec: PolicySpec, *, source: str = "", message: str = "") -> tuple[PolicyVersion, PutResult]:
        if (live := self.store.get_policy(spec.name)) is not None and live.spec.hash() == spec.hash():
            return live, "unchanged"
        self._check_policy_write(spec, "writing")
        return self.store.put_policy(spec, author=self.principal.name, source=source, message=message)

    def stage_policy(
        self, spec: PolicySpec, *, source: str = "", message: str = ""
    ) -> tuple[PolicyVersion, PutResult]:
        """Stage `spec`: evaluated on every flow and in reports, never rendered to clusters. Same role rules
        and validation as writing the policy."""
        if (staged := self.store.get_staged_policy(spec.name)) is not None and staged.spec.hash() == spec.hash():
            return staged, "unchanged"
        self._check_policy_write(spec, "staging")
        return self.store.stage_policy(spec, author=self.principal.name, source=source, message=message)

    def _check_policy_write(self, spec: PolicySpec, verb: str) -> None:
        """Writing or staging `spec`: not a built-in, the role rules of its scope, valid against the schemas."""
        current = self.store.get_policy(spec.name, include_deleted=True)
        if current is not None and current.builtin:
            raise StoreError(f"policy {spec.name} is built in and read-only; copy it under another name")
        self._require_policy_write(spec.name, spec.scope, f"{verb} {spec.scope} policy {spec.name}")
        validate_policy(spec)

    def promote_policy(self, name: str) -> PolicyVersion:
        """The staged version becomes the enforced one, as a new version."""
        staged = self._staged(name)
        self._require_policy_write(name, staged.spec.scope, f"promoting policy {name}")
        return self.store.promote_policy(name, author=self.principal.name)

    def unstage_policy(self, name: str) -> PolicyVersion:
        """Stop evaluating the staged version; returns it."""
        staged = self._staged(name)
        self._require_policy_write(name, staged.spec.scope, f"unstaging policy {name}")
        return self.store.unstage_policy(name)

    def _staged(self, name: str) -> PolicyVersion:
        staged = self.store.get_staged_policy(name)
        if staged is None:
            known = self.store.get_policy(name) is not None
            raise StoreError(f"policy {name} has no staged version" if known else f"no policy named {name!r}")
        return staged

    def rollback_policy(self, name: str, to_version: int) -> PolicyVersion:
        current = self.get_policy(name)
        self._require_policy_write(name, current.spec.scope, f"rolling back policy {name}")
        return self.store.rollback_policy(name, to_version, author=self.principal.name)

    def delete_policy(self, name: str) -> None:
        current = self.store.get_policy(name) or self.store.get_staged_policy(name)
        if current is None:
            return
        if current.builtin:
            raise StoreError(f"policy {name} is built in and cannot be deleted")
        self._require_policy_write(name, current.spec.scope, f"deleting policy {name}")
        users = [a.name for a in self.store.list_assignments() if a.policy == name]
        users += [b.name for b in self.store.list_blueprints() if name in _policy_names(b.spec)]
        if users:
            raise StoreError(f"policy {name} is still used by {', '.join(users)}")
        self.store.delete_policy(name)

    def _require_policy_write(self, name: str, scope: str, action: str) -> None:
        auth = self.authorizer
        clusters = self._clusters_using_policy(name)
        if scope == "cluster":
            auth.require_cluster_write(self.principal, action, clusters)
            return
        # A namespace policy used as a blueprint default is infrastructure of those clusters.
        if clusters:
            auth.require_cluster_write(self.principal, action, clusters)
        targets = [t for a in self.store.list_assignments() if a.policy == name for t in a.targets]
        self._require_targets_write(action, targets)

    def _require_targets_write(self, action: str, targets: Iterable[AssignmentTarget]) -> None:
        targets = list(targets)
        auth = self.authorizer
        for t in targets:
            if t.workspace:
                ws = self.store.get_workspace(t.workspace)
                auth.require_workspace_policy_write(self.principal, action, t.workspace, ws.project if ws else "")
        auth.require_namespace_write(self.principal, action, self._target_namespaces(targets))

    def _clusters_using_policy(self, name: str) -> set[str]:
        blueprints = {b.name for b in self.store.list_blueprints() if name in _policy_names(b.spec)}
        return {c for a in self.store.list_assignments() if a.blueprint in blueprints for c in a.clusters}

    def _target_namespaces(self, targets: Iterable[AssignmentTarget]) -> set[NamespaceRef]:
        refs: set[NamespaceRef] = set()
        for t in targets:
            if t.workspace:
                ws = self.store.get_workspace(t.workspace)
                refs.update(ws.namespaces if ws else ())
            else:
                refs.add(NamespaceRef(t.cluster, t.namespace))
        return refs

    # -- blueprints -----------------------------------------------------------------------------
    def put_blueprint(self, spec: BlueprintSpec, *, source: str = "") -> tuple[BlueprintVersion, PutResult]:
        if (live := self.store.get_blueprint(spec.name)) is not None and live.spec.hash() == spec.hash():
            return live, "unchanged"
        current = self.store.get_blueprint(spec.name, include_deleted=True)
        if current is not None and current.builtin:
            raise StoreError(f"blueprint {spec.name} is built in and read-only; copy it under another name")
        clusters = {c for a in self.store.list_assignments() if a.blueprint == spec.name for c in a.clusters}
        self.authorizer.require_cluster_write(self.principal, f"writing blueprint {spec.name}", clusters)
        self._check_engine(spec, sorted(clusters))
        for field_name, refs, scope in (
            ("clusterPolicies", spec.cluster_policies, "cluster"),
            ("namespaceDefaults.policies", spec.namespace_policies, "namespace"),
        ):
            for i, ref in enumerate(refs):
                self._check_policy_ref(ref, scope, f"spec.{field_name}[{i}]")
        return self.store.put_blueprint(spec, author=self.principal.name, source=source)

    def delete_blueprint(self, name: str) -> None:
        current = self.store.get_blueprint(name)
        if current is None:
            return
        if current.builtin:
            raise StoreError(f"blueprint {name} is built in and cannot be deleted")
        clusters = {c for a in self.store.list_assignments() if a.blueprint == name for c in a.clusters}
        self.authorizer.require_cluster_write(self.principal, f"deleting blueprint {name}", clusters)
        if clusters:
            raise StoreError(f"blueprint {name} is still assigned to {', '.join(sorted(clusters))}")
        self.store.delete_blueprint(name)

    def _check_policy_ref(self, ref: PolicyRef, scope: str, field: str) -> None:
        pv = self.store.get_policy(ref.name, ref.version)
        if pv is None and ref.version is None:
            pv = self.store.get_staged_policy(ref.name)  # a staged-only policy: rendered once promoted
        if pv is None:
            raise StoreError(f"{field}: unknown policy {str(ref)!r}")
        if ref.version is not None and pv.staged:
            raise StoreError(f"{field}: version {ref.version} of policy {ref.name} is staged; pin an enforced version")
        if pv.spec.scope != scope:
            raise StoreError(f"{field}: policy {ref.name} has scope {pv.spec.scope}, expected {scope}")

    # -- assignments ----------------------------------------------------------------------------
    def put_assignment(self, assignment: Assignment) -> PutResult:
        old = self.store.get_assignment(assignment.name)
        if old is not None and old.to_content() == assignment.to_content():
            return "unchanged"
        action = f"writing assignment {assignment.name}"
        if assignment.blueprint is not None:
            if self.store.get_blueprint(assignment.blueprint) is None:
                raise StoreError(f"spec.blueprint: unknown blueprint {assignment.blueprint!r}")
            for i, c in enumerate(assignment.clusters):
                if self.store.get_cluster(c) is None:
                    raise StoreError(f"spec.clusters[{i}]: unknown cluster {c!r}")
            clusters = set(assignment.clusters) | (set(old.clusters) if old else set())
            self.authorizer.require_cluster_write(self.principal, action, clusters)
            blueprint = self.store.get_blueprint(assignment.blueprint)
            assert blueprint is not None
            self._check_engine(blueprint.spec, assignment.clusters)
        else:
            assert assignment.policy is not None
            pv = self.store.get_policy(assignment.policy) or self.store.get_staged_policy(assignment.policy)
            if pv is None:
                raise StoreError(f"spec.policy: unknown policy {assignment.policy!r}")
            if pv.spec.scope != "namespace":
                raise StoreError(
                    f"spec.policy: policy {pv.name} is cluster-wide; cluster-wide policies reach clusters "
                    "through a blueprint"
                )
            for i, t in enumerate(assignment.targets):
                if t.workspace and self.store.get_workspace(t.workspace) is None:
                    raise StoreError(f"spec.targets[{i}].workspace: unknown workspace {t.workspace!r}")
                if t.cluster and self.store.get_cluster(t.cluster) is None:
                    raise StoreError(f"spec.targets[{i}].cluster: unknown cluster {t.cluster!r}")
            self._require_targets_write(action, [*assignment.targets, *(old.targets if old else ())])
        return self.store.put_assignment(assignment)

    def delete_assignment(self, name: str) -> None:
        old = self.store.get_assignment(name)
        if old is None:
            return
        action = f"deleting assignment {name}"
        if old.blueprint is not None:
            self.authorizer.require_cluster_write(self.principal, action, old.clusters)
        else:
            self._require_targets_write(action, old.targets)
        self.store.delete_assignment(name)

    def _check_engine(self, bp: BlueprintSpec, clusters: Iterable[str]) -> None:
        """Refuse a blueprint whose engine cannot run on a cluster, with the support matrix's advice."""
        from policy_engine import install_profile

        for name in clusters:
            cluster = self.store.get_cluster(name)
            assert cluster is not None
            engine = effective_engine(cluster, bp.install_profile)
            decision = install_profile.check_support(cluster.cluster_type, cluster.primary_cni)
            what = f"cluster {name} ({cluster.cluster_type}, primary CNI {cluster.primary_cni})"
            if not decision.supported:
                raise StoreError(f"{what} is not supported: {decision.recommendation}")
            if engine not in decision.engines:
                raise StoreError(
                    f"blueprint {bp.name} wants engine {engine} on {what}, which supports "
                    f"{', '.join(decision.engines)}; recommendation: {decision.recommendation}"
                )

    # -- rendering and sync ---------------------------------------------------------------------
    def policy_set(self, cluster_name: str, live_namespaces: Iterable[str] = ()) -> ClusterPolicySet:
        self.authorizer.require_read(self.principal, f"rendering cluster {cluster_name}")
        return resolve_policy_set(self.store, cluster_name, live_namespaces)

    def render(self, cluster_name: str, live_namespaces: Iterable[str] = ()) -> RenderedCluster:
        if not self.authorizer.can_see_cluster(self.principal, cluster_name):
            self.authorizer.require_cluster_write(self.principal, f"rendering cluster {cluster_name}", [cluster_name])
        return render_cluster(self.policy_set(cluster_name, live_namespaces), validate=validation.validate_object)

    def require_sync(self, cluster_name: str) -> None:
        self.authorizer.require_cluster_write(self.principal, f"syncing cluster {cluster_name}", [cluster_name])


def resolve_policy_set(
    store: ControlPlaneStore, cluster_name: str, live_namespaces: Iterable[str] = (), *, staged: bool = False
) -> ClusterPolicySet:
    """Gather from the store what decides one cluster's objects (no role check: callers do it).

    The desired set (the default) holds enforced versions only: that is what render, sync and diff send to
    clusters. `staged=True` gives the staged set: the same with every policy's staged version in place of its
    enforced one (and staged-only policies added); blueprint references pinned to a version stay pinned. It is
    only ever evaluated (flow enrichment, reports), never rendered to a cluster."""
    cluster = store.get_cluster(cluster_name)
    if cluster is None:
        raise StoreError(f"unknown cluster {cluster_name!r}")
    assignments = store.list_assignments()
    blueprint: BlueprintVersion | None = None
    for a in assignments:
        if a.blueprint is not None and cluster_name in a.clusters:
            blueprint = store.get_blueprint(a.blueprint)
    namespaces: set[str] = set(cluster.namespaces) | set(live_namespaces)
    placements: dict[str, set[str]] = {}
    for a in assignments:
        if a.policy is None:
            continue
        for t in a.targets:
            refs = [NamespaceRef(t.cluster, t.namespace)]
            if t.workspace:
                ws = store.get_workspace(t.workspace)
                refs = list(ws.namespaces) if ws else []
            for ref in refs:
                if ref.cluster == cluster_name:
                    placements.setdefault(a.policy, set()).add(ref.namespace)
    for ws in store.list_workspaces():
        namespaces.update(r.namespace for r in ws.namespaces if r.cluster == cluster_name)
    for ns_set in placements.values():
        namespaces.update(ns_set)

    def current(name: str) -> PolicyVersion | None:
        if staged and (pv := store.get_staged_policy(name)) is not None:
            return pv
        return store.get_policy(name)

    def load(ref: PolicyRef) -> PolicyVersion | None:
        pv = current(ref.name) if ref.version is None else store.get_policy(ref.name, ref.version)
        if pv is None:
            if ref.version is None and store.get_staged_policy(ref.name) is not None:
                return None  # staged only: not part of the desired set
            raise StoreError(f"blueprint {blueprint.name if blueprint else ''} names unknown policy {str(ref)!r}")
        return pv

    cluster_policies: tuple[PolicyVersion, ...] = ()
    namespace_policies: list[NamespacePlacement] = []
    if blueprint is not None:
        cluster_policies = tuple(pv for r in blueprint.spec.cluster_policies if (pv := load(r)) is not None)
        defaults_ns = tuple(sorted(ns for ns in namespaces if ns not in blueprint.spec.exclude_namespaces))
        namespace_policies += [
            NamespacePlacement(pv, defaults_ns, blueprint.name)
            for r in blueprint.spec.namespace_policies
            if (pv := load(r)) is not None
        ]
    for name in sorted(placements):
        pv = current(name)
        if pv is not None:
            namespace_policies.append(NamespacePlacement(pv, tuple(sorted(placements[name]))))
    return ClusterPolicySet(
        cluster=cluster,
        engine=effective_engine(cluster, blueprint.spec.install_profile if blueprint else None),
        blueprint=blueprint,
        cluster_policies=cluster_policies,
        namespace_policies=tuple(namespace_policies),
        namespaces=tuple(sorted(namespaces)),
    )


def staged_versions(policy_set: ClusterPolicySet) -> list[PolicyVersion]:
    """The staged versions a (staged) policy set uses; empty: it equals the desired set."""
    used = [*policy_set.cluster_policies, *(p.policy for p in policy_set.namespace_policies)]
    return sorted({pv.name: pv for pv in used if pv.staged}.values(), key=lambda pv: pv.name)


def validate_policy(spec: PolicySpec) -> None:
    """Render each rule as its own object and validate it against the real schemas."""
    for i, rule in enumerate(spec.rules):
        try:
            validation.validate_object(rule_object(spec, rule))
        except validation.PolicyValidationError as exc:
            path = exc.path.removeprefix("spec.").removeprefix("spec") if exc.path.startswith("spec") else exc.path
            raise PolicyInvalid(spec.name, i, rule.kind, path or "spec", exc.value, exc.message) from exc


def seed_builtins(store: ControlPlaneStore) -> None:
    """Make the built-in policies and blueprints current (idempotent: unchanged ones are kept)."""
    with store.transaction():
        for builtin in builtin_blueprints():
            for policy in builtin.policies:
                store.put_policy(policy, author=BUILTIN_AUTHOR, source="built-in", builtin=True)
            store.put_blueprint(builtin.blueprint, author=BUILTIN_AUTHOR, source="built-in", builtin=True)


def _policy_names(spec: BlueprintSpec) -> set[str]:
    return {r.name for r in (*spec.cluster_policies, *spec.namespace_policies)}

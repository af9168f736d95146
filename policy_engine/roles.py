"""Who may do what in the control plane: roles, scopes and the checks the engine API runs.

Pure logic: the caller passes an `Ownership` snapshot (projects -> clusters, workspaces ->
namespaces) taken from the store, so these rules are tested without a database.

Rules (DESIGN.md "Roles and scopes"):
- Cluster-wide policies, blueprints, blueprint assignments, cluster definitions and sync: org-admin,
  or infra-admin when every affected cluster belongs to one of its projects.
- Namespace policies and their assignments: org-admin; project-admin when every affected namespace
  belongs to its project; workspace-admin when every affected namespace is in its workspace.
- Projects: org-admin. Workspaces: org-admin or the project-admin of the workspace's project.
- Reading: every role; listings are narrowed to what the principal's scope can see.
A policy not yet assigned anywhere affects nothing, so any role allowed to write that kind of
policy somewhere may write it; once assigned, a writer must cover every place it is enforced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from policy_engine.model import NamespaceRef


class Role(StrEnum):
    ORG_ADMIN = "org-admin"
    ORG_READ_ONLY = "org-read-only"
    INFRA_ADMIN = "infra-admin"
    PROJECT_ADMIN = "project-admin"
    PROJECT_READ_ONLY = "project-read-only"
    WORKSPACE_ADMIN = "workspace-admin"
    WORKSPACE_READ_ONLY = "workspace-read-only"


class ScopeKind(StrEnum):
    ORG = "org"
    PROJECT = "project"
    WORKSPACE = "workspace"


ROLE_SCOPE_KIND: Mapping[Role, ScopeKind] = {
    Role.ORG_ADMIN: ScopeKind.ORG,
    Role.ORG_READ_ONLY: ScopeKind.ORG,
    Role.INFRA_ADMIN: ScopeKind.PROJECT,
    Role.PROJECT_ADMIN: ScopeKind.PROJECT,
    Role.PROJECT_READ_ONLY: ScopeKind.PROJECT,
    Role.WORKSPACE_ADMIN: ScopeKind.WORKSPACE,
    Role.WORKSPACE_READ_ONLY: ScopeKind.WORKSPACE,
}


class PermissionDenied(Exception):
    """403: the principal's bindings do not allow the action. The message names the role needed."""

    def __init__(self, action: str, needed: str, principal: Principal) -> None:
        self.action = action
        self.needed = needed
        self.principal = principal
        super().__init__(f"permission denied: {action} needs {needed}; {principal.describe()}")


@dataclass(frozen=True)
class RoleBinding:
    role: Role
    scope_kind: ScopeKind
    scope_name: str = ""

    def __post_init__(self) -> None:
        expected = ROLE_SCOPE_KIND[self.role]
        if self.scope_kind is not expected:
            raise ValueError(f"role {self.role} binds to a {expected} scope, not {self.scope_kind}")
        if expected is not ScopeKind.ORG and not self.scope_name:
            raise ValueError(f"role {self.role} needs a {expected} name as scope")

    def __str__(self) -> str:
        if self.scope_kind is ScopeKind.ORG:
            return f"{self.role} (org)"
        return f"{self.role} of {self.scope_kind} {self.scope_name}"


@dataclass(frozen=True)
class Principal:
    name: str
    bindings: tuple[RoleBinding, ...] = ()

    @classmethod
    def with_role(cls, role: str, scope: str = "", name: str = "cli") -> Principal:
        """One binding; the scope kind follows from the role (`--as-role`/`--scope` on the CLI)."""
        try:
            parsed = Role(role)
        except ValueError:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(r.value for r in Role)}") from None
        kind = ROLE_SCOPE_KIND[parsed]
        return cls(name, (RoleBinding(parsed, kind, "" if kind is ScopeKind.ORG else scope),))

    def describe(self) -> str:
        held = ", ".join(str(b) for b in self.bindings) or "no roles"
        return f"principal {self.name!r} has {held}"

    def roles(self, *roles: Role) -> list[RoleBinding]:
        return [b for b in self.bindings if b.role in roles]


@dataclass(frozen=True)
class Ownership:
    """Snapshot of tenancy: which clusters form each project, which namespaces each workspace."""

    project_clusters: Mapping[str, frozenset[str]] = field(default_factory=dict)
    workspace_project: Mapping[str, str] = field(default_factory=dict)
    workspace_namespaces: Mapping[str, frozenset[NamespaceRef]] = field(default_factory=dict)

    def owner(self, ref: NamespaceRef) -> tuple[str, str] | None:
        """(project, workspace) owning the namespace, if a workspace declares it."""
        for workspace, refs in self.workspace_namespaces.items():
            if ref in refs:
                return self.workspace_project.get(workspace, ""), workspace
        return None

    def namespace_in_project(self, ref: NamespaceRef, project: str) -> bool:
        # A workspace-owned namespace belongs to that workspace's project only; an unowned one to
        # every project that includes its cluster.
        owner = self.owner(ref)
        if owner is not None:
            return owner[0] == project
        return ref.cluster in self.project_clusters.get(project, frozenset())

    def cluster_in_project(self, cluster: str, project: str) -> bool:
        return cluster in self.project_clusters.get(project, frozenset())


_READ_ROLES = tuple(Role)


@dataclass(frozen=True)
class Authorizer:
    ownership: Ownership

    # -- writes ---------------------------------------------------------------------------------
    def require_cluster_write(self, principal: Principal, action: str, clusters: Iterable[str]) -> None:
        """Cluster-wide policies, blueprints, blueprint assignments, cluster definitions, sync."""
        wanted = set(clusters)
        if principal.roles(Role.ORG_ADMIN):
            return
        for binding in principal.roles(Role.INFRA_ADMIN):
            if all(self.ownership.cluster_in_project(c, binding.scope_name) for c in wanted):
                return
        where = f" of a project containing cluster(s) {', '.join(sorted(wanted))}" if wanted else ""
        raise PermissionDenied(action, f"role org-admin or infra-admin{where}", principal)

    def require_namespace_write(
        self, principal: Principal, action: str, namespaces: Iterable[NamespaceRef]
    ) -> None:
        """Namespace policies and their assignments."""
        wanted = set(namespaces)
        if principal.roles(Role.ORG_ADMIN):
            return
        for binding in principal.roles(Role.PROJECT_ADMIN):
            if all(self.ownership.namespace_in_project(r, binding.scope_name) for r in wanted):
                return
        for binding in principal.roles(Role.WORKSPACE_ADMIN):
            mine = self.ownership.workspace_namespaces.get(binding.scope_name, frozenset())
            if wanted <= mine:
                return
        where = ", ".join(str(r) for r in sorted(wanted))
        needed = "role org-admin, project-admin or workspace-admin"
        raise PermissionDenied(action, f"{needed} covering namespace(s) {where}" if wanted else needed, principal)

    def cluster_writers(self, cluster: str) -> list[str]:
        """Who may write cluster-wide policies of `cluster` (as require_cluster_write grants it): "org-admin",
        "infra-admin of PROJECT"."""
        return [Role.ORG_ADMIN.value] + [f"{Role.INFRA_ADMIN} of {p}" for p in sorted(self.ownership.project_clusters)
                                         if self.ownership.cluster_in_project(cluster, p)]

    def namespace_writers(self, ref: NamespaceRef) -> list[str]:
        """Who may write a namespace policy (and its assignment) in `ref` (as require_namespace_write grants
        it): "org-admin", "project-admin of PROJECT", "workspace-admin of WORKSPACE"."""
        writers = [Role.ORG_ADMIN.value]
        owner = self.ownership.owner(ref)
        if owner is not None:
            project, workspace = owner
            writers += [f"{Role.PROJECT_ADMIN} of {project}"] if project else []
            writers.append(f"{Role.WORKSPACE_ADMIN} of {workspace}")
        else:
            writers += [f"{Role.PROJECT_ADMIN} of {p}" for p in sorted(self.ownership.project_clusters)
                        if self.ownership.namespace_in_project(ref, p)]
        return writers

    def require_workspace_policy_write(
        self, principal: Principal, action: str, workspace: str, project: str
    ) -> None:
        """Targeting a whole workspace: also its future namespaces, so scope must cover the workspace."""
        if principal.roles(Role.ORG_ADMIN):
            return
        if any(b.scope_name == project for b in principal.roles(Role.PROJECT_ADMIN)):
            return
        if any(b.scope_name == workspace for b in principal.roles(Role.WORKSPACE_ADMIN)):
            return
        needed = f"role org-admin, project-admin of project {project} or workspace-admin of workspace {workspace}"
        raise PermissionDenied(action, needed, principal)

    def require_project_write(self, principal: Principal, action: str) -> None:
        if not principal.roles(Role.ORG_ADMIN):
            raise PermissionDenied(action, "role org-admin", principal)

    def require_workspace_write(self, principal: Principal, action: str, project: str) -> None:
        if principal.roles(Role.ORG_ADMIN):
            return
        if any(b.scope_name == project for b in principal.roles(Role.PROJECT_ADMIN)):
            return
        raise PermissionDenied(action, f"role org-admin or project-admin of project {project}", principal)

    # -- reads ----------------------------------------------------------------------------------
    def require_read(self, principal: Principal, action: str) -> None:
        if not principal.roles(*_READ_ROLES):
            raise PermissionDenied(action, "any role binding", principal)

    def can_see_cluster(self, principal: Principal, cluster: str) -> bool:
        if principal.roles(Role.ORG_ADMIN, Role.ORG_READ_ONLY):
            return True
        for b in principal.roles(Role.INFRA_ADMIN, Role.PROJECT_ADMIN, Role.PROJECT_READ_ONLY):
            if self.ownership.cluster_in_project(cluster, b.scope_name):
                return True
        for b in principal.roles(Role.WORKSPACE_ADMIN, Role.WORKSPACE_READ_ONLY):
            if any(r.cluster == cluster for r in self.ownership.workspace_namespaces.get(b.scope_name, ())):
                return True
        return False

    def can_see_namespace(self, principal: Principal, ref: NamespaceRef) -> bool:
        if principal.roles(Role.ORG_ADMIN, Role.ORG_READ_ONLY):
            return True
        for b in principal.roles(Role.INFRA_ADMIN, Role.PROJECT_ADMIN, Role.PROJECT_READ_ONLY):
            if self.ownership.cluster_in_project(ref.cluster, b.scope_name):
                return True
        for b in principal.roles(Role.WORKSPACE_ADMIN, Role.WORKSPACE_READ_ONLY):
            if ref in self.ownership.workspace_namespaces.get(b.scope_name, frozenset()):
                return True
        return False

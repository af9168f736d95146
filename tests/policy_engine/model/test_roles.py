"""Every role (in and out of scope) against every control-plane action, through the engine API."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from policy_engine.control_plane import ControlPlane
from policy_engine.model import (
    Assignment,
    AssignmentTarget,
    BlueprintSpec,
    Cluster,
    InstallProfile,
    NamespaceRef,
    PolicyRef,
    PolicyRule,
    PolicySpec,
    Project,
    Workspace,
)
from policy_engine.roles import (
    Authorizer,
    Ownership,
    PermissionDenied,
    Principal,
    Role,
    RoleBinding,
    ScopeKind,
)
from policy_engine.store import ControlPlaneStore

A = NamespaceRef("c1", "a")
DENY_ALL = {"endpointSelector": {}, "ingress": [{}]}


def _cw(desc: str = "") -> PolicySpec:
    return PolicySpec("cw-pol", "cluster", (PolicyRule("r", "cilium", DENY_ALL),), description=desc)


def _ns(desc: str = "") -> PolicySpec:
    return PolicySpec("ns-pol", "namespace", (PolicyRule("r", "cilium", DENY_ALL),), description=desc)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ControlPlaneStore:
    s = ControlPlaneStore.open(tmp_path_factory.mktemp("roles"))
    admin = ControlPlane(s, Principal.with_role("org-admin"))
    for name in ("c1", "c2", "c3"):
        admin.put_cluster(Cluster(name, "upstream", "calico", kube_context=name))
    admin.put_project(Project("p1", ("c1", "c3")))
    admin.put_project(Project("p2", ("c2",)))
    admin.put_workspace(Workspace("wa", "p1", (A,)))
    admin.put_workspace(Workspace("wb", "p1", (NamespaceRef("c1", "b"),)))
    admin.put_workspace(Workspace("wc", "p2", (NamespaceRef("c2", "c"),)))
    admin.put_policy(_cw())
    admin.put_policy(_ns())
    admin.put_blueprint(BlueprintSpec("bp1", InstallProfile(), (PolicyRef("cw-pol"),)))
    admin.put_assignment(Assignment("bpa", blueprint="bp1", clusters=("c1",)))
    admin.put_assignment(Assignment("nsa", policy="ns-pol", targets=(AssignmentTarget("c1", "a"),)))
    yield s
    s.close()


ACTIONS: dict[str, Callable[[ControlPlane], object]] = {
    "read": lambda cp: cp.list_policies(),
    "render": lambda cp: cp.render("c1"),
    "write-cluster-policy": lambda cp: cp.put_policy(_cw("changed")),
    "write-blueprint": lambda cp: cp.put_blueprint(BlueprintSpec("bp1", InstallProfile(), (PolicyRef("cw-pol"),), description="x")),
    "assign-blueprint": lambda cp: cp.put_assignment(Assignment("bp3", blueprint="bp1", clusters=("c3",))),
    "write-cluster": lambda cp: cp.put_cluster(Cluster("c1", "upstream", "calico", kube_context="other")),
    "sync": lambda cp: cp.require_sync("c1"),
    "write-project": lambda cp: cp.put_project(Project("p1", ("c1", "c3"), description="x")),
    "write-workspace": lambda cp: cp.put_workspace(Workspace("wa", "p1", (A,), description="x")),
    "write-namespace-policy": lambda cp: cp.put_policy(_ns("changed")),
    "assign-namespace-policy": lambda cp: cp.put_assignment(Assignment("nsa2", policy="ns-pol", targets=(AssignmentTarget("c1", "a"),))),
    "assign-to-workspace": lambda cp: cp.put_assignment(Assignment("nsw", policy="ns-pol", targets=(AssignmentTarget(workspace="wa"),))),
    "rollback-namespace-policy": lambda cp: cp.rollback_policy("ns-pol", 1),
    "delete-assignment": lambda cp: cp.delete_assignment("nsa"),
}
NS_WRITES = {"write-namespace-policy", "assign-namespace-policy", "assign-to-workspace", "rollback-namespace-policy",
             "delete-assignment"}
INFRA = {"write-cluster-policy", "write-blueprint", "assign-blueprint", "write-cluster", "sync"}
ALL = set(ACTIONS)

# (role, scope) -> the actions it may do; everything else must raise PermissionDenied.
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("org-admin", ""): ALL,
    ("org-read-only", ""): {"read", "render"},
    ("infra-admin", "p1"): {"read", "render"} | INFRA,
    ("infra-admin", "p2"): {"read"},
    ("project-admin", "p1"): {"read", "render", "write-workspace"} | NS_WRITES,
    ("project-admin", "p2"): {"read"},
    ("project-read-only", "p1"): {"read", "render"},
    ("project-read-only", "p2"): {"read"},
    ("workspace-admin", "wa"): {"read", "render"} | NS_WRITES,
    ("workspace-admin", "wb"): {"read", "render"},
    ("workspace-read-only", "wa"): {"read", "render"},
    ("workspace-read-only", "wc"): {"read"},
}


def test_every_role_is_covered() -> None:
    assert {role for role, _ in ALLOWED} == {r.value for r in Role}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize(("role", "scope"), sorted(ALLOWED))
def test_role_against_action(store: ControlPlaneStore, role: str, scope: str, action: str) -> None:
    cp = ControlPlane(store, Principal.with_role(role, scope, name="tester"))
    with store.transaction(rollback=True):
        if action in ALLOWED[(role, scope)]:
            ACTIONS[action](cp)
        else:
            with pytest.raises(PermissionDenied) as err:
                ACTIONS[action](cp)
            message = str(err.value)
            assert message.startswith("permission denied:") and "needs role" in message
            assert f"has {role}" in message  # says what the caller has, 403-style


def test_denial_names_the_role_needed(store: ControlPlaneStore) -> None:
    cp = ControlPlane(store, Principal.with_role("workspace-admin", "wa", name="dev"))
    with pytest.raises(PermissionDenied) as err:
        cp.put_policy(_cw("x"))
    assert err.value.needed == "role org-admin or infra-admin of a project containing cluster(s) c1"
    cp = ControlPlane(store, Principal.with_role("workspace-admin", "wb", name="dev"))
    with pytest.raises(PermissionDenied, match="covering namespace\\(s\\) c1/a"):
        cp.put_policy(_ns("x"))


def test_unchanged_writes_need_no_write_role(store: ControlPlaneStore) -> None:
    # Re-applying a whole Git tree as a read-only role changes nothing, so it is allowed.
    cp = ControlPlane(store, Principal.with_role("org-read-only"))
    assert cp.put_policy(_cw())[1] == "unchanged"
    assert cp.put_cluster(Cluster("c1", "upstream", "calico", kube_context="c1")) == "unchanged"


def test_visibility_and_binding_rules() -> None:
    own = Ownership({"p1": frozenset({"c1"})}, {"wa": "p1"}, {"wa": frozenset({A})})
    auth = Authorizer(own)
    ws = Principal.with_role("workspace-read-only", "wa")
    assert auth.can_see_namespace(ws, A) and not auth.can_see_namespace(ws, NamespaceRef("c1", "b"))
    assert auth.can_see_cluster(ws, "c1") and not auth.can_see_cluster(ws, "c2")
    proj = Principal.with_role("project-read-only", "p1")
    assert auth.can_see_namespace(proj, NamespaceRef("c1", "b")) and not auth.can_see_cluster(proj, "c2")
    nobody = Principal("nobody")
    with pytest.raises(PermissionDenied, match="any role binding"):
        auth.require_read(nobody, "listing")
    with pytest.raises(ValueError, match="binds to a project scope"):
        RoleBinding(Role.INFRA_ADMIN, ScopeKind.ORG)
    with pytest.raises(ValueError, match="needs a workspace name"):
        Principal.with_role("workspace-admin", "")
    with pytest.raises(ValueError, match="unknown role"):
        Principal.with_role("root")


def test_listings_are_scope_filtered(store: ControlPlaneStore) -> None:
    cp = ControlPlane(store, Principal.with_role("project-read-only", "p2"))
    assert [c.name for c in cp.list_clusters()] == ["c2"]
    assert cp.list_assignments() == []
    cp = ControlPlane(store, Principal.with_role("workspace-read-only", "wa"))
    assert [a.name for a in cp.list_assignments()] == ["bpa", "nsa"]


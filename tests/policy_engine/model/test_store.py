"""The control-plane store: migrations, versioning, rollback, ownership, constraints."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_engine.control_plane import ControlPlane
from policy_engine.model import (
    Assignment,
    AssignmentTarget,
    Cluster,
    NamespaceOwner,
    NamespaceRef,
    PolicyRule,
    PolicySpec,
    Project,
    Workspace,
)
from policy_engine.roles import Principal
from policy_engine.store import STORE_FILE, ControlPlaneStore, Migration, StoreError, resolve_data_dir


def _policy(port: str, name: str = "web") -> PolicySpec:
    spec = {"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"toPorts": [{"ports": [{"port": port, "protocol": "TCP"}]}]}]}
    return PolicySpec(name, "namespace", (PolicyRule("http", "cilium", spec),))


@pytest.fixture
def store(tmp_path: Path) -> ControlPlaneStore:
    s = ControlPlaneStore.open(tmp_path)
    yield s
    s.close()


def test_file_location_and_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ControlPlaneStore.open(tmp_path / "d") as s:
        assert s.applied_migrations() == ["policy-engine/0001-initial", "policy-engine/0002-inventory-outbox",
                                          "policy-engine/0003-staged-policy-versions"]
        # a later component (users, tokens for the query API) adds its own tables the same way
        extra = Migration("tenancy/0001-users", (
            "CREATE TABLE users (name TEXT PRIMARY KEY, created_at TEXT NOT NULL)",
            """CREATE TABLE role_bindings (username TEXT NOT NULL REFERENCES users(name), role TEXT NOT NULL,
                   scope_kind TEXT NOT NULL, scope_name TEXT NOT NULL DEFAULT '',
                   PRIMARY KEY (username, role, scope_kind, scope_name))""",
        ))
        assert s.apply_migrations([extra]) == ["tenancy/0001-users"]
        assert s.apply_migrations([extra]) == []
    assert (tmp_path / "d" / STORE_FILE).is_file()
    with ControlPlaneStore.open(tmp_path / "d") as s:  # reopening re-applies nothing
        assert s.applied_migrations() == [
            "policy-engine/0001-initial", "policy-engine/0002-inventory-outbox",
            "policy-engine/0003-staged-policy-versions", "tenancy/0001-users"]
    monkeypatch.setenv("NETWARDEN_DATA_DIR", "/x/y")
    assert resolve_data_dir(None) == Path("/x/y") and resolve_data_dir("z") == Path("z")
    monkeypatch.delenv("NETWARDEN_DATA_DIR")
    assert resolve_data_dir(None) == Path("./netwarden-data")


def test_policy_versions_are_immutable_and_rollback_copies(store: ControlPlaneStore) -> None:
    v1, r1 = store.put_policy(_policy("80"), author="alice", source="a.yaml#1")
    assert (v1.version, r1) == (1, "created")
    same, r = store.put_policy(_policy("80"), author="bob")
    assert (same.version, r) == (1, "unchanged")
    v2, r2 = store.put_policy(_policy("8080"), author="bob")
    assert (v2.version, r2) == (2, "updated")
    back = store.rollback_policy("web", 1, author="carol")
    assert back.version == 3 and back.spec == v1.spec and back.info.message == "rollback to version 1"
    history = store.policy_history("web")
    assert [h.version for h in history] == [1, 2, 3]
    assert history[1].spec.rules[0].spec["ingress"][0]["toPorts"][0]["ports"][0]["port"] == "8080"
    assert [h.info.created_by for h in history] == ["alice", "bob", "carol"]
    assert store.get_policy("web", 2).spec == v2.spec  # old versions stay readable
    with pytest.raises(StoreError, match="no version 9"):
        store.rollback_policy("web", 9, author="x")
    with pytest.raises(StoreError, match="scope cannot change"):
        store.put_policy(PolicySpec("web", "cluster", v1.spec.rules), author="x")
    store.delete_policy("web")
    assert store.get_policy("web") is None and len(store.policy_history("web")) == 3
    again, r = store.put_policy(_policy("8080"), author="x")
    assert r == "created" and again.version == 4


def test_namespace_ownership_and_constraints(store: ControlPlaneStore) -> None:
    for name in ("c1", "c2"):
        store.put_cluster(Cluster(name, "upstream", "calico", kube_context=name))
    assert store.put_cluster(Cluster("c1", "upstream", "calico", kube_context="c1")) == "unchanged"
    store.put_project(Project("p", ("c1", "c2")))
    store.put_workspace(Workspace("w", "p", (NamespaceRef("c1", "web"), NamespaceRef("c2", "web"))))
    assert store.namespace_owner("c1", "web") == NamespaceOwner("c1", "web", "p", "w")
    assert store.namespace_owner("c1", "other") is None
    assert [o.cluster for o in store.list_namespace_ownership()] == ["c1", "c2"]
    with pytest.raises(StoreError, match="already belongs to workspace w"):
        store.put_workspace(Workspace("w2", "p", (NamespaceRef("c1", "web"),)))
    own = store.ownership()
    assert own.project_clusters["p"] == frozenset({"c1", "c2"}) and own.owner(NamespaceRef("c2", "web")) == ("p", "w")
    ControlPlane(store, Principal.with_role("org-admin"))  # seeds the built-in blueprint
    store.put_assignment(Assignment("a", blueprint="zero-trust-day0", clusters=("c1",)))
    with pytest.raises(StoreError, match="already has a blueprint"):
        store.put_assignment(Assignment("b", blueprint="zero-trust-day0", clusters=("c1",)))
    store.put_policy(_policy("80"), author="x")
    target = Assignment("t", policy="web", targets=(AssignmentTarget(workspace="w"),))
    assert store.put_assignment(target) == "created" and store.put_assignment(target) == "unchanged"
    assert store.get_assignment("t") == target


def test_transaction_rollback_discards(store: ControlPlaneStore) -> None:
    with store.transaction(rollback=True):
        store.put_cluster(Cluster("c", "upstream", "calico"))
        assert store.get_cluster("c") is not None
    assert store.get_cluster("c") is None
    with pytest.raises(RuntimeError), store.transaction():
        store.put_cluster(Cluster("c", "upstream", "calico"))
        raise RuntimeError
    assert store.get_cluster("c") is None


def test_builtins_seeded_once(store: ControlPlaneStore) -> None:
    ControlPlane(store, Principal.with_role("org-admin"))
    ControlPlane(store, Principal.with_role("org-admin"))
    bp = store.get_blueprint("zero-trust-day0")
    assert bp is not None and bp.builtin and bp.version == 1
    assert all(store.get_policy(r.name).version == 1 for r in bp.spec.cluster_policies)
    cp = ControlPlane(store, Principal.with_role("org-admin"))
    with pytest.raises(StoreError, match="built in"):
        cp.put_policy(PolicySpec("zero-trust-day0-allow-dns", "cluster", _policy("1").rules))

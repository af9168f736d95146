"""Users, role bindings, API tokens and namespace ownership on a real SQLite control-plane store."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policy_engine.model import NamespaceRef
from policy_engine.roles import Principal, Role, RoleBinding, ScopeKind
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import (
    WORKSPACE_LABEL,
    OwnershipIndex,
    Tenancy,
    TenancyError,
    namespace_labels_from_endpoint,
    parse_binding,
    parse_duration,
    visible_clusters,
    visible_namespaces,
)

from .conftest import seed_org


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_migrations_are_recorded_and_idempotent(store: ControlPlaneStore) -> None:
    Tenancy(store)
    Tenancy(store)
    assert "tenancy/0001-users" in store.applied_migrations()


def test_users_unique_and_validated(tenancy: Tenancy) -> None:
    assert tenancy.create_user("alice") == "created"
    assert tenancy.create_user("alice") == "unchanged"
    tenancy.create_user("bob@example.com")
    assert [u.name for u in tenancy.list_users()] == ["alice", "bob@example.com"]
    for bad in ("", "with space", "-dash", "a/b"):
        with pytest.raises(TenancyError, match="user name"):
            tenancy.create_user(bad)


@pytest.mark.parametrize(
    ("role", "scope", "kind", "name"),
    [
        ("org-admin", None, ScopeKind.ORG, ""),
        ("org-read-only", "org", ScopeKind.ORG, ""),
        ("infra-admin", "shop", ScopeKind.PROJECT, "shop"),
        ("project-admin", "ops", ScopeKind.PROJECT, "ops"),
        ("project-read-only", "shop", ScopeKind.PROJECT, "shop"),
        ("workspace-admin", "frontend", ScopeKind.WORKSPACE, "frontend"),
        ("workspace-read-only", "backend", ScopeKind.WORKSPACE, "backend"),
    ],
)
def test_every_role_binds_to_its_scope_kind(
    tenancy: Tenancy, role: str, scope: str | None, kind: ScopeKind, name: str
) -> None:
    tenancy.create_user("u")
    assert tenancy.add_binding("u", role, scope) == "created"
    assert tenancy.add_binding("u", role, scope) == "unchanged"
    assert tenancy.bindings("u") == (RoleBinding(Role(role), kind, name),)


@pytest.mark.parametrize(
    ("role", "scope", "message"),
    [
        ("root", "org", "unknown role 'root'"),
        ("org-admin", "shop", "binds to the organization"),
        ("project-admin", None, "needs a project name"),
        ("project-admin", "org", "needs a project name"),
        ("project-admin", "nope", "no project named 'nope'"),
        ("infra-admin", "frontend", "no project named 'frontend'"),
        ("workspace-admin", "shop", "no workspace named 'shop'"),
        ("workspace-read-only", "", "needs a workspace name"),
    ],
)
def test_bad_bindings_are_refused(tenancy: Tenancy, role: str, scope: str | None, message: str) -> None:
    tenancy.create_user("u")
    with pytest.raises(TenancyError, match=message):
        tenancy.add_binding("u", role, scope)
    assert tenancy.bindings("u") == ()


def test_binding_needs_a_user(tenancy: Tenancy) -> None:
    with pytest.raises(TenancyError, match="no user named 'ghost'"):
        tenancy.add_binding("ghost", "org-admin")


def test_remove_binding_and_scope_cleanup(tenancy: Tenancy) -> None:
    tenancy.create_user("u")
    tenancy.add_binding("u", "workspace-admin", "frontend")
    tenancy.add_binding("u", "project-read-only", "ops")
    tenancy.remove_binding("u", "project-read-only", "ops")
    with pytest.raises(TenancyError, match="has no binding"):
        tenancy.remove_binding("u", "project-read-only", "ops")
    assert tenancy.remove_scope_bindings(ScopeKind.WORKSPACE, "frontend") == 1
    assert tenancy.bindings("u") == ()


def test_token_lifecycle(tenancy: Tenancy) -> None:
    tenancy.create_user("alice")
    tenancy.add_binding("alice", "workspace-admin", "frontend")
    token_id, secret = tenancy.create_token("alice", description="laptop")
    assert secret.startswith(f"nw_{token_id}_") and len(secret) > 50
    principal = tenancy.principal_for_token(secret)
    assert principal == Principal("alice", (RoleBinding(Role.WORKSPACE_ADMIN, ScopeKind.WORKSPACE, "frontend"),))
    # Only the hash is stored.
    stored = tenancy.store.execute("SELECT * FROM api_tokens")
    assert secret not in repr(stored)
    [listed] = tenancy.list_tokens("alice")
    assert listed.id == token_id and listed.description == "laptop" and listed.last_used_at is not None
    tenancy.revoke_token(token_id)
    assert tenancy.principal_for_token(secret) is None
    assert tenancy.check_token(secret).reason == "API token revoked"
    with pytest.raises(TenancyError, match="no token with id"):
        tenancy.revoke_token("000000000000")


def test_tokens_reject_tampering(tenancy: Tenancy) -> None:
    tenancy.create_user("alice")
    token_id, secret = tenancy.create_token("alice")
    other_id, _ = tenancy.create_token("alice")
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    swapped = secret.replace(token_id, other_id)
    for bad in (tampered, swapped, "", "nw_", "garbage", f"nw_{token_id}_short"):
        assert tenancy.principal_for_token(bad) is None, bad
    assert tenancy.check_token(tampered).reason == "unknown API token"


def test_token_expiry_and_last_used(store: ControlPlaneStore) -> None:
    clock = Clock()
    tenancy = Tenancy(store, clock=clock)
    tenancy.create_user("bob")
    token_id, secret = tenancy.create_token("bob", timedelta(hours=1))
    assert tenancy.principal_for_token(secret) is not None
    first = tenancy.get_token(token_id)
    assert first is not None and first.last_used_at == clock.now
    clock.now += timedelta(seconds=10)
    tenancy.principal_for_token(secret)
    second = tenancy.get_token(token_id)
    assert second is not None and second.last_used_at == first.last_used_at  # throttled write
    clock.now += timedelta(minutes=59)
    tenancy.principal_for_token(secret)
    third = tenancy.get_token(token_id)
    assert third is not None and third.last_used_at == clock.now and third.status(clock.now) == "active"
    clock.now += timedelta(minutes=1)
    assert tenancy.principal_for_token(secret) is None
    assert tenancy.check_token(secret).reason.startswith("API token expired at")
    expired = tenancy.get_token(token_id)
    assert expired is not None and expired.status(clock.now) == "expired"
    with pytest.raises(TenancyError, match="expires"):
        tenancy.create_token("bob", timedelta(0))


def test_deleting_a_user_kills_its_tokens(tenancy: Tenancy) -> None:
    tenancy.create_user("carol")
    tenancy.add_binding("carol", "org-read-only")
    _, secret = tenancy.create_token("carol")
    tenancy.delete_user("carol")
    assert tenancy.principal_for_token(secret) is None
    assert tenancy.list_bindings() == [] and tenancy.list_tokens() == []
    with pytest.raises(TenancyError, match="no user named"):
        tenancy.create_token("carol")


def test_tenancy_open_is_usable_from_other_threads(tmp_path: Path) -> None:
    with ControlPlaneStore.open(tmp_path) as store:
        seed_org(store)
    tenancy = Tenancy.open(tmp_path)
    tenancy.create_user("t")
    _, secret = tenancy.create_token("t")
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(tenancy.principal_for_token(secret))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(isinstance(r, Principal) for r in results)
    tenancy.close()


def test_parse_duration_and_binding() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("never") is None
    for bad in ("30", "d", "-1d", "0d", "1y"):
        with pytest.raises(TenancyError, match="expires"):
            parse_duration(bad)
    assert parse_binding("org-admin", "org") == RoleBinding(Role.ORG_ADMIN, ScopeKind.ORG)


# -- ownership ------------------------------------------------------------------------------------


def test_ownership_index_store_and_labels(store: ControlPlaneStore) -> None:
    index = OwnershipIndex.from_store(store)
    assert index.owner("east", "web") == ("shop", "frontend")
    assert index.owner("east", "payments") is None
    # A label declares an unowned namespace.
    entry = index.add_label_declared("east", "payments", {WORKSPACE_LABEL: "backend", "team": "x"})
    assert entry is not None and entry.source == "label"
    assert index.owner("east", "payments") == ("shop", "backend")
    # The store wins on conflict, and the ignored label is explained.
    assert index.add_label_declared("east", "web", {WORKSPACE_LABEL: "backend"}) is not None
    assert index.owner("east", "web") == ("shop", "frontend")
    assert "store assigns east/web to workspace frontend" in index.ignored_labels[("east", "web")]
    # Labels naming unknown workspaces, or a workspace whose project lacks the cluster, are ignored.
    assert index.add_label_declared("east", "x", {WORKSPACE_LABEL: "nope"}) is None
    assert "no workspace named 'nope'" in index.ignored_labels[("east", "x")]
    assert index.add_label_declared("west", "y", {WORKSPACE_LABEL: "frontend"}) is None
    assert "cluster west is not in project shop" in index.ignored_labels[("west", "y")]
    # Removing the label removes the label-declared owner.
    assert index.add_label_declared("east", "payments", {}) is None
    assert index.owner("east", "payments") is None


def test_merged_ownership_feeds_the_authorizer(store: ControlPlaneStore) -> None:
    index = OwnershipIndex.from_store(store)
    index.add_label_declared("east", "payments", {WORKSPACE_LABEL: "frontend"})
    merged = index.merged_ownership()
    assert merged.workspace_namespaces["frontend"] == {NamespaceRef("east", "web"), NamespaceRef("east", "payments")}
    assert merged.owner(NamespaceRef("east", "payments")) == ("shop", "frontend")


def test_visibility_per_role(store: ControlPlaneStore) -> None:
    index = OwnershipIndex.from_store(store)
    index.add_label_declared("east", "payments", {WORKSPACE_LABEL: "frontend"})
    known = [NamespaceRef(c, n) for c in ("east", "west") for n in ("web", "db", "kube-system", "monitoring")]
    clusters = ["east", "west"]

    org = Principal.with_role("org-read-only")
    assert index.visibility(org).everything
    assert visible_clusters(org, index, clusters) == clusters
    assert len(visible_namespaces(org, index, known)) == len(set(known) | {NamespaceRef("east", "payments"),
                                                                           NamespaceRef("east", "cache")})

    infra = Principal.with_role("infra-admin", "ops")
    assert visible_clusters(infra, index, clusters) == ["west"]
    assert all(r.cluster == "west" for r in visible_namespaces(infra, index, known))

    ws = Principal.with_role("workspace-admin", "frontend")
    vis = index.visibility(ws)
    assert vis.covers("east", "web") and vis.covers("east", "payments") and not vis.covers("east", "db")
    assert visible_clusters(ws, index, clusters) == ["east"]
    assert visible_namespaces(ws, index, known) == [NamespaceRef("east", "payments"), NamespaceRef("east", "web")]

    # Several bindings add up; namespaces inside a visible cluster are folded into the cluster.
    both = Principal("x", Principal.with_role("project-read-only", "ops").bindings
                     + Principal.with_role("workspace-read-only", "observability").bindings
                     + ws.bindings)
    vis = index.visibility(both)
    assert vis.clusters == {"west"} and NamespaceRef("west", "monitoring") not in vis.namespaces
    assert vis.covers("west", "anything") and vis.covers("east", "web")

    assert index.visibility(Principal("nobody")).nothing


def test_tenancy_ownership_snapshot_merges_labels(tenancy: Tenancy) -> None:
    plain = tenancy.ownership()
    assert plain == tenancy.store.ownership()
    merged = tenancy.ownership({("east", "payments"): {WORKSPACE_LABEL: "backend"},
                                ("east", "web"): {WORKSPACE_LABEL: "backend"}})
    assert NamespaceRef("east", "payments") in merged.workspace_namespaces["backend"]
    assert merged.owner(NamespaceRef("east", "web")) == ("shop", "frontend")


def test_visibility_agrees_with_the_query_api_scope_filter(store: ControlPlaneStore) -> None:
    scope = pytest.importorskip("query_api.scope")
    index = OwnershipIndex.from_store(store)
    index.add_label_declared("east", "payments", {WORKSPACE_LABEL: "frontend"})
    ownership = index.merged_ownership()
    principals = [Principal.with_role(role, scope_name) for role, scope_name in (
        ("org-admin", ""), ("org-read-only", ""), ("infra-admin", "shop"), ("project-admin", "ops"),
        ("project-read-only", "shop"), ("workspace-admin", "frontend"), ("workspace-read-only", "backend"))]
    principals.append(Principal("nobody"))
    for principal in principals:
        ours = index.visibility(principal)
        theirs = scope.ScopeFilter.for_principal(principal, ownership)
        assert (ours.everything, ours.clusters, {(r.cluster, r.namespace) for r in ours.namespaces}) == (
            theirs.everything, theirs.clusters, theirs.namespaces), principal


def test_recorded_namespace_labels(tenancy: Tenancy) -> None:
    tenancy.record_namespace_labels("east", {"payments": {WORKSPACE_LABEL: "backend"}, "web": {WORKSPACE_LABEL: "backend"},
                                             "tmp": {"team": "x"}})
    assert tenancy.namespace_labels() == {("east", "payments"): {WORKSPACE_LABEL: "backend"},
                                          ("east", "web"): {WORKSPACE_LABEL: "backend"}}
    index = tenancy.ownership_index()
    assert index.owner("east", "payments") == ("shop", "backend")
    assert index.owner("east", "web") == ("shop", "frontend")  # the store wins
    assert ("east", "web") in index.ignored_labels
    # Fresher labels given by the caller override recorded ones.
    assert tenancy.ownership({("east", "payments"): {}}).owner(NamespaceRef("east", "payments")) is None
    # A complete listing drops namespaces that are gone; a partial one leaves the others alone.
    tenancy.record_namespace_labels("east", {"cache2": {WORKSPACE_LABEL: "backend"}}, complete=False)
    assert set(tenancy.namespace_labels()) == {("east", "payments"), ("east", "web"), ("east", "cache2")}
    tenancy.record_namespace_labels("east", {"payments": {}})
    assert tenancy.namespace_labels() == {}


def test_namespace_labels_from_flow_endpoints() -> None:
    labels = [
        "k8s:app=cart",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
        f"k8s:io.cilium.k8s.namespace.labels.{WORKSPACE_LABEL}=frontend",
        "k8s:io.cilium.k8s.namespace.labels.broken",
    ]
    assert namespace_labels_from_endpoint(labels) == {"kubernetes.io/metadata.name": "shop", WORKSPACE_LABEL: "frontend"}


def test_bindings_to_a_recreated_namesake_grant_nothing(store: ControlPlaneStore) -> None:
    from policy_engine.control_plane import ControlPlane
    from policy_engine.model import Workspace

    tenancy = Tenancy(store)
    tenancy.create_user("eve")
    tenancy.add_binding("eve", "workspace-admin", "frontend")
    tenancy.add_binding("eve", "org-read-only")
    _, secret = tenancy.create_token("eve")
    cp = ControlPlane(store, Principal.with_role("org-admin"))
    # GitOps prune deletes the workspace without touching bindings; a namesake appears later.
    cp.delete_workspace("frontend")
    principal = tenancy.principal_for_token(secret)
    assert principal is not None and principal.bindings == (RoleBinding(Role.ORG_READ_ONLY, ScopeKind.ORG),)
    cp.put_workspace(Workspace("frontend", "shop", (NamespaceRef("east", "web"),)))
    store.execute("UPDATE workspaces SET created_at = ? WHERE name = 'frontend'", ("2999-01-01T00:00:00+00:00",))
    assert tenancy.bindings("eve") == (RoleBinding(Role.ORG_READ_ONLY, ScopeKind.ORG),)
    stale = [b for b in tenancy.list_bindings("eve") if b.stale]
    assert [b.binding.scope_name for b in stale] == ["frontend"]
    # Granting again is a fresh decision and makes it effective; removal works on stale rows too.
    clock = Clock()
    clock.now = datetime(3000, 1, 1, tzinfo=UTC)
    fresh = Tenancy(store, clock=clock)
    assert fresh.add_binding("eve", "workspace-admin", "frontend") == "created"
    assert len(fresh.bindings("eve")) == 2
    store.execute("UPDATE workspaces SET created_at = ? WHERE name = 'frontend'", ("3999-01-01T00:00:00+00:00",))
    fresh.remove_binding("eve", "workspace-admin", "frontend")
    assert [b.binding.role for b in fresh.list_bindings("eve")] == [Role.ORG_READ_ONLY]

"""Staged policies in the control plane: a staged version is evaluated (the inventory's staged set, decided as the
stream decides) and never rendered or synced; promote enforces it as a new version; unstage drops it; role rules
are those of writing the policy; GitOps `spec.mode` round-trips; an existing store is migrated."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from netwarden.cli import main
from netwarden.demo_seed import seed_demo
from policy_engine.control_plane import ControlPlane
from policy_engine.flow_keys import decide
from policy_engine.gitops import GitOpsErrors, load_documents, stage_documents
from policy_engine.inventory import latest_inventory
from policy_engine.model import Assignment, AssignmentTarget, Cluster, PolicyRule, PolicySpec
from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import STORE_FILE, ControlPlaneStore, StoreError
from schemas.conversation import Conversation, Side
from schemas.inventory import StagedVersion
from tests.enrichment.conftest import CART_ALLOW_V1, CART_ALLOW_V2, MONITORING_SCRAPE
from tests.kube_api_stub import KubeApiStub

NOW = datetime(2026, 11, 29, tzinfo=UTC)
CART_POLICY = "CiliumNetworkPolicy/shop/cart-allow"


def as_role(store: ControlPlaneStore, role: str, scope: str = "") -> ControlPlane:
    return ControlPlane(store, Principal.with_role(role, scope, name=f"{role}-{scope}"))


def cart(spec: dict, name: str = "cart-allow") -> PolicySpec:
    return PolicySpec(name, "namespace", (PolicyRule(name, "cilium", spec),))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ControlPlaneStore]:
    """The demo organization; demo-east under day-0 zero trust with cart-allow v1 on the shop-team workspace and
    monitoring allowed to reach the cluster (so its flows to cart are decided at cart's ingress)."""
    with ControlPlaneStore.open(tmp_path) as s:
        seed_demo(s, tmp_path)
        with s.transaction():
            cp = as_role(s, "org-admin")
            cp.put_assignment(Assignment("east-day0", blueprint="zero-trust-day0", clusters=("demo-east",)))
            cp.put_policy(cart(CART_ALLOW_V1))
            cp.put_assignment(Assignment("cart", policy="cart-allow", targets=(AssignmentTarget(workspace="shop-team"),)))
            cp.put_policy(PolicySpec("scrape", "namespace", (PolicyRule("scrape", "cilium", MONITORING_SCRAPE),)))
            cp.put_assignment(Assignment("scrape", policy="scrape",
                                         targets=(AssignmentTarget(cluster="demo-east", namespace="monitoring"),)))
        yield s


def monitoring_to_cart(port: int) -> Conversation:
    """prometheus (monitoring) -> cart (shop): CART_ALLOW_V2 adds ingress from monitoring, V1 has none."""
    prometheus = Side("monitoring", "prometheus", labels=("k8s:app=prometheus", "k8s:io.kubernetes.pod.namespace=monitoring"))
    cart_pod = Side("shop", "cart", labels=("k8s:app=cart", "k8s:io.kubernetes.pod.namespace=shop"))
    return Conversation("demo-east", prometheus, cart_pod, port, "TCP", 2, 133, 1, NOW, NOW, traffic_direction=1)


def rendered_cart(cp: ControlPlane) -> dict:
    [obj] = [o for o in cp.render("demo-east").objects if o["metadata"]["name"] == "cart-allow"]
    return obj


def test_a_staged_version_is_evaluated_and_rendered_only_once_promoted(store: ControlPlaneStore) -> None:
    cp = as_role(store, "org-admin")
    with store.transaction():
        pv, result = cp.stage_policy(cart(CART_ALLOW_V2))
    assert (pv.version, pv.staged, result) == (2, True, "created")
    assert cp.stage_policy(cart(CART_ALLOW_V2))[1] == "unchanged"
    # Rendering (hence sync and diff) still sends version 1.
    obj = rendered_cart(cp)
    assert obj["metadata"]["labels"]["netwarden.io/policy-version"] == "1" and obj["spec"] == CART_ALLOW_V1
    east = latest_inventory(store)["demo-east"]
    assert east.desired is not None and east.staged is not None
    assert east.desired.rendered_from[CART_POLICY].version == 1 and not east.desired.staged_versions
    assert east.staged.staged_versions == (StagedVersion("cart-allow", 2, 1),)
    assert east.staged.rendered_from[CART_POLICY].version == 2
    # The staged set allows what the desired set denies, attributed to the staged version.
    conv = monitoring_to_cart(9999)
    desired, staged = decide(conv, east.desired), decide(conv, east.staged)
    assert (desired.verdict, desired.drop_reason, desired.ingress_rule) == (2, 133, "default-deny")
    assert (staged.verdict, staged.ingress_policy, staged.ingress_rule, staged.ingress_version) == (
        1, CART_POLICY, "ingress[1]", 2)
    assert staged.revision == east.staged.revision != 0

    with store.transaction():
        promoted = cp.promote_policy("cart-allow")
    assert (promoted.version, promoted.staged, promoted.info.message) == (3, False, "promoted staged version 2")
    assert [(v.version, v.info.mode) for v in cp.policy_history("cart-allow")] == [
        (1, "enforced"), (2, "staged"), (3, "enforced")]
    obj = rendered_cart(cp)
    assert obj["metadata"]["labels"]["netwarden.io/policy-version"] == "3" and obj["spec"] == CART_ALLOW_V2
    east = latest_inventory(store)["demo-east"]
    assert not east.staged.staged_versions and east.staged.policies == east.desired.policies
    assert decide(conv, east.desired).verdict == decide(conv, east.staged).verdict == 1
    with pytest.raises(StoreError, match="no staged version"):
        cp.promote_policy("cart-allow")


def test_unstage_removes_it_from_the_staged_set(store: ControlPlaneStore, tmp_path: Path) -> None:
    cp = as_role(store, "org-admin")
    with store.transaction():
        cp.stage_policy(cart(CART_ALLOW_V2))
        cp.unstage_policy("cart-allow")
    east = latest_inventory(store)["demo-east"]
    assert not east.staged.staged_versions and east.staged.policies == east.desired.policies
    assert store.get_staged_policy("cart-allow") is None

    # A new policy staged with the Assignment that places it: nothing of it is enforced, the staged set has it.
    doc = tmp_path / "new.yaml"
    doc.write_text(yaml.safe_dump_all([
        {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "cart-from-monitoring"},
         "spec": {"scope": "namespace", "rules": [{"name": "scrape", "cilium": CART_ALLOW_V2}]}},
        {"apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": "cart-from-monitoring"},
         "spec": {"policy": "cart-from-monitoring", "targets": [{"cluster": "demo-east", "namespace": "shop"}]}},
    ]))
    changes = stage_documents(cp, load_documents(doc))
    assert [(c.kind, c.action) for c in changes] == [("Policy", "stage"), ("Assignment", "create")]
    assert "cart-from-monitoring" not in {o["metadata"]["name"] for o in cp.render("demo-east").objects}
    east = latest_inventory(store)["demo-east"]
    assert east.staged.staged_versions == (StagedVersion("cart-from-monitoring", 1, 0),)
    assert "CiliumNetworkPolicy/shop/cart-from-monitoring" in east.staged.rendered_from
    assert decide(monitoring_to_cart(9999), east.staged).verdict == 1
    with store.transaction():
        cp.unstage_policy("cart-from-monitoring")
    east = latest_inventory(store)["demo-east"]
    assert "CiliumNetworkPolicy/shop/cart-from-monitoring" not in east.staged.rendered_from
    assert "cart-from-monitoring" not in {s.name for s in cp.list_policy_states()}

    # Staging never changes what a cluster enforces: placing an enforced policy elsewhere is refused.
    doc.write_text(yaml.safe_dump({
        "apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": "cart-everywhere"},
        "spec": {"policy": "cart-allow", "targets": [{"cluster": "demo-east", "namespace": "data"}]}}))
    with pytest.raises(GitOpsErrors, match="would change what cluster demo-east enforces .*use `netwarden apply`"):
        stage_documents(cp, load_documents(doc))
    assert store.get_assignment("cart-everywhere") is None


def test_role_rules_are_those_of_writing_the_policy(store: ControlPlaneStore) -> None:
    wendy = as_role(store, "workspace-admin", "shop-team")  # the policy's targets are her workspace
    with store.transaction():
        assert wendy.stage_policy(cart(CART_ALLOW_V2))[1] == "created"
    for cp in (as_role(store, "workspace-admin", "data-team"), as_role(store, "workspace-read-only", "shop-team"),
               as_role(store, "org-read-only")):
        with pytest.raises(PermissionDenied, match="needs role org-admin, project-admin"):
            cp.stage_policy(cart({**CART_ALLOW_V2, "ingress": CART_ALLOW_V2["ingress"][:1]}))
        with pytest.raises(PermissionDenied, match="promoting policy cart-allow"):
            cp.promote_policy("cart-allow")
        with pytest.raises(PermissionDenied, match="unstaging policy cart-allow"):
            cp.unstage_policy("cart-allow")
    # Cluster-wide: org-admin or infra-admin only, staged or not.
    deny_all = PolicySpec("stage-deny-all", "cluster", (PolicyRule("all", "cilium", {"endpointSelector": {}, "ingress": [{}]}),))
    with pytest.raises(PermissionDenied, match="needs role org-admin or infra-admin"):
        wendy.stage_policy(deny_all)
    assert as_role(store, "infra-admin", "storefront").stage_policy(deny_all)[1] == "created"
    with store.transaction():
        assert wendy.promote_policy("cart-allow").version == 3
    assert store.get_policy("cart-allow").version == 3


def test_staged_objects_never_reach_a_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    with KubeApiStub(cilium=True, namespaces=("kube-system", "shop", "data", "monitoring")) as kube:
        with ControlPlaneStore.open(data) as s:
            seed_demo(s, data)
            cp = as_role(s, "org-admin")
            with s.transaction():
                cp.put_cluster(Cluster("demo-east", "upstream", "cilium", api_server=kube.url,
                                       namespaces=("shop", "data", "monitoring", "kube-system")))
                cp.put_policy(cart(CART_ALLOW_V1))
                cp.put_assignment(Assignment("cart", policy="cart-allow", targets=(AssignmentTarget(workspace="shop-team"),)))

        def run(*argv: str, rc: int = 0) -> str:
            assert main([*argv, "--data-dir", str(data)]) == rc, capsys.readouterr()
            return capsys.readouterr().out

        def live_cart() -> dict:
            obj = kube.get("CiliumNetworkPolicy", "cart-allow", "shop")
            assert obj is not None
            return obj

        assert "status: synced" in run("sync", "--cluster", "demo-east")
        assert live_cart()["metadata"]["labels"]["netwarden.io/policy-version"] == "1"
        staged = tmp_path / "cart-v2.yaml"
        staged.write_text(yaml.safe_dump({
            "apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "cart-allow"},
            "spec": {"scope": "namespace", "rules": [{"name": "cart-allow", "cilium": CART_ALLOW_V2}]}}))
        assert "stage     Policy cart-allow (staged version 2)" in run("policy", "stage", "-f", str(staged))
        out = run("get", "policies")
        assert any(line.split()[:5] == ["cart-allow", "namespace", "enforced+staged", "1", "2"] for line in out.splitlines())
        assert "policy-version: '2'" not in run("render", "--cluster", "demo-east")
        shown = run("admin", "inventory", "show", "--cluster", "demo-east").splitlines()
        assert shown[0].split()[-1] == "STAGED" and shown[1].split()[-1] == "cart-allow@2"
        out = run("sync", "--cluster", "demo-east")
        assert "0 created, 0 updated" in out and "status: synced" in out
        assert live_cart()["spec"] == CART_ALLOW_V1
        assert "enforced as version 3" in run("policy", "promote", "cart-allow")
        assert "updated CiliumNetworkPolicy shop/cart-allow" in run("sync", "--cluster", "demo-east")
        live = live_cart()
        assert live["metadata"]["labels"]["netwarden.io/policy-version"] == "3" and live["spec"] == CART_ALLOW_V2
        assert main(["policy", "unstage", "cart-allow", "--data-dir", str(data)]) == 2
        assert "policy cart-allow has no staged version" in capsys.readouterr().err


def test_gitops_mode_round_trip(store: ControlPlaneStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store.close()
    data = ["--data-dir", str(tmp_path)]

    def run(*argv: str, rc: int = 0) -> tuple[str, str]:
        code = main([*argv, *data])
        out, err = capsys.readouterr()
        assert code == rc, (out, err)
        return out, err

    tree = tmp_path / "tree.yaml"
    policy = {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "cart-allow"}}
    enforced = {**policy, "spec": {"scope": "namespace", "mode": "enforced", "rules": [{"name": "cart-allow", "cilium": CART_ALLOW_V1}]}}
    staged = {**policy, "spec": {"scope": "namespace", "mode": "staged", "rules": [{"name": "cart-allow", "cilium": CART_ALLOW_V2}]}}
    tree.write_text(yaml.safe_dump_all([enforced, staged]))
    out, _ = run("diff", "-f", str(tree), "--no-live")
    assert "stage     Policy cart-allow (staged version 2)" in out
    assert "cluster demo-east: desired objects\n  no changes" in out
    assert "cluster demo-east: staged objects (evaluated on flows, never synced)\n  update CiliumNetworkPolicy shop/cart-allow" in out
    assert "stage     Policy cart-allow (staged version 2)" in run("apply", "-f", str(tree))[0]
    # Export and apply back: nothing changes (one document per mode).
    exported = tmp_path / "exported.yaml"
    exported.write_text(run("get", "policies", "-o", "yaml")[0])
    docs = [d for d in yaml.safe_load_all(exported.read_text()) if d["metadata"]["name"] == "cart-allow"]
    assert [(d["spec"].get("mode", "enforced"), d["status"]["version"], d["status"]["stagedVersion"]) for d in docs] == [
        ("enforced", 1, 2), ("staged", 2, 2)]
    assert run("apply", "-f", str(exported))[0].endswith(", 0 change(s)\n")
    listed = json.loads(run("get", "policies", "-o", "json")[0])
    assert sum(d["metadata"]["name"] == "cart-allow" for d in listed) == 2
    # Declarative: an enforced document without a staged one leaves nothing staged.
    tree.write_text(yaml.safe_dump(enforced))
    assert "unstage   Policy cart-allow (staged version 2)" in run("apply", "-f", str(tree))[0]
    # Bad input names the field; `policy stage` does not enforce.
    tree.write_text(yaml.safe_dump({**policy, "spec": {**staged["spec"], "mode": "audit"}}))
    _, err = run("apply", "-f", str(tree), rc=2)
    assert "document 1 (Policy cart-allow): spec.mode: expected one of enforced, staged, found 'audit'" in err
    tree.write_text(yaml.safe_dump(enforced))
    _, err = run("policy", "stage", "-f", str(tree), rc=2)
    assert "spec.mode: enforced: `policy stage` stages policies; use `netwarden apply`" in err


def test_an_existing_store_is_migrated(tmp_path: Path) -> None:
    """A data dir from before staging (migrations 1-2, written by the code of then): its versions are enforced,
    its inventory is recorded again with a staged set, and staging works."""
    from policy_engine.store import CORE_MIGRATIONS

    conn = sqlite3.connect(tmp_path / STORE_FILE, isolation_level=None)
    now = NOW.isoformat()
    conn.execute("CREATE TABLE schema_migrations (id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for migration in CORE_MIGRATIONS[:2]:
        for statement in migration.statements:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (migration.id, now))
    spec = cart(CART_ALLOW_V1)
    for statement, params in (
        ("INSERT INTO clusters (name, cluster_type, primary_cni, namespaces, created_at, updated_at) "
         "VALUES ('old-east', 'upstream', 'cilium', '[\"shop\"]', ?, ?)", (now, now)),
        ("INSERT INTO policies (name, scope, current_version, builtin, created_at) VALUES (?, ?, 1, 0, ?)",
         (spec.name, spec.scope, now)),
        ("INSERT INTO policy_versions (policy, version, content, content_hash, created_at, created_by) "
         "VALUES (?, 1, ?, ?, ?, 'old')", (spec.name, json.dumps(spec.to_content()), spec.hash(), now)),
        ("INSERT INTO assignments (name, policy, created_at, updated_at) VALUES ('cart', 'cart-allow', ?, ?)", (now, now)),
        ("INSERT INTO assignment_targets (assignment, cluster, namespace) VALUES ('cart', 'old-east', 'shop')", ()),
        ("INSERT INTO inventory_outbox (cluster, revision, content_hash, policy_revision, policy_hash, value, "
         "published_revision, updated_at) VALUES ('old-east', 4, 'old', 2, 'old', ?, 4, ?)",
         (json.dumps({"format": 1, "cluster": "old-east", "revision": 4, "desired": None, "staged": None}), now)),
    ):
        conn.execute(statement, params)
    conn.close()
    with ControlPlaneStore.open(tmp_path) as s:
        assert "policy-engine/0003-staged-policy-versions" in s.applied_migrations()
        assert s.get_policy("cart-allow").info.mode == "enforced"
        east = latest_inventory(s)["old-east"]
        assert east.revision == 5 and east.staged is not None and east.desired is not None
        assert east.staged.policies == east.desired.policies and east.desired.rendered_from[CART_POLICY].version == 1
        with s.transaction():
            pv, _ = as_role(s, "org-admin").stage_policy(cart(CART_ALLOW_V2))
        assert pv.version == 2 and latest_inventory(s)["old-east"].staged.staged_versions == (
            StagedVersion("cart-allow", 2, 1),)

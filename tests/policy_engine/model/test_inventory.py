"""The inventory outbox: every control-plane write that changes what a cluster's message says records the next
revision in the same transaction; writes that change nothing, dry runs and rolled-back writes record nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from netwarden.cli import main
from policy_engine.control_plane import ControlPlane
from policy_engine.inventory import latest_inventory, mark_published, pending_messages
from policy_engine.model import (
    Assignment,
    AssignmentTarget,
    Cluster,
    NamespaceRef,
    PolicyRule,
    PolicySpec,
    Project,
    Workspace,
)
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore, StoreError
from policy_engine.tenancy import WORKSPACE_LABEL, Tenancy

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "gitops"


def revisions(store: ControlPlaneStore) -> dict[str, tuple[int, int]]:
    return {c: (i.revision, i.desired.revision if i.desired else 0) for c, i in latest_inventory(store).items()}


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = ControlPlaneStore.open(tmp_path)
    cp = ControlPlane(s, Principal.with_role("org-admin", name="t"))
    with s.transaction():
        cp.put_cluster(Cluster("east", "upstream", "cilium", namespaces=("web", "db")))
        cp.put_cluster(Cluster("west", "upstream", "calico", namespaces=("web",)))
        cp.put_project(Project("shop", ("east",)))
        cp.put_workspace(Workspace("frontend", "shop", (NamespaceRef("east", "web"),)))
    yield s
    s.close()


def test_writes_record_the_next_revision_and_nothing_else_does(store: ControlPlaneStore) -> None:
    cp = ControlPlane(store, Principal.with_role("org-admin", name="t"))
    inv = latest_inventory(store)
    assert inv["east"].projects == ("shop",) and inv["east"].namespaces["web"].workspace == "frontend"
    assert inv["east"].desired is not None and inv["east"].desired.engine == "cilium"
    assert inv["west"].desired is not None and inv["west"].desired.engine == "kubernetes"
    start = revisions(store)
    # Re-writing what is stored is no write; a dry run is rolled back.
    with store.transaction():
        cp.put_workspace(Workspace("frontend", "shop", (NamespaceRef("east", "web"),)))
    with store.transaction(rollback=True):
        cp.put_project(Project("ops", ("west",)))
    assert revisions(store) == start
    # An ownership change bumps the message, not the policy set's revision.
    with store.transaction():
        cp.put_workspace(Workspace("backend", "shop", (NamespaceRef("east", "db"),)))
    assert revisions(store)["east"] == (start["east"][0] + 1, start["east"][1])
    assert revisions(store)["west"] == start["west"]
    # A blueprint assignment changes east's desired set.
    with store.transaction():
        cp.put_assignment(Assignment("day0", blueprint="zero-trust-day0", clusters=("east",)))
    east = latest_inventory(store)["east"]
    assert east.desired is not None and east.desired.revision == start["east"][1] + 1
    assert east.desired.blueprint == "zero-trust-day0" and east.desired.policies
    origin = east.desired.rendered_from["CiliumClusterwideNetworkPolicy//zero-trust-day0-default-deny"]
    assert (origin.policy, origin.version) == ("zero-trust-day0-default-deny", 1)
    # A failed write records nothing.
    with pytest.raises(StoreError), store.transaction():
        cp.put_workspace(Workspace("thief", "shop", (NamespaceRef("east", "web"),)))
    assert latest_inventory(store)["east"] == east


def test_pending_until_published_and_tombstones_for_deleted_clusters(store: ControlPlaneStore) -> None:
    cp = ControlPlane(store, Principal.with_role("org-admin", name="t"))
    pending = pending_messages(store)
    assert [m.cluster for m in pending] == ["east", "west"] and all(m.value for m in pending)
    mark_published(store, pending)
    assert pending_messages(store) == []
    with store.transaction():
        cp.delete_cluster("west")
    [tombstone] = pending_messages(store)
    assert tombstone.cluster == "west" and tombstone.value is None and tombstone.key == b"cluster/west"
    assert "west" not in latest_inventory(store)


def test_label_declared_namespaces_and_policy_versions(store: ControlPlaneStore) -> None:
    cp = ControlPlane(store, Principal.with_role("org-admin", name="t"))
    tenancy = Tenancy(store)
    tenancy.record_namespace_labels("east", {"cache": {WORKSPACE_LABEL: "frontend"}, "web": {}})
    owner = latest_inventory(store)["east"].namespaces["cache"]
    assert (owner.project, owner.workspace, owner.source) == ("shop", "frontend", "label")
    spec = {"endpointSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]}
    with store.transaction():
        cp.put_policy(PolicySpec("web-in", "namespace", (PolicyRule("web-in", "cilium", spec),)))
        cp.put_policy(PolicySpec("web-in", "namespace", (PolicyRule("web-in", "cilium", {**spec, "egress": [{}]}),)))
        cp.put_assignment(Assignment("web", policy="web-in", targets=(AssignmentTarget(workspace="frontend"),)))
    east = latest_inventory(store)["east"]
    assert east.desired is not None
    assert east.desired.rendered_from["CiliumNetworkPolicy/web/web-in"].version == 2
    assert east.desired.namespace_labels["cache"] == {WORKSPACE_LABEL: "frontend"}


def test_gitops_apply_records_and_diff_does_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(EXAMPLE, tree)
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["diff", "-f", str(tree), "--no-live", *data]) == 0, capsys.readouterr()
    with ControlPlaneStore.open(tmp_path / "data") as s:
        assert latest_inventory(s) == {}
    assert main(["apply", "-f", str(tree), *data]) == 0, capsys.readouterr()
    with ControlPlaneStore.open(tmp_path / "data") as s:
        inv = latest_inventory(s)
        assert set(inv) == {"eks-prod", "lab-calico"}
        for cluster in inv.values():
            assert cluster.desired is not None and not cluster.desired.error and cluster.desired.policies
        assert inv["lab-calico"].desired.engine == "kubernetes"  # type: ignore[union-attr]
        assert {p["kind"] for p in inv["lab-calico"].desired.policies} == {"NetworkPolicy"}  # type: ignore[union-attr]

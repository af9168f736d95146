"""The demo's policy seed (what `netwarden up` applies at every start): the blueprint on both demo clusters, the
namespace policies, one staged version, the clusters' kube APIs registered; idempotent, and what users changed
afterwards survives the next start."""

from __future__ import annotations

from pathlib import Path

from netwarden.demo_seed import DEMO_BLUEPRINT, seed_demo, seed_demo_policies
from policy_engine.control_plane import ControlPlane
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.validation import validate_object

URLS = {"demo-east": "http://127.0.0.1:6443", "demo-west": "http://127.0.0.1:6444"}


def test_seed_is_idempotent_and_keeps_what_users_changed(tmp_path: Path) -> None:
    store = ControlPlaneStore.open(tmp_path)
    seed_demo(store, tmp_path)
    first = seed_demo_policies(store, URLS)
    assert "stage     Policy frontend-egress (staged version 2)" in first
    cp = ControlPlane(store, Principal.with_role("org-admin", name="test"))
    for name, url in URLS.items():
        cluster = store.get_cluster(name)
        assert cluster is not None and cluster.api_server == url and cluster.primary_cni == "calico"
        rendered = cp.render(name)
        assert rendered.engine == "cilium-chaining"
        names = {o["metadata"]["name"] for o in rendered.objects}
        assert {"zero-trust-day0-default-deny", "payments-egress", "redis-allow-shop"} <= names
        for obj in rendered.objects:
            validate_object(obj)  # every rendered object is valid for the real schemas
    versions = {p.spec.name: p.version for p in store.list_policies()}

    assert seed_demo_policies(store, URLS) == []  # a restart writes nothing
    assert {p.spec.name: p.version for p in store.list_policies()} == versions

    # A user unstages the staged version and the stand-in moves to another port: the next start registers the
    # new URL and leaves the user's choice alone.
    cp.unstage_policy("frontend-egress")
    moved = {**URLS, "demo-east": "http://127.0.0.1:7443"}
    assert seed_demo_policies(store, moved) == ["update    Cluster demo-east (apiServer http://127.0.0.1:7443)"]
    assert store.get_staged_policy("frontend-egress") is None
    assert store.get_blueprint(DEMO_BLUEPRINT) is not None
    store.close()

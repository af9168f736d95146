"""The demo organization of `netwarden up`: what it creates, idempotence, token reuse and renewal."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from netwarden.demo_seed import TOKENS_FILE, format_demo_tokens, seed_demo
from policy_engine.roles import Role
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import OwnershipIndex, Tenancy


def test_seed_creates_the_demo_org(tmp_path: Path) -> None:
    traffic = pytest.importorskip("collectors.traffic")
    with ControlPlaneStore.open(tmp_path) as store:
        entries = seed_demo(store, tmp_path)
        assert [c.name for c in store.list_clusters()] == sorted(traffic.DEMO_CLUSTERS)
        assert len(store.list_projects()) == 2 and len(store.list_workspaces()) == 3
        # Workspaces cover namespaces the demo traffic really has.
        traffic_namespaces = {w.namespace for w in traffic.WORKLOADS}
        for ws in store.list_workspaces():
            assert ws.namespaces and all(r.namespace in traffic_namespaces for r in ws.namespaces)
        assert sorted(e["role"] for e in entries) == sorted(r.value for r in Role)
        tenancy = Tenancy(store)
        index = OwnershipIndex.from_store(store)
        for entry in entries:
            principal = tenancy.principal_for_token(entry["token"])
            assert principal is not None and principal.name == entry["name"]
            [binding] = principal.bindings
            assert binding.role.value == entry["role"]
            assert (binding.scope_name or "org") == entry["scope"]
            assert not index.visibility(principal).nothing
    path = tmp_path / TOKENS_FILE
    assert json.loads(path.read_text()) == {"users": entries}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(format_demo_tokens(entries)) == 7


def test_seed_is_idempotent_and_renews_dead_tokens(tmp_path: Path) -> None:
    with ControlPlaneStore.open(tmp_path) as store:
        first = seed_demo(store, tmp_path)
        second = seed_demo(store, tmp_path)
        assert second == first
        tenancy = Tenancy(store)
        assert len(tenancy.list_tokens()) == 7
        # Revoke one token and drop another from the file: only those two are minted again.
        revoked = next(t for t in tenancy.list_tokens() if t.user == first[0]["name"])
        tenancy.revoke_token(revoked.id)
        data = json.loads((tmp_path / TOKENS_FILE).read_text())
        del data["users"][1]["token"]
        (tmp_path / TOKENS_FILE).write_text(json.dumps(data))
        # A user's extra binding is reset to the demo role.
        tenancy.add_binding(first[2]["name"], "org-admin")
        third = seed_demo(store, tmp_path)
        assert third[0]["token"] != first[0]["token"] and third[1]["token"] != first[1]["token"]
        assert [e["token"] for e in third[2:]] == [e["token"] for e in first[2:]]
        assert len(tenancy.bindings(first[2]["name"])) == 1
        # A corrupt file is replaced with fresh tokens.
        (tmp_path / TOKENS_FILE).write_text("{not json")
        fourth = seed_demo(store, tmp_path)
        assert all(tenancy.principal_for_token(e["token"]) is not None for e in fourth)

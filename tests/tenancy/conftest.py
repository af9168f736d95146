"""A control-plane store with two clusters, two projects and three workspaces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_engine.control_plane import ControlPlane
from policy_engine.model import Cluster, NamespaceRef, Project, Workspace
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy


def seed_org(store: ControlPlaneStore) -> None:
    cp = ControlPlane(store, Principal.with_role("org-admin", name="test"))
    for name in ("east", "west"):
        cp.put_cluster(Cluster(name, "upstream", "cilium"))
    cp.put_project(Project("shop", ("east",)))
    cp.put_project(Project("ops", ("west",)))
    cp.put_workspace(Workspace("frontend", "shop", (NamespaceRef("east", "web"),)))
    cp.put_workspace(Workspace("backend", "shop", (NamespaceRef("east", "db"), NamespaceRef("east", "cache"))))
    cp.put_workspace(Workspace("observability", "ops", (NamespaceRef("west", "monitoring"),)))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ControlPlaneStore]:
    s = ControlPlaneStore.open(tmp_path)
    seed_org(s)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def tenancy(store: ControlPlaneStore) -> Tenancy:
    return Tenancy(store)

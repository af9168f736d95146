"""The demo organization `netwarden up` starts with: the two clusters the demo traffic generator
(collectors/traffic.py) produces, two projects, three workspaces over the traffic's namespaces, and
one user per role with an API token each, written to `DATA_DIR/demo-tokens.json`.

    project storefront = cluster demo-east     project platform = cluster demo-west
      workspace shop-team     demo-east/shop     workspace observability   demo-west/monitoring
      workspace data-team     demo-east/data

The shop talks to the data namespace and to kube-dns, so the workspace users see flows with peers
outside their scope (shown redacted), and the project users see one cluster but not the other.

Idempotent: re-running keeps tokens that still work (the file is read back and each token checked)
and mints new ones only for users whose token is missing, revoked or expired.

`seed_demo_policies` gives the demo its policy (netwarden/demo/policies.yaml: blueprint demo-zero-trust on
both clusters, namespace policies for the demo applications, with the faults netwarden/demo/FAULTS.md
describes) and registers each cluster's kube API (the stand-in `up` serves) as its apiServer. The documents are
applied only while the demo blueprint does not exist yet, so a restarted `up` writes nothing and keeps what
users changed since.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policy_engine.model import Cluster, NamespaceRef, Project, Workspace
from policy_engine.roles import Principal, RoleBinding
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy, parse_binding

TOKENS_FILE = "demo-tokens.json"
DEMO_POLICIES = Path(__file__).parent / "demo" / "policies.yaml"
DEMO_BLUEPRINT = "demo-zero-trust"
# With a policy, the demo clusters run Calico with Cilium chained (pods that predate Cilium exist there).
DEMO_PRIMARY_CNI = "calico"
DEMO_NAMESPACES = ("shop", "data", "monitoring", "kube-system")

CLUSTERS = (
    Cluster("demo-east", "upstream", "cilium", namespaces=DEMO_NAMESPACES),
    Cluster("demo-west", "upstream", "cilium", namespaces=DEMO_NAMESPACES),
)
PROJECTS = (
    Project("storefront", ("demo-east",), "the online shop: production cluster demo-east"),
    Project("platform", ("demo-west",), "shared platform services on demo-west"),
)
WORKSPACES = (
    Workspace("shop-team", "storefront", (NamespaceRef("demo-east", "shop"),), "shop front end and checkout"),
    Workspace("data-team", "storefront", (NamespaceRef("demo-east", "data"),), "postgres and redis"),
    Workspace("observability", "platform", (NamespaceRef("demo-west", "monitoring"),), "prometheus"),
)
# (user, role id, scope as demo-tokens.json spells it)
USERS = (
    ("olivia", "org-admin", "org"),
    ("oscar", "org-read-only", "org"),
    ("ingrid", "infra-admin", "storefront"),
    ("paula", "project-admin", "storefront"),
    ("peter", "project-read-only", "platform"),
    ("wendy", "workspace-admin", "shop-team"),
    ("walter", "workspace-read-only", "shop-team"),
)


def seed_demo(store: ControlPlaneStore, data_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Create (or confirm) the demo organization; returns the entries of demo-tokens.json."""
    from policy_engine.control_plane import ControlPlane

    tenancy = Tenancy(store)
    with store.transaction():
        # Through the engine API, so the demo obeys the same validation as user input.
        cp = ControlPlane(store, Principal.with_role("org-admin", name="netwarden-demo"))
        for cluster in CLUSTERS:
            if store.get_cluster(cluster.name) is None:
                cp.put_cluster(cluster)
        for project in PROJECTS:
            cp.put_project(project)
        for workspace in WORKSPACES:
            cp.put_workspace(workspace)
        for user, role, scope in USERS:
            tenancy.create_user(user)
            wanted: RoleBinding = parse_binding(role, scope)
            # Exactly the demo role, so `up` always tells the truth about what each token can see.
            for held in tenancy.bindings(user):
                if held != wanted:
                    tenancy.remove_binding(user, held.role.value, held.scope_name)
            tenancy.add_binding(user, role, scope)

    path = Path(data_dir) / TOKENS_FILE
    previous = _read_tokens(path)
    entries = []
    for user, role, scope in USERS:
        token = previous.get(user)
        principal = tenancy.principal_for_token(token) if token else None
        if principal is None or principal.name != user:
            _, token = tenancy.create_token(user, description="demo (netwarden up)")
        entries.append({"name": user, "role": role, "scope": scope, "token": token})
    _write_tokens(path, entries)
    return entries


def seed_demo_policies(store: ControlPlaneStore, api_servers: Mapping[str, str]) -> list[str]:
    """Apply the demo's policy documents and point each demo cluster at its kube API (`api_servers`:
    cluster -> URL); returns the changes made ("create Policy x (version 1)", ...), [] when all was there."""
    from policy_engine.control_plane import ControlPlane
    from policy_engine.gitops import apply_documents, load_documents

    changes: list[str] = []
    with store.transaction():
        cp = ControlPlane(store, Principal.with_role("org-admin", name="netwarden-demo"))
        for cluster in CLUSTERS:
            wanted = Cluster(cluster.name, cluster.cluster_type, DEMO_PRIMARY_CNI,
                             api_server=api_servers.get(cluster.name), namespaces=cluster.namespaces)
            if cp.put_cluster(wanted) != "unchanged":
                changes.append(f"update    Cluster {cluster.name} (apiServer {wanted.api_server})")
        # Once: what users change afterwards (apply, stage, promote, rollback) is theirs to keep across restarts.
        if store.get_blueprint(DEMO_BLUEPRINT) is None:
            changes += [str(c) for c in apply_documents(cp, load_documents(DEMO_POLICIES)) if c.action != "unchanged"]
    return changes


def _read_tokens(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        return {u["name"]: u["token"] for u in data["users"] if isinstance(u.get("token"), str)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # missing or hand-edited beyond repair: mint fresh tokens


def _write_tokens(path: Path, entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    # Owner-only: these are live credentials.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"users": entries}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def format_demo_tokens(entries: list[dict[str, Any]]) -> list[str]:
    """Lines for `netwarden up` to print: user, role, scope, token."""
    width = max(len(e["name"]) for e in entries)
    rwidth = max(len(e["role"]) for e in entries)
    swidth = max(len(e["scope"]) for e in entries)
    return [f"{e['name']:<{width}}  {e['role']:<{rwidth}}  {e['scope']:<{swidth}}  {e['token']}" for e in entries]

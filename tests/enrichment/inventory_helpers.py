"""Helpers for tests that need an inventory without a broker (e.g. the sink's "ownership change applies to later
flows only"): the control plane's recorded messages applied to an InventoryView exactly as the topic delivers
them, and an ownership change through the engine API.

    store = ControlPlaneStore.open(tmp_path); seed_demo(store, tmp_path)
    view = inventory_view(store)                    # the worker's view after reading the topic
    sink = ClickHouseSink(client, PolicyEnricher(view))
    ... store a batch ...
    move_namespace(store, "demo-east", "shop", "checkout-team", "storefront")
    inventory_view(store, view)                     # the change "arrives" between two batches
    ... store the next batch: only its flows carry checkout-team ...

With a broker, the same happens through InventoryPublisher + streams.inventory.start_inventory (see
test_inventory_topic.py).
"""

from __future__ import annotations

from policy_engine.inventory import all_messages
from policy_engine.model import NamespaceRef, Workspace
from policy_engine.store import ControlPlaneStore
from streams.inventory import InventoryView
from tests.enrichment.conftest import admin


def inventory_view(store: ControlPlaneStore, view: InventoryView | None = None) -> InventoryView:
    """Apply the control plane's latest inventory messages to `view` (a new one by default)."""
    view = view or InventoryView()
    for message in all_messages(store):
        view.apply(message.key, message.value)
    return view


def move_namespace(store: ControlPlaneStore, cluster: str, namespace: str, workspace: str, project: str) -> None:
    """Give (cluster, namespace) to `workspace` (created in `project` if missing), taking it from its owner."""
    with store.transaction():
        cp = admin(store)
        for ws in store.list_workspaces():
            ref = NamespaceRef(cluster, namespace)
            if ref in ws.namespaces and ws.name != workspace:
                cp.put_workspace(Workspace(ws.name, ws.project, tuple(r for r in ws.namespaces if r != ref),
                                           ws.description))
        current = store.get_workspace(workspace)
        refs = tuple(current.namespaces) if current else ()
        cp.put_workspace(Workspace(workspace, project, (*refs, NamespaceRef(cluster, namespace))))

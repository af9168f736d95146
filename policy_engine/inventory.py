"""The inventory the flow enricher needs, derived from the control-plane store (pure core, no Kafka).

`cluster_inventory(store, name)` builds one cluster's message (schemas.inventory): ownership from the same
`ownership_index_of` the query API scopes with, and the desired policy set exactly as `netwarden render`
renders it for the cluster's engine (objects unvalidated: every write path validates before storing).

`record_inventory(store)` runs inside every transaction that wrote a table the inventory derives from
(ControlPlaneStore hooks it): it rebuilds every cluster's message and, where the content changed, stores it
in the `inventory_outbox` table with the next revision. Rebuilding everything is simple and always right
(no per-write reasoning about which clusters a policy change touches); it costs a render per cluster per
write. The Kafka shell (policy_engine.inventory_publisher) sends what the outbox holds unpublished, so a
write never waits for, or fails with, Kafka; a full republish after a broker restart is the same rows.

Revisions: `revision` per cluster bumps on any change of its message; `desired.revision` only when the
desired set itself changes (ownership changes leave it, so verdict caches keyed by it stay warm), and
`staged.revision` likewise for the staged set.

The staged set (control_plane.resolve_policy_set(staged=True)) is the desired set with staged policy versions
in place; with nothing staged on the cluster it is the desired set's content (no second render) with no
`staged_versions`, so staged verdicts equal desired ones: "what would change if I promoted" is nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from policy_engine.blueprints import cilium_enforces
from policy_engine.model import PolicyVersion, content_hash
from policy_engine.render import (
    POLICY_LABEL,
    POLICY_VERSION_LABEL,
    RULE_LABEL,
    ClusterPolicySet,
    RenderError,
    render_cluster,
)
from policy_engine.store import ControlPlaneStore, StoreError
from policy_engine.tenancy import WORKSPACE_LABEL, OwnershipIndex, ownership_index_of
from schemas.inventory import (
    ClusterInventory,
    NamespaceOwner,
    PolicySet,
    RenderedFrom,
    StagedVersion,
    cluster_key,
)


@dataclass(frozen=True)
class OutboxMessage:
    cluster: str
    revision: int
    value: bytes | None  # None: tombstone (the cluster was deleted)

    @property
    def key(self) -> bytes:
        return cluster_key(self.cluster)


def desired_policy_set(
    store: ControlPlaneStore, cluster: str, index: OwnershipIndex, *, staged: bool = False
) -> PolicySet:
    """What the cluster's blueprint and assignments render for its engine, as the evaluator takes it
    (`staged`: the staged set, with the staged versions it uses)."""
    # control_plane imports the store
    from policy_engine.control_plane import resolve_policy_set, staged_versions

    try:
        policy_set = resolve_policy_set(store, cluster, staged=staged)
    except StoreError as exc:
        return PolicySet(0, "kubernetes", error=str(exc))
    return policy_set_of(policy_set, cluster, index, _overlay(store, staged_versions(policy_set)))


def _overlay(store: ControlPlaneStore, staged: Sequence[PolicyVersion]) -> tuple[StagedVersion, ...]:
    out = []
    for pv in staged:
        enforced = store.get_policy(pv.name)
        out.append(StagedVersion(pv.name, pv.version, enforced.version if enforced else 0))
    return tuple(out)


def policy_set_of(
    policy_set: ClusterPolicySet,
    cluster: str,
    index: OwnershipIndex,
    overlay: tuple[StagedVersion, ...] = (),
) -> PolicySet:
    """A resolved ClusterPolicySet rendered as the evaluator takes it (revision 0: the outbox numbers
    recorded sets; what-if can render scratch sets here). Never raises: a render error is the set's `error`."""
    netwarden_engine = policy_set.engine
    engine = "cilium" if cilium_enforces(netwarden_engine) else "kubernetes"
    bp = policy_set.blueprint
    mode = bp.spec.install_profile.policy_enforcement_mode if bp else "default"
    base = PolicySet(
        0, engine, netwarden_engine, mode, bp.name if bp else "", bp.version if bp else 0,
        staged_versions=overlay,
    )
    try:
        rendered = render_cluster(policy_set)
    except RenderError as exc:
        return replace(base, error=str(exc))
    # Namespace labels the control plane knows: the workspace label; flows add the rest (Cilium's
    # io.cilium.k8s.namespace.labels.*), and the evaluator adds kubernetes.io/metadata.name.
    labels: dict[str, dict[str, str]] = {ns: {} for ns in policy_set.namespaces}
    for (c, ns), entry in index.entries().items():
        if c == cluster and entry.source == "label":
            labels.setdefault(ns, {})[WORKSPACE_LABEL] = entry.workspace
    rendered_from = {}
    for obj in rendered.objects:
        meta = obj["metadata"]
        obj_labels = meta.get("labels") or {}
        key = f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}"
        rendered_from[key] = RenderedFrom(
            str(obj_labels.get(POLICY_LABEL, "")),
            int(obj_labels.get(POLICY_VERSION_LABEL, 0) or 0),
            str(obj_labels.get(RULE_LABEL, "")),
        )
    return replace(
        base,
        namespace_labels=labels,
        policies=tuple(rendered.objects),
        rendered_from=rendered_from,
        notes=tuple(rendered.notes),
        staged_versions=overlay,
    )


def staged_policy_set(store: ControlPlaneStore, cluster: str, index: OwnershipIndex, desired: PolicySet) -> PolicySet:
    """The cluster's staged set; the desired set's content when nothing staged is used on the cluster."""
    from policy_engine.control_plane import resolve_policy_set, staged_versions

    try:
        policy_set = resolve_policy_set(store, cluster, staged=True)
    except StoreError as exc:
        return PolicySet(0, "kubernetes", error=str(exc))
    staged = staged_versions(policy_set)
    if not staged:
        return desired
    return policy_set_of(policy_set, cluster, index, _overlay(store, staged))


def cluster_inventory(store: ControlPlaneStore, cluster: str, index: OwnershipIndex | None = None) -> ClusterInventory:
    """One cluster's inventory message, revisions 0 (the outbox numbers them)."""
    index = index if index is not None else ownership_index_of(store)
    projects = tuple(sorted(p for p, cs in index.ownership.project_clusters.items() if cluster in cs))
    namespaces = {
        ns: NamespaceOwner(e.project, e.workspace, e.source) for (c, ns), e in index.entries().items() if c == cluster
    }
    desired = desired_policy_set(store, cluster, index)
    staged = staged_policy_set(store, cluster, index, desired)
    return ClusterInventory(cluster, 0, projects, namespaces, desired, staged)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_inventory(store: ControlPlaneStore) -> list[str]:
    """Store every cluster's message whose content changed (and tombstones for deleted clusters) in the
    outbox with the next revision. Call inside the write's transaction. Returns the clusters changed."""
    index = ownership_index_of(store)
    rows = {
        r[0]: r
        for r in store.execute(
            "SELECT cluster, revision, content_hash, policy_revision, policy_hash, value, staged_revision, "
            "staged_hash FROM inventory_outbox"
        )
    }
    changed: list[str] = []
    names = [c.name for c in store.list_clusters()]
    for name in names:
        inventory = cluster_inventory(store, name, index)
        policy_hash = content_hash(inventory.desired.to_dict()) if inventory.desired else ""
        staged_hash = content_hash(inventory.staged.to_dict()) if inventory.staged else ""
        digest = content_hash(inventory.to_dict())
        row = rows.get(name)
        if row is not None and row[2] == digest and row[5] is not None:
            continue
        revision = (int(row[1]) if row else 0) + 1
        policy_revision = int(row[3]) if row else 0
        if row is None or row[4] != policy_hash or row[5] is None:
            policy_revision += 1
        staged_revision = int(row[6]) if row else 0
        if row is None or row[7] != staged_hash or row[5] is None:
            staged_revision += 1
        inventory = replace(
            inventory,
            revision=revision,
            desired=replace(inventory.desired, revision=policy_revision) if inventory.desired else None,
            staged=replace(inventory.staged, revision=staged_revision) if inventory.staged else None,
        )
        store.execute(
            """INSERT INTO inventory_outbox (cluster, revision, content_hash, policy_revision, policy_hash, value,
                   published_revision, updated_at, staged_revision, staged_hash) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)
               ON CONFLICT (cluster) DO UPDATE SET revision = excluded.revision,
                   content_hash = excluded.content_hash, policy_revision = excluded.policy_revision,
                   policy_hash = excluded.policy_hash, value = excluded.value, updated_at = excluded.updated_at,
                   staged_revision = excluded.staged_revision, staged_hash = excluded.staged_hash""",
            (name, revision, digest, policy_revision, policy_hash, inventory.to_json().decode(), _now(),
             staged_revision, staged_hash),
        )
        changed.append(name)
    for name, row in rows.items():
        if name not in names and row[5] is not None:
            store.execute(
                "UPDATE inventory_outbox SET revision = ?, content_hash = '', value = NULL, updated_at = ? "
                "WHERE cluster = ?",
                (int(row[1]) + 1, _now(), name),
            )
            changed.append(name)
    return changed


def _messages(rows: Sequence[tuple[object, ...]]) -> list[OutboxMessage]:
    return [
        OutboxMessage(str(c), int(str(rev)), v.encode() if isinstance(v, str) else None) for c, rev, v in rows
    ]


def pending_messages(store: ControlPlaneStore) -> list[OutboxMessage]:
    """Messages recorded but not yet published, in cluster order."""
    return _messages(
        store.execute(
            "SELECT cluster, revision, value FROM inventory_outbox WHERE published_revision < revision "
            "ORDER BY cluster"
        )
    )


def all_messages(store: ControlPlaneStore) -> list[OutboxMessage]:
    """The whole current inventory (a republish after the broker lost its topics, e.g. a Tansu restart)."""
    return _messages(store.execute("SELECT cluster, revision, value FROM inventory_outbox ORDER BY cluster"))


def mark_published(store: ControlPlaneStore, messages: Sequence[OutboxMessage]) -> None:
    with store.transaction():
        for m in messages:
            store.execute(
                "UPDATE inventory_outbox SET published_revision = ? WHERE cluster = ? AND published_revision < ?",
                (m.revision, m.cluster, m.revision),
            )


def published_revisions(store: ControlPlaneStore) -> dict[str, int]:
    """cluster -> the last revision known to be on the topic (0: none yet)."""
    return {str(c): int(r) for c, r in store.execute("SELECT cluster, published_revision FROM inventory_outbox")}


def latest_inventory(store: ControlPlaneStore) -> dict[str, ClusterInventory]:
    """The recorded inventory as a consumer of the topic would hold it (tests, `netwarden` diagnostics)."""
    return {
        m.cluster: ClusterInventory.from_json(m.value) for m in all_messages(store) if m.value is not None
    }

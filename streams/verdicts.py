"""Per-key enrichment: ownership of each side and netwarden's verdict under each cluster's policy sets.

`PolicyEnricher(view)` implements streams.enrichment.KeyEnricher. The sink hands it one row per distinct key
of a batch (schemas.flow_record.ENRICHMENT_KEY_COLUMNS); it answers one row per key, never one per flow, and
never waits: it reads one snapshot of the inventory (streams.inventory) per batch. A cluster the inventory
does not know yet gets empty ownership and verdict 0 (not evaluated).

Ownership: a pod side is owned by its namespace's workspace (and that workspace's project) as the control
plane's ownership index says (schemas.inventory, built by policy_engine.inventory with the query API's rule);
a pod in an unowned namespace and the cluster's own reserved endpoints (host, remote-node, health, ...) get the
cluster's project and no workspace; world gets neither. Sides are located in the key's `cluster` (the
cluster that observed the flow).

How a side becomes the evaluator's Endpoint, a key its Connection, which direction decides and the drop
reason: policy_engine.flow_keys (one place, shared with what-if, reports and "why"), so a Conversation decided
there equals what is stored here for the same key. verdict_mismatch: Hubble's verdict (1 FORWARDED / 2 DROPPED)
and the desired set's are both known and differ.

Staged set (`staged_*`): the verdict under the cluster's staged set (its desired set with staged policy versions
in place). With nothing staged on the cluster the staged set is the desired set, so `staged_*` equal `desired_*`
(copied, not evaluated twice) with the staged set's own `staged_revision`: comparing the two columns answers
"what would change if I promoted" (nothing, then). Both are 0 only where the desired set is unknown too.

Attribution per direction: the policy "Kind/namespace/name" (namespace empty for clusterwide policies), the
rule that decided ("ingress[0]", "egressDeny[1]", "specs[1].egress[0]", "default-deny", "allow-localhost";
empty when no policy selects the endpoint) and the netwarden policy version it was rendered from.

Caching, three levels: whole rows per `ekey` and the cluster's inventory revision (a key seen in an earlier
batch costs a dict lookup, ~7 us per key with the Arrow conversion); verdicts per (cluster, set, policy
revision, connection), so an ownership change re-reads ownership but does not re-run the evaluator; and
evaluators built once per (cluster, set, policy revision). A new policy revision starts a new verdict cache
for that cluster (the old one is dropped); caches start over past CACHE_LIMIT entries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import pyarrow as pa
from prometheus_client import Counter

from policy_engine.flow_keys import (
    CACHE_LIMIT,
    DROPPED,
    FORWARDED,
    EvaluatorCache,
    KeyConnection,
    KeySide,
    is_cluster_endpoint,
    key_connection,
)
from schemas.conversation import SetDecision
from schemas.flow_record import ENRICHMENT_COLUMNS, ENRICHMENT_RESULT_SCHEMA
from schemas.inventory import ClusterInventory

log = logging.getLogger("netwarden.streams.verdicts")

EVALUATIONS = Counter("netwarden_enrich_evaluations_total", "Keys evaluated under a policy set", ["set"])
CACHE_HITS = Counter("netwarden_enrich_cache_hits_total", "Keys answered from the verdict cache", ["set"])
KEYS = Counter("netwarden_enrich_keys_total", "Distinct keys enriched")
ROW_HITS = Counter("netwarden_enrich_row_cache_hits_total", "Keys answered whole from the cache")

_GUARD_COLUMNS = ("l4_protocol", "dst_port", "src_identity", "dst_identity", "verdict", "traffic_direction")

# One set's columns for one key: revision, verdict, drop_reason,
# egress (verdict, policy, rule, version), ingress (verdict, policy, rule, version).
SetColumns = tuple[int, int, int, int, str, str, int, int, str, str, int]
_EMPTY_SET: SetColumns = (0, 0, 0, 0, "", "", 0, 0, "", "", 0)


class InventorySource(Protocol):
    def snapshot(self) -> Mapping[str, ClusterInventory]: ...


def set_columns(decision: SetDecision) -> SetColumns:
    """A SetDecision as the `desired_*` / `staged_*` columns (schemas.flow_record order)."""
    d = decision
    return (
        d.revision, d.verdict, d.drop_reason,
        d.egress_verdict, d.egress_policy, d.egress_rule, d.egress_version,
        d.ingress_verdict, d.ingress_policy, d.ingress_rule, d.ingress_version,
    )


class PolicyEnricher:
    """KeyEnricher: ownership and the desired (and staged) sets' verdicts of each distinct key."""

    def __init__(self, inventory: InventorySource) -> None:
        self.inventory = inventory
        # Evaluators, endpoints and verdicts per (cluster, "desired"|"staged"), kept while the set's revision
        # holds: an ownership change keeps them, a policy change starts that slot over.
        self._sets = EvaluatorCache()
        # ekey -> (cluster inventory revision, guard columns, row): whole rows of keys seen before
        self._rows: dict[int, tuple[int, tuple[Any, ...], tuple[Any, ...]]] = {}
        self.row_hits = 0  # keys answered whole from the row cache

    @property
    def evaluations(self) -> int:
        """Evaluator runs (verdict cache misses), for tests and benches."""
        return self._sets.evaluations

    @property
    def cache_hits(self) -> int:
        """Verdict cache hits (a new key whose connection was judged already)."""
        return self._sets.hits

    @property
    def evaluators_built(self) -> int:
        return self._sets.built

    # -- the seam -------------------------------------------------------------------------------
    def enrich_keys(self, keys: pa.Table) -> pa.Table:
        snapshot = self.inventory.snapshot()
        n = keys.num_rows
        ekeys = keys.column("ekey").to_pylist()
        clusters = keys.column("cluster").to_pylist()
        # A seen key costs a dict lookup: `ekey` hashes the key's columns, and the entry remembers the
        # cluster's inventory revision it was computed under (ownership and policy sets both bump it).
        # A few cheap columns are compared too, so a sink whose ekeys were not stable could not mix keys up.
        guards = list(zip(clusters, *(keys.column(c).to_pylist() for c in _GUARD_COLUMNS), strict=True))
        rows: list[tuple[Any, ...] | None] = [None] * n
        missed: list[int] = []
        cache = self._rows
        for i in range(n):
            inventory = snapshot.get(clusters[i])
            revision = inventory.revision if inventory is not None else -1
            entry = cache.get(ekeys[i])
            if entry is not None and entry[0] == revision and entry[1] == guards[i]:
                rows[i] = entry[2]
            else:
                missed.append(i)
        if missed:
            if len(cache) > CACHE_LIMIT:
                cache.clear()
            part = keys.take(pa.array(missed, type=pa.int64())).to_pydict()
            for j, i in enumerate(missed):
                inventory = snapshot.get(clusters[i])
                row = self._row(inventory, {name: values[j] for name, values in part.items()})
                rows[i] = row
                cache[ekeys[i]] = (inventory.revision if inventory is not None else -1, guards[i], row)
        self.row_hits += n - len(missed)
        KEYS.inc(n)
        ROW_HITS.inc(n - len(missed))
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in ENRICHMENT_COLUMNS]
        arrays = [keys.column("ekey").combine_chunks().cast(pa.uint64())] + [
            pa.array(values, type=c.arrow) for values, c in zip(columns, ENRICHMENT_COLUMNS, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=ENRICHMENT_RESULT_SCHEMA)

    def _row(self, inventory: ClusterInventory | None, key: Mapping[str, Any]) -> tuple[Any, ...]:
        """One key's enrichment columns, in ENRICHMENT_COLUMNS order."""
        cluster = key["cluster"]
        src = KeySide(
            key["src_identity"], key["src_namespace"], tuple(key["src_labels"] or ()), key["src_ip"]
        )
        dst = KeySide(
            key["dst_identity"], key["dst_namespace"], tuple(key["dst_labels"] or ()), key["dst_ip"]
        )
        conn = key_connection(
            src, dst, key["l4_protocol"], key["dst_port"], key["is_reply"], key["traffic_direction"]
        )
        desired = self._set_columns(cluster, inventory, "desired", conn)
        staged_set = inventory.staged if inventory is not None else None
        if staged_set is not None and not staged_set.staged_versions and not staged_set.error:
            # Nothing staged on the cluster: the staged set is the desired set's content, so its verdicts are
            # the desired ones (under the staged set's own revision), without a second evaluation.
            staged: tuple[Any, ...] = (staged_set.revision, *desired[1:])
        else:
            staged = self._set_columns(cluster, inventory, "staged", conn)
        hubble = key["verdict"]
        mismatch = (
            hubble in (FORWARDED, DROPPED) and desired[1] in (FORWARDED, DROPPED) and hubble != desired[1]
        )
        return (*_owner(inventory, src), *_owner(inventory, dst), *desired, mismatch, *staged)

    # -- verdicts -------------------------------------------------------------------------------
    def _set_columns(
        self, cluster: str, inventory: ClusterInventory | None, kind: str, conn: KeyConnection | None
    ) -> SetColumns:
        policy_set = (
            None if inventory is None else (inventory.desired if kind == "desired" else inventory.staged)
        )
        if policy_set is None:
            return _EMPTY_SET
        evaluations, hits = self._sets.evaluations, self._sets.hits
        decision = self._sets.decide_key(policy_set, conn, (cluster, kind))
        EVALUATIONS.labels(kind).inc(self._sets.evaluations - evaluations)
        CACHE_HITS.labels(kind).inc(self._sets.hits - hits)
        return set_columns(decision)


def _owner(inventory: ClusterInventory | None, side: KeySide) -> tuple[str, str]:
    """(project, workspace) of one side of a key."""
    if inventory is None:
        return "", ""
    if side.namespace:
        owner = inventory.namespaces.get(side.namespace)
        return (owner.project, owner.workspace) if owner else (inventory.project, "")
    if is_cluster_endpoint(side.labels, side.identity):
        return inventory.project, ""
    return "", ""

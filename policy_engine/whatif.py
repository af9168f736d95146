"""What-if: which observed conversations a policy change would newly deny, and which it would newly allow.

Two steps, both without I/O of their own:

1. `candidate_policy_sets(cp, documents)`: the documents are applied to the control-plane store inside a
   transaction that is always rolled back (the scratch copy `netwarden diff` uses too), as the caller's
   principal: a caller may only what-if documents it could write (unchanged documents need no write role,
   as in `apply`). Every cluster's desired policy set is resolved before and after
   (policy_engine.inventory.desired_policy_set: exactly what the flow enricher evaluates); the clusters whose
   set changed are the affected ones, so a blueprint change reaches every cluster it is assigned to, and a
   namespace policy assigned to a workspace every cluster of the workspace.
2. `compare(conversations, before, after)`: each conversation (one distinct connection key of history,
   schemas.conversation) is decided once under the old and once under the new set
   (policy_engine.flow_keys.decide, the same reconstruction the stream stores verdicts with; as a connection,
   whatever point Hubble observed it at), and the ones
   whose connection verdict changes are grouped by source and destination (namespace, workload), port and
   protocol, with flow counts and first/last seen.

Meanings:
- A connection is allowed when both its egress (at the source) and its ingress (at the destination) are.
- Newly denied: the old set allows it, the new one denies it, and it went through (`observed_passing`: Hubble
  did not drop it; traffic already dropped is not broken by the change, it is the report's "unexpected
  drops" instead).
  Newly allowed: the old set denies it and the new one allows it.
- Baseline "observed" (`before[cluster] is None`, used by `sync --check-history` when the store keeps no
  record of what a cluster was last synced to): Hubble's own verdict is the old side (FORWARDED or
  REDIRECTED allowed; DROPPED by policy, reasons 133/181, denied; other verdicts unknown and skipped).
- Conversations the evaluator cannot judge (no port, ICMP before the evaluator knows it) are skipped.
- Sides outside the caller's scope come redacted (schemas.conversation.Side.redacted): shown by namespace
  only. The decision itself always uses the full key (the read gives it; only the output is redacted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policy_engine.flow_keys import NOT_EVALUATED, TRAFFIC_UNKNOWN, EvaluatorCache, decide, side_endpoint_of
from schemas.conversation import Conversation, Side
from schemas.inventory import PolicySet

if TYPE_CHECKING:
    from policy_engine.control_plane import ControlPlane
    from policy_engine.gitops import Document

FORWARDED, DROPPED, ERROR, REDIRECTED = 1, 2, 3, 5
POLICY_DROP_REASONS = (133, 181)

# A set's connection verdict for one conversation: True allowed, False denied, None not judged.
Decider = Callable[[PolicySet, Conversation], bool | None]


@dataclass(frozen=True)
class Place:
    """One side of a group: namespace and workload ("kind/name"); reserved identities as "reserved:NAME"."""

    namespace: str
    workload: str

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "workload": self.workload}

    def describe(self) -> str:
        if self.namespace:
            return f"{self.namespace}/{self.workload}" if self.workload else self.namespace
        return self.workload or "unknown"


@dataclass(frozen=True)
class ConversationGroup:
    source: Place
    destination: Place
    port: int
    protocol: str
    flows: int
    first_seen: datetime
    last_seen: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.to_dict(),
            "destination": self.destination.to_dict(),
            "port": self.port,
            "protocol": self.protocol,
            "flows": self.flows,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
        }


@dataclass(frozen=True)
class ClusterChanges:
    cluster: str
    newly_denied: tuple[ConversationGroup, ...] = ()
    newly_allowed: tuple[ConversationGroup, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "newly_denied": [g.to_dict() for g in self.newly_denied],
            "newly_allowed": [g.to_dict() for g in self.newly_allowed],
        }


@dataclass(frozen=True)
class WhatIfReport:
    clusters: tuple[ClusterChanges, ...] = ()

    @property
    def denies_observed(self) -> bool:
        """Something observed would become denied (the CLI exits 3)."""
        return any(c.newly_denied for c in self.clusters)

    def to_dict(self) -> dict[str, Any]:
        return {"clusters": [c.to_dict() for c in self.clusters]}


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def place(side: Side) -> Place:
    """How a side is shown: a redacted peer by its namespace (or reserved identity) only."""
    if side.namespace:
        return Place(side.namespace, "" if side.redacted else side.workload)
    return Place("", f"reserved:{side.reserved}" if side.reserved else "")


def located(conv: Conversation) -> Conversation:
    """Sides placed as the evaluator places them (flow_keys): a pod whose flow lacks the namespace field is
    still in the namespace its identity labels name (older Hubble captures)."""
    sides = {}
    for name, side in (("source", conv.source), ("destination", conv.destination)):
        if not side.namespace and not side.redacted:
            pod = side_endpoint_of(side, {}).pod
            if pod is not None:
                sides[name] = replace(side, namespace=pod.namespace, ip="", reserved="")
    return replace(conv, **sides) if sides else conv


def observed_passing(conv: Conversation) -> bool:
    """The traffic went through: Hubble neither dropped it nor reported an error (FORWARDED, REDIRECTED to a
    proxy, AUDIT, ...). What recommendations learn from and what a change may not newly deny."""
    return conv.verdict not in (DROPPED, ERROR)


def observed_allowed(conv: Conversation) -> bool | None:
    """Hubble's verdict as an allow/deny (the "observed" baseline); None when it says neither."""
    if conv.verdict in (FORWARDED, REDIRECTED):
        return True
    if conv.verdict == DROPPED and conv.drop_reason in POLICY_DROP_REASONS:
        return False
    return None


def compare(
    conversations: Iterable[Conversation],
    before: Mapping[str, PolicySet | None],
    after: Mapping[str, PolicySet],
    *,
    redact: Callable[[Conversation], Conversation] | None = None,
    judge: Decider | None = None,
) -> WhatIfReport:
    """Per cluster of `after`, the conversations whose connection verdict changes from `before` (None: Hubble's
    observed verdict) to `after`, grouped. Conversations of other clusters are ignored. Pass conversations
    unredacted (their labels decide) and `redact` to hide what the caller may not see in the answer."""
    judge = judge or SetJudge()
    groups: dict[str, dict[tuple[bool, Place, Place, int, str], list[Conversation]]] = {c: {} for c in after}
    for conv in conversations:
        new_set = after.get(conv.cluster)
        if new_set is None or new_set.error:
            continue
        old_set = before.get(conv.cluster)
        if old_set is not None and old_set.error:
            continue
        old = observed_allowed(conv) if old_set is None else judge(old_set, conv)
        if old is None:
            continue
        new = judge(new_set, conv)
        if new is None or new == old:
            continue
        if not new and not observed_passing(conv):
            continue  # Hubble drops it already: the change breaks nothing that works
        shown = located(redact(conv) if redact is not None else conv)
        key = (new, place(shown.source), place(shown.destination), conv.port, conv.protocol)
        groups[conv.cluster].setdefault(key, []).append(conv)
    out = []
    for cluster in sorted(groups):
        denied, allowed = [], []
        for (new, src, dst, port, protocol), convs in groups[cluster].items():
            group = ConversationGroup(
                src, dst, port, protocol, sum(c.flows for c in convs),
                min(c.first_seen for c in convs), max(c.last_seen for c in convs),
            )
            (allowed if new else denied).append(group)
        out.append(ClusterChanges(cluster, tuple(_ordered(denied)), tuple(_ordered(allowed))))
    return WhatIfReport(tuple(out))


class SetJudge:
    """A Decider: the connection verdict of a conversation under a set (egress and ingress both allow it),
    by policy_engine.flow_keys (the stream's rules), each set's evaluator built once, each key judged once."""

    def __init__(self) -> None:
        self.evaluators = EvaluatorCache()

    def __call__(self, policy_set: PolicySet, conv: Conversation) -> bool | None:
        decision = decide(conv, policy_set, self.evaluators, traffic_direction=TRAFFIC_UNKNOWN)
        if decision.verdict == NOT_EVALUATED:
            return None
        return decision.verdict == FORWARDED


def _ordered(groups: list[ConversationGroup]) -> list[ConversationGroup]:
    return sorted(
        groups,
        key=lambda g: (-g.flows, g.source.namespace, g.source.workload, g.destination.namespace,
                       g.destination.workload, g.port, g.protocol),
    )


# -- the control-plane step -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateSets:
    """Each affected cluster's desired policy set before and after the documents."""

    before: Mapping[str, PolicySet]
    after: Mapping[str, PolicySet]

    @property
    def clusters(self) -> list[str]:
        return sorted(self.after)


def candidate_policy_sets(
    cp: ControlPlane, documents: Sequence[Document], clusters: Sequence[str] | None = None
) -> CandidateSets:
    """Apply `documents` as `cp`'s principal in a rolled-back transaction and return the desired sets of the
    clusters they change (restricted to `clusters` when given). Raises GitOpsErrors (bad documents, or a
    principal that could not write them)."""
    from policy_engine.gitops import apply_documents
    from policy_engine.inventory import desired_policy_set
    from policy_engine.tenancy import ownership_index_of

    store = cp.store
    with store.transaction(rollback=True):
        names = [c.name for c in store.list_clusters() if clusters is None or c.name in clusters]
        index = ownership_index_of(store)
        before = {name: desired_policy_set(store, name, index) for name in names}
        apply_documents(cp, documents)  # nested: rolled back with the outer transaction
        index = ownership_index_of(store)
        present = {c.name for c in store.list_clusters()}
        after = {name: desired_policy_set(store, name, index) for name in names if name in present}
        # A cluster the documents create has no history yet; its "before" is the empty set.
        for cluster in store.list_clusters():
            if cluster.name not in before and (clusters is None or cluster.name in clusters):
                after[cluster.name] = desired_policy_set(store, cluster.name, index)
    changed = {
        name: s for name, s in after.items()
        if name not in before or _set_content(before[name]) != _set_content(s)
    }
    return CandidateSets({n: before[n] for n in changed if n in before}, changed)


def current_policy_sets(cp: ControlPlane, clusters: Sequence[str] | None = None) -> dict[str, PolicySet]:
    """Every (or the named) cluster's current desired set."""
    from policy_engine.inventory import desired_policy_set
    from policy_engine.tenancy import ownership_index_of

    store = cp.store
    index = ownership_index_of(store)
    return {
        c.name: desired_policy_set(store, c.name, index)
        for c in store.list_clusters() if clusters is None or c.name in clusters
    }


def _set_content(policy_set: PolicySet) -> dict[str, Any]:
    content = policy_set.to_dict()
    content.pop("revision", None)
    return content


# -- documents given as data (API bodies, `apply --check-history`) -----------------------------------------


def parse_documents(raw: Sequence[Any], source: str, base_dir: Path | None = None) -> list[Document]:
    """netwarden.io/v1 documents given as parsed YAML/JSON (a list inside a document is flattened) -> Documents,
    as policy_engine.gitops.parse_documents reads them (every problem one GitOpsError line naming `source` and
    the document's index; without `base_dir`, `fromFile` rules are refused: a request body must not make the
    server read its own files)."""
    from policy_engine.gitops import parse_documents as parse

    return parse([d for item in raw for d in (item if isinstance(item, list) else [item])], source, base_dir)

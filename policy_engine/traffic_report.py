"""The validation report: does each cluster's traffic match its desired policy set? Pure assembly, no I/O.

Input per cluster (`ClusterFacts`): the window's conversations (schemas.conversation, read UNREDACTED so they
can be judged; the report redacts what it shows through `ReportView.redact`), the cluster's desired and staged
policy sets (schemas.inventory.PolicySet), what its kube API said (`KubeFacts`: pods, pods Cilium does not
enforce, drift of the rendered objects; None when it was not asked or not reachable); for the whole report, the
drop rollups (query_api.summary: one query however many clusters). query_api.report_data gathers them; this module only decides and groups.

Each conversation's decision under the current set is the one the stream stored when it is current (verdict
evaluated, same revision), else it is decided again with policy_engine.flow_keys (same rules as the stream).

Sections per cluster:
- namespaces: default deny per direction (a pod with no particular labels in the namespace would be isolated)
  and coverage: the share of workloads (seen in the window's conversations, plus the kube API's pods) and of
  flows whose endpoint in the namespace some policy selects, per direction;
- not_in_effect: conversations Hubble FORWARDED that the desired set denies, grouped by the workload whose
  policy should have dropped them, with the likely causes (pods Cilium does not enforce; the deciding object
  missing, drifted or at an older version on the cluster);
- unexpected_drops: conversations Hubble DROPPED that the desired set allows, with the cause from Hubble's
  attribution, the drift of the allowing objects, or the drop reason;
- drops: by reason and by policy (Hubble's attribution), the top dropped conversations; the report's own
  `drops` (all its clusters) adds the verdicts over time, from the rollups;
- rules / unused_rules: every rule of every object in effect with the flows it decided in the window and the
  last time it did (empty Cilium rules, which only switch default deny on, count the default-deny decisions
  of their policy and direction); unused_rules are those that decided none;
- staged: per staged policy, the conversations it would newly deny and newly allow;
- health: lost ranges (collector gaps: node, since, until) overlapping the window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from policy_engine.flow_keys import EvaluatorCache, decide, side_endpoint_of
from schemas.conversation import VERDICT_NAMES, Conversation, SetDecision, Side
from schemas.inventory import PolicySet

NOT_EVALUATED, FORWARDED, DROPPED = 0, 1, 2
DEFAULT_DENY_RULE = "default-deny"
POLICY_VERSION_LABEL = "netwarden.io/policy-version"  # policy_engine.render.POLICY_VERSION_LABEL
POD_NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
POLICY_DROP_REASONS = {133: "POLICY_DENIED", 181: "POLICY_DENY"}
TOP_CONVERSATIONS = 10  # top dropped conversations per cluster
CONVERSATIONS_PER_GROUP = 20  # conversations listed per not-in-effect group / staged policy
DIRECTIONS = ("ingress", "egress")

Place = tuple[str, str]  # (cluster, namespace)


# -- inputs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubePod:
    """A pod as the cluster's API lists it, with the workload that owns it."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    workload: str = ""  # owner's name (Deployment through its ReplicaSet); the pod's name when none
    workload_kind: str = ""


@dataclass(frozen=True)
class UnmanagedPod:
    """A pod Cilium does not enforce (policy_engine.kube.PodRef, without the kube import)."""

    namespace: str
    name: str
    owner_kind: str = ""
    owner_name: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ObjectDrift:
    """One drift item of `netwarden sync`'s drift detection (policy_engine.kube.DriftItem)."""

    key: str  # "Kind/namespace/name" (namespace empty for cluster-wide objects), as attribution names it
    drift: str  # "changed", "missing", "extra"
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class KubeFacts:
    reachable: bool
    error: str = ""
    pods: tuple[KubePod, ...] = ()
    unmanaged_pods: tuple[UnmanagedPod, ...] = ()
    drift: tuple[ObjectDrift, ...] = ()
    desired_objects: int = 0  # how many objects sync would apply (drift counts against it)


@dataclass(frozen=True)
class DropRollups:
    """The report's drops and verdicts over time from the rollups (query_api.summary documents)."""

    by_reason: tuple[Mapping[str, Any], ...] = ()
    by_policy: tuple[Mapping[str, Any], ...] = ()
    buckets: tuple[Mapping[str, Any], ...] = ()  # [{"start", "verdicts": {name: flows}}]


@dataclass(frozen=True)
class ClusterFacts:
    cluster: str
    conversations: Sequence[Conversation]  # unredacted
    desired: PolicySet | None = None
    staged: PolicySet | None = None
    namespace_workspaces: Mapping[str, str] = field(default_factory=dict)
    known_namespaces: Iterable[str] = ()  # declared namespaces (workspaces, policy set) besides those seen
    kube: KubeFacts | None = None
    lost_ranges: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ReportView:
    """What the caller asked for and may see. `in_report(cluster, namespace)`: the place is in the report
    (caller's scope and the --namespace/--workspace selection); `redact`: a conversation as the caller may
    see it (peers outside its scope reduced to their place)."""

    in_report: Callable[[str, str], bool]
    redact: Callable[[Conversation], Conversation] = lambda c: c


# -- small helpers --------------------------------------------------------------------------------------


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def drop_reason_name(reason: int) -> str:
    if not reason:
        return ""
    if reason in POLICY_DROP_REASONS:
        return POLICY_DROP_REASONS[reason]
    try:
        from schemas.hubble.flow import flow_pb2

        return str(flow_pb2.DropReason.Name(reason))
    except (ImportError, ValueError):
        return str(reason)


def _side_doc(side: Side) -> dict[str, Any]:
    doc: dict[str, Any] = {"namespace": side.namespace, "workload": side.workload}
    if side.workload_kind:
        doc["kind"] = side.workload_kind
    if not side.namespace:
        doc["reserved"] = side.reserved
        if side.ip:
            doc["ip"] = side.ip
    if side.cluster:
        doc["cluster"] = side.cluster
    return doc


def conversation_doc(conv: Conversation) -> dict[str, Any]:
    return {
        "source": _side_doc(conv.source),
        "destination": _side_doc(conv.destination),
        "port": conv.port,
        "protocol": conv.protocol,
        "verdict": VERDICT_NAMES.get(conv.verdict, str(conv.verdict)),
        "flows": conv.flows,
        "first_seen": _iso(conv.first_seen),
        "last_seen": _iso(conv.last_seen),
    }


def _display_key(j: _Judged) -> tuple[Any, ...]:
    """What a listed conversation shows: the same connection at both observation points, or peers that
    redaction makes alike, are one entry."""
    s, d = j.shown.source, j.shown.destination
    return (s.cluster, s.namespace, s.workload, s.workload_kind, s.reserved, s.ip, d.cluster, d.namespace,
            d.workload, d.workload_kind, d.reserved, d.ip, j.shown.port, j.shown.protocol, j.shown.verdict)


def _listed(
    members: Iterable[_Judged],
    limit: int | None,
    key: Callable[[_Judged], tuple[Any, ...]] = lambda j: (),
    extra: Callable[[_Judged], dict[str, Any]] | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """(distinct entries, the biggest `limit` as documents): conversations grouped by what they show (plus
    `key`), counts summed; documents are built for the listed entries only. `extra(first member)` adds the
    group's own fields."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for j in members:
        k = (*_display_key(j), *key(j))
        g = groups.get(k)
        if g is None:
            groups[k] = [j, j.conv.flows, j.conv.first_seen, j.conv.last_seen]
        else:
            g[1] += j.conv.flows
            g[2] = min(g[2], j.conv.first_seen)
            g[3] = max(g[3], j.conv.last_seen)
    ordered = sorted(groups.values(), key=lambda g: -g[1])
    docs = []
    for j, n, first, last in ordered if limit is None else ordered[:limit]:
        doc = conversation_doc(j.shown)
        doc.update(flows=n, first_seen=_iso(first), last_seen=_iso(last))
        if extra is not None:
            doc.update(extra(j))
        docs.append(doc)
    return len(groups), docs


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _place(side: Side, cluster: str) -> Place:
    return (side.cluster or cluster, side.namespace)


# -- deciding -------------------------------------------------------------------------------------------


class Decider:
    """The current set's decision for conversations: the stored one when current, else decided again. One
    evaluator per policy set (object) serves the decisions, coverage and rule listing."""

    def __init__(self, cache: EvaluatorCache | None = None) -> None:
        self.cache = cache or EvaluatorCache()
        self.decided_again = 0

    def decision(self, conv: Conversation, stored: SetDecision, policy_set: PolicySet | None) -> SetDecision:
        if policy_set is None:
            return SetDecision()
        if stored.verdict != NOT_EVALUATED and stored.revision == policy_set.revision:
            return stored
        self.decided_again += 1
        return decide(conv, policy_set, self.cache, traffic_direction=conv.traffic_direction)

    def evaluator(self, policy_set: PolicySet) -> Any:
        return self.cache.evaluator(policy_set)


def _denied_direction(d: SetDecision) -> str:
    """The direction whose enforcement denies (egress first, as Cilium meets it)."""
    return "egress" if d.egress_verdict == DROPPED else "ingress"


def _attribution(d: SetDecision, direction: str) -> tuple[str, str, int]:
    if direction == "egress":
        return d.egress_policy, d.egress_rule, d.egress_version
    return d.ingress_policy, d.ingress_rule, d.ingress_version


def _netwarden_policy(policy_set: PolicySet | None, key: str) -> tuple[str, int]:
    origin = policy_set.rendered_from.get(key) if policy_set is not None else None
    return (origin.policy, origin.version) if origin is not None else ("", 0)


# -- the report -----------------------------------------------------------------------------------------


def validation_report(
    since: datetime, until: datetime, clusters: Sequence[ClusterFacts], view: ReportView,
    decider: Decider | None = None, rollups: DropRollups | None = None,
) -> dict[str, Any]:
    """The report document (JSON-ready): {"window": {"since", "until"}, "drops", "clusters": [...]}."""
    decider = decider or Decider()
    rollups = rollups or DropRollups()
    return {
        "window": {"since": _iso(since), "until": _iso(until)},
        "drops": {
            "by_reason": [dict(r) for r in rollups.by_reason],
            "by_policy": [dict(r) for r in rollups.by_policy],
            "buckets": [dict(b) for b in rollups.buckets],
        },
        "clusters": [_cluster_report(facts, view, decider) for facts in clusters],
    }


@dataclass
class _Judged:
    conv: Conversation  # unredacted
    shown: Conversation  # as the caller may see it
    desired: SetDecision
    staged: SetDecision


def _cluster_report(facts: ClusterFacts, view: ReportView, decider: Decider) -> dict[str, Any]:
    cluster = facts.cluster
    judged = [
        _Judged(
            c,
            view.redact(c),
            decider.decision(c, c.desired, facts.desired),
            decider.decision(c, c.staged, facts.staged),
        )
        for c in facts.conversations
    ]
    desired = facts.desired
    doc: dict[str, Any] = {
        "cluster": cluster,
        "desired_set": None
        if desired is None
        else {
            "revision": desired.revision,
            "engine": desired.netwarden_engine or desired.engine,
            "blueprint": desired.blueprint,
            "blueprint_version": desired.blueprint_version,
            "error": desired.error,
        },
        "kube": None
        if facts.kube is None
        else {"reachable": facts.kube.reachable, "error": facts.kube.error},
        "conversations": len(judged),
        "flows": sum(j.conv.flows for j in judged),
        "namespaces": _namespaces(facts, judged, view, decider),
        "not_in_effect": _not_in_effect(facts, judged, view, decider),
        "unexpected_drops": _unexpected_drops(facts, judged, view),
        "drops": _drops(judged),
    }
    rules = _rules(facts, judged, view, decider)
    doc["rules"] = rules
    doc["unused_rules"] = [r for r in rules if r["flows"] == 0]
    doc["staged"] = _staged(facts, judged)
    doc["health"] = {
        "lost_ranges": [dict(r) for r in facts.lost_ranges],
        "note": "ranges of a node's flows Hubble no longer held when its collector resumed (a restarted server, "
        "an overwritten ring); an idle node looks the same",
    }
    return doc


# -- coverage -------------------------------------------------------------------------------------------


def _pod_side(pod: KubePod) -> Side:
    labels = tuple(sorted(f"k8s:{k}={v}" for k, v in pod.labels.items()))
    return Side(
        namespace=pod.namespace,
        workload=pod.workload or pod.name,
        workload_kind=pod.workload_kind,
        labels=(*labels, f"{POD_NAMESPACE_LABEL}={pod.namespace}"),
    )


def _selected(evaluator: Any, endpoint: Any, direction: str) -> list[Any]:
    return [s for s in evaluator.subjects if s.direction == direction and s.selects(endpoint)]


def _namespaces(
    facts: ClusterFacts, judged: Sequence[_Judged], view: ReportView, decider: Decider
) -> list[dict[str, Any]]:
    cluster = facts.cluster
    # Workloads per namespace: (namespace, workload) -> a side carrying its labels.
    workloads: dict[Place, dict[str, tuple[Side, set[str]]]] = {}
    # place -> (labels, direction) -> [side, flows]: each distinct side is judged once, however many
    # conversations it has (keyed by its labels: tuples hash faster than dataclasses)
    flows: dict[Place, dict[tuple[tuple[str, ...], str], list[Any]]] = {}
    shown: dict[Place, bool] = {}
    for j in judged:
        for side, direction in ((j.conv.source, "egress"), (j.conv.destination, "ingress")):
            if not side.namespace:
                continue
            place = _place(side, cluster)
            if place not in shown:
                shown[place] = place[0] == cluster and view.in_report(*place)
            if not shown[place]:
                continue
            entry = workloads.setdefault(place, {}).setdefault(side.workload, (side, set()))
            entry[1].add("flows")
            counts = flows.setdefault(place, {})
            entry_flows = counts.get((side.labels, direction))
            if entry_flows is None:
                counts[(side.labels, direction)] = [side, j.conv.flows]
            else:
                entry_flows[1] += j.conv.flows
    if facts.kube is not None:
        for pod in facts.kube.pods:
            place = (cluster, pod.namespace)
            if not view.in_report(*place):
                continue
            side = _pod_side(pod)
            entry = workloads.setdefault(place, {}).setdefault(side.workload, (side, set()))
            entry[1].add("kube")
    names = {p[1] for p in workloads} | {ns for ns in facts.known_namespaces if view.in_report(cluster, ns)}
    policy_set = facts.desired
    evaluator = (
        decider.evaluator(policy_set)
        if policy_set is not None and not policy_set.error
        else None
    )
    labels = policy_set.namespace_labels if policy_set is not None else {}
    enforcement = policy_set.enforcement_mode if policy_set is not None else "default"
    cilium = policy_set is not None and policy_set.engine == "cilium"
    memo: dict[tuple[str, tuple[str, ...], str], bool] = {}

    def selected(side: Side, direction: str) -> bool:
        if evaluator is None:
            return False
        key = (side.namespace, side.labels, direction)
        if key not in memo:
            memo[key] = bool(_selected(evaluator, side_endpoint_of(side, labels), direction))
        return memo[key]

    def isolated(namespace: str, direction: str) -> bool:
        if evaluator is None:
            return False
        if cilium and enforcement == "never":
            return False
        if cilium and enforcement == "always":
            return True
        side = Side(namespace=namespace, labels=(f"{POD_NAMESPACE_LABEL}={namespace}",))
        return any(s.default_deny for s in _selected(evaluator, side_endpoint_of(side, labels), direction))

    out = []
    for namespace in sorted(names):
        place = (cluster, namespace)
        ws = workloads.get(place, {})
        coverage: dict[str, Any] = {}
        for direction in DIRECTIONS:
            chosen = [name for name, (side, _) in ws.items() if selected(side, direction)]
            seen = [(side, n) for (_, d), (side, n) in flows.get(place, {}).items() if d == direction]
            total_flows = sum(n for _, n in seen)
            selected_flows = sum(n for side, n in seen if selected(side, direction))
            coverage[direction] = {
                "workloads": _share(len(chosen), len(ws)),
                "workloads_selected": len(chosen),
                "workloads_total": len(ws),
                "flows": _share(selected_flows, total_flows),
                "flows_selected": selected_flows,
                "flows_total": total_flows,
            }
        out.append(
            {
                "namespace": namespace,
                "workspace": facts.namespace_workspaces.get(namespace, ""),
                "default_deny": {d: isolated(namespace, d) for d in DIRECTIONS},
                "coverage": coverage,
                "workloads": [
                    {
                        "workload": name,
                        "kind": side.workload_kind,
                        "seen_in": sorted(seen),
                        **{d: selected(side, d) for d in DIRECTIONS},
                    }
                    for name, (side, seen) in sorted(ws.items())
                ],
            }
        )
    return out


# -- not in effect --------------------------------------------------------------------------------------


def _drift_of(facts: ClusterFacts) -> dict[str, ObjectDrift]:
    return {d.key: d for d in facts.kube.drift} if facts.kube is not None else {}


def _object_cause(key: str, drift: Mapping[str, ObjectDrift], facts: ClusterFacts) -> dict[str, Any] | None:
    """Why a desired object does not act on the cluster: missing, drifted, or at an older version."""
    item = drift.get(key)
    if item is None:
        return None
    fix = f"netwarden sync --cluster {facts.cluster}"
    kube = facts.kube
    if item.drift == "missing":
        missing = sum(1 for d in drift.values() if d.drift == "missing")
        if kube is not None and kube.desired_objects and missing * 2 > kube.desired_objects:
            return {
                "cause": "not-synced",
                "detail": f"{missing} of {kube.desired_objects} desired objects are not on the cluster, "
                f"{key} among them: the cluster was not synced to the current version",
                "objects": [key],
                "fix": fix,
            }
        return {"cause": "missing", "detail": f"{key} is not on the cluster ({'; '.join(item.details)})",
                "objects": [key], "fix": fix}
    if item.drift == "changed":
        if any(POLICY_VERSION_LABEL in d for d in item.details):
            return {"cause": "not-synced", "detail": f"{key} on the cluster is another version: "
                    + "; ".join(item.details), "objects": [key], "fix": fix}
        return {"cause": "drifted", "detail": f"{key} was changed on the cluster: " + "; ".join(item.details),
                "objects": [key], "fix": fix}
    return None


def _unmanaged_cause(facts: ClusterFacts, namespace: str, workload: str) -> dict[str, Any] | None:
    if facts.kube is None:
        return None
    # The pod listing knows each pod's workload (Deployment through its ReplicaSet's pod-template-hash).
    owners = {(p.namespace, p.name): p.workload for p in facts.kube.pods}
    pods = [
        p for p in facts.kube.unmanaged_pods
        if p.namespace == namespace and workload in (p.owner_name, p.name, owners.get((p.namespace, p.name)))
    ]
    if not pods:
        return None
    return {
        "cause": "unmanaged-pods",
        "detail": f"{len(pods)} pod(s) of {namespace}/{workload} started before Cilium and were never "
        "restarted: Cilium does not enforce policy on them",
        "pods": [{"namespace": p.namespace, "name": p.name, "reason": p.reason} for p in pods],
        "fix": f"netwarden sync --cluster {facts.cluster} --restart-unmanaged",
    }


def _selecting_objects(facts: ClusterFacts, decider: Decider, side: Side, direction: str) -> set[str]:
    """Objects of the desired set that select `side` for `direction` ("Kind/namespace/name")."""
    policy_set = facts.desired
    if policy_set is None or policy_set.error:
        return set()
    evaluator = decider.evaluator(policy_set)
    if evaluator is None:
        return set()
    endpoint = side_endpoint_of(side, policy_set.namespace_labels)
    return {s.ref.key for s in _selected(evaluator, endpoint, direction)}


def _not_in_effect(
    facts: ClusterFacts, judged: Sequence[_Judged], view: ReportView, decider: Decider
) -> list[dict[str, Any]]:
    cluster = facts.cluster
    groups: dict[tuple[str, str, str, str, str], list[_Judged]] = {}
    for j in judged:
        if j.conv.verdict != FORWARDED or j.desired.verdict != DROPPED:
            continue
        direction = _denied_direction(j.desired)
        side = j.conv.source if direction == "egress" else j.conv.destination
        if not side.namespace or not view.in_report(*_place(side, cluster)):
            continue
        policy, rule, _ = _attribution(j.desired, direction)
        groups.setdefault((side.namespace, side.workload, direction, policy, rule), []).append(j)
    drift = _drift_of(facts)
    out = []
    for (namespace, workload, direction, policy, rule), members in groups.items():
        members.sort(key=lambda j: -j.conv.flows)
        side = members[0].conv.source if direction == "egress" else members[0].conv.destination
        causes = [
            c
            for c in (_unmanaged_cause(facts, namespace, workload), _object_cause(policy, drift, facts))
            if c is not None
        ]
        if not causes and drift:
            # Another object drifted that acts on this endpoint in this direction (an allow may have been
            # added to it), or one netwarden no longer wants in the namespace: named first, then the others.
            selecting = _selecting_objects(facts, decider, side, direction)
            nearby = sorted(
                (k not in selecting, k) for k, d in drift.items()
                if (d.drift == "changed" and k in selecting)
                or (d.drift == "extra" and k.split("/")[1] in ("", namespace))
            )
            if nearby:
                keys = [k for _, k in nearby]
                causes.append({"cause": "drifted", "detail": "changed on the cluster and acting on "
                               f"{namespace}/{workload} {direction}: " + ", ".join(keys), "objects": keys,
                               "fix": f"netwarden sync --cluster {cluster}"})
        if not causes:
            if facts.kube is None:
                causes.append({"cause": "unknown", "detail": f"the kube API of {cluster} was not asked: pods and "
                               "objects not checked"})
            elif not facts.kube.reachable:
                causes.append({"cause": "unknown", "detail": f"the kube API of {cluster} was not reachable "
                               f"({facts.kube.error}): pods and objects not checked"})
            else:
                last = _iso(max(j.conv.last_seen for j in members))
                causes.append({"cause": "unknown", "detail": "the cluster's objects match and every pod is "
                               f"enforced now: fixed since the last such flow ({last})?"})
        name, version = _netwarden_policy(facts.desired, policy)
        out.append(
            {
                "namespace": namespace,
                "workload": workload,
                "kind": side.workload_kind,
                "direction": direction,
                "policy": name or policy,
                "object": policy,
                "rule": rule,
                "version": version,
                "flows": sum(j.conv.flows for j in members),
                "last_seen": _iso(max(j.conv.last_seen for j in members)),
                "conversation_count": (listed := _listed(members, CONVERSATIONS_PER_GROUP))[0],
                "conversations": listed[1],
                "cause": causes[0]["cause"],
                "causes": causes,
            }
        )
    out.sort(key=lambda g: (-g["flows"], g["namespace"], g["workload"], g["direction"]))
    return out


# -- unexpected drops -----------------------------------------------------------------------------------


def _drop_cause(facts: ClusterFacts, j: _Judged, drift: Mapping[str, ObjectDrift]) -> dict[str, Any]:
    managed = set(facts.desired.rendered_from) if facts.desired is not None else set()
    reason = j.conv.drop_reason
    if j.conv.hubble_denied_by:
        foreign = [p for p in j.conv.hubble_denied_by if p not in managed]
        if foreign:
            return {"cause": "unmanaged-policy",
                    "detail": "denied by " + ", ".join(foreign) + ", which netwarden does not manage",
                    "objects": foreign}
        causes = [c for p in j.conv.hubble_denied_by if (c := _object_cause(p, drift, facts)) is not None]
        if causes:
            return causes[0]
        return {"cause": "managed-policy", "detail": "Hubble names " + ", ".join(j.conv.hubble_denied_by)
                + ", which the desired set does not let deny it", "objects": list(j.conv.hubble_denied_by)}
    for direction in DIRECTIONS:
        policy, _, _ = _attribution(j.desired, direction)
        if policy and (c := _object_cause(policy, drift, facts)) is not None:
            return c
    if reason and reason not in POLICY_DROP_REASONS:
        return {"cause": "not-policy", "detail": f"dropped for {drop_reason_name(reason)}, not by a policy"}
    if reason == 133:
        return {"cause": "unattributed-default-deny",
                "detail": "default deny without an allowing rule on the cluster; Hubble names no policy for "
                "POLICY_DENIED drops: an object netwarden does not manage isolates the endpoint, or an "
                "allowing object is missing"}
    return {"cause": "unknown", "detail": "Hubble gave no attribution"}


def _unexpected_drops(facts: ClusterFacts, judged: Sequence[_Judged], view: ReportView) -> list[dict[str, Any]]:
    cluster = facts.cluster
    drift = _drift_of(facts)
    members = [
        j for j in judged
        if j.conv.verdict == DROPPED and j.desired.verdict == FORWARDED
        and any(s.namespace and view.in_report(*_place(s, cluster)) for s in (j.conv.source, j.conv.destination))
    ]

    def extra(j: _Judged) -> dict[str, Any]:  # once per listed entry: its cause from what Hubble and the cluster say
        allowed_by = []
        for direction in DIRECTIONS:
            policy, rule, _ = _attribution(j.desired, direction)
            if policy:
                name, version = _netwarden_policy(facts.desired, policy)
                allowed_by.append({"direction": direction, "policy": name or policy, "object": policy,
                                   "rule": rule, "version": version})
        cause = _drop_cause(facts, j, drift)
        return {
            "drop_reason": drop_reason_name(j.conv.drop_reason),
            "hubble_denied_by": list(j.conv.hubble_denied_by),
            "allowed_by": allowed_by,
            "cause": cause["cause"],
            "causes": [cause],
        }

    def key(j: _Judged) -> tuple[Any, ...]:
        d = j.desired
        return (j.conv.drop_reason, j.conv.hubble_denied_by, d.egress_policy, d.egress_rule, d.ingress_policy,
                d.ingress_rule)

    return _listed(members, None, key, extra)[1]


# -- drops ----------------------------------------------------------------------------------------------


def _drops(judged: Sequence[_Judged]) -> dict[str, Any]:
    """Drops by reason and by the policies Hubble names (conversations count what the rollups count)."""
    reasons: dict[str, int] = {}
    policies: dict[str, int] = {}
    dropped = [j for j in judged if j.conv.verdict == DROPPED]
    for j in dropped:
        name = drop_reason_name(j.conv.drop_reason) or "UNKNOWN"
        reasons[name] = reasons.get(name, 0) + j.conv.flows
        for policy in j.conv.hubble_denied_by:
            policies[policy] = policies.get(policy, 0) + j.conv.flows
    by_policy = []
    for key, n in sorted(policies.items(), key=lambda kv: (-kv[1], kv[0])):
        kind, _, rest = key.partition("/")
        namespace, _, name = rest.partition("/")
        by_policy.append({"kind": kind, "namespace": namespace, "name": name, "flows": n})
    _, top = _listed(
        dropped,
        TOP_CONVERSATIONS,
        lambda j: (j.conv.drop_reason, j.conv.hubble_denied_by, j.desired.verdict),
        lambda j: {
            "drop_reason": drop_reason_name(j.conv.drop_reason),
            "hubble_denied_by": list(j.conv.hubble_denied_by),
            "desired": VERDICT_NAMES.get(j.desired.verdict, "") or "not evaluated",
        },
    )
    return {
        "by_reason": [{"reason": r, "flows": n} for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))],
        "by_policy": by_policy,
        "top_conversations": top,
    }


# -- rules ----------------------------------------------------------------------------------------------


def _is_empty_rule(rule: Any) -> bool:
    """An empty Cilium rule `{}`: selects no peer, only switches default deny on."""
    return rule.peers == () and rule.ports is None


def _rules(
    facts: ClusterFacts, judged: Sequence[_Judged], view: ReportView, decider: Decider
) -> list[dict[str, Any]]:
    policy_set = facts.desired
    if policy_set is None or policy_set.error:
        return []
    evaluator = decider.evaluator(policy_set)
    if evaluator is None:
        return []
    # (object, direction, rule) -> [flows, last]
    rows: dict[tuple[str, str, str], list[Any]] = {}
    empty: dict[tuple[str, str], list[str]] = {}
    for subject in evaluator.subjects:
        key = subject.ref.key
        if subject.ref.namespace and not view.in_report(facts.cluster, subject.ref.namespace):
            continue
        labels = [r.label for r in subject.rules]
        for rule in subject.rules:
            rows.setdefault((key, subject.direction, rule.label), [0, None])
            if _is_empty_rule(rule):
                empty.setdefault((key, subject.direction), []).append(rule.label)
        if subject.default_deny and not labels:
            rows.setdefault((key, subject.direction, DEFAULT_DENY_RULE), [0, None])
    for j in judged:
        for direction in DIRECTIONS:
            policy, rule, _ = _attribution(j.desired, direction)
            if not policy or not rule:
                continue
            targets = [(policy, direction, rule)]
            if rule == DEFAULT_DENY_RULE and (policy, direction) in empty:
                targets = [(policy, direction, label) for label in empty[(policy, direction)]]
            for target in targets:
                row = rows.get(target)
                if row is None:
                    continue
                row[0] += j.conv.flows
                if row[1] is None or j.conv.last_seen > row[1]:
                    row[1] = j.conv.last_seen
    out = []
    for (key, direction, rule), (flows, last) in rows.items():
        name, version = _netwarden_policy(policy_set, key)
        origin = policy_set.rendered_from.get(key)
        out.append(
            {
                "policy": name or key,
                "version": version,
                "object": key,
                "netwarden_rule": origin.rule if origin is not None else "",
                "direction": direction,
                "rule": rule,
                "flows": flows,
                "last_matched": _iso(last),
            }
        )
    out.sort(key=lambda r: (r["flows"] > 0, r["policy"], r["object"], r["rule"]))
    return out


# -- staged ---------------------------------------------------------------------------------------------


def _staged(facts: ClusterFacts, judged: Sequence[_Judged]) -> list[dict[str, Any]]:
    staged, desired = facts.staged, facts.desired
    if staged is None:
        return []
    enforced = {(o.policy, o.version) for o in desired.rendered_from.values()} if desired is not None else set()
    policies: dict[str, int] = {}
    for origin in staged.rendered_from.values():
        if (origin.policy, origin.version) not in enforced:
            policies[origin.policy] = max(policies.get(origin.policy, 0), origin.version)
    entries: dict[str, dict[str, Any]] = {
        name: {"policy": name, "version": version, "newly_denied": [], "newly_allowed": [],
               "newly_denied_flows": 0, "newly_allowed_flows": 0}
        for name, version in sorted(policies.items())
    }
    fallback = next(iter(entries)) if len(entries) == 1 else "(staged set)"
    changed: dict[tuple[str, str], list[_Judged]] = {}
    where: dict[int, tuple[str, str, str]] = {}  # id(judged) -> (direction, object, rule) of its change
    for j in judged:
        d, s = j.desired.verdict, j.staged.verdict
        if d not in (FORWARDED, DROPPED) or s not in (FORWARDED, DROPPED) or d == s:
            continue
        if s == DROPPED:
            what, direction = "newly_denied", _denied_direction(j.staged)
        else:
            what, direction = "newly_allowed", _denied_direction(j.desired)
        policy, rule, _ = _attribution(j.staged, direction)
        name, _ = _netwarden_policy(staged, policy)
        owner = name if name in entries else fallback
        entry = entries.setdefault(owner, {"policy": owner, "version": 0, "newly_denied": [],
                                           "newly_allowed": [], "newly_denied_flows": 0,
                                           "newly_allowed_flows": 0})
        entry[f"{what}_flows"] += j.conv.flows
        changed.setdefault((owner, what), []).append(j)
        where[id(j)] = (direction, policy, rule)
    for (owner, what), members in changed.items():
        entries[owner][what] = _listed(
            members,
            CONVERSATIONS_PER_GROUP,
            lambda j: where[id(j)],
            lambda j: dict(zip(("direction", "object", "rule"), where[id(j)], strict=True)),
        )[1]
    return list(entries.values())

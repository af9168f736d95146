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

Endpoints are rebuilt from Hubble's view of each side, as Cilium enforces on it:
- a pod (namespace set): its identity labels `k8s:K=V` are the pod labels, `k8s:io.kubernetes.pod.namespace`
  names the namespace and `k8s:io.cilium.k8s.namespace.labels.K=V` are namespace labels (merged over the
  labels the inventory knows, e.g. netwarden.io/workspace; the evaluator's kubernetes.io/metadata.name too);
  pod IPs are not in the key: CIDR rules never select pods under Cilium (under a primary CNI's
  NetworkPolicy, ipBlock rules covering pod IPs are therefore not seen: a documented limit);
- anything else: its `reserved:` labels (or, without any, its reserved identity number: 1 host, 2 world,
  3 unmanaged, 4 health, 5 init, 6 remote-node, 7 kube-apiserver, 8 ingress, 9/10 world-ipv4/-ipv6) as
  entities, and its IP for CIDR rules; CIDR identities and unknown identities are world.
This is what `netwarden policy check` builds for a pod (pod labels + namespace labels) and for an IP with
entities, so a key's verdict equals `policy check` on the same connection.

Which connection and which direction:
- A reply (is_reply true) belongs to its connection: the sides are swapped back (client -> server) and the
  key's dst_port is the connection's server port (the sink keys replies by their src_port). Cilium decides
  a connection on its first packet; replies pass by conntrack, so a reply carries its connection's verdict.
- Cilium enforces the source's egress policy where the packet leaves the source endpoint and the
  destination's ingress policy where it enters the destination endpoint. Both directions are evaluated
  for every key (`*_egress_*`, `*_ingress_*`); the flow's verdict is what the desired set says at the point
  Hubble observed it (traffic_direction): at EGRESS (a request leaving its source) the egress decision
  alone, since the packet has not met ingress enforcement yet; at INGRESS, for replies and when unknown, the
  connection's: egress first, then ingress. Its drop reason is the deciding direction's (133 POLICY_DENIED
  for default deny, 181 POLICY_DENY for a deny rule).
- Only TCP, UDP and SCTP with a port are evaluated (the evaluator's L4 model); ICMP and others get 0.
- verdict_mismatch: Hubble's verdict (1 FORWARDED / 2 DROPPED) and the desired set's are both known and differ.

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

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
from prometheus_client import Counter

from policy_engine.evaluator import (
    CILIUM_NS_LABEL,
    CILIUM_NS_LABELS_PREFIX,
    IP_ENTITIES,
    NAMESPACE_NAME_LABEL,
    Connection,
    DirectionDecision,
    Endpoint,
    EvaluatorInputError,
    IPAddress,
    Pod,
    PolicyEvaluator,
    pod_cilium_labels,
)
from schemas.flow_record import ENRICHMENT_COLUMNS, ENRICHMENT_RESULT_SCHEMA
from schemas.inventory import ClusterInventory, PolicySet

log = logging.getLogger("netwarden.streams.verdicts")

EVALUATIONS = Counter("netwarden_enrich_evaluations_total", "Keys evaluated under a policy set", ["set"])
CACHE_HITS = Counter("netwarden_enrich_cache_hits_total", "Keys answered from the verdict cache", ["set"])
KEYS = Counter("netwarden_enrich_keys_total", "Distinct keys enriched")
ROW_HITS = Counter("netwarden_enrich_row_cache_hits_total", "Keys answered whole from the cache")

NOT_EVALUATED, FORWARDED, DROPPED = 0, 1, 2
TRAFFIC_INGRESS, TRAFFIC_EGRESS = 1, 2
L4_EVALUATED = {1: "TCP", 2: "UDP", 5: "SCTP"}  # schemas.flow_record.L4_PROTOCOLS numbers
RESERVED_IDENTITIES = {
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world",
    10: "world",
}
# Reserved entities of the cluster itself (they share its project); world does not.
CLUSTER_ENDPOINT_ENTITIES = frozenset(IP_ENTITIES - {"world"})
CACHE_LIMIT = 200_000  # verdicts kept per (cluster, set) before the cache starts over

_ZERO_IP = bytes(16)
_GUARD_COLUMNS = ("l4_protocol", "dst_port", "src_identity", "dst_identity", "verdict", "traffic_direction")
_K8S = "k8s:"
_NS_LABEL_KEY = f"{_K8S}{CILIUM_NS_LABELS_PREFIX}"

# One set's columns for one key: revision, verdict, drop_reason,
# egress (verdict, policy, rule, version), ingress (verdict, policy, rule, version).
SetColumns = tuple[int, int, int, int, str, str, int, int, str, str, int]
_EMPTY_SET: SetColumns = (0, 0, 0, 0, "", "", 0, 0, "", "", 0)


class InventorySource(Protocol):
    def snapshot(self) -> Mapping[str, ClusterInventory]: ...


@dataclass(frozen=True)
class KeySide:
    """One side of a key as Hubble saw it."""

    identity: int
    namespace: str
    labels: tuple[str, ...]
    ip: bytes  # 16 bytes, IPv4-mapped for IPv4; all zero for pods


def _ip(ip16: bytes) -> IPAddress | None:
    if not ip16 or ip16 == _ZERO_IP:
        return None
    ip = ipaddress.IPv6Address(ip16)
    return ip.ipv4_mapped or ip


def side_endpoint(side: KeySide, known_namespace_labels: Mapping[str, Mapping[str, str]]) -> Endpoint:
    """The evaluator's Endpoint for one side of a key (see the module notes)."""
    pod_labels: dict[str, str] = {}
    ns_labels: dict[str, str] = {}
    other: dict[str, str] = {}
    reserved: set[str] = set()
    namespace = side.namespace
    for label in side.labels:
        key, _, value = label.partition("=")
        if key.startswith(_NS_LABEL_KEY):
            ns_labels[key[len(_NS_LABEL_KEY) :]] = value
        elif key == f"{_K8S}{CILIUM_NS_LABEL}":
            namespace = namespace or value
        elif key.startswith(_K8S):
            pod_labels[key[len(_K8S) :]] = value
        elif key.startswith("reserved:"):
            reserved.add(key[len("reserved:") :])
        else:
            other[key] = value
    if namespace:
        labels = {NAMESPACE_NAME_LABEL: namespace, **known_namespace_labels.get(namespace, {}), **ns_labels}
        pod = Pod(namespace, "", pod_labels, None)
        return Endpoint(
            pod, None, labels, frozenset(), {**other, **pod_cilium_labels(pod, labels)}, memo_key=side
        )
    entities = {"world" if e in ("world-ipv4", "world-ipv6") else e for e in reserved}
    entities &= IP_ENTITIES
    if not entities:
        entities = {RESERVED_IDENTITIES.get(side.identity, "world")}
    return Endpoint(
        None,
        _ip(side.ip),
        entities=frozenset(entities),
        cilium_labels={f"reserved:{e}": "" for e in entities},
        memo_key=side,
    )


@dataclass(frozen=True)
class KeyConnection:
    """The connection a key belongs to (client -> server) and where Hubble observed it."""

    source: KeySide
    destination: KeySide
    port: int
    protocol: str
    reply: bool
    traffic_direction: int


def key_connection(
    src: KeySide, dst: KeySide, l4_protocol: int, dst_port: int, is_reply: bool | None, traffic_direction: int
) -> KeyConnection | None:
    """None when the evaluator cannot judge the key (not TCP/UDP/SCTP, or no port)."""
    protocol = L4_EVALUATED.get(l4_protocol)
    if protocol is None or not 1 <= dst_port <= 65535:
        return None
    reply = bool(is_reply)
    client, server = (dst, src) if reply else (src, dst)
    return KeyConnection(client, server, dst_port, protocol, reply, traffic_direction)


class PolicyEnricher:
    """KeyEnricher: ownership and the desired (and staged) sets' verdicts of each distinct key."""

    def __init__(self, inventory: InventorySource) -> None:
        self.inventory = inventory
        self._evaluators: dict[tuple[str, str], tuple[int, PolicyEvaluator | None]] = {}
        self._verdicts: dict[tuple[str, str], tuple[int, dict[Any, SetColumns]]] = {}
        # Endpoints of key sides, per evaluator (they depend on its policy set's namespace labels).
        self._endpoints: dict[int, dict[KeySide, Endpoint]] = {}
        # ekey -> (cluster inventory revision, guard columns, row): whole rows of keys seen before
        self._rows: dict[int, tuple[int, tuple[Any, ...], tuple[Any, ...]]] = {}
        self.evaluations = 0  # evaluator runs (verdict cache misses), for tests and benches
        self.cache_hits = 0  # verdict cache hits (a new key whose connection was judged already)
        self.row_hits = 0  # keys answered whole from the row cache
        self.evaluators_built = 0

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
        if conn is None or policy_set.error:
            return (policy_set.revision, *_EMPTY_SET[1:])  # type: ignore[return-value]
        revision, cache = self._verdicts.get((cluster, kind), (-1, {}))
        if revision != policy_set.revision or len(cache) > CACHE_LIMIT:
            cache = {}
            self._verdicts[(cluster, kind)] = (policy_set.revision, cache)
        hit = cache.get(conn)
        if hit is not None:
            self.cache_hits += 1
            CACHE_HITS.labels(kind).inc()
            return hit
        evaluator = self._evaluator(cluster, kind, policy_set)
        result = _EMPTY_SET if evaluator is None else self._evaluate(evaluator, policy_set, conn)
        result = (policy_set.revision, *result[1:])  # type: ignore[assignment]
        cache[conn] = result
        self.evaluations += 1
        EVALUATIONS.labels(kind).inc()
        return result

    def _evaluator(self, cluster: str, kind: str, policy_set: PolicySet) -> PolicyEvaluator | None:
        revision, evaluator = self._evaluators.get((cluster, kind), (-1, None))
        if revision == policy_set.revision:
            return evaluator
        self.evaluators_built += 1
        try:
            evaluator = PolicyEvaluator(
                policy_set.namespace_labels,
                [],
                policy_set.policies,
                policy_set.engine,  # type: ignore[arg-type]
                enforcement_mode=policy_set.enforcement_mode,  # type: ignore[arg-type]
            )
        except EvaluatorInputError as exc:
            log.error(
                "cluster %s: %s policy set revision %d cannot be evaluated: %s",
                cluster,
                kind,
                policy_set.revision,
                exc,
            )
            evaluator = None
        old = self._evaluators.get((cluster, kind))
        if old is not None:
            self._endpoints.pop(id(old[1]), None)
        self._evaluators[(cluster, kind)] = (policy_set.revision, evaluator)
        return evaluator

    def _evaluate(self, evaluator: PolicyEvaluator, policy_set: PolicySet, conn: KeyConnection) -> SetColumns:
        endpoints = self._endpoints.setdefault(id(evaluator), {})
        if len(endpoints) > CACHE_LIMIT:
            endpoints.clear()
        sides = []
        for side in (conn.source, conn.destination):
            endpoint = endpoints.get(side)
            if endpoint is None:
                endpoint = endpoints[side] = side_endpoint(side, policy_set.namespace_labels)
            sides.append(endpoint)
        connection = Connection(sides[0], sides[1], conn.port, conn.protocol)
        egress = evaluator.decide(connection, "egress")
        ingress = evaluator.decide(connection, "ingress")
        if not conn.reply and conn.traffic_direction == TRAFFIC_EGRESS:
            decider = egress
        else:
            decider = egress if not egress.allowed else ingress
        return (
            policy_set.revision,
            FORWARDED if decider.allowed else DROPPED,
            0 if decider.allowed else decider.drop_reason,
            *_direction_columns(egress, policy_set),
            *_direction_columns(ingress, policy_set),
        )


def _direction_columns(decision: DirectionDecision, policy_set: PolicySet) -> tuple[int, str, str, int]:
    policy = decision.policy.key if decision.policy else ""
    origin = policy_set.rendered_from.get(policy)
    return (
        FORWARDED if decision.allowed else DROPPED,
        policy,
        decision.rule,
        origin.version if origin else 0,
    )


def _owner(inventory: ClusterInventory | None, side: KeySide) -> tuple[str, str]:
    """(project, workspace) of one side of a key."""
    if inventory is None:
        return "", ""
    if side.namespace:
        owner = inventory.namespaces.get(side.namespace)
        return (owner.project, owner.workspace) if owner else (inventory.project, "")
    if _is_cluster_endpoint(side.labels, side.identity):
        return inventory.project, ""
    return "", ""


def _is_cluster_endpoint(labels: Sequence[str], identity: int) -> bool:
    reserved = {
        label.partition("=")[0][len("reserved:") :] for label in labels if label.startswith("reserved:")
    }
    if reserved:
        return bool(reserved & CLUSTER_ENDPOINT_ENTITIES)
    return RESERVED_IDENTITIES.get(identity, "world") in CLUSTER_ENDPOINT_ENTITIES

"""What the demo clusters' Cilium enforces: a PolicyJudge (collectors.traffic) over the policy objects present on
the cluster's kube API (the stand-in `up` serves), as a Cilium agent enforces what is on its cluster, not what
netwarden wants: hand edits (drift) count, a version not synced yet does not.

- Policies: every CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy on the cluster, judged by
  policy_engine's evaluator (engine cilium); each side of a connection becomes the evaluator's endpoint the way
  the flow enricher builds it from Hubble's labels (policy_engine.flow_keys), so both agree on the same objects.
- Pods Cilium does not manage (no CiliumEndpoint: started before Cilium was chained) are not enforced: their
  own direction is allowed with no attribution, whatever the policies say.
- Refreshed by `refresh()` (the caller polls, ~2 s): one cheap list tells whether the store's resourceVersion
  moved; only then are the objects read again, and the revision (Hubble's policy revision in attribution) moves
  only when what enforcement depends on changed. Verdicts are cached per connection and revision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from collectors.traffic import ConnectionVerdict, DemoConnection, Enforcement, Peer
from policy_engine.evaluator import Connection, DirectionDecision, EvaluatorInputError, PolicyEvaluator
from policy_engine.flow_keys import side_endpoint_of

log = logging.getLogger("netwarden.demo.enforcement")

_POLICY_LISTS = (
    ("/apis/cilium.io/v2/ciliumnetworkpolicies", "cilium.io/v2", "CiliumNetworkPolicy"),
    ("/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies", "cilium.io/v2", "CiliumClusterwideNetworkPolicy"),
    ("/apis/networking.k8s.io/v1/networkpolicies", "networking.k8s.io/v1", "NetworkPolicy"),
)
_ENDPOINTS = "/apis/cilium.io/v2/ciliumendpoints"
_NAMESPACES = "/api/v1/namespaces"
_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


@dataclass
class EnforcedState:
    """What the datapath holds at one revision: the evaluator, namespace labels and the managed pods."""

    revision: int
    evaluator: PolicyEvaluator | None
    namespace_labels: dict[str, dict[str, str]]
    managed: frozenset[tuple[str, str]]  # (namespace, pod) with a CiliumEndpoint
    verdicts: dict[DemoConnection, ConnectionVerdict] = field(default_factory=dict)


def enforced_state(revision: int, namespaces: list[dict[str, Any]], policies: list[dict[str, Any]],
                   endpoints: list[dict[str, Any]]) -> EnforcedState:
    """Pure: the state for these objects (a policy set the evaluator refuses enforces nothing, logged)."""
    ns_labels = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in namespaces}
    try:
        evaluator: PolicyEvaluator | None = PolicyEvaluator(ns_labels, [], policies, "cilium")
    except EvaluatorInputError as exc:
        log.error("policies on the cluster cannot be evaluated (enforcing none): %s", exc)
        evaluator = None
    managed = frozenset((e["metadata"].get("namespace", ""), e["metadata"]["name"]) for e in endpoints)
    return EnforcedState(revision, evaluator, ns_labels, managed)


def judge_connection(state: EnforcedState, connection: DemoConnection) -> ConnectionVerdict:
    """Pure: per direction, what the enforcement point decides (unmanaged pods enforce nothing)."""
    if state.evaluator is None:
        return ConnectionVerdict()
    src = side_endpoint_of(connection.client.side, state.namespace_labels)
    dst = side_endpoint_of(connection.server.side, state.namespace_labels)
    conn = Connection(src, dst, connection.port, connection.protocol)
    egress = _enforcement(state.evaluator.decide(conn, "egress")) if _enforced(state, connection.client) \
        else Enforcement()
    ingress = _enforcement(state.evaluator.decide(conn, "ingress")) if _enforced(state, connection.server) \
        else Enforcement()
    return ConnectionVerdict(egress, ingress)


def _enforced(state: EnforcedState, peer: Peer) -> bool:
    """Pods without a CiliumEndpoint are not enforced; other sides have no endpoint policy to skip."""
    return not peer.pod or (peer.side.namespace, peer.pod) in state.managed


def _enforcement(decision: DirectionDecision) -> Enforcement:
    ref = decision.policy
    return Enforcement(decision.allowed, decision.drop_reason,
                       (ref.kind, ref.namespace, ref.name) if ref is not None else None)


class StandInJudge:
    """collectors.traffic.PolicyJudge over a kube API URL (the demo cluster's stand-in)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._seen_rv: str | None = None
        self._digest = ""
        self._state = EnforcedState(0, None, {}, frozenset())

    @property
    def revision(self) -> int:
        return self._state.revision

    def __call__(self, connection: DemoConnection) -> ConnectionVerdict:
        state = self._state  # one snapshot per call: refresh() swaps it whole
        verdict = state.verdicts.get(connection)
        if verdict is None:
            verdict = state.verdicts[connection] = judge_connection(state, connection)
        return verdict

    def _get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def refresh(self) -> bool:
        """Read the cluster again if it changed; True when the enforced state (and revision) moved.
        Raises OSError when the API cannot be reached (the last state stays in force)."""
        namespaces = self._get(_NAMESPACES)
        rv = namespaces["metadata"]["resourceVersion"]
        if rv == self._seen_rv:
            return False
        policies: list[dict[str, Any]] = []
        for path, api_version, kind in _POLICY_LISTS:
            for item in self._get(path)["items"]:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                for key in _SERVER_FIELDS:
                    item["metadata"].pop(key, None)
                item.pop("status", None)
                policies.append(item)
        endpoints = self._get(_ENDPOINTS)["items"]
        self._seen_rv = rv
        content = [
            [(n["metadata"]["name"], n["metadata"].get("labels")) for n in namespaces["items"]],
            policies,
            sorted((e["metadata"].get("namespace", ""), e["metadata"]["name"]) for e in endpoints),
        ]
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        self._state = enforced_state(int(rv), namespaces["items"], policies, endpoints)
        return True

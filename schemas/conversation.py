"""A conversation: one distinct connection key seen in a window of history, with its counts.

Reports, what-if, recommendations and "why" read history by conversation, never flow by flow, so they cost
the number of distinct connections, not the number of flows (query_api.conversations reads them from the
hourly `flow_conversations_1h` table in one GROUP BY). Replies are folded into their connection: the sides
are the client (source) and the server (destination), `port` is the server's port.

`desired` and `staged` are what the stream stored for the key under the cluster's desired and staged policy
sets when the flows were enriched (verdict 0: not evaluated). Callers that need the verdict of another set
(what-if) evaluate the conversation again: policy_engine.flow_keys rebuilds the evaluator's connection from
the same fields the stream used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

VERDICT_NAMES = {0: "", 1: "FORWARDED", 2: "DROPPED", 3: "ERROR", 4: "AUDIT", 5: "REDIRECTED", 6: "TRACED",
                 7: "TRANSLATED"}


@dataclass(frozen=True)
class Side:
    """One side of a conversation as Hubble identified it."""

    namespace: str = ""
    workload: str = ""  # name of the owning workload (the pod's name when Hubble gives none); "" for non-pods
    workload_kind: str = ""  # "Deployment", "StatefulSet", ...; "" when unknown
    labels: tuple[str, ...] = ()  # Cilium's "source:key=value" identity labels, as Hubble sends them
    identity: int = 0
    ip: str = ""  # only for sides that are not pods (world, CIDR, reserved); "" for pods
    reserved: str = ""  # "world", "host", "kube-apiserver", ... for reserved identities; "" for pods
    redacted: bool = False  # outside the caller's scope: only the namespace is shown

    cluster: str = ""  # the side's own cluster when Hubble reports one (cluster mesh); else the flow's

    def describe(self) -> str:
        if self.namespace:
            return f"{self.namespace}/{self.workload}" if self.workload else self.namespace
        return self.reserved or self.ip or "unknown"


@dataclass(frozen=True)
class SetDecision:
    """What a policy set decided for a conversation: overall and per direction, with attribution."""

    verdict: int = 0  # 0 not evaluated, 1 FORWARDED, 2 DROPPED
    drop_reason: int = 0  # 133 POLICY_DENIED (default deny), 181 POLICY_DENY (deny rule)
    egress_verdict: int = 0
    egress_policy: str = ""  # "Kind/namespace/name" of the rendered object; namespace empty if clusterwide
    egress_rule: str = ""  # "egress[0]", "egressDeny[1]", "default-deny", ...
    egress_version: int = 0  # netwarden policy version the object was rendered from
    ingress_verdict: int = 0
    ingress_policy: str = ""
    ingress_rule: str = ""
    ingress_version: int = 0
    revision: int = 0  # inventory revision of the set that decided


@dataclass(frozen=True)
class Conversation:
    cluster: str
    source: Side
    destination: Side
    port: int
    protocol: str  # "TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6", ...
    verdict: int  # Hubble's: 1 FORWARDED, 2 DROPPED, ...
    drop_reason: int  # Hubble's drop_reason_desc
    flows: int
    first_seen: datetime
    last_seen: datetime
    # Hubble's own attribution of its verdict: the policies that allowed / denied it ("Kind/namespace/name").
    hubble_allowed_by: tuple[str, ...] = ()
    hubble_denied_by: tuple[str, ...] = ()
    # Where Hubble observed it (1 INGRESS, 2 EGRESS, 0 unknown): the stored verdict of the desired set is
    # the decision at that point (egress alone at EGRESS), so one connection may have one row per point.
    traffic_direction: int = 0
    desired: SetDecision = field(default_factory=SetDecision)
    staged: SetDecision = field(default_factory=SetDecision)

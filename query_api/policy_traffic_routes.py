"""Policy meets traffic over HTTP: what-if of candidate documents and recommendations from history.

- `POST /api/v1/policies/what-if?since=7d&until=&cluster=&baseline=desired|observed`: the netwarden.io/v1
  documents in the body (YAML, multi-document, or JSON: one document or a list; `fromFile` rules refused),
  applied to a scratch copy of the control-plane store as the caller: a caller may only what-if documents it
  could write (403 naming the role otherwise, as `apply` would refuse them). Answers policy_engine.whatif's
  report: per affected cluster the observed conversations that would become denied and allowed.
  `baseline=observed` compares Hubble's verdicts with the resulting desired set instead of the current set
  (what `sync --check-history` asks: with no documents, "what would syncing the current set deny").
- `GET /api/v1/policies/recommendation?cluster=C&namespace=NS|workspace=W&since=7d&engine=auto`: least-privilege
  Policy and Assignment documents (policy_engine.recommend), every rule validated against the schemas.

Both read the window's history by conversation (query_api.conversations, one GROUP BY, scoped in SQL) and show
only conversations touching the caller's scope, peers outside it redacted as flows are. The gathering
functions (`what_if`, `recommendation`) are also what the CLI's local mode and `bench traffic` call.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from policy_engine.blueprints import cilium_enforces
from policy_engine.control_plane import ControlPlane, resolve_policy_set, validate_policy
from policy_engine.gitops import Document
from policy_engine.recommend import Form, Recommendation, recommend
from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import ControlPlaneStore, StoreError
from policy_engine.whatif import WhatIfReport, candidate_policy_sets, compare, current_policy_sets
from query_api.conversations import read_conversations, redact_conversation
from query_api.flow_query import parse_time_ns
from query_api.scope import ScopeFilter

DEFAULT_SINCE = "7d"
ENGINES = ("auto", "cilium", "kubernetes")
BASELINES = ("desired", "observed")


class TrafficParamError(ValueError):
    """A bad parameter: names it and the value (API 422, CLI exit 2)."""

    def __init__(self, parameter: str, value: Any, reason: str) -> None:
        self.parameter, self.value, self.reason = parameter, value, reason
        super().__init__(f"{parameter}: {reason}")


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime


def parse_window(since: str | None, until: str | None, now_ns: int | None = None) -> Window:
    """`since` (default 7d ago) and `until` (default now): RFC 3339 or a duration ago."""
    from query_api.flow_query import FilterValueError

    try:
        since_ns = parse_time_ns("since", since or DEFAULT_SINCE, now_ns)
        until_ns = parse_time_ns("until", until, now_ns) if until else None
    except FilterValueError as exc:
        raise TrafficParamError(exc.parameter, exc.value, exc.reason) from None
    if until_ns is None:
        import time

        until_ns = now_ns if now_ns is not None else time.time_ns()
    if until_ns <= since_ns:
        raise TrafficParamError("until", until, "must be after since")
    return Window(_dt(since_ns), _dt(until_ns))


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).replace(microsecond=(ns % 1_000_000_000) // 1000)


# -- gathering ----------------------------------------------------------------------------------------------


def what_if(
    flows_client: Any,
    store: ControlPlaneStore,
    principal: Principal,
    documents: Sequence[Document] | None,
    window: Window,
    *,
    clusters: Sequence[str] | None = None,
    baseline: str = "desired",
) -> WhatIfReport:
    """Apply `documents` to `store` in a rolled-back transaction as `principal` (GitOpsErrors / PermissionDenied
    when it may not write them) and compare the window's conversations under each affected cluster's set before
    and after. `documents=None` or `baseline="observed"`: Hubble's verdicts are the before. Pass a store no one
    else uses meanwhile (scratch_copy in a server)."""
    if baseline not in BASELINES:
        raise TrafficParamError("baseline", baseline, f"expected one of {', '.join(BASELINES)}")
    cp = ControlPlane(store, principal)
    before: dict[str, Any]
    if documents is None:
        after = current_policy_sets(cp, clusters)
        before = dict.fromkeys(after)
    else:
        sets = candidate_policy_sets(cp, documents, clusters)
        after = dict(sets.after)
        before = dict.fromkeys(after) if baseline == "observed" else dict(sets.before)
    if not after:
        return WhatIfReport(())
    scope = ScopeFilter.for_principal(principal, store.ownership())
    conversations = read_conversations(
        flows_client, since=window.since, until=window.until, clusters=sorted(after), scope=scope, redact=False
    )
    redact = None if scope.everything else (lambda c: redact_conversation(c, scope))
    return compare(conversations, before, after, redact=redact)


def recommend_scope(
    store: ControlPlaneStore,
    principal: Principal,
    cluster: str,
    namespace: str | None,
    workspace: str | None,
    namespaces: Sequence[str] | None = None,
) -> list[str]:
    """The namespaces of the request on `cluster` (a namespace, a workspace's, or a list), each visible to the
    principal (PermissionDenied otherwise)."""
    if [namespace, workspace, namespaces].count(None) != 2:
        raise TrafficParamError("namespace", namespace, "exactly one of namespace or workspace")
    if store.get_cluster(cluster) is None:
        raise TrafficParamError("cluster", cluster, f"unknown cluster {cluster!r}")
    if namespaces is not None:
        for ns in namespaces:
            recommend_scope(store, principal, cluster, ns, None)
        return sorted(set(namespaces))
    if workspace is not None:
        ws = store.get_workspace(workspace)
        if ws is None:
            raise TrafficParamError("workspace", workspace, f"unknown workspace {workspace!r}")
        namespaces = sorted(r.namespace for r in ws.namespaces if r.cluster == cluster)
        if not namespaces:
            raise TrafficParamError("workspace", workspace, f"workspace {workspace} has no namespace on {cluster}")
    else:
        assert namespace is not None
        if not namespace or "/" in namespace:
            raise TrafficParamError("namespace", namespace, f"invalid namespace {namespace!r}")
        namespaces = [namespace]
    scope = ScopeFilter.for_principal(principal, store.ownership())
    for ns in namespaces:
        if not scope.can_see_namespace(cluster, ns):
            raise PermissionDenied(
                f"recommending policies for {cluster}/{ns}",
                "a role whose scope includes the namespace (org, its project or its workspace)", principal,
            )
    return namespaces


def recommendation_form(store: ControlPlaneStore, cluster: str, engine: str) -> Form:
    """cilium or kubernetes: forced, or (auto) what enforces on the cluster under its blueprint."""
    if engine not in ENGINES:
        raise TrafficParamError("engine", engine, f"expected one of {', '.join(ENGINES)}")
    if engine != "auto":
        return "cilium" if engine == "cilium" else "kubernetes"
    return "cilium" if cilium_enforces(resolve_policy_set(store, cluster).engine) else "kubernetes"


def recommendation(
    flows_client: Any,
    store: ControlPlaneStore,
    principal: Principal,
    window: Window,
    *,
    cluster: str,
    namespace: str | None = None,
    workspace: str | None = None,
    namespaces: Sequence[str] | None = None,
    engine: str = "auto",
) -> Recommendation:
    """Least-privilege documents for the namespace, workspace or namespaces on `cluster` from the window's
    conversations, each rule validated against the real schemas (a failure is a bug: it raises PolicyInvalid)."""
    namespaces = recommend_scope(store, principal, cluster, namespace, workspace, namespaces)
    form = recommendation_form(store, cluster, engine)
    scope = ScopeFilter.for_principal(principal, store.ownership())
    conversations = read_conversations(
        flows_client, since=window.since, until=window.until, clusters=[cluster], scope=scope,
        places=[(cluster, ns) for ns in namespaces],
    )
    result = recommend(conversations, cluster, namespaces, form)
    for spec in result.policies:
        validate_policy(spec)
    return result


@contextmanager
def scratch_copy(store_path: str) -> Iterator[ControlPlaneStore]:
    """A private in-memory copy of the SQLite control-plane store at `store_path`: a what-if in a server
    never holds a transaction on the store every request authenticates against."""
    source = sqlite3.connect(store_path, timeout=30)
    copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        source.backup(copy)
    finally:
        source.close()
    copy.execute("PRAGMA foreign_keys = ON")
    store = ControlPlaneStore(copy)
    try:
        yield store
    finally:
        store.close()


__all__ = [
    "DEFAULT_SINCE",
    "StoreError",
    "TrafficParamError",
    "Window",
    "parse_window",
    "recommendation",
    "scratch_copy",
    "what_if",
]

"""Flow summary for a time window: verdicts over time, top talkers, drops, service-map edges.

Pure query building plus a thin runner over FlowStore. Every aggregate has the same WHERE clause as flow
history (query_api.flow_query.filter_conditions): with a ScopeFilter, only visible flows, and endpoint
keys read through the scope's redacted columns (ScopeFilter.column_sql), so an out-of-scope side shows up
as its cluster and namespace only (its workload is gone; a reserved identity such as `reserved:world`
stays).

An endpoint of a talker pair or edge is (cluster, namespace, workload): the endpoint's cluster (its own
cluster_name when Hubble reports one, else the flow's), and as workload the first workload name, else
its first `reserved:` label, else its pod name, else "".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from query_api.flow_query import (
    FilterValueError,
    FlowFilter,
    filter_conditions,
    flow_source,
    parse_duration_ns,
    parse_time_ns,
)
from schemas.flow_record import L4_PROTOCOLS
from schemas.hubble.flow import flow_pb2

if TYPE_CHECKING:
    from query_api.scope import ScopeFilter
    from query_api.store import FlowStore

DEFAULT_WINDOW_NS = 3600 * 1_000_000_000  # without since: the hour before until
MAX_BUCKETS = 1000
TARGET_BUCKETS = 60
DEFAULT_TOP = 10
MAX_TOP = 1000
DEFAULT_EDGES = 1000
MAX_EDGES = 10_000
DROPPED = flow_pb2.Verdict.DROPPED
_NICE_BUCKETS_S = (1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400)
_S = 1_000_000_000


def _column(name: str) -> str:
    return name


def endpoint_sql(side: str, col: Callable[[str], str] = _column) -> tuple[str, str, str]:
    """(cluster, namespace, workload) expressions of an endpoint; `col` gives a column as the scope sees it."""
    labels, workloads, pod = col(f"{side}_labels"), col(f"{side}_workload_names"), col(f"{side}_pod")
    reserved = f"arrayFilter(l -> startsWith(l, 'reserved:'), {labels})"
    return (
        f"if({side}_cluster_name != '', {side}_cluster_name, cluster)",
        f"{side}_namespace",
        f"if(notEmpty({workloads}), {workloads}[1], if(notEmpty({reserved}), {reserved}[1], {pod}))",
    )


def endpoint_key(row: dict[str, Any], side: str) -> tuple[str, str, str]:
    """Python twin of endpoint_sql."""
    workloads = row.get(f"{side}_workload_names") or []
    reserved = [lb for lb in row.get(f"{side}_labels") or () if lb.startswith("reserved:")]
    workload = workloads[0] if workloads else reserved[0] if reserved else row.get(f"{side}_pod") or ""
    return (
        row.get(f"{side}_cluster_name") or row.get("cluster") or "",
        row.get(f"{side}_namespace") or "",
        workload,
    )


@dataclass(frozen=True)
class SummaryWindow:
    since_ns: int
    until_ns: int
    bucket_ns: int


def parse_window(
    since: str | None, until: str | None, bucket: str | None, now_ns: int | None = None
) -> SummaryWindow:
    now = time.time_ns() if now_ns is None else now_ns
    until_ns = parse_time_ns("until", until, now) if until is not None else now
    since_ns = parse_time_ns("since", since, now) if since is not None else until_ns - DEFAULT_WINDOW_NS
    if since_ns > until_ns:
        raise FilterValueError("since", since, "since is after until")
    span = until_ns - since_ns
    if bucket is None:
        wanted = max(1, -(-span // (TARGET_BUCKETS * _S)))
        seconds = next((b for b in _NICE_BUCKETS_S if b >= wanted), -(-wanted // 86_400) * 86_400)
        bucket_ns = seconds * _S
    else:
        bucket_ns = parse_duration_ns("bucket", bucket)
        if bucket_ns < _S:
            raise FilterValueError("bucket", bucket, "bucket must be at least 1s")
    if span // bucket_ns + 1 > MAX_BUCKETS:
        raise FilterValueError(
            "bucket", bucket, f"more than {MAX_BUCKETS} buckets in the window; use a larger bucket"
        )
    return SummaryWindow(since_ns, until_ns, bucket_ns)


def _bucket_start(ns: int, bucket_ns: int) -> int:
    return ns // bucket_ns * bucket_ns


def rfc3339(ns: int) -> str:
    seconds, nanos = divmod(ns, _S)
    text = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{nanos:09d}Z" if nanos else "Z")


def _enum_name(enum: Any, number: int) -> str:
    value = enum.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else str(number)


def build_summary_queries(
    flt: FlowFilter, window: SummaryWindow, scope: ScopeFilter | None, top: int, now_ns: int | None = None
) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (SQL, parameters) of each aggregate. The window replaces the filter's since/until."""
    flt = dataclasses.replace(flt, since=None, until=None, cursor=None, last=None)
    where, params = filter_conditions(flt, now_ns, scope)
    source = flow_source(scope)
    col = (lambda name: scope.column_sql(name, aliased=True)) if scope is not None else _column
    with_clause = (scope.with_clause() + "\n") if scope is not None and scope.with_clause() else ""
    where.append("time >= fromUnixTimestamp64Nano({since_ns:Int64}, 'UTC')")
    where.append("time <= fromUnixTimestamp64Nano({until_ns:Int64}, 'UTC')")
    params.update(since_ns=window.since_ns, until_ns=window.until_ns, bucket_ns=window.bucket_ns, top=top)
    cond = " AND ".join(where)
    sc, sn, sw = endpoint_sql("src", col)
    dc, dn, dw = endpoint_sql("dst", col)
    pair = f"{sc} AS sc, {sn} AS sn, {sw} AS sw, {dc} AS dc, {dn} AS dn, {dw} AS dw"
    denied = (
        "arrayDistinct(arrayMap(p -> (tupleElement(p, 'kind'), tupleElement(p, 'namespace'), "
        "tupleElement(p, 'name')), arrayConcat(ingress_denied_by, egress_denied_by)))"
    )
    base = f"FROM {source}\nWHERE {cond}"
    queries = {
        "buckets": (
            f"SELECT intDiv(toUnixTimestamp64Nano(time), {{bucket_ns:Int64}}) AS b, verdict, count() AS n\n{base}\n"
            "GROUP BY b, verdict",
            params,
        ),
        "talkers": (
            f"SELECT {pair}, count() AS n\n{base}\nGROUP BY sc, sn, sw, dc, dn, dw\n"
            "ORDER BY n DESC, sc, sn, sw, dc, dn, dw\nLIMIT {top:UInt32}",
            params,
        ),
        "drop_reasons": (
            f"SELECT drop_reason_desc AS reason, count() AS n\n{base} AND verdict = {int(DROPPED)}\n"
            "GROUP BY reason ORDER BY n DESC, reason",
            params,
        ),
        "drop_policies": (
            f"SELECT tupleElement(p, 1) AS kind, tupleElement(p, 2) AS namespace, tupleElement(p, 3) AS name, "
            f"count() AS n\nFROM {source}\nARRAY JOIN {denied} AS p\nWHERE {cond} AND verdict = {int(DROPPED)}\n"
            "GROUP BY kind, namespace, name ORDER BY n DESC, kind, namespace, name",
            params,
        ),
        "edges": (
            f"SELECT {pair}, dst_port AS port, l4_protocol AS proto, verdict, count() AS n\n{base}\n"
            "GROUP BY sc, sn, sw, dc, dn, dw, port, proto, verdict",
            params,
        ),
    }
    return {name: (with_clause + sql, p) for name, (sql, p) in queries.items()}


def _endpoint(c: str, n: str, w: str) -> dict[str, str]:
    return {"cluster": c, "namespace": n, "workload": w}


def summarize(
    store: FlowStore,
    flt: FlowFilter,
    window: SummaryWindow,
    scope: ScopeFilter | None,
    top: int = DEFAULT_TOP,
    max_edges: int = DEFAULT_EDGES,
) -> dict[str, Any]:
    """The summary document (query_api.app.FlowSummary)."""
    queries = build_summary_queries(flt, window, scope, top)
    rows = {name: store.run(sql, params) for name, (sql, params) in queries.items()}

    first = _bucket_start(window.since_ns, window.bucket_ns)
    last = _bucket_start(window.until_ns, window.bucket_ns)
    per_bucket: dict[int, dict[str, int]] = {
        start: {} for start in range(first, last + window.bucket_ns, window.bucket_ns)
    }
    total = 0
    for r in rows["buckets"]:
        start = int(r["b"]) * window.bucket_ns
        verdicts = per_bucket.setdefault(start, {})
        name = _enum_name(flow_pb2.Verdict, int(r["verdict"]))
        verdicts[name] = verdicts.get(name, 0) + int(r["n"])
        total += int(r["n"])

    edges: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows["edges"]:
        proto = int(r["proto"])
        key = (r["sc"], r["sn"], r["sw"], r["dc"], r["dn"], r["dw"], int(r["port"]), proto)
        edge = edges.get(key)
        if edge is None:
            edge = edges[key] = {
                "source": _endpoint(r["sc"], r["sn"], r["sw"]),
                "destination": _endpoint(r["dc"], r["dn"], r["dw"]),
                "port": int(r["port"]),
                "protocol": L4_PROTOCOLS.get(proto, str(proto) if proto else ""),
                "flows": 0,
                "verdicts": {},
            }
        name = _enum_name(flow_pb2.Verdict, int(r["verdict"]))
        edge["verdicts"][name] = edge["verdicts"].get(name, 0) + int(r["n"])
        edge["flows"] += int(r["n"])
    # Biggest edges first; the key breaks ties so the order (and the cut at max_edges) is stable.
    ordered = [edges[k] for k in sorted(edges, key=lambda k: (-edges[k]["flows"], k))]

    return {
        "since": rfc3339(window.since_ns),
        "until": rfc3339(window.until_ns),
        "bucket_seconds": window.bucket_ns / _S,
        "total": total,
        "buckets": [{"start": rfc3339(start), "verdicts": v} for start, v in sorted(per_bucket.items())],
        "top_talkers": [
            {
                "source": _endpoint(r["sc"], r["sn"], r["sw"]),
                "destination": _endpoint(r["dc"], r["dn"], r["dw"]),
                "flows": int(r["n"]),
            }
            for r in rows["talkers"]
        ],
        "drops_by_reason": [
            {"reason": _enum_name(flow_pb2.DropReason, int(r["reason"])), "flows": int(r["n"])}
            for r in rows["drop_reasons"]
        ],
        "drops_by_policy": [
            {"kind": r["kind"], "namespace": r["namespace"], "name": r["name"], "flows": int(r["n"])}
            for r in rows["drop_policies"]
        ],
        "edges": ordered[:max_edges],
        "edges_truncated": len(ordered) > max_edges,
    }

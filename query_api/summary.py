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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from query_api.flow_query import (
    FilterValueError,
    FlowFilter,
    cluster_verdict_conditions,
    filter_conditions,
    flow_source,
    parse_duration_ns,
    parse_time_ns,
)
from schemas.clickhouse import (
    EDGES_1M,
    HOURLY_SUFFIX,
    MISMATCHES_1M,
    POLICY_DROPS_1M,
    TALKERS_1M,
    VERDICTS_1M,
)
from schemas.flow_record import L4_PROTOCOLS
from schemas.flow_render import enum_name
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
# Service-map edges and mismatches count requests: a reply's destination port is the client's ephemeral one.
REQUESTS = "NOT ifNull(is_reply, false)"
MISMATCH_NAMES = (
    "desired_verdict",
    "desired_drop_reason",
    "desired_egress_policy",
    "desired_egress_rule",
    "desired_ingress_policy",
    "desired_ingress_rule",
)
MISMATCH_COLUMNS = ", ".join(MISMATCH_NAMES)


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


# Every aggregate comes back from one UNION ALL query (one parse and plan instead of a dozen: on chDB the
# fixed cost of a query is the larger part of a summary). A branch returns its kind, its string keys as one
# array and its integer keys as another (few output expressions: planning grows with them), and a count.
STRING_KEYS = frozenset(
    {"sc", "sn", "sw", "dc", "dn", "dw", "kind_", "namespace_", "name_"}
    | {m for m in MISMATCH_NAMES if m.endswith(("_policy", "_rule"))}
)


def _branch(kind: str, values: Mapping[str, str], count: str, source: str, where: str) -> str:
    """One aggregate as a UNION ALL branch, grouped by its keys (_KEYS[kind], expressions in `values`).
    Output names carry a `u_` prefix: ClickHouse lets an alias shadow a column in WHERE."""
    keys = _KEYS[kind]
    strings = ", ".join(values[k] for k in keys if k in STRING_KEYS)
    ints = ", ".join(f"toInt64({values[k]})" for k in keys if k not in STRING_KEYS)
    return (
        f"SELECT '{kind}' AS u_kind, arrayMap(x -> toString(x), [{strings}]) AS u_s, "
        f"CAST([{ints}], 'Array(Int64)') AS u_i, toUInt64({count}) AS u_n\nFROM {source}\nWHERE {where}\n"
        "GROUP BY u_s, u_i"
    )


def _pair_values(sc: str, sn: str, sw: str, dc: str, dn: str, dw: str) -> dict[str, str]:
    return {"sc": sc, "sn": sn, "sw": sw, "dc": dc, "dn": dn, "dw": dw}


def _flow_branches(
    flt: FlowFilter,
    window: SummaryWindow,
    scope: ScopeFilter | None,
    now_ns: int | None,
    extra_where: Sequence[tuple[str, Mapping[str, Any]]],
    ranges: Sequence[tuple[int, int]] | None,
) -> tuple[list[str], dict[str, Any]]:
    """The aggregates over `flows` for the window (or only its `ranges`, inclusive ns pairs: the partial
    minutes a rollup cannot answer), with the filter's conditions and the scope's (aliased: the query
    starts with scope.with_clause())."""
    flt = dataclasses.replace(flt, since=None, until=None, cursor=None, last=None)
    where, params = filter_conditions(flt, now_ns, scope)
    col = (lambda name: scope.column_sql(name, aliased=True)) if scope is not None else _column
    where.append("time >= fromUnixTimestamp64Nano({since_ns:Int64}, 'UTC')")
    where.append("time <= fromUnixTimestamp64Nano({until_ns:Int64}, 'UTC')")
    params.update(since_ns=window.since_ns, until_ns=window.until_ns, bucket_ns=window.bucket_ns)
    if ranges is not None:
        spans = []
        for i, (lo, hi) in enumerate(ranges):
            spans.append(
                f"time BETWEEN fromUnixTimestamp64Nano({{range_lo_{i}:Int64}}, 'UTC') "
                f"AND fromUnixTimestamp64Nano({{range_hi_{i}:Int64}}, 'UTC')"
            )
            params[f"range_lo_{i}"], params[f"range_hi_{i}"] = lo, hi
        where.append("(" + (" OR ".join(spans) or "0") + ")")
    for fragment, extra in extra_where:
        params.update(extra)
        where.append(f"({fragment})")
    cond = " AND ".join(where)
    source = flow_source(scope)
    pair = _pair_values(*endpoint_sql("src", col), *endpoint_sql("dst", col))
    denied = (
        "arrayDistinct(arrayMap(p -> (tupleElement(p, 'kind'), tupleElement(p, 'namespace'), "
        "tupleElement(p, 'name')), arrayConcat(ingress_denied_by, egress_denied_by)))"
    )
    edge = {**pair, "port": "dst_port", "proto": "l4_protocol", "verdict": "verdict"}
    mismatch = {**edge, **{m: m for m in MISMATCH_NAMES}}
    branches = [
        # Verdicts per bucket and drops per reason from one read (split in summarize()).
        _branch(
            "verdicts",
            {
                "b": "intDiv(toUnixTimestamp64Nano(time), {bucket_ns:Int64})",
                "verdict": "verdict",
                "reason": "drop_reason_desc",
            },
            "count()",
            source,
            cond,
        ),
        _branch("talkers", pair, "count()", source, cond),
        _branch(
            "drop_policies",
            {
                "kind_": "tupleElement(p, 1)",
                "namespace_": "tupleElement(p, 2)",
                "name_": "tupleElement(p, 3)",
            },
            "count()",
            f"{source}\nARRAY JOIN {denied} AS p",
            f"{cond} AND verdict = {int(DROPPED)}",
        ),
        _branch("edges", edge, "count()", source, f"{cond} AND {REQUESTS}"),
        _branch("mismatches", mismatch, "count()", source, f"{cond} AND verdict_mismatch AND {REQUESTS}"),
    ]
    return branches, params


# ---- rollups -------------------------------------------------------------------------------------------

# FlowFilter fields the rollups keep (every other filter reads flows); the window must hold whole minutes.
ROLLUP_FILTERS = frozenset({"cluster", "namespace", "verdict", "since", "until", "last", "cursor"})
MINUTE_NS = 60 * _S
HOUR_NS = 3600 * _S
LONG_WINDOW_NS = 3600 * _S


def minute_window(window: SummaryWindow) -> SummaryWindow:
    """Windows of an hour or more with whole-minute buckets are answered at minute resolution: since
    down to its minute, until up to the end of its minute (the document states the window used). The
    rollups then answer all of it; flows would otherwise be read for the partial minutes at both ends,
    which costs a key range of the sort key's 10-minute buckets each."""
    if window.until_ns - window.since_ns < LONG_WINDOW_NS or window.bucket_ns % MINUTE_NS:
        return window
    since = window.since_ns // MINUTE_NS * MINUTE_NS
    until = window.until_ns // MINUTE_NS * MINUTE_NS + MINUTE_NS - 1
    return SummaryWindow(since, until, window.bucket_ns)


def rollup_span(flt: FlowFilter, window: SummaryWindow) -> tuple[int, int] | None:
    """[first, end) of the whole minutes the rollups answer for this summary (ns), or None when they
    cannot: a filter they do not keep, buckets that are not whole minutes, or no whole minute inside."""
    for f in dataclasses.fields(flt):
        if f.name not in ROLLUP_FILTERS and getattr(flt, f.name) not in (None, ()):
            return None
    if window.bucket_ns % MINUTE_NS:
        return None
    first = -(-window.since_ns // MINUTE_NS) * MINUTE_NS
    end = (window.until_ns + 1) // MINUTE_NS * MINUTE_NS
    return (first, end) if first < end else None


def _rollup_branches(
    flt: FlowFilter,
    window: SummaryWindow,
    scope: ScopeFilter | None,
    span: tuple[int, int],
    visible_places: Iterable[tuple[str, str]],
) -> tuple[list[str], dict[str, Any]]:
    """The aggregates over the rollup tables for the whole minutes in `span`: the filter (cluster,
    namespace, verdict) and the scope as plain column conditions; a side outside the scope shows its
    reserved label as workload, like the redacted flow would."""
    where, params = cluster_verdict_conditions(flt)
    params.update(r_first=span[0] // _S, r_end=span[1] // _S, bucket_s=window.bucket_ns // _S)
    if flt.namespace is not None:
        if not flt.namespace or "/" in flt.namespace:
            raise FilterValueError("namespace", flt.namespace, f"invalid namespace {flt.namespace!r}")
        where.append("(src_namespace = {ns:String} OR dst_namespace = {ns:String})")
        params["ns"] = flt.namespace
    inside = {"src": "1", "dst": "1"}
    if scope is not None and not scope.everything:
        # Rollup rows store each side's place: one set lookup per side against the scope's places as the
        # catalog knows them (every place a rollup row has is in the catalog, kept at least as long).
        inside = {
            side: f"({side}_cluster, {side}_namespace) IN {{visible_places:Array(Tuple(String, String))}}"
            for side in ("src", "dst")
        }
        where.append(f"({inside['src']} OR {inside['dst']})")
        params["visible_places"] = sorted(visible_places)
    # Whole hours inside the span come from the hour tables, the minutes around them from the minute
    # tables; verdict buckets need the hour tables' resolution to be a whole number of buckets.
    hours = (-(-span[0] // HOUR_NS) * HOUR_NS, span[1] // HOUR_NS * HOUR_NS)
    whole = "minute >= toDateTime({r_first:Int64}) AND minute < toDateTime({r_end:Int64})"
    parts: list[tuple[str, str, frozenset[str]]] = []  # (table suffix, time condition, kinds)
    kinds = frozenset({"verdicts", "talkers", "drop_policies", "edges", "mismatches"})
    if hours[0] < hours[1]:
        params.update(h_first=hours[0] // _S, h_end=hours[1] // _S)
        in_hours = "minute >= toDateTime({h_first:Int64}) AND minute < toDateTime({h_end:Int64})"
        outside = (
            "(minute >= toDateTime({r_first:Int64}) AND minute < toDateTime({r_end:Int64}) AND NOT ("
            + in_hours
            + "))"
        )
        hourly_kinds = kinds if window.bucket_ns % HOUR_NS == 0 else kinds - {"verdicts"}
        parts.append((HOURLY_SUFFIX, in_hours, hourly_kinds))
        parts.append(("", outside, hourly_kinds))
        if "verdicts" not in hourly_kinds:
            parts.append(("", whole, frozenset({"verdicts"})))
    else:
        parts.append(("", whole, kinds))

    def workload(side: str) -> str:
        if inside[side] == "1":
            return f"{side}_workload"
        return f"if({inside[side]}, {side}_workload, {side}_reserved)"

    pair = _pair_values(
        "src_cluster", "src_namespace", workload("src"), "dst_cluster", "dst_namespace", workload("dst")
    )
    edge = {**pair, "port": "dst_port", "proto": "l4_protocol", "verdict": "verdict"}
    sources: dict[str, tuple[str, dict[str, str]]] = {
        # Verdicts per bucket and drops per reason from one read (split in summarize()).
        "verdicts": (
            VERDICTS_1M,
            {
                "b": "intDiv(toUnixTimestamp(minute), {bucket_s:Int64})",
                "verdict": "verdict",
                "reason": "drop_reason_desc",
            },
        ),
        "talkers": (TALKERS_1M, pair),
        "drop_policies": (
            POLICY_DROPS_1M,
            {"kind_": "policy_kind", "namespace_": "policy_namespace", "name_": "policy_name"},
        ),
        "edges": (EDGES_1M, edge),
        "mismatches": (MISMATCHES_1M, {**edge, **{m: m for m in MISMATCH_NAMES}}),
    }
    branches = []
    for suffix, time_cond, part_kinds in parts:
        cond = " AND ".join([time_cond, *where])
        for kind, (table, values) in sources.items():
            if kind in part_kinds:
                branches.append(_branch(kind, values, "sum(flows)", table + suffix, cond))
    return branches, params


def build_summary_query(
    flt: FlowFilter,
    window: SummaryWindow,
    scope: ScopeFilter | None,
    now_ns: int | None = None,
    extra_where: Sequence[tuple[str, Mapping[str, Any]]] = (),
    use_rollups: bool = True,
    visible_places: Iterable[tuple[str, str]] = (),
) -> tuple[str, dict[str, Any], tuple[int, int] | None]:
    """The one query of a summary (rows of UNIFIED, tagged by `kind`), its parameters, and the whole
    minutes read from rollups (None: all from flows). `extra_where`: the scope's key prefilter."""
    span = rollup_span(flt, window) if use_rollups else None
    ranges: list[tuple[int, int]] = []
    if span is None:
        branches, params = _flow_branches(flt, window, scope, now_ns, extra_where, None)
    else:
        branches, params = _rollup_branches(flt, window, scope, span, visible_places)
        ranges = [r for r in ((window.since_ns, span[0] - 1), (span[1], window.until_ns)) if r[0] <= r[1]]
        if ranges:
            more, flow_params = _flow_branches(flt, window, scope, now_ns, extra_where, ranges)
            branches += more
            params.update(flow_params)
    # The scope's WITH aliases serve the flows branches only (planning them costs even when unused).
    reads_flows = span is None or bool(ranges)
    with_clause = (
        (scope.with_clause() + "\n") if reads_flows and scope is not None and scope.with_clause() else ""
    )
    sql = with_clause + "SELECT * FROM (\n" + "\nUNION ALL\n".join(branches) + "\n)"
    return sql, params, span


def _endpoint(c: str, n: str, w: str) -> dict[str, str]:
    return {"cluster": c, "namespace": n, "workload": w}


def _enum_label(enum: Any, number: int) -> str:
    return enum_name(enum, number) if number else ""


def _mismatch_doc(key: tuple[Any, ...], n: int) -> dict[str, Any]:
    sc, sn, sw, dc, dn, dw, port, proto, verdict, desired, reason, e_pol, e_rule, i_pol, i_rule = key
    return {
        "source": _endpoint(sc, sn, sw),
        "destination": _endpoint(dc, dn, dw),
        "port": port,
        "protocol": L4_PROTOCOLS.get(proto, str(proto) if proto else ""),
        "verdict": enum_name(flow_pb2.Verdict, verdict),
        "desired_verdict": enum_name(flow_pb2.Verdict, desired),
        "desired_drop_reason": _enum_label(flow_pb2.DropReason, reason),
        "egress_policy": e_pol,
        "egress_rule": e_rule,
        "ingress_policy": i_pol,
        "ingress_rule": i_rule,
        "flows": n,
    }


_PAIR = ("sc", "sn", "sw", "dc", "dn", "dw")
_KEYS: dict[str, tuple[str, ...]] = {
    "verdicts": ("b", "verdict", "reason"),
    "buckets": ("b", "verdict"),
    "talkers": _PAIR,
    "drop_reasons": ("reason",),
    "drop_policies": ("kind_", "namespace_", "name_"),
    "edges": (*_PAIR, "port", "proto", "verdict"),
    "mismatches": (*_PAIR, "port", "proto", "verdict", *MISMATCH_NAMES),
}


def _merge_counts(name: str, row_sets: Sequence[list[dict[str, Any]]]) -> dict[tuple[Any, ...], int]:
    """Rows of one aggregate from several sources (rollup minutes, partial minutes) summed per key."""
    out: dict[tuple[Any, ...], int] = {}
    for rows in row_sets:
        for r in rows:
            key = tuple(r[k] for k in _KEYS[name])
            out[key] = out.get(key, 0) + int(r["n"])
    return out


def summarize(
    store: FlowStore,
    flt: FlowFilter,
    window: SummaryWindow,
    scope: ScopeFilter | None,
    top: int = DEFAULT_TOP,
    max_edges: int = DEFAULT_EDGES,
    use_rollups: bool = True,
) -> dict[str, Any]:
    """The summary document (query_api.app.FlowSummary). `use_rollups=False` reads flows only (tests
    compare both ways). Whole minutes come from the rollups when the
    filter allows it (rollup_span), the rest of the window from flows; both read through the scope."""
    extra: list[tuple[str, Mapping[str, Any]]] = []
    visible: set[tuple[str, str]] = set()
    if scope is not None and not scope.everything:
        places = [
            (c.cluster, c.namespace_cluster, c.namespace)
            for c in store.catalog()
            if scope.can_see_namespace(c.namespace_cluster, c.namespace)
        ]
        extra.append(scope.prefilter(places))
        visible = {(cluster, namespace) for _, cluster, namespace in places}
    if rollup_span(flt, window) is not None:
        window = minute_window(window)
    sql, params, span = build_summary_query(
        flt, window, scope, extra_where=extra, use_rollups=use_rollups, visible_places=visible
    )
    sources: dict[str, list[list[dict[str, Any]]]] = {name: [[]] for name in _KEYS}
    for row in store.run(sql, params):
        keys = _KEYS[row["u_kind"]]
        strings, ints = iter(row["u_s"]), iter(row["u_i"])
        decoded = {k: (next(strings) if k in STRING_KEYS else next(ints)) for k in keys}
        decoded["n"] = row["u_n"]
        sources[row["u_kind"]][0].append(decoded)
    for r in sources.pop("verdicts")[0]:
        sources["buckets"][0].append(r)
        if int(r["verdict"]) == DROPPED:
            sources["drop_reasons"][0].append(r)
    counts = {name: _merge_counts(name, rows) for name, rows in sources.items()}

    first = _bucket_start(window.since_ns, window.bucket_ns)
    last = _bucket_start(window.until_ns, window.bucket_ns)
    per_bucket: dict[int, dict[str, int]] = {
        start: {} for start in range(first, last + window.bucket_ns, window.bucket_ns)
    }
    total = 0
    for (b, verdict), n in counts["buckets"].items():
        verdicts = per_bucket.setdefault(int(b) * window.bucket_ns, {})
        name = enum_name(flow_pb2.Verdict, int(verdict))
        verdicts[name] = verdicts.get(name, 0) + n
        total += n
    for start in per_bucket:  # verdict names in a stable order
        per_bucket[start] = dict(sorted(per_bucket[start].items()))

    edges: dict[tuple[Any, ...], dict[str, Any]] = {}
    for (sc, sn, sw, dc, dn, dw, port, proto, verdict), n in counts["edges"].items():
        key = (sc, sn, sw, dc, dn, dw, int(port), int(proto))
        edge = edges.get(key)
        if edge is None:
            edge = edges[key] = {
                "source": _endpoint(sc, sn, sw),
                "destination": _endpoint(dc, dn, dw),
                "port": int(port),
                "protocol": L4_PROTOCOLS.get(int(proto), str(proto) if proto else ""),
                "flows": 0,
                "verdicts": {},
            }
        name = enum_name(flow_pb2.Verdict, int(verdict))
        edge["verdicts"][name] = edge["verdicts"].get(name, 0) + n
        edge["flows"] += n
    # Biggest first; the key breaks ties so the order (and the cut at max_edges) is stable.
    ordered = [edges[k] for k in sorted(edges, key=lambda k: (-edges[k]["flows"], k))]
    talkers = sorted(counts["talkers"].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    reasons = sorted(counts["drop_reasons"].items(), key=lambda kv: (-kv[1], kv[0]))
    policies = sorted(counts["drop_policies"].items(), key=lambda kv: (-kv[1], kv[0]))
    mismatches = sorted(counts["mismatches"].items(), key=lambda kv: (-kv[1], kv[0]))

    return {
        "since": rfc3339(window.since_ns),
        "until": rfc3339(window.until_ns),
        "bucket_seconds": window.bucket_ns / _S,
        "total": total,
        "buckets": [{"start": rfc3339(start), "verdicts": v} for start, v in sorted(per_bucket.items())],
        "top_talkers": [
            {"source": _endpoint(*k[:3]), "destination": _endpoint(*k[3:]), "flows": n} for k, n in talkers
        ],
        "drops_by_reason": [
            {"reason": enum_name(flow_pb2.DropReason, int(k[0])), "flows": n} for k, n in reasons
        ],
        "drops_by_policy": [{"kind": k[0], "namespace": k[1], "name": k[2], "flows": n} for k, n in policies],
        "edges": ordered[:max_edges],
        "edges_truncated": len(ordered) > max_edges,
        "verdict_mismatches": [_mismatch_doc(k, n) for k, n in mismatches[:max_edges]],
        "rollup_minutes": 0 if span is None else (span[1] - span[0]) // MINUTE_NS,
    }

"""Flow history filters -> ClickHouse SQL with bound parameters. Pure: no I/O.

Filters mean what they mean to `hubble observe`:

- `namespace`, `pod` and `port` are either-side filters, combined the way hubble combines them: one
  condition for the source side and one for the destination side, ORed, i.e.
  `(src matches all side filters) OR (dst matches all side filters)`. So `--pod a --port 80` is
  "a sends from port 80 or a receives on port 80", exactly like hubble.
- `pod` is `[namespace/]prefix`: a pod-name prefix in that namespace; without a namespace, `--namespace`
  supplies it, else "default" (cilium's ParseNamespaceName). `ns/` alone matches the whole namespace.
- `verdict` by name (FORWARDED, DROPPED, ...), `protocol` by name (tcp, udp, sctp, icmp = ICMPv4 or ICMPv6,
  icmpv4, icmpv6), both case-insensitive; `port` matches TCP/UDP/SCTP ports only, as in hubble.
- `since` / `until`: RFC 3339 (nanoseconds kept) or relative to now (`30s`, `5m`, `2h`, `1d`, `1w`, `1h30m`),
  both inclusive like Hubble's.
- `cluster` (netwarden's own: which collector's cluster stored the flow) matches exactly.
- Also either-side, combined per side with namespace/pod/port: `labels` (any of them: hubble ORs repeated
  `--label`; `k=v` matches a stored `source:k=v` of any source, a full `reserved:world` matches exactly), `workload`
  (`[kind/]name`, kind case-insensitive) and `ip` (an address or a CIDR).
- `drop_reason` (DropReason name or number, matched against drop_reason_desc), `direction` (INGRESS,
  EGRESS), `l7_type` (REQUEST, RESPONSE, SAMPLE), all case-insensitive.
- `cursor`: an opaque keyset token (encode_cursor) meaning "strictly older than this flow" in the
  (time DESC, uuid DESC, cluster DESC) order, for stable pagination while new flows arrive.
- With a `ScopeFilter`, the scope's condition is part of the WHERE clause and endpoint filters see
  redacted values only (filter_conditions); rows are redacted with the scope's Python twin after fetching.

Values are parsed by query_api.filter_values (re-exported here). Every user value is a bound parameter
(`{name:Type}`, bound by the server), never SQL text. Scope filters
(issue 3) are ANDed in through `extra_where` as (SQL fragment, parameters) pairs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from query_api.filter_values import (
    DEFAULT_NAMESPACE,
    L7_PROTOCOLS,
    PORT_PROTOCOLS,
    PROTOCOLS,
    FilterValueError,
    decode_cursor,
    encode_cursor,
    is_relative_time,
    label_matches,
    parse_direction,
    parse_drop_reason,
    parse_duration_ns,
    parse_ip,
    parse_l7_type,
    parse_label,
    parse_last,
    parse_pod,
    parse_port,
    parse_protocol,
    parse_time_ns,
    parse_verdict,
    parse_workload,
)
from schemas.clickhouse import FINAL_SETTINGS, FLOWS_TABLE
from schemas.flow_record import RECORD_COLUMNS

if TYPE_CHECKING:
    from query_api.scope import ScopeFilter

DEFAULT_LAST = 20

# The row shape schemas.flow_render expects: every record column, but the time as integer nanoseconds
# (Python datetimes stop at microseconds).
SELECT_COLUMNS: list[str] = ["toUnixTimestamp64Nano(time) AS time_ns"] + [
    f"`{c.name}`" for c in RECORD_COLUMNS if c.name != "time"
]

# Enough to identify a stored flow and to page on it; the namespaces let the row fetch use the sort key.
KEY_COLUMNS: list[str] = [
    "toUnixTimestamp64Nano(time) AS time_ns",
    "`uuid`",
    "`cluster`",
    "`src_namespace`",
    "`dst_namespace`",
]

@dataclass(frozen=True)
class FlowFilter:
    """A history query. `last` = newest N flows (None = all)."""

    cluster: str | None = None
    namespace: str | None = None
    pod: str | None = None
    verdict: str | None = None
    protocol: str | None = None
    port: int | str | None = None
    since: str | None = None
    until: str | None = None
    last: int | None = DEFAULT_LAST
    labels: tuple[str, ...] = ()
    workload: str | None = None
    ip: str | None = None
    drop_reason: str | None = None
    direction: str | None = None
    l7_type: str | None = None
    cursor: str | None = None


@dataclass(frozen=True)
class _SideFilter:
    ns: str | None = None
    pod_prefix: str | None = None
    port: int | None = None
    labels: tuple[str, ...] = ()
    workload: tuple[str, str] | None = None
    ip: tuple[ipaddress.IPv6Address, ipaddress.IPv6Address] | None = None

    @property
    def active(self) -> bool:
        return any(
            x not in (None, ()) for x in (self.ns, self.port, self.workload, self.ip, self.labels)
        ) or bool(self.pod_prefix)


def _column(name: str) -> str:
    return name


def _side_condition(side: str, f: _SideFilter, col: Callable[[str], str] = _column) -> str:
    """All side filters of one endpoint (side = 'src' or 'dst'); parameter names are shared by both sides.
    `col` maps a column name to the SQL to read it through (a scope's redacted view of it)."""
    parts = []
    if f.ns is not None:
        parts.append(f"{side}_namespace = {{ns:String}}")
    if f.pod_prefix:
        parts.append(f"startsWith({col(side + '_pod')}, {{pod_prefix:String}})")
    if f.port is not None:
        parts.append(
            f"{side}_port = {{port:UInt16}} AND l4_protocol IN ({', '.join(map(str, PORT_PROTOCOLS))})"
        )
    if f.labels:
        # Any of the labels (repeated --label ORs, as in hubble): the label itself, or the label without
        # its `source:` prefix (k8s:app=x matches app=x).
        labels = col(side + "_labels")
        bare = f"arrayMap(l -> substring(l, position(l, ':') + 1), {labels})"
        parts.append(
            "("
            + " OR ".join(
                f"has({labels}, {{label_{i}:String}}) OR has({bare}, {{label_{i}:String}})"
                for i in range(len(f.labels))
            )
            + ")"
        )
    if f.workload is not None:
        if f.workload[0]:
            parts.append(
                f"arrayExists((n, k) -> n = {{workload_name:String}} AND lower(k) = {{workload_kind:String}}, "
                f"{col(side + '_workload_names')}, {col(side + '_workload_kinds')})"
            )
        else:
            parts.append(f"has({col(side + '_workload_names')}, {{workload_name:String}})")
    if f.ip is not None:
        parts.append(f"{col('ip_' + side)} BETWEEN {{ip_first:IPv6}} AND {{ip_last:IPv6}}")
    return " AND ".join(parts)


def cluster_verdict_conditions(flt: FlowFilter) -> tuple[list[str], dict[str, Any]]:
    """The cluster and verdict filters as plain column conditions (flows and rollups share the columns)."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if flt.cluster is not None:
        where.append("cluster = {cluster:String}")
        params["cluster"] = flt.cluster
    if flt.verdict is not None:
        where.append("verdict = {verdict:UInt8}")
        params["verdict"] = parse_verdict(flt.verdict)
    return where, params


def filter_conditions(
    flt: FlowFilter, now_ns: int | None = None, scope: ScopeFilter | None = None
) -> tuple[list[str], dict[str, Any]]:
    """WHERE conditions (ANDed) and their parameters for a filter. Raises ValueError naming a bad value.

    With a scope: the scope's visibility condition is included, and endpoint filters read the columns
    as the scope sees them (redacted), so a filter on a hidden pod name, label, workload or IP matches
    nothing and cannot be used to probe for it. The query must read `flows AS f` (scope.TABLE_ALIAS) and
    start with `scope.with_clause()`."""
    where, params = cluster_verdict_conditions(flt)
    if flt.protocol is not None:
        where.append("has({protocols:Array(UInt8)}, l4_protocol)")
        params["protocols"] = list(parse_protocol(flt.protocol))
    if flt.since is not None:
        where.append("time >= fromUnixTimestamp64Nano({since_ns:Int64}, 'UTC')")
        params["since_ns"] = parse_time_ns("since", flt.since, now_ns)
    if flt.until is not None:
        where.append("time <= fromUnixTimestamp64Nano({until_ns:Int64}, 'UTC')")
        params["until_ns"] = parse_time_ns("until", flt.until, now_ns)

    if flt.drop_reason is not None:
        where.append("drop_reason_desc = {drop_reason:UInt32}")
        params["drop_reason"] = parse_drop_reason(flt.drop_reason)
    if flt.direction is not None:
        where.append("traffic_direction = {direction:UInt8}")
        params["direction"] = parse_direction(flt.direction)
    if flt.l7_type is not None:
        where.append("l7_type = {l7_type:UInt8}")
        params["l7_type"] = parse_l7_type(flt.l7_type)
    if flt.cursor is not None:
        # The plain `time <=` is implied by the tuple comparison; it is there for the sort key.
        where.append(
            "time <= fromUnixTimestamp64Nano({cursor_ns:Int64}, 'UTC') AND "
            "(time, uuid, cluster) < (fromUnixTimestamp64Nano({cursor_ns:Int64}, 'UTC'), "
            "toUUID({cursor_uuid:String}), {cursor_cluster:String})"
        )
        params["cursor_ns"], params["cursor_uuid"], params["cursor_cluster"] = decode_cursor(flt.cursor)

    ns: str | None = None
    pod_prefix: str | None = None
    if flt.namespace is not None:
        if not flt.namespace or "/" in flt.namespace:
            raise FilterValueError("namespace", flt.namespace, f"invalid namespace {flt.namespace!r}")
        ns = flt.namespace
    if flt.pod is not None:
        ns, pod_prefix = parse_pod(flt.pod, flt.namespace)
    side = _SideFilter(
        ns=ns,
        pod_prefix=pod_prefix,
        port=parse_port(flt.port) if flt.port is not None else None,
        labels=tuple(parse_label(lb) for lb in flt.labels),
        workload=parse_workload(flt.workload) if flt.workload is not None else None,
        ip=parse_ip(flt.ip) if flt.ip is not None else None,
    )
    if side.active:
        if side.ns is not None:
            params["ns"] = side.ns
        if side.pod_prefix:
            params["pod_prefix"] = side.pod_prefix
        if side.port is not None:
            params["port"] = side.port
        for i, label in enumerate(side.labels):
            params[f"label_{i}"] = label
        if side.workload is not None:
            params["workload_name"] = side.workload[1]
            if side.workload[0]:
                params["workload_kind"] = side.workload[0].lower()
        if side.ip is not None:
            params["ip_first"], params["ip_last"] = str(side.ip[0]), str(side.ip[1])
        col = (lambda name: scope.column_sql(name, aliased=True)) if scope is not None else _column
        where.append(f"(({_side_condition('src', side, col)}) OR ({_side_condition('dst', side, col)}))")
    if scope is not None:
        visible, scope_params = scope.sql_where(aliased=True)
        where.append(visible)
        _merge(params, scope_params, "scope")
    return where, params


def flow_source(scope: ScopeFilter | None, final: bool = False) -> str:
    """The FROM clause; with a scope the table goes by the alias its SQL fragments use. Without FINAL,
    a redelivered flow not yet merged with its twin is read twice: history queries drop twins by key
    (query_api.store), summaries count what was stored."""
    suffix = " FINAL" if final else ""
    if scope is None:
        return f"{FLOWS_TABLE}{suffix}"
    from query_api.scope import TABLE_ALIAS

    return f"{FLOWS_TABLE} AS {TABLE_ALIAS}{suffix}"


def _merge(params: dict[str, Any], extra: Mapping[str, Any], what: str) -> None:
    clash = set(extra) & set(params)
    if clash:
        raise ValueError(f"{what}: parameter names already in use: {sorted(clash)}")
    params.update(extra)


def build_flow_query(
    flt: FlowFilter,
    extra_where: Iterable[tuple[str, Mapping[str, Any]]] = (),
    now_ns: int | None = None,
    scope: ScopeFilter | None = None,
    columns: Sequence[str] = SELECT_COLUMNS,
) -> tuple[str, dict[str, Any]]:
    """SQL (newest first, LIMIT last unless all) and its bound parameters; `columns` is the select list
    (KEY_COLUMNS: just the keys, for fetching the rows separately, see FlowStore.query_flows).

    `scope` limits the rows to what a principal may see (query_api.scope); the rows come back as
    stored, so the caller must pass each through `scope.redact` (FlowStore.query_flows does).
    `extra_where` fragments are trusted SQL from our own code whose values are in their own parameters;
    a parameter name used twice is an error, not a silent override.
    """
    where, params = filter_conditions(flt, now_ns, scope)
    source = flow_source(scope)
    for fragment, extra in extra_where:
        _merge(params, extra, "extra_where")
        where.append(f"({fragment})")
    last = parse_last(flt.last)
    sql = f"SELECT {', '.join(columns)}\nFROM {source}"
    if scope is not None and scope.with_clause():
        sql = scope.with_clause() + "\n" + sql
    if where:
        sql += "\nWHERE " + "\n  AND ".join(where)
    # uuid (then cluster: replays) breaks ties between flows of the same nanosecond, so pages and
    # repeats are stable and the cursor's keyset order is total.
    sql += "\nORDER BY time DESC, uuid DESC, cluster DESC"
    if last is not None:
        sql += "\nLIMIT {last:UInt64}"
        params["last"] = last
    return sql, params


def build_rows_query(keys: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The full rows (SELECT_COLUMNS) of flows named by KEY_COLUMNS rows; any order."""
    times = [int(k["time_ns"]) for k in keys]
    params: dict[str, Any] = {
        "key_clusters": sorted({str(k["cluster"]) for k in keys}),
        "key_first": min(times),
        "key_last": max(times),
        "key_uuids": sorted({str(k["uuid"]) for k in keys}),
    }
    sql = (
        f"SELECT {', '.join(SELECT_COLUMNS)}\nFROM {FLOWS_TABLE}\n"
        "WHERE cluster IN {key_clusters:Array(String)}\n"
        "  AND time BETWEEN fromUnixTimestamp64Nano({key_first:Int64}, 'UTC')"
        " AND fromUnixTimestamp64Nano({key_last:Int64}, 'UTC')\n"
        "  AND uuid IN {key_uuids:Array(UUID)}"
    )
    if all("src_namespace" in k and "dst_namespace" in k for k in keys):
        # Namespace pairs are in the sort key: only the granules of these pairs are read.
        sql += "\n  AND (src_namespace, dst_namespace) IN {key_places:Array(Tuple(String, String))}"
        params["key_places"] = sorted({(str(k["src_namespace"]), str(k["dst_namespace"])) for k in keys})
    return sql, params


def build_count_query(cluster: str | None = None) -> tuple[str, dict[str, Any]]:
    """Distinct stored flows (twins not yet merged counted once)."""
    sql = f"SELECT count() FROM {FLOWS_TABLE} FINAL"
    if cluster is not None:
        sql += " WHERE cluster = {cluster:String}"
    return sql + f" SETTINGS {FINAL_SETTINGS}", ({"cluster": cluster} if cluster is not None else {})


# Parsing is query_api.filter_values'; callers keep importing these from here.
__all__ = [
    "DEFAULT_NAMESPACE",
    "L7_PROTOCOLS",
    "PORT_PROTOCOLS",
    "PROTOCOLS",
    "FilterValueError",
    "decode_cursor",
    "encode_cursor",
    "is_relative_time",
    "label_matches",
    "parse_direction",
    "parse_drop_reason",
    "parse_duration_ns",
    "parse_ip",
    "parse_l7_type",
    "parse_label",
    "parse_last",
    "parse_pod",
    "parse_port",
    "parse_protocol",
    "parse_time_ns",
    "parse_verdict",
    "parse_workload",
]

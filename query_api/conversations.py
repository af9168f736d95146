"""History by conversation: the distinct connection keys of a window with their counts.

Whole hours are read from `flow_conversations_1h` (fed by a materialized view), the partial hours at the
window's edges from `flows` with the same SELECT (schemas.clickhouse.conversations_select), so the counts
equal a direct count of the flows in [since, until). One GROUP BY in ClickHouse; the cost is the number of
conversations per hour, not the number of flows.

The scope is applied in SQL (a conversation is visible when either side's place is in scope). Sides outside
the scope come back with only their cluster, namespace and reserved identity (as flows redact them) unless
`redact=False`: callers that evaluate conversations (what-if, report) need the labels, and redact what they
show with `redact_conversation`.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Required, TypedDict, Unpack

from schemas.clickhouse import (
    CONVERSATION_DIMS,
    CONVERSATION_KEY,
    CONVERSATIONS_1H,
    FLOWS_TABLE,
    conversations_select,
)
from schemas.conversation import Conversation, SetDecision, Side
from schemas.flow_record import L4_PROTOCOL_NUMBERS, L4_PROTOCOLS

if TYPE_CHECKING:
    from query_api.scope import ScopeFilter
    from query_api.store import FlowStore

MAX_RESERVED_IDENTITY = 255  # identities below are reserved ones (host, world, ...): never redacted
_RESERVED = "reserved:"
_SET_FIELDS = (
    "revision",
    "verdict",
    "drop_reason",
    "egress_verdict",
    "egress_policy",
    "egress_rule",
    "egress_version",
    "ingress_verdict",
    "ingress_policy",
    "ingress_rule",
    "ingress_version",
)
_AGGREGATES = {
    "src_labels": "any(src_labels)",
    "dst_labels": "any(dst_labels)",
    "hubble_allowed_by": "any(hubble_allowed_by)",
    "hubble_denied_by": "any(hubble_denied_by)",
    "flows": "sum(flows)",
    "first_seen": "min(first_seen)",
    "last_seen": "max(last_seen)",
}


class ConversationQueryError(ValueError):
    """A parameter of a conversation query is invalid (names the parameter and the value)."""


HOUR_NS = 3600 * 1_000_000_000


class HistoryParamError(ValueError):
    """A bad parameter of a history question (report, what-if, recommend, why): names it and the value
    (API 422, CLI exit 2)."""

    def __init__(self, parameter: str, value: Any, reason: str) -> None:
        self.parameter, self.value, self.reason = parameter, value, reason
        super().__init__(f"{parameter}: {reason}")


@dataclass(frozen=True)
class HistoryWindow:
    since: datetime
    until: datetime


def history_window(
    since: str | None, until: str | None, now_ns: int | None = None, *, default_since: str = "7d"
) -> HistoryWindow:
    """The window of a history question: `since` (default `default_since` ago) and `until` (default now),
    each RFC 3339 or a duration ago (as `netwarden flows` reads them).

    A duration ago is widened to whole hours (since: the start of its hour; until: the end of its hour), so a
    relative window reads only the hourly conversation table: the partial hours at a window's edges are read
    from the flows themselves, which costs as much as the flows in them (at 30M flows a week, ~2 x 180k).
    Times given in RFC 3339 are kept exact."""
    from query_api.flow_query import FilterValueError, is_relative_time, parse_time_ns

    now_ns = time.time_ns() if now_ns is None else now_ns
    since_text = since or default_since
    try:
        since_ns = parse_time_ns("since", since_text, now_ns)
        until_ns = parse_time_ns("until", until, now_ns) if until else now_ns
    except FilterValueError as exc:
        raise HistoryParamError(exc.parameter, exc.value, exc.reason) from None
    if until_ns <= since_ns:
        raise HistoryParamError("until", until, "must be after since")
    if is_relative_time(since_text):
        since_ns -= since_ns % HOUR_NS
    if (until is None or is_relative_time(until)) and until_ns % HOUR_NS:
        until_ns += HOUR_NS - until_ns % HOUR_NS
    return HistoryWindow(_datetime(since_ns), _datetime(until_ns))


def _datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).replace(microsecond=(ns % 1_000_000_000) // 1000)


def _utc(t: datetime, name: str) -> datetime:
    if t.tzinfo is None:
        raise ConversationQueryError(f"{name}: a timezone-aware time is required, got {t!r}")
    return t.astimezone(UTC)


def unix_ns(t: datetime) -> int:
    """A time as integer nanoseconds since the epoch (exact to its microseconds)."""
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


class ConversationQuery(TypedDict, total=False):
    """What a conversation read asks for (build_conversation_query, read_conversations): the window
    [since, until) and the optional filters."""

    since: Required[datetime]
    until: Required[datetime]
    clusters: Sequence[str] | None
    scope: ScopeFilter | None
    namespace: str | None
    places: Iterable[tuple[str, str]] | None
    port: int | None
    protocol: str | None


def build_conversation_query(**query: Unpack[ConversationQuery]) -> tuple[str, dict[str, Any]]:
    """SQL and parameters for read_conversations (pure: tested without a store)."""
    since, until = _utc(query["since"], "since"), _utc(query["until"], "until")
    clusters, scope, places = query.get("clusters"), query.get("scope"), query.get("places")
    namespace, port, protocol = query.get("namespace"), query.get("port"), query.get("protocol")
    if until <= since:
        raise ConversationQueryError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    params: dict[str, Any] = {"since_ns": unix_ns(since), "until_ns": unix_ns(until)}
    first_hour = since.replace(minute=0, second=0, microsecond=0)
    if first_hour < since:
        first_hour += timedelta(hours=1)
    last_hour = until.replace(minute=0, second=0, microsecond=0)
    flows_time = "time >= fromUnixTimestamp64Nano({since_ns:Int64}) AND time < fromUnixTimestamp64Nano({until_ns:Int64})"
    conds = []
    if clusters is not None:
        conds.append("cluster IN {clusters:Array(String)}")
        params["clusters"] = sorted(set(clusters))
    branches: list[str] = []
    if first_hour < last_hour:
        # Whole hours from the rollup; the minutes before and after from flows.
        params.update(h_first=int(first_hour.timestamp()), h_end=int(last_hour.timestamp()))
        hour_conds = ["hour >= toDateTime({h_first:Int64})", "hour < toDateTime({h_end:Int64})", *conds]
        branches.append(f"SELECT * FROM {CONVERSATIONS_1H} WHERE {' AND '.join(hour_conds)}")
        edge = f"{flows_time} AND NOT (time >= toDateTime64({{h_first:Int64}}, 9) AND time < toDateTime64({{h_end:Int64}}, 9))"
    else:
        edge = flows_time
    if not (since == first_hour < last_hour == until):  # a window of whole hours reads the rollup alone
        branches.append(conversations_select(FLOWS_TABLE, " AND ".join([edge, *conds])))
    where: list[str] = []
    if scope is not None and not scope.everything:
        where.append(
            f"({scope.place_in_scope_sql('src_cluster', 'src_namespace')} OR "
            f"{scope.place_in_scope_sql('dst_cluster', 'dst_namespace')})"
        )
        params.update(scope.params())
    if namespace is not None:
        if not namespace or "/" in namespace:
            raise ConversationQueryError(f"namespace: invalid namespace {namespace!r}")
        where.append("(src_namespace = {namespace:String} OR dst_namespace = {namespace:String})")
        params["namespace"] = namespace
    if places is not None:
        where.append(
            "((src_cluster, src_namespace) IN {places:Array(Tuple(String, String))} OR "
            "(dst_cluster, dst_namespace) IN {places:Array(Tuple(String, String))})"
        )
        params["places"] = sorted(set(places)) or [("", "\0")]
    if port is not None:
        if not 0 <= port <= 65535:
            raise ConversationQueryError(f"port: expected 0-65535, got {port!r}")
        where.append("port = {port:UInt16}")
        params["port"] = port
    if protocol is not None:
        wanted = "ICMPV4" if protocol.upper() == "ICMP" else protocol.upper()
        number = {name.upper(): n for name, n in L4_PROTOCOL_NUMBERS.items()}.get(wanted)
        if number is None:
            raise ConversationQueryError(f"protocol: expected one of {sorted(L4_PROTOCOL_NUMBERS)}, got {protocol!r}")
        where.append("l4_protocol = {l4_protocol:UInt8}")
        params["l4_protocol"] = number
    key = ", ".join(f"`{n}`" for n in CONVERSATION_KEY)
    values = ", ".join(f"{expr} AS `{name}`" for name, expr in _AGGREGATES.items())
    sql = (
        f"SELECT {key}, {values}\nFROM (\n" + "\nUNION ALL\n".join(branches) + "\n)"
        + (f"\nWHERE {' AND '.join(where)}" if where else "")
        + f"\nGROUP BY {key}\nORDER BY flows DESC"
    )
    return sql, params


def read_conversations(
    source: FlowStore | Any, *, redact: bool = True, **query: Unpack[ConversationQuery]
) -> list[Conversation]:
    """The conversations of [since, until) touching the scope (all with scope None), busiest first.

    `source`: a FlowStore (the API's: its queries are serialized, chDB's client is not thread-safe) or a
    clickhouse-connect client (a CLI's own).

    `places`: (cluster, namespace) pairs, e.g. a workspace's namespaces: only conversations with a side
    there. `port`/`protocol` ("TCP", "UDP", "ICMP"/"ICMPv4", "ICMPv6", ...): the server side's.
    """
    sql, params = build_conversation_query(**query)
    scope = query.get("scope")
    if hasattr(source, "run"):
        rows = source.run(sql, params)
    else:
        rows = list(source.query(sql, parameters=params).named_results())
    out = [conversation_from_row(row) for row in rows]
    if redact and scope is not None and not scope.everything:
        out = [redact_conversation(c, scope) for c in out]
    return out


def _ip_text(value: Any) -> str:
    if value in (None, "", b""):
        return ""
    ip = ipaddress.ip_address(value) if not isinstance(value, bytes) else ipaddress.IPv6Address(value)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip == ipaddress.IPv6Address(0):
            return ""
        return str(ip.ipv4_mapped or ip)
    return str(ip)


def _side(row: dict[str, Any], role: str) -> Side:
    labels = tuple(row[f"{role}_labels"] or ())
    reserved = next((lb[len(_RESERVED):] for lb in labels if lb.startswith(_RESERVED)), "")
    return Side(
        namespace=row[f"{role}_namespace"] or "",
        workload=row[f"{role}_workload"] or "",
        workload_kind=row[f"{role}_workload_kind"] or "",
        labels=labels,
        identity=int(row[f"{role}_identity"] or 0),
        ip=_ip_text(row[f"{role}_ip"]),
        reserved="" if row[f"{role}_namespace"] else reserved,
        cluster=row[f"{role}_cluster"] or "",
    )


def _decision(row: dict[str, Any], prefix: str) -> SetDecision:
    return SetDecision(**{f: row[f"{prefix}_{f}"] for f in _SET_FIELDS})


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    raise TypeError(f"expected a datetime, got {value!r}")


def conversation_from_row(row: dict[str, Any]) -> Conversation:
    return Conversation(
        cluster=row["cluster"],
        source=_side(row, "src"),
        destination=_side(row, "dst"),
        port=int(row["port"]),
        protocol=L4_PROTOCOLS.get(int(row["l4_protocol"]), str(row["l4_protocol"])),
        verdict=int(row["verdict"]),
        drop_reason=int(row["drop_reason_desc"]),
        flows=int(row["flows"]),
        first_seen=_time(row["first_seen"]),
        last_seen=_time(row["last_seen"]),
        hubble_allowed_by=tuple(row["hubble_allowed_by"] or ()),
        hubble_denied_by=tuple(row["hubble_denied_by"] or ()),
        desired=_decision(row, "desired"),
        staged=_decision(row, "staged"),
        traffic_direction=int(row["traffic_direction"]),
    )


def redact_side(side: Side) -> Side:
    """What a caller outside the side's scope may see of it: place and reserved identity only."""
    return Side(
        namespace=side.namespace,
        labels=tuple(lb for lb in side.labels if lb.startswith(_RESERVED)),
        identity=side.identity if side.identity <= MAX_RESERVED_IDENTITY else 0,
        reserved=side.reserved,
        cluster=side.cluster,
        redacted=True,
    )


def redact_conversation(conv: Conversation, scope: ScopeFilter) -> Conversation:
    changes = {}
    for field_name, side in (("source", conv.source), ("destination", conv.destination)):
        if not scope.can_see_namespace(side.cluster or conv.cluster, side.namespace):
            changes[field_name] = redact_side(side)
    return replace(conv, **changes) if changes else conv


__all__ = [
    "CONVERSATION_DIMS",
    "ConversationQueryError",
    "HistoryParamError",
    "HistoryWindow",
    "history_window",
    "build_conversation_query",
    "conversation_from_row",
    "read_conversations",
    "unix_ns",
    "redact_conversation",
    "redact_side",
]

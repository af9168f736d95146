"""The live stream's filters: `flow_predicate`, the Python twin of `query_api.flow_query.filter_conditions`
(a test checks both agree on the same rows), and the caller's scope applied before them (query_api.live)."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from query_api.flow_query import PORT_PROTOCOLS, FilterValueError, FlowFilter, filter_conditions

Row = Mapping[str, Any]


class RowScope(Protocol):
    """What the stream needs of `query_api.scope.ScopeFilter`: the Python twins of its SQL."""

    def side_in_scope(self, row: Row, side: str) -> bool: ...

    def visible(self, row: Row) -> bool: ...

    def redact(self, row: Row) -> Row: ...


# Parameters of filter_conditions this twin implements; label_<i> are the repeatable label filters.
_KNOWN_PARAMS = {
    "cluster",
    "verdict",
    "protocols",
    "since_ns",
    "until_ns",
    "drop_reason",
    "direction",
    "l7_type",
    "ns",
    "pod_prefix",
    "port",
    "workload_name",
    "workload_kind",
    "ip_first",
    "ip_last",
    "last",
}
# Row column compared for equality with the parameter of the same name.
_EQUAL_PARAMS = {
    "cluster": "cluster",
    "verdict": "verdict",
    "drop_reason": "drop_reason_desc",
    "direction": "traffic_direction",
    "l7_type": "l7_type",
}


def flow_predicate(flt: FlowFilter, now_ns: int | None = None) -> Callable[[Row], bool]:
    """A row predicate meaning exactly what `filter_conditions(flt)` means in SQL.

    Parsing and validation are flow_query's own (FilterValueError names the bad parameter); the
    predicate is built from the bound parameters, so both sides read the same values.
    """
    _, params = filter_conditions(flt, now_ns)
    unknown = {p for p in params if p not in _KNOWN_PARAMS and not p.startswith("label_")}
    if unknown:  # a filter this twin does not implement (e.g. a history cursor): refuse, never ignore
        name = sorted(unknown)[0]
        parameter = name.split("_", 1)[0] if name.startswith("cursor_") else name
        raise FilterValueError(
            parameter, params[name], f"the {parameter} filter is not supported on the live stream"
        )
    equal = [(column, params[p]) for p, column in _EQUAL_PARAMS.items() if p in params]
    protocols: tuple[int, ...] | None = tuple(params["protocols"]) if "protocols" in params else None
    since_ns: int | None = params.get("since_ns")
    until_ns: int | None = params.get("until_ns")
    ns: str | None = params.get("ns")
    pod_prefix: str = params.get("pod_prefix") or ""
    port: int | None = params.get("port")
    labels = [params[p] for p in sorted(params) if p.startswith("label_")]
    workload_name: str | None = params.get("workload_name")
    workload_kind: str | None = params.get("workload_kind")
    ip_range = (
        (int(ipaddress.IPv6Address(params["ip_first"])), int(ipaddress.IPv6Address(params["ip_last"])))
        if "ip_first" in params
        else None
    )
    sided = any(x is not None for x in (ns, port, workload_name, ip_range)) or bool(pod_prefix or labels)

    def side_matches(row: Row, side: str) -> bool:
        if ns is not None and (row.get(f"{side}_namespace") or "") != ns:
            return False
        if pod_prefix and not (row.get(f"{side}_pod") or "").startswith(pod_prefix):
            return False
        if port is not None:
            if int(row.get(f"{side}_port") or 0) != port:
                return False
            if int(row.get("l4_protocol") or 0) not in PORT_PROTOCOLS:
                return False
        if labels:
            have = row.get(f"{side}_labels") or ()
            # SQL: the label itself, or the label without its `source:` prefix (k8s:app=x matches app=x).
            if not any(lb == w or lb.split(":", 1)[-1] == w for lb in have for w in labels):  # any (OR)
                return False
        if workload_name is not None:
            names = row.get(f"{side}_workload_names") or ()
            if workload_kind is None:
                if workload_name not in names:
                    return False
            else:
                kinds = row.get(f"{side}_workload_kinds") or ()
                if not any(
                    n == workload_name and k.lower() == workload_kind
                    for n, k in zip(names, kinds, strict=False)
                ):
                    return False
        if ip_range is not None:
            addr = _ip_int(row.get(f"ip_{side}"))
            if not ip_range[0] <= addr <= ip_range[1]:
                return False
        return True

    def matches(row: Row) -> bool:
        for column, want in equal:
            got = row.get(column)
            if (got if isinstance(want, str) else int(got or 0)) != want:
                return False
        if protocols is not None and int(row.get("l4_protocol") or 0) not in protocols:
            return False
        if since_ns is not None or until_ns is not None:
            t = _time_ns(row)
            if since_ns is not None and t < since_ns:
                return False
            if until_ns is not None and t > until_ns:
                return False
        if sided and not (side_matches(row, "src") or side_matches(row, "dst")):
            return False
        return True

    return matches


def _time_ns(row: Row) -> int:
    value = row.get("time_ns")
    return int(value) if value is not None else 0


def _ip_int(value: Any) -> int:
    """A stored address (IPv6 column: 16 bytes from Arrow, IPv6Address or text from SQL) as an int."""
    if value is None or value == "" or value == b"":
        return 0
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "big")
    if isinstance(value, ipaddress.IPv4Address):
        return int(ipaddress.IPv6Address(f"::ffff:{value}"))
    return int(ipaddress.IPv6Address(str(value)))


def subscription_filter(
    flt: FlowFilter, scope: RowScope, now_ns: int | None = None
) -> Callable[[Row], Row | None]:
    """Scope first, filters on the redacted row: the row to send, or None."""
    matches = flow_predicate(flt, now_ns)

    def accept(row: Row) -> Row | None:
        src, dst = scope.side_in_scope(row, "src"), scope.side_in_scope(row, "dst")
        if not (src or dst):
            return None
        # Both sides visible: the row itself (shared with other subscribers, never mutated), no copy.
        shown = row if src and dst else scope.redact(row)
        return shown if matches(shown) else None

    return accept


def live_flow_filter(filters: Mapping[str, Any]) -> FlowFilter:
    """A FlowFilter of the given query filters (every flow: no `last`)."""
    known = {f.name for f in dataclasses.fields(FlowFilter)}
    for name, value in filters.items():
        if name not in known:
            parameter = "label" if name == "labels" else name
            raise FilterValueError(parameter, value, f"the {parameter} filter is not supported yet")
    return FlowFilter(**filters, last=None)


def given_filters(flt: FlowFilter) -> dict[str, Any]:
    """The filters a FlowFilter sets (not `last` or `cursor`: the stream has neither), by FlowFilter field
    name: what live_flow_filter takes back, and what the stream's log line names."""
    return {
        f.name: getattr(flt, f.name)
        for f in dataclasses.fields(FlowFilter)
        if f.name not in ("last", "cursor") and getattr(flt, f.name) not in (None, ())
    }

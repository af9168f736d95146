"""The live flow stream: `GET /api/v1/flows/stream` as WebSocket and as Server-Sent Events.

Feed. A `LiveHub` receives every stored batch as an Arrow table: in embedded mode the pipeline calls
`LiveHub.publish_table` right after the ClickHouse insert (netwarden.embedded wires it); in scale mode
an `EnrichedTopicFeed` consumes `flows.enriched`, where the stream workers publish what they stored
(value: one Arrow IPC stream of record rows, see streams.app).

Back-pressure. The pipeline never waits for a client. `publish_table` only queues the table for the
hub's dispatcher thread (and does nothing when nobody listens). The dispatcher converts the table to
rows once, then offers each row to every subscription: the subscription's filter and scope decide, and
an accepted row goes into that subscription's bounded queue. A full queue drops the row and counts it;
the client then receives `{"missed": N}` at the place in the stream where the gap is. A stored row comes
with its jsonpb text rendered by ClickHouse in the read-back (streams.jsonpb_sql; ~20 us of ClickHouse CPU
instead of ~170 us of Python per flow) and is read column by column (StoredRow); a row without that text, or
a redacted copy, is rendered in the client's own task, so that cost follows what a client actually reads.

Messages. Each flow is one hubble jsonpb `GetFlowsResponse` (schemas.flow_render): one WebSocket text
message, or one SSE `data:` event. A gap is `{"missed": N}`: a WebSocket text message, or an SSE event
named `missed` (so `EventSource.onmessage` sees only flows).

Filters and scope. The stream takes the filters of `/api/v1/flows` (cluster, namespace, pod, verdict,
protocol, port, since, until) with the same meanings: `flow_predicate` is the Python twin of
`query_api.flow_query.filter_conditions`, and a test checks both agree on the same rows. The caller's
scope (`ScopeFilter.visible` / `.redact`) applies first; the filters then see the redacted row, so a
filter can never probe fields the caller is not allowed to see (e.g. the pod name of a hidden peer).

Authentication. The principal dependency is the same as for the other routes; it must read the header
through parameters that exist on WebSocket connections too (`Header(...)`, `HTTPConnection`). Browsers
cannot set headers on a WebSocket or an EventSource: both routes are marked `accepts_stream_tickets`, so
query_api.auth takes a single-use `?ticket=` from POST /api/v1/stream-tickets there. No token in a URL.
While a stream runs, its access is re-checked (query_api.stream_access): a revoked token or a narrowed
scope ends it with the reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import threading
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter, Gauge
from starlette.requests import HTTPConnection

from query_api.auth import accepts_stream_tickets, reauthenticator
from query_api.flow_query import PORT_PROTOCOLS, FilterValueError, FlowFilter, filter_conditions
from query_api.stream_access import WS_POLICY_VIOLATION, StreamAccess, StreamEnd, recheck_period
from schemas.flow_render import ip_text, row_time_ns
from schemas.hubble.flow import flow_pb2
from schemas.topics import FLOWS_ENRICHED

log = logging.getLogger("netwarden.query_api.live")

STREAM_PATH = "/api/v1/flows/stream"
DEFAULT_QUEUE_FLOWS = 10_000  # per subscriber; rows are shared between subscribers, so this is pointers
RENDER_CACHE_ROWS = 10_000  # recent renderings kept for other clients of the same rows
DEFAULT_BACKLOG_ROWS = 500_000  # rows waiting for the dispatcher before the hub itself sheds load
SSE_KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream

Row = Mapping[str, Any]

SUBSCRIBERS = Gauge("netwarden_live_subscribers", "Open live flow stream subscriptions")
SENT = Counter("netwarden_live_flows_sent_total", "Flows delivered to live stream clients", ["transport"])
MISSED = Counter("netwarden_live_flows_missed_total", "Flows dropped for live clients that fell behind")
# Column of a stored table holding each row's jsonpb text as ClickHouse rendered it (streams.jsonpb_sql).
JSONPB_COLUMN = "jsonpb"
HUB_SHED = Counter(
    "netwarden_live_hub_shed_rows_total", "Rows the hub dropped before filtering (backlog full)"
)


class RowScope(Protocol):
    """What the stream needs of `query_api.scope.ScopeFilter`: the Python twins of its SQL."""

    def side_in_scope(self, row: Row, side: str) -> bool: ...

    def visible(self, row: Row) -> bool: ...

    def redact(self, row: Row) -> Row: ...


@dataclass(frozen=True)
class Missed:
    """A gap in one client's stream: `count` flows that matched were dropped because it fell behind."""

    count: int

    def to_json(self) -> str:
        return json.dumps({"missed": self.count})


LiveMessage = Row | Missed


# ---- filters: the Python twin of flow_query.filter_conditions -------------------------------------

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
            if not all(any(lb == w or lb.split(":", 1)[-1] == w for lb in have) for w in labels):
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


# ---- rows of a stored table -----------------------------------------------------------------------


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of a decoded/stored Arrow table in the shape schemas.flow_render and the SQL rows use.

    `time` becomes `time_ns` (int ns) like `flow_query.SELECT_COLUMNS`: Python datetimes stop at µs.
    """
    if JSONPB_COLUMN in table.column_names:
        table = table.drop_columns([JSONPB_COLUMN])
    if "time" in table.column_names:
        i = table.column_names.index("time")
        table = table.set_column(i, "time_ns", pc.cast(table.column(i), pa.int64()))
    return table.to_pylist()


class _StoredColumns:
    """A stored table's columns, each turned into Python values for the whole batch on first use: a filter
    reads a few columns, and a row rendered by ClickHouse (StoredRow.jsonpb) is never turned into a dict
    (Table.to_pylist costs ~50 us a flow)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.names = [n for n in table.column_names if n not in ("time", JSONPB_COLUMN)]
        if "time" in table.column_names:
            self.names.insert(table.column_names.index("time"), "time_ns")
        self._values: dict[str, list[Any]] = {}

    def values(self, name: str) -> list[Any]:
        got = self._values.get(name)
        if got is None:
            if name == "time_ns":
                got = pc.cast(self.table.column("time"), pa.int64()).to_pylist()
            elif name in self.names:
                got = self.table.column(name).to_pylist()
            else:
                raise KeyError(name)
            self._values[name] = got  # two threads may both convert a column: the same values
        return got


class StoredRow(Mapping[str, Any]):
    """A row of a stored table in `table_rows` shape, read column by column; `jsonpb` is its text as rendered
    by ClickHouse ('' when Python must render it). Only the row itself carries that text: a redacted copy
    (ScopeFilter.redact makes a dict) is rendered from its own values."""

    __slots__ = ("_columns", "_index", "jsonpb")

    def __init__(self, columns: _StoredColumns, index: int, jsonpb: str) -> None:
        self._columns = columns
        self._index = index
        self.jsonpb = jsonpb

    def __getitem__(self, key: str) -> Any:
        return self._columns.values(key)[self._index]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self._columns.values(key)[self._index]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns.names)

    def __len__(self) -> int:
        return len(self._columns.names)

    def __contains__(self, key: object) -> bool:
        return key in self._columns.names

    def __repr__(self) -> str:
        return f"StoredRow({dict(self)!r})"


def stored_rows(table: pa.Table) -> list[StoredRow]:
    """The hub's rows of a stored table: lazy (StoredRow), with ClickHouse's jsonpb text when it has one."""
    columns = _StoredColumns(table)
    if JSONPB_COLUMN in table.column_names:
        texts = table.column(JSONPB_COLUMN).to_pylist()
    else:
        texts = [""] * table.num_rows
    return [StoredRow(columns, i, text or "") for i, text in enumerate(texts)]


# ---- rendering: jsonpb without building protobuf messages ----------------------------------------
#
# schemas.flow_render builds a GetFlowsResponse and runs json_format.MessageToDict: about 0.25 ms per
# flow, which at a few thousand flows/s per client would take the event loop. This renders the same
# dict straight from the row (tests/live check equality, key order included, on every kind of flow);
# fields appear in field-number order and default values are omitted, as MessageToDict does.


def _enum_names(enum: Any) -> dict[int, str]:
    return {v.number: v.name for v in enum.DESCRIPTOR.values}


_VERDICT = _enum_names(flow_pb2.Verdict)
_DROP_REASON = _enum_names(flow_pb2.DropReason)
_FLOW_TYPE = _enum_names(flow_pb2.FlowType)
_L7_TYPE = _enum_names(flow_pb2.L7FlowType)
_DIRECTION = _enum_names(flow_pb2.TrafficDirection)
_OBS_POINT = _enum_names(flow_pb2.TraceObservationPoint)
_TRACE_REASON = _enum_names(flow_pb2.TraceReason)
_IP_VERSION = _enum_names(flow_pb2.IPVersion)
_POLICY_FIELDS = (  # Flow field-number order
    "egress_allowed_by",
    "ingress_allowed_by",
    "egress_denied_by",
    "ingress_denied_by",
)
_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")  # bit i, field i + 1
_PORT_L4 = {1: "TCP", 2: "UDP", 5: "SCTP"}
_ICMP_L4 = {3: "ICMPv4", 4: "ICMPv6"}


def _enum(names: dict[int, str], number: int) -> str | int:
    return names.get(number, number)  # proto3 open enums: an unknown number prints as a number


def _rfc3339(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = (_EPOCH + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _uuid_text(value: Any) -> str:
    if isinstance(value, uuidlib.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return str(uuidlib.UUID(bytes=bytes(value)))
    return str(uuidlib.UUID(str(value)))


def _endpoint_json(row: Row, side: str) -> dict[str, Any]:
    ep: dict[str, Any] = {}
    if v := int(row.get(f"{side}_id") or 0):
        ep["ID"] = v
    if v := int(row.get(f"{side}_identity") or 0):
        ep["identity"] = v
    if v := row.get(f"{side}_namespace"):
        ep["namespace"] = v
    if v := row.get(f"{side}_labels"):
        ep["labels"] = list(v)
    if v := row.get(f"{side}_pod"):
        ep["pod_name"] = v
    if names := row.get(f"{side}_workload_names"):
        kinds = row.get(f"{side}_workload_kinds") or ()
        workloads = []
        for i, name in enumerate(names):
            kind = kinds[i] if i < len(kinds) else ""
            w = {}
            if name:
                w["name"] = name
            if kind:
                w["kind"] = kind
            workloads.append(w)
        ep["workloads"] = workloads
    if v := row.get(f"{side}_cluster_name"):
        ep["cluster_name"] = v
    return ep


def _policy_json(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        kind, namespace, name = item.get("kind"), item.get("namespace"), item.get("name")
        revision, labels = item.get("revision"), item.get("labels")
    else:
        kind, namespace, name, revision, labels = item
    out: dict[str, Any] = {}
    if name:
        out["name"] = name
    if namespace:
        out["namespace"] = namespace
    if labels:
        out["labels"] = list(labels)
    if revision:
        out["revision"] = str(int(revision))  # uint64: a string in JSON
    if kind:
        out["kind"] = kind
    return out


def _l4_json(row: Row, proto: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if proto in _PORT_L4:
        if v := int(row.get("src_port") or 0):
            body["source_port"] = v
        if v := int(row.get("dst_port") or 0):
            body["destination_port"] = v
        if proto == 1 and (bits := int(row.get("tcp_flags") or 0)):
            body["flags"] = {name: True for i, name in enumerate(_FLAG_NAMES) if bits & (1 << i)}
        return {_PORT_L4[proto]: body}
    if proto in _ICMP_L4:
        if v := int(row.get("icmp_type") or 0):
            body["type"] = v
        if v := int(row.get("icmp_code") or 0):
            body["code"] = v
        return {_ICMP_L4[proto]: body}
    if proto in (6, 7):  # VRRP, IGMP: only the message type is kept
        if v := int(row.get("icmp_type") or 0):
            body["type"] = v
        return {"VRRP" if proto == 6 else "IGMP": body}
    return {}


def render_jsonpb(row: Row) -> dict[str, Any]:
    """`schemas.flow_render.row_to_jsonpb(row)`, computed without protobuf (same dict, same key order)."""
    time_text = _rfc3339(row_time_ns(row))
    flow: dict[str, Any] = {"time": time_text}
    if v := int(row.get("verdict") or 0):
        flow["verdict"] = _enum(_VERDICT, v)
    if v := int(row.get("drop_reason") or 0):
        flow["drop_reason"] = v
    if ip_version := int(row.get("ip_version") or 0):
        ip: dict[str, Any] = {}
        if v := ip_text(row.get("ip_src"), ip_version):
            ip["source"] = v
        if v := ip_text(row.get("ip_dst"), ip_version):
            ip["destination"] = v
        ip["ipVersion"] = _enum(_IP_VERSION, ip_version)
        if row.get("ip_encrypted"):
            ip["encrypted"] = True
        flow["IP"] = ip
    if proto := int(row.get("l4_protocol") or 0):
        flow["l4"] = _l4_json(row, proto)
    flow["source"] = _endpoint_json(row, "src")
    flow["destination"] = _endpoint_json(row, "dst")
    flow_type = int(row.get("flow_type") or 0)
    if flow_type:
        flow["Type"] = _enum(_FLOW_TYPE, flow_type)
    node = row.get("node_name") or ""
    if node:
        flow["node_name"] = node
    if v := row.get("src_names"):
        flow["source_names"] = list(v)
    if v := row.get("dst_names"):
        flow["destination_names"] = list(v)
    if flow_type == 2:
        l7_type = int(row.get("l7_type") or 0)
        flow["l7"] = {"type": _enum(_L7_TYPE, l7_type)} if l7_type else {}
    if row.get("reply"):
        flow["reply"] = True
    event: dict[str, Any] = {}
    if v := int(row.get("event_type") or 0):
        event["type"] = v
    if v := int(row.get("event_sub_type") or 0):
        event["sub_type"] = v
    flow["event_type"] = event
    for side, name in (("src", "source_service"), ("dst", "destination_service")):
        svc_name = row.get(f"{side}_service") or ""
        svc_ns = row.get(f"{side}_service_namespace") or ""
        if svc_name or svc_ns:
            flow[name] = {k: v for k, v in (("name", svc_name), ("namespace", svc_ns)) if v}
    if v := int(row.get("traffic_direction") or 0):
        flow["traffic_direction"] = _enum(_DIRECTION, v)
    if v := int(row.get("trace_observation_point") or 0):
        flow["trace_observation_point"] = _enum(_OBS_POINT, v)
    if v := int(row.get("drop_reason_desc") or 0):
        flow["drop_reason_desc"] = _enum(_DROP_REASON, v)
    if row.get("is_reply") is not None:
        flow["is_reply"] = bool(row["is_reply"])
    if row.get("uuid_given") and row.get("uuid") is not None:
        flow["uuid"] = _uuid_text(row["uuid"])
    if v := int(row.get("trace_reason") or 0):
        flow["trace_reason"] = _enum(_TRACE_REASON, v)
    for field in _POLICY_FIELDS:
        if items := row.get(field):
            flow[field] = [_policy_json(item) for item in items]
    out: dict[str, Any] = {"flow": flow}
    if node:
        out["node_name"] = node
    out["time"] = time_text
    return out


# ---- the hub ------------------------------------------------------------------------------------


class LiveSubscription:
    """One client's bounded queue of accepted rows, with gaps recorded in place as `Missed` markers.

    `offer` runs on the hub's dispatcher thread; `next` on the client's event loop.
    """

    def __init__(
        self,
        hub: LiveHub,
        accept: Callable[[Row], Row | None],
        queue_flows: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        if queue_flows < 1:
            raise ValueError(f"queue_flows must be >= 1, got {queue_flows}")
        self.hub = hub
        self.accept = accept
        self.queue_flows = queue_flows
        self.missed_total = 0
        self.delivered = 0
        self.closed = False
        self._loop = loop
        self._items: collections.deque[Row | list[int]] = collections.deque()  # list[int]: a gap counter
        self._flows = 0  # rows in _items (gap markers do not count toward the bound)
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._waiting = False

    def offer(self, rows: Iterable[Row]) -> None:
        """Accepted rows go in while there is room; the rest only bump the gap counter."""
        accepted: list[Row] = []
        for row in rows:  # filtering runs outside the lock: the client's loop may take meanwhile
            if self.closed:
                return
            try:
                shown = self.accept(row)
            except Exception:  # a scope or filter bug must not stop the stream for everyone
                log.exception("live stream filter failed on a row; row skipped")
                continue
            if shown is None:
                continue
            if shown is not row and shown == row:
                shown = row  # unredacted: share the row, and so its rendering (LiveHub.text_of)
            accepted.append(shown)
        if not accepted:
            return
        with self._lock:
            if self.closed:
                return
            room = max(0, self.queue_flows - self._flows)
            kept = accepted[:room]
            self._items.extend(kept)
            self._flows += len(kept)
            dropped = len(accepted) - len(kept)
            if dropped:
                self._gap(dropped)
            wake = self._wake_if_waiting(len(accepted))
        if dropped:
            MISSED.inc(dropped)
        if wake:
            self._wake_up()

    def add_gap(self, count: int) -> None:
        """Record `count` flows this client missed without them being offered (hub overload)."""
        with self._lock:
            if self.closed:
                return
            self._gap(count)
            wake = self._wake_if_waiting(count)
        MISSED.inc(count)
        if wake:
            self._wake_up()

    def _wake_up(self) -> None:
        with contextlib.suppress(RuntimeError):  # the client's loop is already gone
            self._loop.call_soon_threadsafe(self._wake.set)

    def _gap(self, count: int) -> None:
        # Consecutive drops share one marker, placed after the last row that made it into the queue.
        last = self._items[-1] if self._items else None
        if isinstance(last, list):
            last[0] += count
        else:
            self._items.append([count])
        self.missed_total += count

    def _wake_if_waiting(self, changed: int) -> bool:
        if changed and self._waiting:
            self._waiting = False
            return True
        return False

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            wake = self._waiting
        self.hub._remove(self)
        if wake:
            self._wake_up()

    def _take(self, limit: int) -> list[LiveMessage]:
        out: list[LiveMessage] = []
        with self._lock:
            while self._items and len(out) < limit:
                item = self._items.popleft()
                if isinstance(item, list):
                    out.append(Missed(item[0]))
                else:
                    self._flows -= 1
                    out.append(item)
            if not out and not self.closed:
                self._waiting = True
                self._wake.clear()
        return out

    async def next_batch(self, limit: int = 256, timeout: float | None = None) -> list[LiveMessage] | None:
        """Up to `limit` messages in order; [] on timeout; None once closed and drained."""
        while True:
            out = self._take(limit)
            if out:
                self.delivered += sum(1 for m in out if not isinstance(m, Missed))
                return out
            if self.closed:
                return None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return []

    async def __aiter__(self) -> AsyncIterator[LiveMessage]:
        while (batch := await self.next_batch()) is not None:
            for message in batch:
                yield message


class LiveHub:
    """Fan-out of stored flows to live subscribers; thread-safe, never blocks the publisher."""

    def __init__(self, backlog_rows: int = DEFAULT_BACKLOG_ROWS) -> None:
        self.backlog_rows = backlog_rows
        self.published_rows = 0
        self.shed_rows = 0
        self._subs: list[LiveSubscription] = []
        self._subs_lock = threading.Lock()
        # Batches waiting for the dispatcher; an int is a shed batch (a gap of that many rows), kept in
        # order so every client sees the gap where it happened.
        self._pending: collections.deque[pa.Table | list[Row] | int] = collections.deque()
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # id(row) -> (row, jsonpb text): clients seeing the same unredacted row share one rendering.
        # The entry holds the row, so its id cannot be reused while cached.
        self._texts: collections.OrderedDict[int, tuple[Row, str]] = collections.OrderedDict()
        self._texts_lock = threading.Lock()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def subscribe(
        self, accept: Callable[[Row], Row | None], queue_flows: int = DEFAULT_QUEUE_FLOWS
    ) -> LiveSubscription:
        """Call from the event loop that will read the subscription."""
        sub = LiveSubscription(self, accept, queue_flows, asyncio.get_running_loop())
        with self._subs_lock:
            if self._closed:
                sub.closed = True
                return sub
            self._subs = [*self._subs, sub]  # copy on write: the dispatcher iterates a snapshot
        SUBSCRIBERS.inc()
        self._ensure_thread()
        return sub

    def _remove(self, sub: LiveSubscription) -> None:
        with self._subs_lock:
            if sub in self._subs:
                self._subs = [s for s in self._subs if s is not sub]
                SUBSCRIBERS.dec()

    def publish_table(self, table: pa.Table) -> None:
        """Hand over a stored batch. Free when nobody listens; otherwise O(1) for the caller."""
        self._publish(table, table.num_rows)

    def publish_rows(self, rows: Sequence[Row]) -> None:
        """Rows already in `table_rows` shape (tests, other feeds)."""
        self._publish(list(rows), len(rows))

    def _publish(self, item: pa.Table | list[Row], n: int) -> None:
        if not self._subs or not n:
            return
        with self._cond:
            if self._pending_rows + n > self.backlog_rows:
                # The dispatcher itself is behind (CPU-starved): shed here rather than grow without bound.
                # Every subscriber is told about rows it may have missed (an upper bound: unfiltered).
                self.shed_rows += n
                HUB_SHED.inc(n)
                if self._pending and isinstance(self._pending[-1], int):
                    self._pending[-1] += n
                else:
                    self._pending.append(n)
                self._cond.notify()
                return
            self._pending.append(item)
            self._pending_rows += n
            self.published_rows += n
            self._cond.notify()

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._dispatch, name="netwarden-live-hub", daemon=True)
                self._thread.start()

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                item = self._pending.popleft()
            try:
                subs = self._subs
                if not subs:
                    continue
                if isinstance(item, int):
                    for sub in subs:
                        sub.add_gap(item)
                    continue
                rows = stored_rows(item) if isinstance(item, pa.Table) else item
                for sub in subs:
                    sub.offer(rows)
            except Exception:
                log.exception("live hub: dispatching a batch failed")
            finally:
                with self._cond:
                    self._pending_rows -= _rows_of(item)

    def close(self) -> None:
        """End every subscription (clients see the stream end) and stop the dispatcher."""
        with self._subs_lock:
            self._closed = True
            subs = self._subs
        for sub in subs:
            sub.close()
        with self._cond:
            self._cond.notify_all()

    def text_of(self, row: Row) -> str:
        """The jsonpb line of a delivered row, rendered once however many clients receive it."""
        if isinstance(row, StoredRow) and row.jsonpb:
            return row.jsonpb  # rendered by ClickHouse (streams.jsonpb_sql)
        key = id(row)
        with self._texts_lock:
            hit = self._texts.get(key)
            if hit is not None and hit[0] is row:
                return hit[1]
        text = _jsonpb_text(row)
        with self._texts_lock:
            self._texts[key] = (row, text)
            while len(self._texts) > RENDER_CACHE_ROWS:
                self._texts.popitem(last=False)
        return text

    def drained(self) -> bool:
        """True when every published row has been offered to the subscribers (tests, benchmarks)."""
        with self._cond:
            return self._pending_rows == 0


def _rows_of(item: pa.Table | list[Row] | int) -> int:
    if isinstance(item, int):
        return 0  # a gap marker holds no rows
    return item.num_rows if isinstance(item, pa.Table) else len(item)


# ---- scale mode: flows.enriched -> hub ------------------------------------------------------------


def decode_enriched(value: bytes) -> pa.Table:
    """A flows.enriched value: one Arrow IPC stream of stored record rows (streams.app writes it)."""
    with pa.ipc.open_stream(value) as reader:
        return reader.read_all()


class EnrichedTopicFeed:
    """Feeds a LiveHub from `flows.enriched` (scale mode: workers and API replicas are separate).

    Every API replica reads every partition from the end, without a consumer group: the live stream
    is "from now on", and each replica serves its own clients.
    """

    def __init__(self, bootstrap: str, hub: LiveHub, topic: str = FLOWS_ENRICHED) -> None:
        self.bootstrap = bootstrap
        self.hub = hub
        self.topic = topic
        self.messages = 0
        self.undecodable = 0
        self.assigned = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=50,  # latency over throughput: the target is delivery within a second
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        try:
            partitions: set[int] = set()
            for _ in range(50):
                await consumer.topics()  # refreshes cluster metadata (a remote call)
                partitions = consumer.partitions_for_topic(self.topic) or set()
                if partitions:
                    break
                await asyncio.sleep(0.1)
            if not partitions:
                raise RuntimeError(f"topic {self.topic} has no partitions at {self.bootstrap}")
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the end offsets now, so "from now on" starts at assignment
                await consumer.position(tp)
            self.assigned.set()
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self.messages += 1
                        try:
                            self.hub.publish_table(decode_enriched(record.value or b""))
                        except (pa.ArrowInvalid, OSError) as exc:
                            self.undecodable += 1
                            log.error(
                                "flows.enriched offset %d: not an Arrow IPC stream: %s", record.offset, exc
                            )
        finally:
            await consumer.stop()


# ---- routes -------------------------------------------------------------------------------------


def live_flow_filter(filters: Mapping[str, Any]) -> FlowFilter:
    """A FlowFilter of the given query filters (every flow: no `last`)."""
    known = {f.name for f in dataclasses.fields(FlowFilter)}
    for name, value in filters.items():
        if name not in known:
            parameter = "label" if name == "labels" else name
            raise FilterValueError(parameter, value, f"the {parameter} filter is not supported yet")
    return FlowFilter(**filters, last=None)


def _jsonpb_text(row: Row) -> str:
    return json.dumps(render_jsonpb(row), separators=(",", ":"), ensure_ascii=False)


def _unprocessable(parameter: str, value: Any, message: str) -> JSONResponse:
    # The shape of FastAPI's own validation errors (and of /api/v1/flows), so clients handle one format.
    return JSONResponse(
        status_code=422,
        content={
            "detail": [{"loc": ["query", parameter], "msg": message, "type": "value_error", "input": value}]
        },
    )


@dataclass(frozen=True)
class _Opened:
    filter: FlowFilter
    scope: RowScope
    accept: Callable[[Row], Row | None]
    now_ns: int


def live_router(
    hub: LiveHub,
    principal_dependency: Callable[..., Any],
    scope_for: Callable[[Any], RowScope],
    *,
    queue_flows: int = DEFAULT_QUEUE_FLOWS,
    keepalive_s: float = SSE_KEEPALIVE_S,
    recheck_s: float | None = None,
) -> APIRouter:
    """The stream routes; the app owner includes this router next to /api/v1/flows. `recheck_s`: how often
    an open stream re-checks its caller's credential and scope (query_api.stream_access; default 4.5 s, or
    NETWARDEN_STREAM_RECHECK_S)."""
    router = APIRouter()
    period = recheck_period(recheck_s)

    def live_filter(
        cluster: str | None = Query(None, description="cluster the flow was collected from"),
        namespace: str | None = Query(None, description="source or destination namespace"),
        pod: str | None = Query(None, description="[namespace/]pod-name prefix, either side"),
        workload: str | None = Query(None, description="[kind/]name of a workload, either side"),
        label: Annotated[
            list[str] | None, Query(description="k=v or source:k=v, either side; repeatable")
        ] = None,
        ip: str | None = Query(None, description="source or destination address or CIDR"),
        verdict: str | None = Query(None, description="FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, ..."),
        drop_reason: str | None = Query(None, description="DropReason name or number"),
        protocol: str | None = Query(None, description="tcp, udp, sctp, icmp, icmpv4, icmpv6"),
        port: int | None = Query(None, ge=0, le=65535, description="source or destination port"),
        direction: str | None = Query(None, description="INGRESS or EGRESS"),
        l7_type: str | None = Query(None, description="REQUEST, RESPONSE, SAMPLE"),
        since: str | None = Query(None, description="only flows at or after this time (RFC 3339 or 5m ago)"),
        until: str | None = Query(None, description="only flows at or before this time"),
    ) -> dict[str, Any]:
        given = {
            "cluster": cluster,
            "namespace": namespace,
            "pod": pod,
            "workload": workload,
            "labels": tuple(label) if label else None,
            "ip": ip,
            "verdict": verdict,
            "drop_reason": drop_reason,
            "protocol": protocol,
            "port": port,
            "direction": direction,
            "l7_type": l7_type,
            "since": since,
            "until": until,
        }
        return {k: v for k, v in given.items() if v is not None}

    def opening(principal: Any, filters: dict[str, Any]) -> _Opened | tuple[JSONResponse, str]:
        """The stream's filter, scope and row filter, or the refusal and its reason (422 naming the filter,
        403 without any role binding)."""
        if getattr(principal, "bindings", None) == ():
            reason = f"user {principal.name!r} has no role binding"
            return JSONResponse(status_code=403, content={"detail": reason, "needed": "any role binding"}), reason
        now_ns = time.time_ns()  # relative `since`/`until` stay anchored here when the scope is swapped
        try:
            flt = live_flow_filter(filters)
            scope = scope_for(principal)
            return _Opened(flt, scope, subscription_filter(flt, scope, now_ns), now_ns)
        except FilterValueError as exc:
            return _unprocessable(exc.parameter, exc.value, str(exc)), str(exc)

    def watch(conn: HTTPConnection, principal: Any, opened: _Opened, sub: LiveSubscription) -> asyncio.Task[StreamEnd]:
        def widened(new_scope: Any) -> None:
            sub.accept = subscription_filter(opened.filter, new_scope, opened.now_ns)

        access = StreamAccess(principal, opened.scope, scope_for, reauthenticator(conn), widened, period)
        return asyncio.create_task(access.until_lost())

    @router.get(
        STREAM_PATH,
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "jsonpb flows as SSE events"},
            401: {"description": "no or bad credentials, or a token in the URL"},
            429: {"description": "too many failed authentications from this client (Retry-After)"},
        },
        summary="Live flows as Server-Sent Events",
        description=(
            "Flows as they are stored, filtered like /api/v1/flows and limited to the caller's scope (peers "
            "outside it redacted). Each `data:` event is one jsonpb GetFlowsResponse; an event named "
            '`missed` carries `{"missed": N}` when this client fell behind and N flows were dropped for it. '
            "Access is re-checked every few seconds (at most 5): when the token is revoked or the scope "
            'narrows, a last event named `closed` carries `{"closed": "revoked"|"narrowed"|"unverified", '
            '"detail": ...}` and the stream ends. The same path is a WebSocket (one text message per flow or '
            "gap; closed with code 1008 and the reason). Clients that cannot set headers pass a `ticket` "
            "from POST /api/v1/stream-tickets; tokens in URLs are refused."
        ),
    )
    @accepts_stream_tickets
    async def stream_sse(
        request: Request,
        filters: dict[str, Any] = Depends(live_filter),
        principal: Any = Depends(principal_dependency),
        ticket: str | None = Query(None, description="a stream ticket (POST /api/v1/stream-tickets), single use"),
    ) -> Any:
        del ticket  # read by the authentication dependency
        opened = opening(principal, filters)
        if isinstance(opened, tuple):
            return opened[0]
        sub = hub.subscribe(opened.accept, queue_flows)
        _log_opened("sse", principal, filters, hub.subscriber_count)
        lost = watch(request, principal, opened, sub)

        async def events() -> AsyncIterator[str]:
            try:
                yield ": netwarden live flows\n\n"  # flushes headers at once: the client knows it is subscribed
                while True:
                    getter = asyncio.ensure_future(sub.next_batch(timeout=keepalive_s))
                    await asyncio.wait({getter, lost}, return_when=asyncio.FIRST_COMPLETED)
                    if lost.done():  # checked first: rows queued under the old access are not sent
                        getter.cancel()
                        yield lost.result().sse_event()
                        return
                    batch = getter.result()
                    if batch is None:
                        return
                    if not batch:
                        yield ": keepalive\n\n"
                        continue
                    parts = []
                    for message in batch:
                        if isinstance(message, Missed):
                            parts.append(f"event: missed\ndata: {message.to_json()}\n\n")
                        else:
                            parts.append(f"data: {hub.text_of(message)}\n\n")
                    SENT.labels("sse").inc(len(batch))
                    yield "".join(parts)
            finally:
                lost.cancel()
                sub.close()
                _log_closed("sse", principal, sub)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @accepts_stream_tickets
    async def stream_ws(
        websocket: WebSocket,
        filters: dict[str, Any] = Depends(live_filter),
        principal: Any = Depends(principal_dependency),
        ticket: str | None = Query(None, description="a stream ticket (POST /api/v1/stream-tickets), single use"),
    ) -> None:
        del ticket  # read by the authentication dependency
        opened = opening(principal, filters)
        if isinstance(opened, tuple):
            await _reject(websocket, *opened)
            return
        # Subscribed before the handshake completes: a client that sees the connection open misses nothing.
        sub = hub.subscribe(opened.accept, queue_flows)
        try:
            await websocket.accept()
        except BaseException:
            sub.close()
            raise
        _log_opened("websocket", principal, filters, hub.subscriber_count)
        closed_by_client = asyncio.create_task(_wait_disconnect(websocket))
        lost = watch(websocket, principal, opened, sub)
        try:
            while not closed_by_client.done():
                getter = asyncio.ensure_future(sub.next_batch())
                await asyncio.wait({getter, closed_by_client, lost}, return_when=asyncio.FIRST_COMPLETED)
                if lost.done():  # checked first: rows queued under the old access are not sent
                    getter.cancel()
                    await websocket.close(code=WS_POLICY_VIOLATION, reason=lost.result().close_reason())
                    break
                if not getter.done():
                    getter.cancel()
                    break
                batch = getter.result()
                if batch is None:
                    await websocket.close()
                    break
                for message in batch:
                    text = message.to_json() if isinstance(message, Missed) else hub.text_of(message)
                    await websocket.send_text(text)
                SENT.labels("websocket").inc(len(batch))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away mid-send
        finally:
            lost.cancel()
            sub.close()
            _log_closed("websocket", principal, sub)
            closed_by_client.cancel()

    router.add_api_websocket_route(STREAM_PATH, stream_ws, name="stream_ws")
    return router


def _log_opened(transport: str, principal: Any, filters: Mapping[str, Any], subscribers: int) -> None:
    log.info(
        "live stream opened transport=%s principal=%s filters=%s subscribers=%d",
        transport,
        getattr(principal, "name", principal),
        json.dumps(dict(filters), default=str, sort_keys=True),
        subscribers,
    )


def _log_closed(transport: str, principal: Any, sub: LiveSubscription) -> None:
    log.info(
        "live stream closed transport=%s principal=%s delivered=%d missed=%d",
        transport,
        getattr(principal, "name", principal),
        sub.delivered,
        sub.missed_total,
    )


async def _wait_disconnect(websocket: WebSocket) -> None:
    # Clients send nothing; reading is how a close or a dropped connection is noticed.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


async def _reject(websocket: WebSocket, response: JSONResponse, reason: str) -> None:
    """Refuse the handshake with an HTTP response where the server supports it, else close 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=WS_POLICY_VIOLATION, reason=reason[:120])


__all__ = [
    "STREAM_PATH",
    "EnrichedTopicFeed",
    "LiveHub",
    "LiveSubscription",
    "Missed",
    "RowScope",
    "StoredRow",
    "decode_enriched",
    "flow_predicate",
    "live_router",
    "stored_rows",
    "subscription_filter",
    "table_rows",
]

"""`netwarden flows`: flow history from ClickHouse, with `hubble observe` filters and output.

Output: `-o jsonpb` prints one compact GetFlowsResponse per line in hubble's own jsonpb form; `-o json` is
an alias of jsonpb, as in `hubble observe` (pipe into `jq` for pretty output); `-o table` (default) prints
hubble's TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY columns. Like hubble, the newest N matching flows
are selected and printed oldest first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import urlencode

from netwarden.cli import CommandError
from query_api.app import jsonpb_line
from query_api.flow_query import DEFAULT_LAST, FilterValueError, FlowFilter
from query_api.store import DataDirLockedError, FlowStore, clickhouse_path, open_clickhouse
from schemas.flow_record import L4_PROTOCOLS, TCP_FLAG_NAMES
from schemas.flow_render import ip_text, row_time_ns, row_to_jsonpb
from schemas.hubble.flow import flow_pb2

CLICKHOUSE_ENV = "NETWARDEN_CLICKHOUSE"
DEFAULT_API = "http://127.0.0.1:8080"


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser(
        "flows",
        help="query flow history (hubble observe filters)",
        description=(
            "Flow history with `hubble observe` filter meanings: --namespace, --pod and --port match the "
            "source or the destination side (combined per side, as hubble does). Prints the newest N "
            "matching flows (--last, default 20) oldest first."
        ),
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"netwarden data directory (reads DIR/clickhouse); "
        f"without it, the ClickHouse server in ${CLICKHOUSE_ENV}",
    )
    p.add_argument("--cluster", metavar="C", help="flows collected from this cluster")
    p.add_argument("--namespace", metavar="NS", help="flows from or to this namespace")
    p.add_argument(
        "--pod",
        metavar="P",
        help="flows from or to pods named with this prefix: [namespace/]prefix "
        "(namespace: --namespace, else 'default')",
    )
    p.add_argument(
        "--verdict", metavar="V", help="FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED"
    )
    p.add_argument("--protocol", metavar="P", help="tcp, udp, sctp, icmp (v4 or v6), icmpv4, icmpv6")
    p.add_argument("--port", metavar="N", help="source or destination port (TCP/UDP/SCTP)")
    p.add_argument(
        "--since", metavar="T", help="RFC 3339 time or a duration ago (30s, 5m, 2h, 1d, 1w); inclusive"
    )
    p.add_argument("--until", metavar="T", help="RFC 3339 time or a duration ago; inclusive")
    count = p.add_mutually_exclusive_group()
    count.add_argument(
        "--last", metavar="N", default=None, help=f"newest N matching flows (default {DEFAULT_LAST})"
    )
    count.add_argument("--all", action="store_true", help="every matching flow")
    p.add_argument(
        "-o",
        "--output",
        choices=("jsonpb", "json", "table"),
        default="table",
        help="jsonpb: one GetFlowsResponse per line (hubble's form); json: alias of jsonpb, "
        "as in hubble; table: human-readable columns (default)",
    )
    p.set_defaults(handler=run_flows)


def _filter_from_args(args: argparse.Namespace) -> FlowFilter:
    last: int | str | None = None if args.all else (args.last if args.last is not None else DEFAULT_LAST)
    return FlowFilter(
        cluster=args.cluster,
        namespace=args.namespace,
        pod=args.pod,
        verdict=args.verdict,
        protocol=args.protocol,
        port=args.port,
        since=args.since,
        until=args.until,
        last=last,
    )


def _api_hint(args: argparse.Namespace) -> str:
    query = {
        k: getattr(args, k)
        for k in ("cluster", "namespace", "pod", "verdict", "protocol", "port", "since", "until")
        if getattr(args, k) is not None
    }
    query["limit"] = args.last if args.last is not None else DEFAULT_LAST
    query["format"] = "jsonpb"
    return f"curl '{DEFAULT_API}/api/v1/flows?{urlencode(query)}'"


def _open_store(args: argparse.Namespace) -> FlowStore:
    dsn = None if args.data_dir else os.environ.get(CLICKHOUSE_ENV)
    if not args.data_dir and not dsn:
        raise CommandError(f"--data-dir DIR is required (or set {CLICKHOUSE_ENV} to a ClickHouse URL)")
    if args.data_dir and not os.path.isdir(clickhouse_path(args.data_dir)):
        raise CommandError(
            f"--data-dir {args.data_dir}: no flow history there (no {clickhouse_path(args.data_dir)}); "
            "run `netwarden up` or `netwarden ingest` with this data directory first"
        )
    try:
        client = open_clickhouse(args.data_dir, dsn)
    except DataDirLockedError:
        raise CommandError(
            f"--data-dir {args.data_dir}: the flow store is in use by a running `netwarden up` (chDB allows one "
            f"process per data directory); query it through its API instead, e.g. {_api_hint(args)}"
        ) from None
    except Exception as exc:
        raise CommandError(f"cannot open the flow store: {exc}") from None
    return FlowStore(client)


def run_flows(args: argparse.Namespace) -> int:
    flt = _filter_from_args(args)
    store = _open_store(args)
    try:
        if args.data_dir:
            store.ensure_schema()  # a data dir from before the first flow: empty history, not an error
        rows = store.query_flows(flt)
    except FilterValueError as exc:
        raise CommandError(f"--{exc.parameter}: {exc.reason}") from None
    finally:
        store.close()
    rows.reverse()  # newest N were selected; print them in time order, like hubble
    try:
        if args.output == "table":
            write_table(rows, sys.stdout)
        else:
            for row in rows:
                sys.stdout.write(jsonpb_line(row_to_jsonpb(row)) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `netwarden flows | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# ---- table output ----------------------------------------------------------------------------------

# monitor trace observation points by event sub_type (cilium pkg/monitor/api TraceObservationPoints)
_TRACE_POINTS = (
    "to-endpoint",
    "to-proxy",
    "to-host",
    "to-stack",
    "to-overlay",
    "from-endpoint",
    "from-proxy",
    "from-host",
    "from-stack",
    "from-overlay",
    "from-network",
    "to-network",
    "from-crypto",
    "to-crypto",
)
_HUBBLE_FLAG_ORDER = ("SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
_ICMP_TYPES = {
    3: {0: "EchoReply", 3: "DestinationUnreachable", 5: "Redirect", 8: "EchoRequest", 11: "TimeExceeded"},
    4: {
        1: "DestinationUnreachable",
        3: "TimeExceeded",
        128: "EchoRequest",
        129: "EchoReply",
        133: "RouterSolicitation",
        134: "RouterAdvertisement",
        135: "NeighborSolicitation",
        136: "NeighborAdvertisement",
    },
}
_EVENT_DROP, _EVENT_TRACE, _EVENT_POLICY_VERDICT, _EVENT_TRACE_SOCK = 1, 4, 5, 7


def _enum_name(enum: Any, number: int) -> str:
    value = enum.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else str(number)


def _endpoint_text(row: Mapping[str, Any], side: str) -> str:
    ns, pod = row.get(f"{side}_namespace") or "", row.get(f"{side}_pod") or ""
    names = row.get(f"{side}_names") or ()
    if pod:
        host = f"{ns}/{pod}" if ns else pod
    elif names:
        host = names[0]
    else:
        host = ip_text(row.get(f"ip_{side}"), int(row.get("ip_version") or 0)) or "N/A"
        if ":" in host:
            host = f"[{host}]"
    port = int(row.get(f"{side}_port") or 0)
    if port:
        host += f":{port}"
    reserved = [
        label.split(":", 1)[1] for label in row.get(f"{side}_labels") or () if label.startswith("reserved:")
    ]
    if reserved and not pod:
        host += f" ({reserved[0]})"
    return host


def _flow_type_text(row: Mapping[str, Any]) -> str:
    if int(row.get("flow_type") or 0) == 2:
        return "l7-" + _enum_name(flow_pb2.L7FlowType, int(row.get("l7_type") or 0)).lower().replace("_", "-")
    etype, sub = int(row.get("event_type") or 0), int(row.get("event_sub_type") or 0)
    if etype == _EVENT_DROP:
        reason = int(row.get("drop_reason_desc") or 0) or sub
        return _enum_name(flow_pb2.DropReason, reason).replace("_", " ").capitalize()
    if etype == _EVENT_TRACE:
        return _TRACE_POINTS[sub] if 0 <= sub < len(_TRACE_POINTS) else f"trace:{sub}"
    if etype == _EVENT_POLICY_VERDICT:
        direction = int(row.get("traffic_direction") or 0)
        return "policy-verdict" + (
            f":{_enum_name(flow_pb2.TrafficDirection, direction)}" if direction else ""
        )
    if etype == _EVENT_TRACE_SOCK:
        return "trace-sock"
    return f"event:{etype}"


def _summary_text(row: Mapping[str, Any]) -> str:
    proto = int(row.get("l4_protocol") or 0)
    if int(row.get("flow_type") or 0) == 2:
        return "L7 " + _enum_name(flow_pb2.L7FlowType, int(row.get("l7_type") or 0))
    if proto == 1:
        bits = int(row.get("tcp_flags") or 0)
        flags = [n for n in _HUBBLE_FLAG_ORDER if bits & (1 << TCP_FLAG_NAMES.index(n))]
        return "TCP Flags: " + ", ".join(flags) if flags else "TCP"
    if proto in (3, 4):
        itype, code = int(row.get("icmp_type") or 0), int(row.get("icmp_code") or 0)
        name = _ICMP_TYPES[proto].get(itype)
        return f"{L4_PROTOCOLS[proto]} {name}" if name else f"{L4_PROTOCOLS[proto]} type {itype} code {code}"
    return L4_PROTOCOLS.get(proto, "")


def _timestamp_text(row: Mapping[str, Any]) -> str:
    ns = row_time_ns(row)
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.UTC)
    # Go's time.StampMilli ("Jan _2 15:04:05.000"), as hubble prints it; UTC.
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S}.{(ns % 1_000_000_000) // 1_000_000:03d}"


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    out = [["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]]
    for row in rows:
        out.append(
            [
                _timestamp_text(row),
                _endpoint_text(row, "src"),
                _endpoint_text(row, "dst"),
                _flow_type_text(row),
                _enum_name(flow_pb2.Verdict, int(row.get("verdict") or 0)),
                _summary_text(row),
            ]
        )
    return out


def _printable(text: str) -> str:
    # Names come from the clusters' API servers: never let one write terminal control sequences.
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def write_table(rows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    cells = [[_printable(c) for c in r] for r in table_rows(rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]) - 1)]
    for r in cells:
        out.write("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "   " + r[-1] + "\n")

"""`netwarden flows`: flow history from ClickHouse or a netwarden API, with `hubble observe` filters and output.

Sources: `--server URL --token T` (or NETWARDEN_SERVER / NETWARDEN_TOKEN) queries a running API, which
applies the token's role scope; `--data-dir DIR` (or NETWARDEN_CLICKHOUSE) reads the flow store directly
(operator access: everything). `--follow` streams live flows from the API
(netwarden.commands.flows_follow).

Output: `-o compact` (default, as in `hubble observe`) prints hubble's compact line per flow
(schemas.flow_compact; `--print-node-name`, `--print-policy-names` as in hubble); `-o jsonpb` prints one
compact GetFlowsResponse per line in hubble's own jsonpb form; `-o json` the same lines plus netwarden's
enrichment under `netwarden` (each side's project/workspace, the desired and staged policy sets' verdicts
with attribution when evaluated, `verdict_mismatch`; schemas.flow_render), pipe into `jq` for pretty output;
`-o table` prints hubble's TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY columns. Like hubble, the
newest N matching flows are selected and printed oldest first. History (data dir or `--server`) and
`--follow` print each flow through the same renderers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import urlencode

from netwarden.cli import CommandError
from netwarden.commands.flows_follow import FILTER_PARAMS
from query_api.flow_query import DEFAULT_LAST, FilterValueError, FlowFilter, parse_last
from query_api.store import DataDirLockedError, FlowStore, clickhouse_path, open_clickhouse
from schemas.flow_compact import TRACE_POINTS, compact_line
from schemas.flow_record import L4_PROTOCOLS, TCP_FLAG_NAMES
from schemas.flow_render import (
    ip_text,
    jsonpb_line,
    row_time_ns,
    row_to_json,
    row_to_jsonpb,
    strip_enrichment,
)
from schemas.hubble.flow import flow_pb2

CLICKHOUSE_ENV = "NETWARDEN_CLICKHOUSE"
SERVER_ENV = "NETWARDEN_SERVER"
TOKEN_ENV = "NETWARDEN_TOKEN"
DEFAULT_API = "http://127.0.0.1:8080"
API_PAGE = 10_000  # query_api.app.MAX_LIMIT
HTTP_TIMEOUT_S = 60.0


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
    p.add_argument(
        "--server",
        metavar="URL",
        help=f"query a netwarden API (e.g. {DEFAULT_API}) instead of a data dir; env {SERVER_ENV}",
    )
    p.add_argument("--token", metavar="T", help=f"API token for --server (Bearer); env {TOKEN_ENV}")
    p.add_argument(
        "--follow", action="store_true", help="stream live flows from --server as they arrive (Ctrl-C stops)"
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
    p.add_argument(
        "--label",
        metavar="K=V",
        action="append",
        default=[],
        help="endpoint label, either side (k=v matches any label source, e.g. k8s:k=v); repeatable: "
        "flows with any of them (OR, like hubble)",
    )
    p.add_argument("--workload", metavar="[KIND/]NAME", help="flows from or to this workload")
    p.add_argument("--ip", metavar="ADDR", help="flows from or to this IP address or CIDR")
    p.add_argument("--drop-reason", metavar="R", help="drop reason name (POLICY_DENIED, ...) or number")
    p.add_argument("--direction", metavar="D", help="traffic direction: ingress or egress")
    p.add_argument("--l7-type", metavar="T", help="L7 flow type: request, response or sample")
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
        choices=("compact", "jsonpb", "json", "table"),
        default="compact",
        help="compact: one line per flow, as `hubble observe` prints (default); jsonpb: one GetFlowsResponse "
        "per line (hubble's form); json: the same plus netwarden's enrichment (ownership, desired/staged "
        "verdicts) under `netwarden`; table: hubble's columns",
    )
    p.add_argument(
        "--print-node-name", action="store_true", help="compact: the node's name after the time, as [node]"
    )
    p.add_argument(
        "--print-policy-names",
        action="store_true",
        help="compact: the policies that allowed or denied a policy verdict (BY name (Kind), ...)",
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
        labels=tuple(args.label),
        workload=args.workload,
        ip=args.ip,
        drop_reason=args.drop_reason,
        direction=args.direction,
        l7_type=args.l7_type,
    )


def _api_hint(args: argparse.Namespace) -> str:
    query = {
        k: getattr(args, k)
        for k in ("cluster", "namespace", "pod", "verdict", "protocol", "port", "since", "until")
        if getattr(args, k) is not None
    }
    query["limit"] = args.last if args.last is not None else DEFAULT_LAST
    query["format"] = "jsonpb"
    return (
        f"curl -H 'Authorization: Bearer $NETWARDEN_TOKEN' '{DEFAULT_API}/api/v1/flows?{urlencode(query)}'"
        f" or `netwarden flows --server {DEFAULT_API} ...`"
    )


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


def _flag(parameter: str) -> str:
    return "--" + ("last" if parameter == "limit" else parameter).replace("_", "-")


def _api_error(response: Any) -> CommandError:
    """One line from the API's JSON error: 401/403 detail, or 422 naming the flag."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text.strip()[:200]
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = detail[0].get("loc") or ["", ""]
        return CommandError(f"{_flag(str(loc[-1]))}: {detail[0].get('msg', 'invalid value')}")
    what = {401: "the server refused the token", 403: "permission denied"}.get(response.status_code)
    what = what or f"server error {response.status_code}"
    text = str(detail)
    # The API's own message often starts with the same words: say them once.
    return CommandError(text if text.lower().startswith(what) else f"{what}: {text}")


def fetch_from_api(server: str, token: str | None, flt: FlowFilter) -> list[dict[str, Any]]:
    """The newest `flt.last` matching flows (all when None) from GET /api/v1/flows, newest first, in
    jsonpb form. Pages with the API's cursor, so --all gets everything however much there is."""
    import httpx

    params: dict[str, Any] = {}
    for field, name in FILTER_PARAMS.items():  # one map for history and --follow
        value = getattr(flt, field, None)
        if value not in (None, ()):
            params[name] = list(value) if isinstance(value, tuple) else value
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = server if "://" in server else f"http://{server}"
    remaining = None if flt.last is None else int(flt.last)
    flows: list[dict[str, Any]] = []
    cursor: str | None = None
    try:
        with httpx.Client(base_url=base.rstrip("/"), headers=headers, timeout=HTTP_TIMEOUT_S) as client:
            while remaining is None or remaining > 0:
                page = API_PAGE if remaining is None else min(remaining, API_PAGE)
                query = {**params, "limit": page, "format": "json"} | ({"cursor": cursor} if cursor else {})
                response = client.get("/api/v1/flows", params=query)
                if response.status_code != 200:
                    raise _api_error(response)
                body = response.json()
                flows.extend(body["flows"])
                remaining = None if remaining is None else remaining - len(body["flows"])
                cursor = body.get("next_cursor")
                if not cursor:
                    break
    except httpx.HTTPError as exc:
        raise CommandError(f"--server {server}: {exc}") from None
    return flows


def jsonpb_to_rows(flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """API flows back to stored-row shape (through the pipeline's own decoder) for the table printer."""
    from google.protobuf import json_format

    from schemas.hubble.observer import observer_pb2
    from streams.decode import FlowDecoder

    raw = [
        json_format.ParseDict(strip_enrichment(f), observer_pb2.GetFlowsResponse()).SerializeToString()
        for f in flows
    ]
    batch = FlowDecoder().decode("", raw)
    return [{**row, "time_ns": row_time_ns(row)} for row in batch.table.to_pylist()]


def run_flows(args: argparse.Namespace) -> int:
    if args.follow:
        try:
            from netwarden.commands.flows_follow import follow
        except ImportError:
            raise CommandError("--follow: live streaming is not available in this build") from None
        return int(follow(args) or 0)
    flt = _filter_from_args(args)
    server = args.server or (None if args.data_dir else os.environ.get(SERVER_ENV))
    if server:
        token = args.token or os.environ.get(TOKEN_ENV)
        try:
            flt = dataclasses.replace(flt, last=parse_last(flt.last))
        except FilterValueError as exc:
            raise CommandError(f"--{exc.parameter}: {exc.reason}") from None
        flows = fetch_from_api(server, token, flt)
        flows.reverse()  # newest N were selected; print them in time order, like hubble
        _print(args, jsonpb=flows)
        return 0
    store = _open_store(args)
    try:
        if args.data_dir:
            store.ensure_schema()  # a data dir from before the first flow: empty history, not an error
        rows = store.query_flows(flt)
    except FilterValueError as exc:
        raise CommandError(f"{_flag(exc.parameter)}: {exc.reason}") from None
    finally:
        store.close()
    rows.reverse()  # newest N were selected; print them in time order, like hubble
    _print(args, rows=rows)
    return 0


def compact_options(args: argparse.Namespace) -> dict[str, bool]:
    """compact_line()'s options from the flags (history and --follow)."""
    return {
        "node_name": bool(getattr(args, "print_node_name", False)),
        "policy_names": bool(getattr(args, "print_policy_names", False)),
    }


def _print(
    args: argparse.Namespace,
    rows: list[dict[str, Any]] | None = None,
    jsonpb: list[dict[str, Any]] | None = None,
) -> None:
    try:
        if args.output in ("table", "compact"):
            rows = rows if rows is not None else jsonpb_to_rows(jsonpb or [])
            if args.output == "table":
                write_table(rows, sys.stdout)
            else:
                options = compact_options(args)
                sys.stdout.writelines(compact_line(row, **options) + "\n" for row in rows)
        else:
            if jsonpb is not None:  # from the API, enrichment included (format=json)
                lines = jsonpb if args.output == "json" else [strip_enrichment(f) for f in jsonpb]
            else:
                render = row_to_json if args.output == "json" else row_to_jsonpb
                lines = [render(row) for row in rows or []]
            for obj in lines:
                sys.stdout.write(jsonpb_line(obj) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `netwarden flows | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ---- table output ----------------------------------------------------------------------------------

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
        host = ip_text(row.get(f"ip_{side}"), int(row.get("ip_version") or 0))
        if ":" in host:
            host = f"[{host}]"
        elif not host:
            # A redacted peer has no pod and no IP, but its namespace is still the caller's to see.
            host = f"{ns}/(redacted)" if ns else "N/A"
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
        return TRACE_POINTS[sub] if 0 <= sub < len(TRACE_POINTS) else f"trace:{sub}"
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

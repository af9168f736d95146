"""`netwarden flows --follow`: live flows from a netwarden API's WebSocket stream, printed as they arrive.

`netwarden flows` dispatches here when `--follow` is given (with `--server URL --token T`, or
NETWARDEN_SERVER / NETWARDEN_TOKEN). The filters are those of `netwarden flows` and mean the same; the
server applies them together with the caller's scope. Output: `-o jsonpb`/`json` prints each flow as
one compact GetFlowsResponse line (hubble's jsonpb); `-o table` prints hubble's columns, one line per
flow. When the client falls behind, the server drops flows for it and says how many: printed on
stderr, never mixed into the flow output. A dropped connection is retried with backoff; the stream
ends when the server closes it normally. The token goes in the Authorization header, never in the URL.
When the server ends the stream because the caller's access changed, a narrowed scope reconnects at once
(within the new scope, said on stderr) and a revoked token is an error naming the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

SERVER_ENV = "NETWARDEN_SERVER"
TOKEN_ENV = "NETWARDEN_TOKEN"
STREAM_PATH = (
    "/api/v1/flows/stream"  # query_api.live.STREAM_PATH (not imported: the CLI needs no server deps)
)
RETRY_MAX_S = 10.0
ACCESS_CHANGED = 1008  # close code of a stream whose access was revoked or narrowed (query_api.stream_access)
# argparse attribute or FlowFilter field -> API query parameter, for history (`flows --server`) and
# the live stream; names absent from the object at hand are simply not sent.
FILTER_PARAMS = {
    "cluster": "cluster",
    "namespace": "namespace",
    "pod": "pod",
    "workload": "workload",
    "label": "label",
    "labels": "label",
    "ip": "ip",
    "verdict": "verdict",
    "drop_reason": "drop_reason",
    "protocol": "protocol",
    "port": "port",
    "direction": "direction",
    "l7_type": "l7_type",
    "since": "since",
    "until": "until",
}
# Column widths of the streamed table (no look-ahead is possible); longer cells just push the line.
TABLE_WIDTHS = (19, 44, 44, 16, 10)


class FollowError(Exception):
    """The server refused the stream (auth, bad filter): retrying would not help."""


def stream_url(server: str, args: argparse.Namespace) -> str:
    """ws(s)://host/api/v1/flows/stream?filters, from an http(s):// (or ws(s)://) server URL."""
    parts = urlsplit(server if "://" in server else f"http://{server}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise FollowError(f"--server: expected http(s)://host[:port], got {server!r}")
    query: list[tuple[str, str]] = []
    for attr, param in FILTER_PARAMS.items():
        value = getattr(args, attr, None)
        if value is None or value == [] or value == ():
            continue
        values = value if isinstance(value, list | tuple) else [value]
        query += [(param, str(v)) for v in values]
    path = parts.path.rstrip("/") + STREAM_PATH
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def _refusal(body: bytes, status: int) -> str:
    try:
        detail = json.loads(body or b"{}").get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list) and detail and isinstance(detail[0], Mapping):
        loc = detail[0].get("loc") or ["", "?"]
        return f"--{str(loc[-1]).replace('_', '-')}: {detail[0].get('msg', 'invalid value')}"
    if status in (401, 403) and not detail:
        return f"the server refused the token (HTTP {status})"
    return f"the server refused the stream (HTTP {status}){': ' + str(detail) if detail else ''}"


class FlowPrinter:
    def __init__(self, output: str, out: TextIO) -> None:
        self.output = output
        self.out = out
        self._header_done = False
        self.compact_options: dict[str, bool] = {}  # netwarden.commands.flows.compact_options

    def flow(self, message: dict[str, Any]) -> None:
        if self.output == "table":
            self._table_line(message)
        elif self.output == "compact":
            from schemas.flow_compact import compact_line

            self.out.write(compact_line(jsonpb_to_row(message), **self.compact_options) + "\n")
        else:
            self.out.write(json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n")
        self.out.flush()

    def _table_line(self, message: dict[str, Any]) -> None:
        from netwarden.commands.flows import _printable, table_rows

        cells = table_rows([jsonpb_to_row(message)])
        if self._header_done:
            cells = cells[1:]
        self._header_done = True
        for r in cells:
            r = [_printable(c) for c in r]
            line = "   ".join(c.ljust(w) for c, w in zip(r[:-1], TABLE_WIDTHS, strict=False))
            self.out.write(f"{line}   {r[-1]}\n")


def jsonpb_to_row(message: Mapping[str, Any]) -> dict[str, Any]:
    """A streamed jsonpb flow as a stored-row mapping (netwarden.commands.flows' table reads rows).

    Goes through the pipeline's own decoder, so the table shows exactly what history would show.
    """
    from google.protobuf import json_format

    from query_api.live import table_rows
    from schemas.hubble.observer import observer_pb2
    from streams.decode import FlowDecoder

    resp = json_format.ParseDict(message, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=True)
    decoded = FlowDecoder().decode("", [resp.SerializeToString()])
    rows = table_rows(decoded.table)
    if not rows:
        raise ValueError("the server sent a flow the decoder rejects")
    return rows[0]


async def follow_stream(url: str, token: str | None, printer: FlowPrinter, err: TextIO) -> None:
    try:
        import websockets
    except ImportError:
        raise FollowError("--follow needs the `websockets` package (pip install websockets)") from None

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    delay = 0.5
    while True:
        try:
            async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
                delay = 0.5
                async for text in ws:
                    message = json.loads(text)
                    if "missed" in message:
                        print(
                            f"netwarden: missed {message['missed']} flows (this client fell behind)", file=err
                        )
                    else:
                        printer.flow(message)
            return  # the server closed the stream normally
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            if status < 500:
                raise FollowError(_refusal(exc.response.body or b"", status)) from None
            print(f"netwarden: stream unavailable (HTTP {status}); retrying in {delay:.1f}s", file=err)
        except websockets.ConnectionClosedError as exc:
            reason = exc.rcvd.reason if exc.rcvd is not None and exc.rcvd.code == ACCESS_CHANGED else None
            if reason is None:
                print(f"netwarden: stream lost ({exc}); reconnecting in {delay:.1f}s", file=err)
            elif reason.startswith("access narrowed"):
                # The server re-checks access while streaming: go on within the caller's current scope.
                print(f"netwarden: {reason}; reconnecting with the current scope", file=err)
                continue
            else:  # revoked, or access could not be re-checked: reconnecting would be refused or unsafe
                raise FollowError(f"the server ended the stream: {reason}") from None
        except (OSError, websockets.InvalidHandshake) as exc:
            print(f"netwarden: stream lost ({exc}); reconnecting in {delay:.1f}s", file=err)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


def follow(args: argparse.Namespace) -> int:
    """Entry point for `netwarden flows --follow`."""
    from netwarden.cli import CommandError

    server = getattr(args, "server", None) or os.environ.get(SERVER_ENV)
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV)
    if not server:
        raise CommandError(
            f"--follow needs --server URL (or {SERVER_ENV}): live flows come from a running API"
        )
    try:
        url = stream_url(server, args)
        printer = FlowPrinter(getattr(args, "output", "compact") or "compact", sys.stdout)
        from netwarden.commands.flows import compact_options

        printer.compact_options = compact_options(args)
        asyncio.run(follow_stream(url, token, printer, sys.stderr))
    except FollowError as exc:
        raise CommandError(str(exc)) from None
    except BrokenPipeError:  # `netwarden flows --follow | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0

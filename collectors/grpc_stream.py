"""One server-streaming gRPC call over HTTP/2, framed here: the collector's receive path.

Why not grpclib's client (which the demo server uses): its per-message receive (two buffered reads,
deadline wrapper, event dispatch, two awaits) measured ~17 us of the collector's ~24 us per flow; and
not the `h2` state machine either: it formats every received frame for a debug log nobody reads
(hexlifying the whole payload), ~15% of the collector's CPU. A client that sends one request and reads
one stream needs little of HTTP/2 (RFC 9113): the preface and SETTINGS, HEADERS (HPACK, from the
`hpack` package) and DATA, SETTINGS/PING acks, WINDOW_UPDATEs for what it consumed, RST_STREAM and
GOAWAY as errors. gRPC's length-prefixed messages are cut out of the DATA and handed over
synchronously, a list per socket read. Measured, the whole collector per flow (200k demo flows from a
hubble-serve process, shipping discarded): 24.9 us with grpclib's client, 14.4 us on h2, 6-8 us here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable
from urllib.parse import unquote

import hpack

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_WINDOW = 16 * 1024 * 1024  # what we let the server send ahead; replenished every quarter consumed
_DEFAULT_WINDOW = 65_535
_STREAM = 1  # the one stream of this connection
# Frame types and flags (RFC 9113 section 6).
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _CONTINUATION = 0, 1, 3, 4, 5, 6, 7, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_HEADER = struct.Struct(">HBBBI")  # 24-bit length as 16+8, type, flags, stream id (R bit masked)
_SETTING = struct.Struct(">HI")
_MESSAGE_PREFIX = struct.Struct(">BI")  # gRPC: compressed flag, message length
_WINDOW_UPDATE = 8


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


class GrpcCallError(Exception):
    """The call ended with a non-OK gRPC status, an HTTP error, or a broken connection."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{_STATUS_NAMES.get(status, status)}: {message}")
        self.status = status
        self.message = message


_STATUS_NAMES = {1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
                 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
                 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}

# Receives each read's complete messages; returns True to pause reading until `resume_reading()`.
OnMessages = Callable[[list[bytes]], bool]


class _CallProtocol(asyncio.Protocol):
    def __init__(self, path: str, authority: str, scheme: str, request: bytes, on_messages: OnMessages,
                 on_headers: Callable[[dict[str, str]], None] | None) -> None:
        self.path, self.authority, self.scheme, self.request = path, authority, scheme, request
        self.on_messages = on_messages
        self.on_headers = on_headers
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.decoder = hpack.Decoder()
        self.buf = bytearray()
        self.pending = b""  # an incomplete gRPC message carried over to the next DATA
        self.header_block: bytearray | None = None  # HEADERS awaiting CONTINUATION
        self.header_block_ends_stream = False
        self.got_response = False
        self.consumed = 0  # DATA bytes not yet returned to the server's window
        self.status: int | None = None
        self.status_message = ""

    # -- asyncio -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A follow stream may be quiet for long: the kernel's keepalive notices a peer that vanished
            # (~2 min) without gRPC PINGs, which servers rate-limit (grpc-go: GOAWAY too_many_pings).
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.selected_alpn_protocol() != "h2":
            self._fail(GrpcCallError(14, "the server did not negotiate HTTP/2 (ALPN h2)"))
            return
        settings = _SETTING.pack(2, 0) + _SETTING.pack(4, _WINDOW)  # no server push; stream window
        headers = hpack.Encoder().encode([
            (":method", "POST"), (":scheme", self.scheme), (":path", self.path), (":authority", self.authority),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "netwarden-collector"),
        ])
        transport.write(b"".join((
            _PREFACE,
            _frame(_SETTINGS, 0, 0, settings),
            _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _WINDOW - _DEFAULT_WINDOW)),
            _frame(_HEADERS, _END_HEADERS, _STREAM, headers),
            _frame(_DATA, _END_STREAM, _STREAM, len(self.request).to_bytes(5, "big") + self.request),
        )))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        messages: list[bytes] = []
        replies: list[bytes] = []
        try:
            while end - pos >= 9:
                hi, lo, kind, flags, stream = _HEADER.unpack_from(buf, pos)
                length = hi << 8 | lo
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                if kind == _DATA:
                    self.consumed += length
                    if stream == _STREAM:
                        payload = bytes(buf[start:pos])
                        if flags & _PADDED:
                            payload = payload[1:len(payload) - payload[0]]
                        self._cut(payload, messages)
                        if flags & _END_STREAM:
                            self._finish()
                else:
                    self._control(kind, flags, stream, bytes(buf[start:pos]), replies)
        except GrpcCallError as exc:
            self._fail(exc)
            return
        del buf[:pos]
        if self.consumed >= _WINDOW // 4:  # give the window back: connection and stream
            increment = struct.pack(">I", self.consumed)
            replies.append(_frame(_WINDOW_UPDATE, 0, 0, increment) + _frame(_WINDOW_UPDATE, 0, _STREAM, increment))
            self.consumed = 0
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
        if messages and self.on_messages(messages) and self.transport is not None and not self.done.done():
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(GrpcCallError(14, f"connection lost: {exc}" if exc else "connection closed by the server"))

    # -- HTTP/2 and gRPC -----------------------------------------------------------------------------

    def _cut(self, payload: bytes, out: list[bytes]) -> None:
        """Append the complete gRPC messages in `payload` (after what was pending) to `out`."""
        buf = self.pending + payload if self.pending else payload
        end, pos = len(buf), 0
        prefix = _MESSAGE_PREFIX.unpack_from
        append = out.append
        while end - pos >= 5:
            compressed, size = prefix(buf, pos)
            start = pos + 5
            pos = start + size
            if pos > end:
                pos = start - 5
                break
            if compressed:
                raise GrpcCallError(12, "compressed message, but no compression was offered")
            append(buf[start:pos])
        self.pending = buf[pos:] if pos < end else b""

    def _control(self, kind: int, flags: int, stream: int, payload: bytes, replies: list[bytes]) -> None:
        if kind == _HEADERS or kind == _CONTINUATION:
            if kind == _HEADERS:
                if flags & _PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & _PRIORITY:
                    payload = payload[5:]
                self.header_block = bytearray()
                self.header_block_ends_stream = bool(flags & _END_STREAM)
            if self.header_block is None:
                raise GrpcCallError(13, "HTTP/2 protocol error: CONTINUATION without HEADERS")
            self.header_block += payload
            if flags & _END_HEADERS:
                block, self.header_block = bytes(self.header_block), None
                # Decode every block, even of other streams: HPACK's table is per connection.
                headers = dict(self.decoder.decode(block))
                if stream == _STREAM:
                    self._headers(headers)
                    if self.header_block_ends_stream:
                        self._finish()
        elif kind == _SETTINGS:
            # Acknowledged, nothing to apply: the server's limits concern what we send (one small request
            # sent before they arrive, within the protocol's defaults).
            if not flags & _ACK:
                replies.append(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING:
            if not flags & _ACK:
                replies.append(_frame(_PING, _ACK, 0, payload))
        elif kind == _RST_STREAM:
            if stream == _STREAM:
                code = int.from_bytes(payload[:4], "big")
                raise GrpcCallError(14, f"stream reset by the server (HTTP/2 error {code})")
        elif kind == _GOAWAY:
            last_stream, code = struct.unpack_from(">II", payload)
            if code or (last_stream & 0x7FFFFFFF) < _STREAM:
                detail = payload[8:].decode(errors="replace")
                raise GrpcCallError(14, f"connection closed by the server (GOAWAY {code}{': ' + detail if detail else ''})")
        elif kind == _PUSH_PROMISE:
            raise GrpcCallError(13, "HTTP/2 protocol error: PUSH_PROMISE although push is disabled")
        # WINDOW_UPDATE, PRIORITY and unknown frame types need nothing: we send no more data.

    def _headers(self, headers: dict[str, str]) -> None:
        if not self.got_response:
            self.got_response = True
            if headers.get(":status") != "200":
                raise GrpcCallError(14, f"HTTP status {headers.get(':status')} from the server")
            if self.on_headers is not None:
                self.on_headers(headers)
        if "grpc-status" in headers:  # trailers, or a trailers-only response (an error before any message)
            self.status = int(headers["grpc-status"])
            self.status_message = unquote(headers.get("grpc-message", ""))

    def _finish(self) -> None:
        if self.done.done():
            return
        if self.status is None:
            self.done.set_exception(GrpcCallError(13, "stream ended without a gRPC status"))
        elif self.status != 0:
            self.done.set_exception(GrpcCallError(self.status, self.status_message))
        else:
            self.done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class ServerStream:
    """One unary-request, streamed-response call. `run()` returns when the server ends it with OK."""

    def __init__(self, host: str, port: int, path: str, request: bytes, on_messages: OnMessages, *,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 on_headers: Callable[[dict[str, str]], None] | None = None) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        authority = server_hostname or (f"[{host}]" if ":" in host else host)
        self._protocol = _CallProtocol(path, f"{authority}:{port}", "https" if ssl_context else "http",
                                       request, on_messages, on_headers)

    def resume_reading(self) -> None:
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            lambda: self._protocol, self.host, self.port, ssl=self.ssl_context,
            server_hostname=(self.server_hostname or self.host) if self.ssl_context else None)
        try:
            await self._protocol.done
        finally:
            transport = self._protocol.transport
            if transport is not None and not transport.is_closing():
                transport.close()

"""Length-delimited framing of serialized messages, as ClickHouse's Protobuf input format reads them.

Light on purpose (no ClickHouse or Arrow imports): producers (collectors) frame a batch once, so the sink
hands it to ClickHouse untouched (FlowBatch.framed).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain


def frame(payloads: Sequence[bytes]) -> bytes:
    """Length-delimited messages, as ClickHouse's Protobuf format reads them (iteration stays in C)."""
    try:
        prefixes = map(_VARINTS.__getitem__, map(len, payloads))
        return b"".join(chain.from_iterable(zip(prefixes, payloads, strict=True)))
    except IndexError:  # an entry of 64 KiB or more
        return b"".join(chain.from_iterable(zip(map(_varint, map(len, payloads)), payloads, strict=True)))


def unframe(framed: bytes) -> list[bytes]:
    """The entries of a framed stream (the slow path: bisecting a refused batch)."""
    out, pos, end = [], 0, len(framed)
    while pos < end:
        size = shift = 0
        while True:
            byte = framed[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        out.append(framed[pos : pos + size])
        pos += size
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_varint(n) for n in range(1 << 16)]

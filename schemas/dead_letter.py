"""The dead-letter record: what could not be decoded, why, and where it came from. Nothing is dropped silently."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeadLetter:
    reason: str  # one line naming what is wrong, e.g. "truncated JSON at column 120"
    origin: str  # where the record came from: "FILE:LINE", or "flows.raw[2]@1234#7" (partition, offset, entry)
    cluster: str
    payload: bytes  # the record exactly as received

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["payload"] = base64.b64encode(self.payload).decode()
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DeadLetter:
        doc = json.loads(raw)
        return cls(doc["reason"], doc["origin"], doc["cluster"], base64.b64decode(doc["payload"]))

"""Read `hubble observe -o jsonpb` captures: one GetFlowsResponse per line, every field optional.

A bad line never stops the file: it is returned with a one-line reason naming the file, the line and
what is wrong, so the caller can dead-letter it and go on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from schemas.hubble.observer import observer_pb2


@dataclass(frozen=True)
class CaptureLine:
    path: str
    line_no: int
    raw: bytes
    response: observer_pb2.GetFlowsResponse | None
    error: str | None  # set when response is None

    @property
    def origin(self) -> str:
        return f"{self.path}:{self.line_no}"


def parse_line(text: str) -> observer_pb2.GetFlowsResponse:
    """Parse one jsonpb line; raises ValueError with a reason a person can act on."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object (a GetFlowsResponse), got {type(doc).__name__}")
    try:
        return json_format.ParseDict(doc, observer_pb2.GetFlowsResponse())
    except json_format.ParseError as exc:
        if "has no field named" not in str(exc):
            # Wrong types and unknown enum names: the record cannot be stored faithfully.
            raise ValueError(f"not a valid GetFlowsResponse: {exc}") from None
    # Fields from a newer Hubble than our protos are tolerated (and dropped); their enums still are not.
    try:
        return json_format.ParseDict(doc, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(f"not a valid GetFlowsResponse: {exc}") from None


def read_capture(path: str | Path) -> Iterator[CaptureLine]:
    """Yield every non-blank line of a capture, parsed or with the reason it could not be."""
    name = str(path)
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            stripped = raw.strip()
            if not stripped:
                continue
            try:
                text = stripped.decode("utf-8")
                response = parse_line(text)
            except UnicodeDecodeError as exc:
                yield CaptureLine(name, line_no, stripped, None, f"{name}:{line_no}: not UTF-8 ({exc.reason})")
                continue
            except ValueError as exc:
                yield CaptureLine(name, line_no, stripped, None, f"{name}:{line_no}: {exc}")
                continue
            yield CaptureLine(name, line_no, stripped, response, None)

"""Read `hubble observe -o jsonpb` captures: one GetFlowsResponse per line, every field optional.

A bad line never stops the file: it is returned with a one-line reason naming the file, the line and
what is wrong, so the caller can dead-letter it and go on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor

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
    except RecursionError:  # found by tests/fuzz: nesting deeper than Python's stack crashed the reader
        raise ValueError("invalid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object (a GetFlowsResponse), got {type(doc).__name__}")
    try:
        response = _parse_dict(doc, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        if "has no field named" not in str(exc):
            # Wrong types and unknown enum names: the record cannot be stored faithfully.
            raise ValueError(f"not a valid GetFlowsResponse: {exc}") from None
        # Fields from a newer Hubble than our protos are tolerated (and dropped); their enums still are not.
        try:
            response = _parse_dict(doc, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise ValueError(f"not a valid GetFlowsResponse: {exc}") from None
    if response.WhichOneof("response_types") is None:
        # Nothing to store or count: without this the line would vanish without a trace (tests/fuzz).
        raise ValueError("not a valid GetFlowsResponse: holds no flow, node_status or lost_events")
    return response


def _parse_dict(doc: dict[str, Any], *, ignore_unknown_fields: bool) -> observer_pb2.GetFlowsResponse:
    try:
        return json_format.ParseDict(doc, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=ignore_unknown_fields)
    except json_format.ParseError as exc:
        # protobuf names the value instead of the field when an object is given as a list (found by tests/fuzz):
        # say where the shape is wrong, by path, when that is the problem.
        shape = _shape_problem(doc, observer_pb2.GetFlowsResponse.DESCRIPTOR, "")
        raise json_format.ParseError(shape or str(exc)) from None
    except (RecursionError, SystemError, UnicodeError) as exc:
        # protobuf's own failures on hostile input (found by tests/fuzz): a key with an unpaired surrogate
        # raises SystemError from upb, deep nesting RecursionError. Reported like any other bad value.
        cause = exc.__cause__ or exc.__context__ or exc
        raise json_format.ParseError(f"{type(cause).__name__}: {cause}") from None


def _shape_problem(doc: dict[str, Any], descriptor: Descriptor, path: str) -> str | None:
    """The first field (by path) holding a list where an object belongs, or the other way round."""
    for key, value in doc.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None or value is None:
            continue
        where = f"{path}.{key}" if path else key
        message = field.message_type
        if message is not None and (message.full_name.startswith("google.protobuf.") or message.GetOptions().map_entry):
            continue  # well-known types and maps have JSON forms of their own
        repeated = field.is_repeated
        if repeated and not isinstance(value, list):
            return f"{where}: expected a list, got {type(value).__name__}"
        if message is None:
            continue
        for i, item in enumerate(value if repeated else [value]):
            at = f"{where}[{i}]" if repeated else where
            if item is None:
                continue
            if not isinstance(item, dict):
                return f"{at}: expected an object, got {type(item).__name__}"
            inner = _shape_problem(item, message, at)
            if inner:
                return inner
    return None


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

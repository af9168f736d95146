"""Fuzzing the JSON-lines capture reader (collectors.jsonl): any file reads to the end, every non-blank line
comes back either parsed or with a reason naming the file and line, and a field of the wrong type is named."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from collectors.jsonl import parse_line, read_capture
from tests.conftest import CAPTURES
from tests.fuzz.strategies import FUZZ, get, mutated, paths

DOCS = [json.loads(line) for path in CAPTURES for line in path.read_text().splitlines()[:40] if line.strip()]

# Found by this fuzzer (each crashed the reader with a traceback): kept as a corpus that runs every time.
REGRESSIONS = [
    b"[" * 50_000 + b"]" * 50_000,  # RecursionError in json.loads
    b'{"flow": {"unknown": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}",
    b'{"a\\ud800": 1}',  # SystemError from protobuf's upb on an unpaired surrogate in a key
    b'{"flow": {"source": {"\\udfff": 2}}}',
    b"{}",  # parsed to an empty response: nothing stored, nothing dead-lettered, the line silently gone
    b'{"flow": null, "node_name": "n1"}',
]

LINE = (
    mutated(DOCS).map(lambda m: json.dumps(m[0]).encode())
    | st.sampled_from([json.dumps(d).encode() for d in DOCS[:5]])
    | st.binary(max_size=60)
    | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.sampled_from(REGRESSIONS)
).map(lambda b: b.replace(b"\n", b" "))


def check_file(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "capture.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        got = list(read_capture(path))
    expected = [(n, raw.strip()) for n, raw in enumerate(lines, start=1) if raw.strip()]
    assert [(g.line_no, g.raw) for g in got] == expected  # every line accounted for, in order
    for g in got:
        assert (g.response is None) == (g.error is not None)
        if g.error is not None:
            assert g.error.startswith(f"{path}:{g.line_no}: ") and len(g.error) > len(f"{path}:{g.line_no}: ")
            assert "Traceback" not in g.error
        else:
            assert g.response is not None and g.response.WhichOneof("response_types") is not None


@FUZZ
@given(st.lists(LINE, min_size=1, max_size=8))
@example(REGRESSIONS)
def test_any_capture_reads_to_the_end_every_line_parsed_or_explained(lines: list[bytes]) -> None:
    check_file(lines)


def _wrong_type(value: Any) -> Any:
    """A value no jsonpb parser may accept where `value` stood."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return {"not": "a list"}
    return {"not": "a scalar"}


@st.composite
def wrong_typed_field(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    doc = json.loads(json.dumps(draw(st.sampled_from(DOCS))))
    candidates = [p for p in paths(doc) if p[0] == "flow" and len(p) > 1 and isinstance(p[-1], str)]
    path = draw(st.sampled_from(candidates))
    parent = get(doc, path[:-1])
    parent[path[-1]] = _wrong_type(parent[path[-1]])
    return doc, str(path[-1])


@FUZZ
@given(wrong_typed_field())
def test_a_field_of_the_wrong_type_is_refused_naming_the_field(case: tuple[dict[str, Any], str]) -> None:
    doc, field = case
    try:
        parse_line(json.dumps(doc))
    except ValueError as exc:
        assert field in str(exc), (field, str(exc))
    else:
        raise AssertionError(f"{field} of the wrong type was accepted")

"""Shared hypothesis strategies and settings for the fuzz suite: mutations of valid inputs (documents,
captures) rather than noise alone, so the fuzzers reach the parsers' deep paths."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Derandomized (the same examples every run: CI stays stable) and bounded: the whole fuzz set runs < 40 s.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

Path = tuple[str | int, ...]

# Any JSON value, small; strings include surrogates, NULs and other characters parsers trip on.
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "\ud800", "\x00", "1e400", "-1", "18446744073709551616", "NaN", "true", "::1", "*"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def paths(doc: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every node's path (the root excluded)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


def get(doc: Any, path: Path) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def mutated(draw: st.DrawFn, documents: list[Any], max_mutations: int = 3) -> tuple[Any, list[tuple[str, Path]]]:
    """A deep copy of one of `documents` with 1..max_mutations random edits: a node replaced by any JSON
    value, deleted, renamed, or given an extra key. Returns (document, [(edit, path)])."""
    doc = copy.deepcopy(draw(st.sampled_from(documents)))
    edits: list[tuple[str, Path]] = []
    for _ in range(draw(st.integers(1, max_mutations))):
        nodes = list(paths(doc))
        if not nodes:
            break
        path = draw(st.sampled_from(nodes))
        parent = get(doc, path[:-1])
        key = path[-1]
        edit = draw(st.sampled_from(["replace", "delete", "rename", "add"]))
        if edit == "replace":
            parent[key] = draw(JSON_VALUES)
        elif edit == "delete":
            del parent[key]
        elif edit == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(key)
        elif edit == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(JSON_VALUES)
        else:
            continue
        edits.append((edit, path))
    return doc, edits

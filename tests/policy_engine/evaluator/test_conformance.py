"""Conformance: every case under cases/ runs through `netwarden policy check` and every probe is asserted.

A case file is the `policy check` input (namespaces, pods, policies, engine, optional entities) plus
`expected`: reachability matrices over x/{a,b,c}, y/{a,b,c}, z/{a,b,c} (rows: from, columns: to) with
`.` allowed, `X` dropped by default deny (133 POLICY_DENIED), `D` dropped by a deny rule (181 POLICY_DENY);
and optional `extra_probes` (IPs outside the pod set, attribution checks). The test turns the matrices
into probes. Expected values were written by hand from the upstream semantics, never generated.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

CASES_DIR = Path(__file__).parent / "cases"
CASE_FILES = sorted(CASES_DIR.glob("*.yaml"))
PODS = [f"{ns}/{pod}" for ns in "xyz" for pod in "abc"]
SYMBOL = {".": (True, 0), "X": (False, 133), "D": (False, 181)}
EXPECTATION_KEYS = ("allowed", "drop_reason", "allowed_by", "denied_by", "isolated_by", "notes_contain")
# libyaml when present: the pure-Python loader spends ~10 s on these files, libyaml ~1 s.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def load_case(path: Path) -> dict[str, Any]:
    """A case file, parsed once per session (the cases are read, never changed)."""
    return yaml.load(path.read_text(), Loader=YAML_LOADER)  # a safe loader (C or Python)


def parse_matrix(text: str) -> dict[tuple[str, str], str]:
    cells: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        head, _, rest = line.strip().partition(" ")
        if head not in PODS:
            continue  # header lines
        symbols = rest.replace(" ", "")
        assert len(symbols) == len(PODS) and set(symbols) <= set(SYMBOL), f"bad matrix row {line!r}"
        for to, symbol in zip(PODS, symbols, strict=True):
            cells[(head, to)] = symbol
    assert len(cells) == len(PODS) ** 2, "matrix must have a row for each of the 9 pods"
    return cells


def build(case: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The CLI document and, per probe, what is expected of its verdict."""
    doc = {k: v for k, v in case.items() if k not in ("description", "expected", "extra_probes")}
    probes, expectations = [], []
    for matrix in case["expected"]:
        for (src, dst), symbol in parse_matrix(matrix["matrix"]).items():
            allowed, drop = SYMBOL[symbol]
            probes.append({"from": src, "to": dst, "port": matrix["port"], "protocol": matrix["protocol"]})
            expectations.append({"allowed": allowed, "drop_reason": drop})
    for extra in case.get("extra_probes", []):
        probes.append({k: v for k, v in extra.items() if k not in EXPECTATION_KEYS})
        expectations.append({k: v for k, v in extra.items() if k in EXPECTATION_KEYS})
    doc["probes"] = probes
    return doc, expectations


def mismatches(probe: dict[str, Any], want: dict[str, Any]) -> list[str]:
    where = f"{probe['from']} -> {probe['to']} {probe['protocol']}/{probe['port']}"
    errors = []
    for key, expected in want.items():
        if key == "notes_contain":
            if not any(expected in note for note in probe["notes"]):
                errors.append(f"{where}: no note contains {expected!r}: {probe['notes']}")
            continue
        actual = probe[key]
        if key in ("allowed_by", "denied_by", "isolated_by"):
            actual = sorted(actual, key=repr)
            expected = sorted(expected, key=repr)
        if actual != expected:
            errors.append(f"{where}: {key} is {actual!r}, expected {expected!r} ({probe['reason']})")
    # Invariants of every verdict: attribution only on allow or on an explicit deny (as Hubble does).
    if probe["allowed"] and (probe["denied_by"] or probe["drop_reason"]):
        errors.append(f"{where}: allowed but carries a denial")
    if probe["drop_reason"] == 181 and not probe["denied_by"]:
        errors.append(f"{where}: 181 without denied_by")
    if probe["drop_reason"] == 133 and probe["denied_by"]:
        errors.append(f"{where}: 133 with denied_by {probe['denied_by']}")
    return errors


def test_there_are_enough_cases() -> None:
    cases = [load_case(p) for p in CASE_FILES]
    assert len(cases) >= 40
    assert {c.get("engine", "kubernetes") for c in cases} == {"kubernetes", "cilium"}


@pytest.mark.parametrize("case_file", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case(case_file: Path, run_check) -> None:
    case = load_case(case_file)
    doc, expectations = build(case)
    code, out, err = run_check(doc)
    assert code == 0, err
    assert out is not None
    results = out["probes"]
    assert len(results) == len(doc["probes"])
    errors = []
    for sent, result, want in zip(doc["probes"], results, expectations, strict=True):
        assert {k: result[k] for k in sent} == sent, "each result starts with the probe as given"
        errors.extend(mismatches(result, want))
    assert not errors, f"{case_file.name}: {len(errors)} of {len(results)} probes differ:\n" + "\n".join(
        errors
    )

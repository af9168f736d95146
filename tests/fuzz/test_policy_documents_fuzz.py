"""Fuzzing policy documents: random mutations of the GitOps examples (deploy/examples/gitops) through the
document parser (policy_engine.gitops), a dry-run apply on a real control-plane store (SQLite) with the schema
validation of every rule (policy_engine.validation), and YAML text mutated byte by byte. Always a result or a
clear error naming the file, document and field; never another exception."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policy_engine.control_plane import ControlPlane
from policy_engine.gitops import GitOpsErrors, apply_documents, load_documents, parse_documents
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.validation import PolicyValidationError, validate_spec
from tests.conftest import REPO_ROOT
from tests.fuzz.strategies import FUZZ, get, mutated, paths

EXAMPLES = REPO_ROOT / "deploy" / "examples" / "gitops"
FILES = sorted(p for p in EXAMPLES.rglob("*.yaml") if "rules" not in p.parts)
DOCS = [d for f in FILES for d in yaml.safe_load_all(f.read_text()) if d is not None]
INLINE_DOCS = [d for d in DOCS if not any("fromFile" in r for r in (d.get("spec") or {}).get("rules") or [])]
RULES = [(k, r[k]) for d in DOCS for r in (d.get("spec") or {}).get("rules") or [] for k in ("cilium", "kubernetes") if k in r]
FILE = "fuzz.yaml"


def errors_are_clear(exc: GitOpsErrors) -> None:
    assert exc.errors
    for e in exc.errors:
        assert str(e).startswith(f"{FILE}: document ") or str(e).startswith(f"{FILE}:"), str(e)
        assert e.message.strip()
        assert "Traceback" not in str(e)


@settings(FUZZ, max_examples=150)
@given(st.lists(mutated(DOCS), min_size=1, max_size=4))
@example([({"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "p"}, "spec": {"rules": 5}}, [])])
def test_mutated_documents_parse_or_fail_naming_the_document_and_field(given_docs: list[Any]) -> None:
    docs = [d for d, _ in given_docs]
    try:
        parse_documents(docs, FILE, base_dir=EXAMPLES / "policies")
    except GitOpsErrors as exc:
        errors_are_clear(exc)


@pytest.fixture(scope="module")
def control_plane() -> Any:
    with tempfile.TemporaryDirectory() as tmp, ControlPlaneStore.open(tmp) as store:
        yield ControlPlane(store, Principal.with_role("org-admin", name="fuzz"))


@settings(FUZZ, max_examples=40)
@given(st.lists(mutated(INLINE_DOCS, max_mutations=2), min_size=1, max_size=3))
def test_mutated_documents_apply_in_a_dry_run_or_fail_naming_the_field(control_plane: Any, given_docs: list[Any]) -> None:
    # The untouched examples first, so the mutated ones meet clusters, projects and policies to refer to.
    docs = [copy.deepcopy(d) for d in INLINE_DOCS] + [d for d, _ in given_docs]
    docs = list({(d.get("kind"), str((d.get("metadata") or {}).get("name"))) if isinstance(d, dict) and isinstance(d.get("metadata"), dict) else id(d): d for d in docs}.values())
    try:
        parsed = parse_documents(docs, FILE)
        apply_documents(control_plane, parsed, dry_run=True)
    except GitOpsErrors as exc:
        errors_are_clear(exc)


@st.composite
def wrong_typed_spec_field(draw: st.DrawFn) -> tuple[list[Any], str]:
    """One example document with a field of its spec (outside the rule bodies, which validation judges)
    given a value of the wrong type."""
    doc = copy.deepcopy(draw(st.sampled_from(INLINE_DOCS)))
    candidates = [
        p for p in paths(doc["spec"]) if isinstance(p[-1], str) and not {"cilium", "kubernetes"} & set(map(str, p[:-1]))
    ]
    path = draw(st.sampled_from(candidates))
    parent = get(doc["spec"], path[:-1])
    value = parent[path[-1]]
    parent[path[-1]] = [{"wrong": "type"}] if not isinstance(value, list) else {"wrong": "type"}
    return [doc], str(path[-1])


@settings(FUZZ, max_examples=60)
@given(wrong_typed_spec_field())
def test_a_spec_field_of_the_wrong_type_is_named(case: tuple[list[Any], str]) -> None:
    docs, field = case
    with pytest.raises(GitOpsErrors) as refused:
        parse_documents(docs, FILE)
    assert any(field in e.field for e in refused.value.errors), (field, str(refused.value))


@settings(FUZZ, max_examples=80)
@given(st.sampled_from(range(len(RULES))).flatmap(lambda i: mutated([RULES[i][1]]).map(lambda m: (RULES[i][0], m))))
def test_mutated_rules_validate_or_fail_naming_the_path(case: tuple[str, Any]) -> None:
    source, (spec, edits) = case
    kind = "CiliumNetworkPolicy" if source == "cilium" else "NetworkPolicy"
    try:
        validate_spec(kind, spec, name="fuzz", namespace="shop")
    except PolicyValidationError as exc:
        assert exc.errors and all(e.message.strip() for e in exc.errors)
        assert all(e.path for e in exc.errors), [str(e) for e in exc.errors]


@st.composite
def mutated_yaml(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(FILES)).read_bytes())
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        piece = draw(st.sampled_from([b":", b"-", b" ", b"\n", b"  ", b"{", b"[", b"'", b'"', b"&a", b"*a", b"!!python/name:os.system", b"\t", b"\xff", b"%"]) | st.binary(min_size=1, max_size=4))
        if op == "replace":
            data[at : at + len(piece)] = piece
        elif op == "insert":
            data[at:at] = piece
        else:
            del data[at : at + len(piece)]
    return bytes(data)


@settings(FUZZ, max_examples=80)
@given(mutated_yaml())
@example(b"a: &a [*a, *a]\n")  # a self-referencing alias
@example(b"\xff\xfe\x00")  # not UTF-8: was a traceback (UnicodeDecodeError)
@example(b"[" * 20_000)  # deeper than Python's stack
def test_mutated_yaml_loads_or_fails_naming_the_file(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FILE
        path.write_bytes(text)
        try:
            load_documents(path)
        except GitOpsErrors as exc:
            assert exc.errors and all(str(e).startswith(str(path)) or str(e).startswith(FILE) for e in exc.errors), str(exc)


def test_documents_too_deep_or_too_large_are_refused_before_anything_walks_them() -> None:
    """Found by fuzzing the API's bodies: a document nested ~900 deep overflowed the stack (500), and YAML
    aliases nested 7 deep (10^7 values from 8 lines) cost half a minute of validation."""
    deep: Any = "x"
    for _ in range(900):
        deep = [deep]
    anchors = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]'] + [
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 7)
    ]
    laughs = yaml.safe_load(
        "apiVersion: netwarden.io/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  scope: namespace\n  x:\n"
        + "".join(f"    {line}\n" for line in anchors)
        + "  rules: [{name: r, cilium: {endpointSelector: {}, description: *l6}}]\n"
    )
    for doc, problem in (
        ({"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "p"}, "spec": {"rules": deep}},
         "nested deeper than 64 levels"),
        (laughs, "more than 100000 values"),
    ):
        started = time.monotonic()
        with pytest.raises(GitOpsErrors) as refused:
            parse_documents([doc], FILE)
        assert problem in str(refused.value) and str(refused.value).startswith(f"{FILE}: document 1 (Policy p): ")
        assert time.monotonic() - started < 1.0

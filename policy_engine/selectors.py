"""Kubernetes-style label selectors (matchLabels + matchExpressions), as used by NetworkPolicy and Cilium.

Pure parsing and matching. Matching takes a lookup function rather than a dict so that Cilium's
source-prefixed labels (`k8s:app`, `any:app`, `reserved:host`) can reuse the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A malformed selector; the message names the field path and the value at fault."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, value: str | None) -> bool:
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            # Kubernetes: NotIn also matches objects that lack the key entirely.
            return value is None or value not in self.values
        if self.operator == "Exists":
            return value is not None
        return value is None  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def keys(self) -> set[str]:
        return {r.key for r in self.requirements}

    def matches(self, lookup: Callable[[str], str | None]) -> bool:
        return all(r.matches(lookup(r.key)) for r in self.requirements)

    def matches_labels(self, labels: Mapping[str, str]) -> bool:
        return self.matches(labels.get)

    def with_requirement(self, requirement: Requirement) -> LabelSelector:
        return LabelSelector((*self.requirements, requirement))

    def describe(self) -> str:
        if not self.requirements:
            return "{}"
        parts = []
        for r in self.requirements:
            if r.operator == "In" and len(r.values) == 1:
                parts.append(f"{r.key}={next(iter(r.values))}")
            elif r.operator in ("In", "NotIn"):
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(sorted(r.values))})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts)


def parse_selector(obj: Any, path: str) -> LabelSelector:
    """Parse `{matchLabels: {...}, matchExpressions: [...]}`; `None` is not accepted here (callers decide
    what an absent selector means, which differs between fields)."""
    if not isinstance(obj, dict):
        raise SelectorError(f"{path}: expected a label selector object, got {obj!r}")
    unknown = set(obj) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"{path}: unknown selector field {sorted(unknown)[0]!r}")
    requirements: list[Requirement] = []
    match_labels = obj.get("matchLabels") or {}
    if not isinstance(match_labels, dict):
        raise SelectorError(f"{path}.matchLabels: expected a mapping, got {match_labels!r}")
    for key, value in match_labels.items():
        if not isinstance(key, str) or not key:
            raise SelectorError(f"{path}.matchLabels: invalid label key {key!r}")
        if value is None:
            value = ""  # Cilium reserved labels are written `reserved:host: ""` or with no value
        if not isinstance(value, str):
            raise SelectorError(f"{path}.matchLabels.{key}: label value must be a string, got {value!r}")
        requirements.append(Requirement(key, "In", frozenset([value])))
    expressions = obj.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SelectorError(f"{path}.matchExpressions: expected a list, got {expressions!r}")
    for i, expr in enumerate(expressions):
        epath = f"{path}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            raise SelectorError(f"{epath}: expected an object, got {expr!r}")
        key = expr.get("key")
        if not isinstance(key, str) or not key:
            raise SelectorError(f"{epath}.key: missing or not a string: {key!r}")
        operator = expr.get("operator")
        if operator not in OPERATORS:
            raise SelectorError(f"{epath}.operator: {operator!r} is not one of {', '.join(OPERATORS)}")
        values = expr.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SelectorError(f"{epath}.values: expected a list of strings, got {values!r}")
        if operator in ("In", "NotIn") and not values:
            raise SelectorError(f"{epath}.values: operator {operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{epath}.values: operator {operator} takes no values, got {values!r}")
        requirements.append(Requirement(key, operator, frozenset(values)))
    return LabelSelector(tuple(requirements))

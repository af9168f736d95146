"""Validation of policy objects as a real API server (plus the Cilium agent) would judge them.

CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy are checked against the `openAPIV3Schema` of the
Cilium CRDs (vendored in policy_engine/schemas/, the same files as ../shared/reference/cilium-crds/);
NetworkPolicy against policy_engine/schemas/networkpolicy-v1.json, transcribed from Kubernetes' OpenAPI.
On top of the schemas come the checks the schema cannot express but the API server (NetworkPolicy) or
the Cilium agent (CNP/CCNP, which refuses to import such a rule) enforce: label selector operators and
values, peer combinations, endPort, CIDR exceptions, object names.

Unknown fields are refused (the API server's strict field validation, `kubectl --validate=strict`),
because a misspelt `fromEndpoint` would otherwise be pruned silently and the rule would allow more.
Schema `pattern`s are matched with RE2, the engine the API server uses: Python's backtracking `re` is
exponential on some of the CRD patterns (e.g. `^([-a-zA-Z0-9_]+[.]?)+$`).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import re2
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaError

from policy_engine.evaluation.icmp import ICMP_FAMILIES, icmp_type_problem

__all__ = [
    "API_VERSIONS",
    "PolicyValidationError",
    "crd_directory",
    "shared_crd_directory",
    "validate_object",
    "validate_spec",
    "validation_errors",
]

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
CRD_FILES = {
    "CiliumNetworkPolicy": "ciliumnetworkpolicies.yaml",
    "CiliumClusterwideNetworkPolicy": "ciliumclusterwidenetworkpolicies.yaml",
}
NETWORKPOLICY_SCHEMA = SCHEMA_DIR / "networkpolicy-v1.json"
API_VERSIONS = {
    "CiliumNetworkPolicy": "cilium.io/v2",
    "CiliumClusterwideNetworkPolicy": "cilium.io/v2",
    "NetworkPolicy": "networking.k8s.io/v1",
}
CLUSTER_SCOPED = {"CiliumClusterwideNetworkPolicy"}

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PolicyValidationError(ValueError):
    """One refusal: which object, where in it (`spec.ingress[0].toPorts[0].ports[0].port`), the value
    found there and why it is refused. `errors` holds every refusal found in the object, this one first."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "",
        name: str = "",
        path: str = "",
        value: Any = None,
        errors: list[PolicyValidationError] | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.path = path
        self.value = value
        self.message = message
        self.errors: list[PolicyValidationError] = errors if errors is not None else [self]
        super().__init__(str(self))

    def __str__(self) -> str:
        who = f'{self.kind or "object"} "{self.name}"' if self.name else (self.kind or "object")
        where = f"{self.path}: " if self.path else ""
        return " ".join(f"{who}: {where}{self.message}".split())

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "path": self.path,
            "value": self.value,
            "message": self.message,
        }


# --------------------------------------------------------------------------- locating the schemas


def shared_crd_directory() -> Path | None:
    """../shared/reference/cilium-crds next to the repository, when this checkout has it."""
    candidate = Path(__file__).resolve().parents[2] / "shared" / "reference" / "cilium-crds"
    return candidate if candidate.is_dir() else None


def crd_directory() -> Path:
    """Where the CRD YAMLs are read from: $NETWARDEN_CILIUM_CRDS when set (an explicit choice), else the
    vendored copy (so an installed package needs no shared/ tree), else the shared reference copy."""
    override = os.environ.get("NETWARDEN_CILIUM_CRDS")
    if override:
        return Path(override)
    if all((SCHEMA_DIR / f).is_file() for f in CRD_FILES.values()):
        return SCHEMA_DIR
    shared = shared_crd_directory()
    if shared is None:
        raise FileNotFoundError("Cilium CRD schemas not found: set NETWARDEN_CILIUM_CRDS")
    return shared


def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)  # CSafeLoader/SafeLoader only


@lru_cache(maxsize=4)
def _schema_for(kind: str, directory: str) -> dict[str, Any]:
    if kind == "NetworkPolicy":
        return json.loads(NETWORKPOLICY_SCHEMA.read_text(encoding="utf-8"))
    crd = _load_yaml(Path(directory) / CRD_FILES[kind])
    version = next(v for v in crd["spec"]["versions"] if v.get("storage") or v["name"] == "v2")
    schema = _structural_to_json_schema(version["schema"]["openAPIV3Schema"])
    # The CRD schema says only `metadata: {type: object}`; the server validates ObjectMeta itself.
    np_defs = json.loads(NETWORKPOLICY_SCHEMA.read_text(encoding="utf-8"))["$defs"]
    schema["properties"]["metadata"] = np_defs["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _structural_to_json_schema(node: Any, value_validation: bool = False) -> Any:
    """Turn a Kubernetes structural schema into JSON Schema with the API server's meaning.

    - x-kubernetes-int-or-string: an integer or a string (the CRDs also spell this as anyOf);
    - x-kubernetes-preserve-unknown-fields: anything goes below, so no additionalProperties;
    - nullable: null allowed (other nulls are pruned before validation, see _prune_nulls);
    - oneOf/anyOf/allOf/not are value validations only: their `properties` never declare fields, so
      the unknown-field rule is applied to the structural part alone.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: _structural_to_json_schema(v, value_validation) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural_to_json_schema(value, value_validation)
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [_structural_to_json_schema(v, True) for v in value]
        elif key == "not":
            out[key] = _structural_to_json_schema(value, True)
        elif key in ("default", "example", "description"):
            continue  # documentation or defaulting, not validation
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        not value_validation
        and out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# --------------------------------------------------------------------------- the validator class

_format_checker = FormatChecker(formats=())


@_format_checker.checks("cidr", raises=ValueError)
def _is_cidr(value: object) -> bool:
    if not isinstance(value, str):
        return True
    ipaddress.ip_network(value, strict=False)  # Go's net.ParseCIDR also allows host bits
    return "/" in value


@_format_checker.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if isinstance(value, str):
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


@lru_cache(maxsize=512)
def _re2(pattern: str) -> Any:
    return re2.compile(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[SchemaError]:
    if isinstance(instance, str) and not _re2(pattern).search(instance):
        yield SchemaError(f"{instance!r} does not match {pattern!r}")


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[SchemaError]:
    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: set[str] = set()
    for item in instance:
        ident = (
            json.dumps([item.get(k) for k in keys])
            if list_type == "map" and isinstance(item, dict)
            else json.dumps(item, sort_keys=True)
        )
        if ident in seen:
            yield SchemaError(f"Duplicate value: {ident}")
        seen.add(ident)


_Validator = jsonschema.validators.extend(
    Draft202012Validator, {"pattern": _pattern, "x-kubernetes-list-type": _list_type}
)


@lru_cache(maxsize=4)
def _validator(kind: str, directory: str) -> Any:
    return _Validator(_schema_for(kind, directory), format_checker=_format_checker)


# --------------------------------------------------------------------------- public entry points


_KNOWN_VALID: dict[str, None] = {}  # canonical JSON of objects found valid (rendering re-validates them)
_KNOWN_VALID_LIMIT = 20_000


def validate_object(obj: dict[str, Any]) -> None:
    """Raise PolicyValidationError (the first fault in document order; all of them in `.errors`)
    unless `obj` is a valid NetworkPolicy, CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
    Objects found valid are remembered: every render, apply and what-if validates the same objects again."""
    key = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    if key in _KNOWN_VALID:
        return
    errors = validation_errors(obj)
    if not errors:
        if len(_KNOWN_VALID) >= _KNOWN_VALID_LIMIT:
            _KNOWN_VALID.clear()
        _KNOWN_VALID[key] = None
        return
    first = errors[0]
    raise PolicyValidationError(
        first.message, kind=first.kind, name=first.name, path=first.path, value=first.value, errors=errors
    )


def validate_spec(
    kind: str, spec: dict[str, Any], *, name: str = "rule", namespace: str | None = None
) -> None:
    """Validate a bare rule spec (as uploaded) by wrapping it in an object of `kind`."""
    metadata: dict[str, Any] = {"name": name}
    if namespace and kind not in CLUSTER_SCOPED:
        metadata["namespace"] = namespace
    validate_object(
        {"apiVersion": API_VERSIONS.get(kind, ""), "kind": kind, "metadata": metadata, "spec": spec}
    )


def validation_errors(obj: Any) -> list[PolicyValidationError]:
    """Every fault in `obj`, in document order (empty when valid)."""
    if not isinstance(obj, dict):
        return [PolicyValidationError(f"must be a mapping, got {_type_name(obj)}", value=obj)]
    kind = obj.get("kind")
    meta = obj.get("metadata")
    name = meta.get("name", "") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else ""
    if kind not in API_VERSIONS:
        return [
            PolicyValidationError(
                f"Unsupported value {_show(kind)}: supported kinds: {', '.join(sorted(API_VERSIONS))}",
                kind=str(kind or ""),
                name=name,
                path="kind",
                value=kind,
            )
        ]
    errors: list[tuple[tuple[int, ...], PolicyValidationError]] = []

    def add(path: list[str | int], message: str, value: Any) -> None:
        errors.append(
            (
                _order_key(obj, path),
                PolicyValidationError(message, kind=kind, name=name, path=_fmt_path(path), value=value),
            )
        )

    if obj.get("apiVersion") != API_VERSIONS[kind]:
        add(
            ["apiVersion"],
            f"Unsupported value {_show(obj.get('apiVersion'))}: must be {_show(API_VERSIONS[kind])}",
            obj.get("apiVersion"),
        )

    instance = _prune_nulls(obj)
    validator = _validator(kind, str(crd_directory()))
    for err in validator.iter_errors(instance):
        for path, message, value in _explain(err):
            add(path, message, value)

    for path, message, value in _semantic_errors(kind, instance):
        add(path, message, value)

    errors.sort(key=lambda e: e[0])
    unique: list[PolicyValidationError] = []
    seen: set[tuple[str, str]] = set()
    for _, e in errors:
        if (e.path, e.message) not in seen:
            seen.add((e.path, e.message))
            unique.append(e)
    return unique


# --------------------------------------------------------------------------- schema errors -> messages


def _explain(err: SchemaError) -> list[tuple[list[str | int], str, Any]]:
    path: list[str | int] = list(err.absolute_path)
    v, inst, sv = err.validator, err.instance, err.validator_value
    if v == "additionalProperties" and isinstance(inst, dict):
        known = set(err.schema.get("properties", {}))
        return [(path + [k], f"unknown field {_show(k)}", inst[k]) for k in inst if k not in known]
    if v == "required" and isinstance(inst, dict):
        return [(path + [k], "Required value", None) for k in sv if k not in inst]
    if v == "enum":
        allowed = ", ".join(_show(x) for x in sv)
        return [(path, f"Unsupported value {_show(inst)}: supported values: {allowed}", inst)]
    if v == "type":
        want = " or ".join(sv) if isinstance(sv, list) else sv
        return [(path, f"Invalid value {_show(inst)}: must be of type {want}, got {_type_name(inst)}", inst)]
    if v == "pattern":
        return [(path, f"Invalid value {_show(inst)}: must match the regular expression '{sv}'", inst)]
    if v == "format":
        return [(path, f"Invalid value {_show(inst)}: must be a valid {sv}", inst)]
    if v in ("oneOf", "anyOf"):
        return _explain_alternatives(err, path)
    bounds = {
        "maxLength": "may not be longer than {} characters",
        "minLength": "must be at least {} characters long",
        "maxItems": "must have at most {} items",
        "minItems": "must have at least {} items",
        "maximum": "must be less than or equal to {}",
        "minimum": "must be greater than or equal to {}",
        "maxProperties": "must have at most {} entries",
        "minProperties": "must have at least {} entries",
    }
    if v in bounds:
        shown = f"{len(inst)} items" if isinstance(inst, list | dict) else _show(inst)
        return [(path, f"Invalid value {shown}: {bounds[v].format(sv)}", inst)]
    return [(path, f"Invalid value {_show(inst)}: {err.message}", inst)]


def _explain_alternatives(err: SchemaError, path: list[str | int]) -> list[tuple[list[str | int], str, Any]]:
    inst, branches = err.instance, err.validator_value
    # Cilium writes "exactly one of these fields" as oneOf [{required: [a]}, {required: [b]}, ...].
    required_only = [b.get("required", []) for b in branches if set(b) <= {"properties", "required"}]
    if (
        len(required_only) == len(branches)
        and all(len(r) == 1 for r in required_only)
        and isinstance(inst, dict)
    ):
        names = [r[0] for r in required_only]
        present = [n for n in names if n in inst]
        choice = ", ".join(names)
        if present:
            return [
                (
                    path,
                    f"exactly one of {choice} may be set, found {', '.join(present)}",
                    {n: inst[n] for n in present},
                )
            ]
        return [(path, f"exactly one of {choice} must be set", None)]
    if err.validator == "oneOf" and not err.context:
        return [(path, "Invalid value: matches more than one of the allowed alternatives", inst)]
    # Prefer the branch written for this value's type (e.g. the integer branch of an int-or-string).
    inst_type = _type_name(inst)
    for index, branch in enumerate(branches):
        if branch.get("type") == inst_type:
            sub = [e for e in err.context if e.relative_schema_path and e.relative_schema_path[0] == index]
            if sub:
                return [x for e in sub for x in _explain(e)]
    kinds = [b["type"] for b in branches if isinstance(b.get("type"), str)]
    if len(kinds) == len(branches):
        return [
            (
                path,
                f"Invalid value {_show(inst)}: must be of type {' or '.join(kinds)}, got {inst_type}",
                inst,
            )
        ]
    best = jsonschema.exceptions.best_match(err.context) if err.context else None
    if best is not None:
        return _explain(best)
    return [(path, f"Invalid value {_show(inst)}: {err.message}", inst)]


# --------------------------------------------------------------------------- semantic checks


def _semantic_errors(kind: str, obj: dict[str, Any]) -> Iterator[tuple[list[str | int], str, Any]]:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        yield from _metadata_errors(kind, meta)
    for path, selector in _find_keys(obj, ("matchExpressions",), []):
        yield from _selector_requirement_errors(path, selector, strict_keys=kind == "NetworkPolicy")
    if kind == "NetworkPolicy":
        spec = obj.get("spec")
        if isinstance(spec, dict):
            yield from _networkpolicy_errors(spec)
        for path, labels in _find_keys(obj.get("spec"), ("matchLabels",), ["spec"]):
            if isinstance(labels, dict):
                yield from _label_map_errors(path, labels)
    else:
        if "spec" not in obj and "specs" not in obj:
            yield ([], "one of spec or specs must be set (Cilium refuses an empty policy)", None)
        yield from _cilium_cidr_errors(obj)
        yield from _cilium_port_errors(obj)
        yield from _cilium_icmp_errors(obj)


def _metadata_errors(kind: str, meta: dict[str, Any]) -> Iterator[tuple[list[str | int], str, Any]]:
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        yield (["metadata", "name"], "Required value: name or generateName is required", None)
    elif isinstance(name, str) and name and (len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name)):
        yield (
            ["metadata", "name"],
            f"Invalid value {_show(name)}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character (at most 253)",
            name,
        )
    namespace = meta.get("namespace")
    if namespace is not None and kind in CLUSTER_SCOPED:
        yield (
            ["metadata", "namespace"],
            f"Invalid value {_show(namespace)}: {kind} is cluster-scoped, namespace must not be set",
            namespace,
        )
    elif isinstance(namespace, str) and (len(namespace) > 63 or not _DNS1123_LABEL.match(namespace)):
        yield (
            ["metadata", "namespace"],
            f"Invalid value {_show(namespace)}: must be a lowercase RFC 1123 label (at most 63)",
            namespace,
        )
    labels = meta.get("labels")
    if isinstance(labels, dict):
        yield from _label_map_errors(["metadata", "labels"], labels)
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        for key in annotations:
            if problem := _qualified_name_problem(key):
                yield (["metadata", "annotations", key], f"Invalid value {_show(key)}: {problem}", key)


def _label_map_errors(
    path: list[str | int], labels: dict[str, Any]
) -> Iterator[tuple[list[str | int], str, Any]]:
    for key, value in labels.items():
        if problem := _qualified_name_problem(key):
            yield (path + [key], f"Invalid value {_show(key)}: {problem}", key)
        if isinstance(value, str) and (len(value) > 63 or not _LABEL_VALUE.match(value)):
            yield (
                path + [key],
                f"Invalid value {_show(value)}: a valid label value must be empty or consist of alphanumeric "
                "characters, '-', '_' or '.', start and end with an alphanumeric character (at most 63)",
                value,
            )


def _selector_requirement_errors(
    path: list[str | int], requirements: Any, *, strict_keys: bool
) -> Iterator[tuple[list[str | int], str, Any]]:
    """The rules of apimachinery's ValidateLabelSelectorRequirement, which Cilium applies too when it
    converts a selector (an In without values selects nothing and is refused)."""
    if not isinstance(requirements, list):
        return
    for i, req in enumerate(requirements):
        if not isinstance(req, dict):
            continue
        here = path + [i]
        operator, values = req.get("operator"), req.get("values") or []
        if operator in ("In", "NotIn") and not values:
            yield (
                here + ["values"],
                f"Required value: must be specified when `operator` is {operator!r}",
                req.get("values"),
            )
        elif operator in ("Exists", "DoesNotExist") and values:
            yield (
                here + ["values"],
                f"Forbidden: may not be specified when `operator` is {operator!r}",
                values,
            )
        key = req.get("key")
        if strict_keys and isinstance(key, str) and (problem := _qualified_name_problem(key)):
            yield (here + ["key"], f"Invalid value {_show(key)}: {problem}", key)


def _networkpolicy_errors(spec: dict[str, Any]) -> Iterator[tuple[list[str | int], str, Any]]:
    """pkg/apis/networking/validation: peers, ports, ipBlock."""
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        rules = spec.get(direction)
        if not isinstance(rules, list):
            continue
        for r, rule in enumerate(rules):
            if not isinstance(rule, dict):
                continue
            for p, port in enumerate(rule.get("ports") or []):
                if isinstance(port, dict):
                    yield from _np_port_errors(["spec", direction, r, "ports", p], port)
            for p, peer in enumerate(rule.get(peers_key) or []):
                if isinstance(peer, dict):
                    yield from _np_peer_errors(["spec", direction, r, peers_key, p], peer)


def _np_port_errors(
    path: list[str | int], port: dict[str, Any]
) -> Iterator[tuple[list[str | int], str, Any]]:
    number = port.get("port")
    if isinstance(number, str) and re.fullmatch(r"[a-z0-9-]{1,15}", number):
        if not re.search(r"[a-z]", number):
            yield (
                path + ["port"],
                f"Invalid value {_show(number)}: a port name must contain at least one letter (a-z)",
                number,
            )
        elif "--" in number:
            yield (
                path + ["port"],
                f"Invalid value {_show(number)}: a port name must not contain consecutive hyphens",
                number,
            )
    end = port.get("endPort")
    if end is None:
        return
    if number is None:
        yield (
            path + ["endPort"],
            f"Forbidden: endPort {end} may not be specified when `port` is not specified",
            end,
        )
    elif isinstance(number, str):
        yield (
            path + ["endPort"],
            f"Forbidden: endPort {end} may not be specified when `port` is a named port ({number!r})",
            end,
        )
    elif isinstance(number, int) and isinstance(end, int) and end < number:
        yield (
            path + ["endPort"],
            f"Invalid value {end}: must be greater than or equal to `port` ({number})",
            end,
        )


def _np_peer_errors(
    path: list[str | int], peer: dict[str, Any]
) -> Iterator[tuple[list[str | int], str, Any]]:
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if k in peer]
    if not present:
        yield (path, "Required value: must specify a peer (podSelector, namespaceSelector or ipBlock)", peer)
    elif "ipBlock" in present and len(present) > 1:
        yield (path, f"Forbidden: may not specify both ipBlock and another peer ({', '.join(present)})", peer)
    block = peer.get("ipBlock")
    if isinstance(block, dict):
        yield from _except_errors(path + ["ipBlock"], block, strict=True)


def _cilium_cidr_errors(obj: dict[str, Any]) -> Iterator[tuple[list[str | int], str, Any]]:
    """Cilium's CIDRRule.sanitize: every `except` prefix lies inside `cidr`, same address family."""
    for key in ("spec", "specs"):
        for path, rules in _find_keys(obj.get(key), ("fromCIDRSet", "toCIDRSet"), [key]):
            if isinstance(rules, list):
                for i, rule in enumerate(rules):
                    if isinstance(rule, dict) and rule.get("cidr"):
                        yield from _except_errors(path + [i], rule, strict=False)


def _cilium_port_errors(obj: dict[str, Any]) -> Iterator[tuple[list[str | int], str, Any]]:
    """Cilium's PortProtocol.sanitize parses a numeric port as a 16-bit number. The CRD pattern is only
    anchored at its start, so "99999" passes the schema; the agent refuses it."""
    for key in ("spec", "specs"):
        for path, ports in _find_keys(obj.get(key), ("ports",), [key]):
            if not isinstance(ports, list) or len(path) < 2 or not isinstance(path[-2], int):
                continue
            for i, port in enumerate(ports):
                number = port.get("port") if isinstance(port, dict) else None
                if isinstance(number, str) and number.isdigit() and int(number) > 65535:
                    yield (
                        path + [i, "port"],
                        f"Invalid value {_show(number)}: a port number must be 0-65535",
                        number,
                    )


def _cilium_icmp_errors(obj: dict[str, Any]) -> Iterator[tuple[list[str | int], str, Any]]:
    """What the agent refuses in ICMP rules and the schema lets through (pkg/policy/api icmp.go,
    rule_validation.go): `icmps` next to `toPorts` in one rule, and a type name of the other family."""
    for key in ("spec", "specs"):
        for path, icmps in _find_keys(obj.get(key), ("icmps",), [key]):
            if not isinstance(icmps, list):
                continue
            rule_path = path[:-1]
            rule = obj
            for part in rule_path:
                rule = rule[part]
            if icmps and isinstance(rule, dict) and rule.get("toPorts"):
                yield (
                    path,
                    "Forbidden: icmps may not be combined with toPorts in one rule (the Cilium agent refuses the "
                    "policy); define a separate rule for the ICMP types",
                    None,
                )
            for i, icmp in enumerate(icmps):
                fields = icmp.get("fields") if isinstance(icmp, dict) else None
                for j, entry in enumerate(fields if isinstance(fields, list) else []):
                    if not isinstance(entry, dict) or entry.get("type") is None:
                        continue  # the schema reports it
                    family = entry.get("family") or "IPv4"
                    if family not in ICMP_FAMILIES:
                        continue  # the schema's enum reports it
                    problem = icmp_type_problem(entry["type"], family)
                    if problem:
                        yield (path + [i, "fields", j, "type"], f"Invalid value: {problem}", entry["type"])


def _except_errors(
    path: list[str | int], block: dict[str, Any], *, strict: bool
) -> Iterator[tuple[list[str | int], str, Any]]:
    try:
        outer = ipaddress.ip_network(block.get("cidr"), strict=False)
    except (TypeError, ValueError):
        return  # the schema (format: cidr) already reports it
    for i, text in enumerate(block.get("except") or []):
        try:
            inner = ipaddress.ip_network(text, strict=False)
        except (TypeError, ValueError):
            continue
        inside = inner.version == outer.version and inner.network_address in outer
        if strict:  # Kubernetes: a strict subset, i.e. inside and with a longer prefix
            inside = inside and inner.prefixlen > outer.prefixlen
        if not inside:
            yield (
                path + ["except", i],
                f"Invalid value {_show(text)}: must be a {'strict ' if strict else ''}subset of cidr {block.get('cidr')!r}",
                text,
            )


def _qualified_name_problem(key: str) -> str | None:
    """apimachinery IsQualifiedName: optional DNS-subdomain prefix and '/', then a name of <= 63."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return "prefix part must be non-empty"
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character (at most 63)"
        )
    return None


# --------------------------------------------------------------------------- small helpers


def _prune_nulls(value: Any) -> Any:
    """The API server drops null fields of non-nullable properties before validating (a YAML `egress:`
    with nothing after it means "not set"); nulls inside lists stay and fail the type check."""
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return copy.copy(value)


def _find_keys(
    node: Any, keys: tuple[str, ...], path: list[str | int]
) -> Iterator[tuple[list[str | int], Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in keys:
                yield path + [k], v
            yield from _find_keys(v, keys, path + [k])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _find_keys(v, keys, path + [i])


def _fmt_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part}]"
    return out


def _order_key(obj: Any, path: list[str | int]) -> tuple[int, ...]:
    """Position of `path` in document order, so the first error reported is the first in the file."""
    key: list[int] = []
    node = obj
    for part in path:
        if isinstance(node, dict):
            names = list(node)
            key.append(names.index(part) if part in names else len(names))
            node = node.get(part) if isinstance(part, str) else None
        elif isinstance(node, list) and isinstance(part, int):
            key.append(part)
            node = node[part] if 0 <= part < len(node) else None
        else:
            key.append(0)
            node = None
    return tuple(key)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

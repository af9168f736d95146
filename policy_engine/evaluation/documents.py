"""Field readers for policy objects and `policy check` documents: each error names the path and value."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from policy_engine.evaluation.model import (
    K8S_PROTOCOLS,
    KIND_CCNP,
    POLICY_KINDS,
    ContainerPort,
    EvaluatorInputError,
    IPAddress,
    IPNetwork,
    Pod,
    PolicyRef,
)
from policy_engine.selectors import LabelSelector, SelectorError, parse_selector


def require_field(obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj or obj[key] is None:
        raise EvaluatorInputError(f"{path}.{key}: missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise EvaluatorInputError(f"{path}.{key}: unexpected value {value!r}")
    return value


def list_field(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise EvaluatorInputError(f"{path}.{key}: expected a list, got {value!r}")
    return value


def parse_label_selector(obj: Any, path: str) -> LabelSelector:
    try:
        return parse_selector(obj, path)
    except SelectorError as exc:
        raise EvaluatorInputError(str(exc)) from None


def parse_network(value: Any, path: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise EvaluatorInputError(f"{path}: {value!r} is not a CIDR") from None


def parse_labels(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise EvaluatorInputError(f"{path}: labels must map strings to strings, got {value!r}")
    return dict(value)


def port_number(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise EvaluatorInputError(f"{path}: {value!r} is not a port number (1-65535)")
    return value


def policy_ref(policy: Mapping[str, Any], path: str) -> PolicyRef:
    kind = policy.get("kind")
    if kind not in POLICY_KINDS:
        raise EvaluatorInputError(f"{path}.kind: {kind!r} is not one of {', '.join(POLICY_KINDS)}")
    metadata = require_field(policy, "metadata", path, dict)
    name = require_field(metadata, "name", f"{path}.metadata", str)
    namespace = ""
    if kind != KIND_CCNP:
        namespace = require_field(metadata, "namespace", f"{path}.metadata", str)
    return PolicyRef(kind, namespace, name)



def looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_ip(text: Any, path: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise EvaluatorInputError(f"{path}: {text!r} is not an IP address") from None


def parse_pod(obj: Any, path: str) -> Pod:
    if not isinstance(obj, dict):
        raise EvaluatorInputError(f"{path}: expected a pod object, got {obj!r}")
    namespace = require_field(obj, "namespace", path, str)
    name = require_field(obj, "name", path, str)
    ip = parse_ip(obj["ip"], f"{path}.ip") if obj.get("ip") is not None else None
    ports = []
    for i, p in enumerate(list_field(obj, "ports", path)):
        ppath = f"{path}.ports[{i}]"
        if not isinstance(p, dict):
            raise EvaluatorInputError(f"{ppath}: expected an object, got {p!r}")
        number = port_number(p.get("containerPort"), f"{ppath}.containerPort")
        protocol = p.get("protocol") or "TCP"
        if protocol not in K8S_PROTOCOLS:
            raise EvaluatorInputError(
                f"{ppath}.protocol: {protocol!r} is not one of {', '.join(K8S_PROTOCOLS)}"
            )
        port_name = p.get("name")
        if port_name is not None and not isinstance(port_name, str):
            raise EvaluatorInputError(f"{ppath}.name: {port_name!r} is not a string")
        ports.append(ContainerPort(port_name, number, protocol))
    return Pod(namespace, name, parse_labels(obj.get("labels"), f"{path}.labels"), ip, tuple(ports))


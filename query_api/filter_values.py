"""Filter values as hubble's flags take them (`--since 5m`, `--protocol icmp`, `--pod ns/prefix`, ...) -> the
values query_api.flow_query binds. Pure; `FilterValueError` names the parameter (API query parameter / CLI
flag)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import json
import re
import time
import uuid as uuidlib
from collections.abc import Iterable
from typing import Any

from schemas.flow_record import L4_PROTOCOL_NUMBERS
from schemas.hubble.flow import flow_pb2

DEFAULT_NAMESPACE = "default"  # hubble: a pod filter without a namespace means this one

# hubble `--protocol` names -> Layer4 oneof numbers; "icmp" covers both ICMP versions.
PROTOCOLS: dict[str, tuple[int, ...]] = {
    "tcp": (L4_PROTOCOL_NUMBERS["TCP"],),
    "udp": (L4_PROTOCOL_NUMBERS["UDP"],),
    "sctp": (L4_PROTOCOL_NUMBERS["SCTP"],),
    "icmp": (L4_PROTOCOL_NUMBERS["ICMPv4"], L4_PROTOCOL_NUMBERS["ICMPv6"]),
    "icmpv4": (L4_PROTOCOL_NUMBERS["ICMPv4"],),
    "icmpv6": (L4_PROTOCOL_NUMBERS["ICMPv6"],),
    "vrrp": (L4_PROTOCOL_NUMBERS["VRRP"],),
    "igmp": (L4_PROTOCOL_NUMBERS["IGMP"],),
}
L7_PROTOCOLS = ("http", "dns", "kafka")  # hubble knows them; the record does not keep L7 payloads
PORT_PROTOCOLS = (L4_PROTOCOL_NUMBERS["TCP"], L4_PROTOCOL_NUMBERS["UDP"], L4_PROTOCOL_NUMBERS["SCTP"])

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86_400 * 1_000_000_000,
    "w": 7 * 86_400 * 1_000_000_000,
}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}$")
_MAX_UINT16 = 65535


class FilterValueError(ValueError):
    """A filter value that cannot be used; `parameter` names the filter (API query parameter / CLI flag)."""

    def __init__(self, parameter: str, value: object, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.value = value
        self.reason = reason


def parse_time_ns(param: str, value: str, now_ns: int | None = None) -> int:
    """RFC 3339 (or a plain date, UTC) or a duration ago (`5m`, `1h30m`) -> ns since the epoch."""
    text = value.strip()
    if _is_relative(text):
        now = time.time_ns() if now_ns is None else now_ns
        return now - _relative_ns(text)
    match = _RFC3339.match(text)
    try:
        if match:
            date, clock, fraction, zone = match.groups()
            zone = "+00:00" if zone in ("Z", "z") else zone
            base = dt.datetime.fromisoformat(f"{date}T{clock}{zone}")
            nanos = int((fraction or "").ljust(9, "0") or 0)
            return int(base.timestamp()) * 1_000_000_000 + nanos
        if _DATE.match(text):
            base = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
            return int(base.timestamp()) * 1_000_000_000
    except ValueError:
        pass
    raise FilterValueError(
        param,
        value,
        f"invalid time {value!r}: expected RFC 3339 (2024-05-01T10:00:00Z) or a duration ago (30s, 5m, 2h, 1d, 1w)",
    )


def parse_duration_ns(param: str, value: str) -> int:
    """A duration (`30s`, `5m`, `1h30m`) in nanoseconds."""
    text = value.strip()
    if not _is_relative(text):
        raise FilterValueError(param, value, f"invalid duration {value!r}; expected e.g. 30s, 5m, 1h, 1h30m")
    return _relative_ns(text)


def is_relative_time(text: str) -> bool:
    """`text` is a duration ago (`5m`, `1h30m`), not a point in time."""
    return bool(text) and "".join(m.group(0) for m in _RELATIVE.finditer(text)) == text


_is_relative = is_relative_time


def _relative_ns(text: str) -> int:
    return int(sum(float(m.group(1)) * _UNIT_NS[m.group(2)] for m in _RELATIVE.finditer(text)))


def parse_verdict(value: str) -> int:
    enum = flow_pb2.Verdict.DESCRIPTOR
    known = enum.values_by_name.get(value.strip().upper()) if value else None
    if known is None or known.number == 0:
        names = ", ".join(v.name for v in enum.values if v.number != 0)
        raise FilterValueError("verdict", value, f"unknown verdict {value!r}; expected one of {names}")
    return int(known.number)


def parse_protocol(value: str) -> tuple[int, ...]:
    name = value.strip().lower()
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    if name in L7_PROTOCOLS:
        raise FilterValueError(
            "protocol",
            value,
            f"{value!r} is an L7 protocol; flow history keeps L4 only ({', '.join(PROTOCOLS)})",
        )
    raise FilterValueError(
        "protocol", value, f"unknown protocol {value!r}; expected one of {', '.join(PROTOCOLS)}"
    )


def parse_port(value: int | str) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        port = -1
    if not 0 <= port <= _MAX_UINT16:
        raise FilterValueError("port", value, f"invalid port {value!r}; expected 0-65535")
    return port


def parse_pod(pod: str, namespace: str | None) -> tuple[str, str]:
    """(namespace, pod-name prefix) of a hubble pod filter `[namespace/][prefix]`."""
    if pod.count("/") > 1:
        raise FilterValueError("pod", pod, f"invalid pod {pod!r}; expected [namespace/]pod-name-prefix")
    if "/" in pod:
        ns, prefix = pod.split("/", 1)
        if not ns:
            raise FilterValueError("pod", pod, f"invalid pod {pod!r}; empty namespace before '/'")
        if namespace is not None and ns != namespace:
            raise FilterValueError("pod", pod, f"namespace of {pod!r} conflicts with namespace {namespace!r}")
        return ns, prefix
    if not pod:
        raise FilterValueError("pod", pod, "empty pod filter")
    return (namespace if namespace is not None else DEFAULT_NAMESPACE), pod


def _parse_enum(parameter: str, enum: Any, value: str, numbers: bool = False) -> int:
    """An enum value by name (case-insensitive; the zero 'unknown' value excluded) or, if allowed, number."""
    text = value.strip()
    if numbers and text.isdigit():
        number = int(text)
        if 0 < number <= 0xFFFF:
            return number
    known = enum.DESCRIPTOR.values_by_name.get(text.upper()) if text else None
    if known is None or known.number == 0:
        names = ", ".join(v.name for v in enum.DESCRIPTOR.values if v.number != 0)
        raise FilterValueError(parameter, value, f"unknown {parameter} {value!r}; expected one of {names}")
    return int(known.number)


def parse_drop_reason(value: str) -> int:
    return _parse_enum("drop_reason", flow_pb2.DropReason, value, numbers=True)


def parse_direction(value: str) -> int:
    return _parse_enum("direction", flow_pb2.TrafficDirection, value)


def parse_l7_type(value: str) -> int:
    return _parse_enum("l7_type", flow_pb2.L7FlowType, value)


def parse_label(value: str) -> str:
    text = value.strip()
    if not text or text.startswith("=") or "," in text:
        raise FilterValueError(
            "label", value, f"invalid label {value!r}; expected key=value or source:key=value"
        )
    return text


def label_matches(wanted: str, labels: Iterable[str]) -> bool:
    """Python twin of the SQL label match: the full label, or the label without its `source:` prefix."""
    return any(lb == wanted or lb.split(":", 1)[-1] == wanted for lb in labels)


def parse_workload(value: str) -> tuple[str, str]:
    """(kind or '', name) of `[kind/]name`."""
    text = value.strip()
    kind, _, name = text.rpartition("/")
    if not name or "/" in kind:
        raise FilterValueError("workload", value, f"invalid workload {value!r}; expected [kind/]name")
    return kind, name


def parse_ip(value: str) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
    """First and last address of an address or CIDR, as stored (IPv6; IPv4 as IPv4-mapped)."""
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise FilterValueError("ip", value, f"invalid ip {value!r}; expected an IP address or CIDR") from None
    if isinstance(net, ipaddress.IPv4Network):
        mapped = int(ipaddress.IPv6Address("::ffff:0:0"))
        lo = ipaddress.IPv6Address(mapped + int(net.network_address))
        hi = ipaddress.IPv6Address(mapped + int(net.broadcast_address))
        return lo, hi
    return ipaddress.IPv6Address(int(net.network_address)), ipaddress.IPv6Address(int(net.broadcast_address))


def encode_cursor(time_ns: int, flow_uuid: Any, cluster: str = "") -> str:
    """The opaque page token after a flow: url-safe base64 of {"t": ns, "u": uuid, "c": cluster}.
    The cluster is part of the key: one capture replayed into two clusters repeats (time, uuid)."""
    raw = json.dumps({"t": int(time_ns), "u": str(flow_uuid), "c": cluster}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[int, str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        obj = json.loads(raw)
        time_ns, flow_uuid, cluster = int(obj["t"]), str(uuidlib.UUID(str(obj["u"]))), obj.get("c", "")
        if not 0 <= time_ns < 2**63 or not isinstance(cluster, str):
            raise ValueError("time out of range")
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise FilterValueError(
            "cursor", token, "invalid cursor; use next_cursor of a previous page"
        ) from None
    return time_ns, flow_uuid, cluster


def parse_last(value: int | str | None) -> int | None:
    if value is None:
        return None
    try:
        last = int(str(value).strip())
    except ValueError:
        last = 0
    if last < 1:
        raise FilterValueError("last", value, f"invalid count {value!r}; expected a positive integer")
    return last

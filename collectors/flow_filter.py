"""Hubble `FlowFilter` semantics as plain predicates over `flow.Flow` (no I/O).

Used by the Hubble-compatible server: whitelist/blacklist lists are OR-ed, the set fields inside one
filter are AND-ed, and the values inside one repeated field are OR-ed (hubble-api.md section 5).
A filter field this module does not implement is refused with `FlowFilterError` naming the field,
rather than silently ignored (an older Hubble ignores it; a wrong answer is worse than an error).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence

from schemas.hubble.flow import flow_pb2

FlowPredicate = Callable[[flow_pb2.Flow], bool]


class FlowFilterError(ValueError):
    """A filter the server cannot evaluate; the message names the field and the value."""


def _endpoint_pod(pattern: str) -> Callable[[str, str], bool]:
    """`ns/prefix`, `ns/` (namespace only), `/prefix` or `prefix` (any namespace)."""
    namespace, _, prefix = pattern.rpartition("/")
    return lambda ns, name: (not namespace or ns == namespace) and name.startswith(prefix)


def _ip_matcher(field: str, values: Sequence[str]) -> Callable[[str], bool]:
    exact: set[str] = set()
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for value in values:
        try:
            if "/" in value:
                nets.append(ipaddress.ip_network(value, strict=False))
            else:
                exact.add(str(ipaddress.ip_address(value)))
        except ValueError:
            raise FlowFilterError(f"{field}: not an IP address or CIDR: {value!r}") from None

    def match(ip: str) -> bool:
        if not ip:
            return False
        if ip in exact:
            return True
        if nets:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(addr in net for net in nets)
        return False

    return match


def _split_label(label: str) -> tuple[str, str, str]:
    """`k8s:app=cart` -> (source, key, value); `reserved:world` -> ("reserved", "world", "")."""
    key, _, value = label.partition("=")
    source, sep, bare = key.partition(":")
    if not sep:
        return "", key, value
    return source, bare, value


_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nkey>[^\s=!,()]+)"
    r"|(?P<key>[^\s=!,()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?)\s*$"
)


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def label_selector(field: str, selector: str) -> Callable[[Sequence[str]], bool]:
    """Kubernetes label-selector syntax over Cilium labels; a key without `source:` matches any source."""
    requirements: list[Callable[[list[tuple[str, str, str]]], bool]] = []
    for text in _split_selector(selector):
        m = _REQUIREMENT.match(text)
        if not m:
            raise FlowFilterError(f"{field}: cannot parse label selector {selector!r} at {text.strip()!r}")
        raw_key = m.group("nkey") or m.group("key")
        source, sep, key = raw_key.partition(":")
        if not sep:
            source, key = "", raw_key
        if source == "any":
            source = ""

        def keyed(labels: list[tuple[str, str, str]], source: str = source, key: str = key) -> list[str]:
            return [v for s, k, v in labels if k == key and (not source or s == source)]

        want = m.group("value") or ""
        if m.group("not"):
            requirements.append(lambda labels, keyed=keyed: not keyed(labels))
        elif m.group("op") in ("=", "=="):
            requirements.append(lambda labels, keyed=keyed, want=want: want in keyed(labels))
        elif m.group("op") == "!=":
            requirements.append(lambda labels, keyed=keyed, want=want: want not in keyed(labels))
        elif m.group("setop"):
            values = {v.strip() for v in m.group("set").split(",") if v.strip()}
            if m.group("setop") == "in":
                requirements.append(lambda labels, keyed=keyed, values=values: bool(values & set(keyed(labels))))
            else:
                requirements.append(lambda labels, keyed=keyed, values=values: not values & set(keyed(labels)))
        else:
            requirements.append(lambda labels, keyed=keyed: bool(keyed(labels)))

    def match(labels: Sequence[str]) -> bool:
        parsed = [_split_label(label) for label in labels]
        return all(req(parsed) for req in requirements)

    return match


def _glob(pattern: str, star: str) -> re.Pattern[str]:
    return re.compile("".join(star if c == "*" else re.escape(c) for c in pattern) + r"\Z", re.IGNORECASE)


def node_name_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    # Hubble: no "/" -> any cluster; trailing "/" -> every node of that cluster; nodes without a
    # cluster prefix belong to cluster "default".
    compiled = []
    for pattern in patterns:
        if "/" not in pattern:
            pattern = "*/" + pattern
        if pattern.endswith("/"):
            pattern += "*"
        compiled.append(_glob(pattern, r"[^/]*"))

    def match(node: str) -> bool:
        full = node if "/" in node else "default/" + node
        return any(p.match(full) for p in compiled)

    return match


def _fqdn_matcher(patterns: Sequence[str]) -> Callable[[Sequence[str]], bool]:
    compiled = [_glob(p.rstrip("."), r"[-.0-9a-z_]*") for p in patterns]
    return lambda names: any(p.match(n.rstrip(".")) for p in compiled for n in names)


def _l4_ports(flow: flow_pb2.Flow) -> tuple[int, int] | None:
    kind = flow.l4.WhichOneof("protocol")
    if kind in ("TCP", "UDP", "SCTP"):
        l4 = getattr(flow.l4, kind)
        return l4.source_port, l4.destination_port
    return None


def _port_matcher(field: str, values: Sequence[str], index: int) -> FlowPredicate:
    try:
        ports = {int(v) for v in values}
    except ValueError:
        raise FlowFilterError(f"{field}: not a port number: {list(values)!r}") from None

    def match(flow: flow_pb2.Flow) -> bool:
        pair = _l4_ports(flow)
        return pair is not None and pair[index] in ports

    return match


_L4_PROTOCOLS = {"tcp": ("TCP",), "udp": ("UDP",), "sctp": ("SCTP",), "icmp": ("ICMPv4", "ICMPv6"),
                 "icmpv4": ("ICMPv4",), "icmpv6": ("ICMPv6",), "vrrp": ("VRRP",), "igmp": ("IGMP",)}
_L7_PROTOCOLS = {"dns": "dns", "http": "http", "kafka": "kafka"}

_TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def _field_predicate(name: str, f: flow_pb2.FlowFilter) -> FlowPredicate:
    values = getattr(f, name)
    if name == "uuid":
        uuids = set(values)
        return lambda flow: flow.uuid in uuids
    if name in ("source_ip", "destination_ip", "source_ip_xlated"):
        match_ip = _ip_matcher(name, values)
        attr = {"source_ip": "source", "destination_ip": "destination", "source_ip_xlated": "source_xlated"}[name]
        return lambda flow: match_ip(getattr(flow.IP, attr))
    if name in ("source_pod", "destination_pod"):
        side = name.split("_")[0]
        pods = [_endpoint_pod(v) for v in values]
        return lambda flow: any(p(getattr(flow, side).namespace, getattr(flow, side).pod_name) for p in pods)
    if name in ("source_service", "destination_service"):
        side = name.split("_")[0] + "_service"
        services = [_endpoint_pod(v) for v in values]
        return lambda flow: bool(getattr(flow, side).name) and any(
            s(getattr(flow, side).namespace, getattr(flow, side).name) for s in services)
    if name in ("source_label", "destination_label"):
        side = name.split("_")[0]
        selectors = [label_selector(name, v) for v in values]
        return lambda flow: any(s(getattr(flow, side).labels) for s in selectors)
    if name in ("source_fqdn", "destination_fqdn"):
        attr = name.split("_")[0] + "_names"
        match_names = _fqdn_matcher(values)
        return lambda flow: match_names(getattr(flow, attr))
    if name in ("source_workload", "destination_workload"):
        side = name.split("_")[0]
        wanted = [(w.name, w.kind) for w in values]
        return lambda flow: any(
            (not n or w.name == n) and (not k or w.kind == k)
            for w in getattr(flow, side).workloads for n, k in wanted)
    if name in ("source_identity", "destination_identity"):
        side = name.split("_")[0]
        ids = set(values)
        return lambda flow: getattr(flow, side).identity in ids
    if name in ("source_cluster_name", "destination_cluster_name"):
        side = name.split("_")[0]
        clusters = set(values)
        return lambda flow: getattr(flow, side).cluster_name in clusters
    if name in ("verdict", "drop_reason_desc", "traffic_direction"):
        allowed = set(values)
        return lambda flow: getattr(flow, name) in allowed
    if name == "ip_version":
        versions = set(values)
        return lambda flow: flow.IP.ipVersion in versions
    if name == "event_type":
        wanted_types = [(e.type, e.match_sub_type, e.sub_type) for e in values]
        return lambda flow: any(
            flow.event_type.type == t and (not m or flow.event_type.sub_type == s) for t, m, s in wanted_types)
    if name == "protocol":
        l4: set[str] = set()
        l7: set[str] = set()
        for value in values:
            key = value.lower()
            if key in _L4_PROTOCOLS:
                l4.update(_L4_PROTOCOLS[key])
            elif key in _L7_PROTOCOLS:
                l7.add(_L7_PROTOCOLS[key])
            else:
                raise FlowFilterError(f"protocol: unknown protocol {value!r}")
        return lambda flow: flow.l4.WhichOneof("protocol") in l4 or (
            flow.HasField("l7") and flow.l7.WhichOneof("record") in l7)
    if name == "source_port":
        return _port_matcher(name, values, 0)
    if name == "destination_port":
        return _port_matcher(name, values, 1)
    if name == "reply":
        replies = set(values)
        return lambda flow: flow.HasField("is_reply") and flow.is_reply.value in replies
    if name == "node_name":
        match_node = node_name_matcher(values)
        return lambda flow: match_node(flow.node_name)
    if name == "tcp_flags":
        wanted_flags = [[n for n in _TCP_FLAG_NAMES if getattr(t, n)] for t in values]
        return lambda flow: flow.l4.HasField("TCP") and any(
            all(getattr(flow.l4.TCP.flags, n) for n in names) for names in wanted_flags)
    if name == "dns_query":
        try:
            patterns = [re.compile(v) for v in values]
        except re.error as exc:
            raise FlowFilterError(f"dns_query: invalid regular expression: {exc}") from None
        return lambda flow: flow.l7.HasField("dns") and any(p.search(flow.l7.dns.query) for p in patterns)
    if name == "encrypted":
        encrypted = set(values)
        return lambda flow: flow.IP.encrypted in encrypted
    raise FlowFilterError(f"{name}: filter field not supported by this server")


def compile_filter(f: flow_pb2.FlowFilter) -> FlowPredicate:
    """One FlowFilter: every set field must match."""
    predicates = [_field_predicate(fd.name, f) for fd, _ in f.ListFields()]
    if not predicates:
        return lambda flow: True
    if len(predicates) == 1:
        return predicates[0]
    return lambda flow: all(p(flow) for p in predicates)


def compile_filters(
    whitelist: Iterable[flow_pb2.FlowFilter], blacklist: Iterable[flow_pb2.FlowFilter]
) -> FlowPredicate | None:
    """whitelist (any) minus blacklist (any); None when no filter is requested."""
    allow = [compile_filter(f) for f in whitelist]
    deny = [compile_filter(f) for f in blacklist]
    if not allow and not deny:
        return None

    def match(flow: flow_pb2.Flow) -> bool:
        if allow and not any(p(flow) for p in allow):
            return False
        return not any(p(flow) for p in deny)

    return match

"""Stored flow row -> one line of `hubble observe -o compact`. Pure, no I/O.

Reproduces cilium's hubble printer (hubble/pkg/printer/printer.go, CompactOutput) for the fields the
record keeps (schemas/flow_record.py; row shape as in schemas.flow_render):

    Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)

- time: Go's time.StampMilli in UTC (milliseconds truncated); ` [node]` only with `node_name=True`
  (hubble's --print-node-name);
- endpoints: `namespace/pod`, else `namespace/service`, else the DNS names joined by ",", else the IP
  (hubble's IP translation, on by default); a service's namespace wins over the pod's, as in hubble; the
  port (TCP/UDP/SCTP, not 0) joined like Go's net.JoinHostPort; no IP at all prints an empty host (hubble
  would print Ethernet addresses, which the record does not keep). A peer redacted out of the caller's
  scope (no pod, service, names or IP) prints `namespace/(redacted)`, as the table does;
- identities: `(name)` for cilium's reserved numeric identities, else `(ID:n)`;
- arrow: `->`, `<-` with the sides swapped for replies, `<>` when the direction is unknown (is_reply None);
- type: trace observation point, drop reason text (cilium's monitor API), `policy-verdict:<match> <DIR>`,
  `l7-<type>`; verdict with ALLOWED/DENIED/AUDITED for policy verdicts, `BY name (Kind), ...` with
  `policy_names=True` (hubble's --print-policy-names);
- summary: what Hubble's agent writes into Flow.Summary for L3/L4 (`TCP Flags: SYN, ACK`, `UDP`,
  `ICMPv4 EchoRequest`, ...), rebuilt from the stored L4 fields.

Not stored, so not printable as hubble would (see the module's tests): the L7 record (hubble prints
`http-request` / `dns-request proxy` and the HTTP/DNS summary; we print `l7-request` and `L7 REQUEST`),
policy_match_type, sock_xlate_point and debug_capture_point (read when a row carries them, else 0),
auth type and IP trace id.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

from schemas.flow_record import L4_PROTOCOLS, TCP_FLAG_NAMES
from schemas.flow_render import IP_VERSION_IPV4, ip_text, row_time_ns
from schemas.hubble.flow import flow_pb2

# cilium pkg/identity numericidentity.go reservedIdentityNames (11, overlay-to-encrypt, has no name there).
RESERVED_IDENTITIES = {
    0: "unknown",
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world-ipv4",
    10: "world-ipv6",
}
# cilium pkg/monitor/api/types.go TraceObservationPoints, by event sub_type.
TRACE_POINTS = (
    "to-endpoint",
    "to-proxy",
    "to-host",
    "to-stack",
    "to-overlay",
    "from-endpoint",
    "from-proxy",
    "from-host",
    "from-stack",
    "from-overlay",
    "from-network",
    "to-network",
    "from-crypto",
    "to-crypto",
)
# cilium pkg/monitor/api/drop.go: the datapath's drop reason texts.
DROP_REASONS = {
    0: "Success",
    2: "Invalid packet",
    3: "Interface",
    4: "Interface Decrypted",
    5: "LB, sock cgroup: No backend slot entry found",
    6: "LB, sock cgroup: No backend entry found",
    7: "LB, sock cgroup: Reverse entry update failed",
    8: "LB, sock cgroup: Reverse entry stale",
    9: "Fragmented packet",
    10: "Fragmented packet entry update failed",
    11: "Missed tail call to custom program",
    12: "Interface Decrypting",
    13: "Interface Encrypting",
    14: "LB: sock cgroup: Reverse entry delete succeeded",
    15: "MTU error message",
    130: "Invalid source mac",
    131: "Invalid destination mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    135: "CT: Truncated or invalid header",
    136: "Fragmentation needed",
    137: "CT: Unknown L4 protocol",
    138: "CT: Can't create entry from packet",
    139: "Unsupported L3 protocol",
    140: "Missed tail call",
    141: "Error writing to packet",
    142: "Unknown L4 protocol",
    143: "Unknown ICMPv4 code",
    144: "Unknown ICMPv4 type",
    145: "Unknown ICMPv6 code",
    146: "Unknown ICMPv6 type",
    147: "Error retrieving tunnel key",
    148: "Error retrieving tunnel options",
    149: "Invalid Geneve option",
    150: "Unknown L3 target address",
    151: "Stale or unroutable IP",
    152: "No matching local container found",
    153: "Error while correcting L3 checksum",
    154: "Error while correcting L4 checksum",
    155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header",
    157: "IP fragmentation not supported",
    158: "Service backend not found",
    160: "No tunnel/encapsulation endpoint (datapath BUG!)",
    161: "NAT 46/64 not enabled",
    162: "Reached EDT rate-limiting drop horizon",
    163: "Unknown connection tracking state",
    164: "Local host is unreachable",
    165: "No configuration available to perform policy decision",
    166: "Unsupported L2 protocol",
    167: "No mapping for NAT masquerade",
    168: "Unsupported protocol for NAT masquerade",
    169: "FIB lookup failed",
    170: "Encapsulation traffic is prohibited",
    171: "Invalid identity",
    172: "Unknown sender",
    173: "NAT not needed",
    174: "Is a ClusterIP",
    175: "First logical datagram fragment not found",
    176: "Forbidden ICMPv6 message",
    177: "Denied by LB src range check",
    178: "Socket lookup failed",
    179: "Socket assign failed",
    180: "Proxy redirection not supported for protocol",
    181: "Policy denied by denylist",
    182: "VLAN traffic disallowed by VLAN filter",
    183: "Incorrect VNI from VTEP",
    184: "Failed to update or lookup TC buffer",
    185: "No SID was found for the IP address",
    186: "SRv6 state was removed during tail call",
    187: "L3 translation from IPv4 to IPv6 failed (NAT46)",
    188: "L3 translation from IPv6 to IPv4 failed (NAT64)",
    189: "Authentication required",
    190: "No conntrack map found",
    191: "No nat map found",
    192: "Invalid ClusterID",
    193: "Unsupported packet protocol for DSR encapsulation",
    194: "No egress gateway found",
    195: "Traffic is unencrypted",
    196: "TTL exceeded",
    197: "No node ID found",
    198: "Rate limited",
    199: "IGMP handled",
    200: "IGMP subscribed",
    201: "Multicast handled",
    202: "Host datapath not ready",
    203: "Endpoint policy program not available",
    204: "No Egress IP configured",
    205: "Punt to proxy",
}
# cilium pkg/monitor/api PolicyMatchType.String().
POLICY_MATCH = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all", 5: "L3-Proto", 6: "Proto-Only"}
# Hubble's agent joins TCP flags in this order (pkg/hubble/parser/threefour getTCPFlags).
TCP_SUMMARY_ORDER = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS")
_TCP_SUMMARY_BITS = tuple((name, 1 << TCP_FLAG_NAMES.index(name)) for name in TCP_SUMMARY_ORDER)
# gopacket ICMPv4TypeCode / ICMPv6TypeCode String(): type name, and code names where the type has them.
_ICMP_NAMES: dict[int, dict[int, tuple[str, dict[int, str] | None]]] = {
    3: {
        0: ("EchoReply", None),
        3: (
            "DestinationUnreachable",
            {
                0: "Net",
                1: "Host",
                2: "Protocol",
                3: "Port",
                4: "FragmentationNeeded",
                5: "SourceRoutingFailed",
                6: "NetUnknown",
                7: "HostUnknown",
                8: "SourceIsolated",
                9: "NetAdminProhibited",
                10: "HostAdminProhibited",
                11: "NetTOS",
                12: "HostTOS",
                13: "CommAdminProhibited",
                14: "HostPrecedence",
                15: "PrecedenceCutoff",
            },
        ),
        4: ("SourceQuench", None),
        5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
        8: ("EchoRequest", None),
        9: ("RouterAdvertisement", None),
        10: ("RouterSolicitation", None),
        11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
        12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
        13: ("TimestampRequest", None),
        14: ("TimestampReply", None),
        15: ("InfoRequest", None),
        16: ("InfoReply", None),
        17: ("AddressMaskRequest", None),
        18: ("AddressMaskReply", None),
    },
    4: {
        1: (
            "DestinationUnreachable",
            {
                0: "NoRouteToDst",
                1: "AdminProhibited",
                2: "BeyondScopeOfSrc",
                3: "AddressUnreachable",
                4: "PortUnreachable",
                5: "SrcAddressFailedPolicy",
                6: "RejectRouteToDst",
            },
        ),
        2: ("PacketTooBig", None),
        3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
        4: (
            "ParameterProblem",
            {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedIPv6Option"},
        ),
        128: ("EchoRequest", None),
        129: ("EchoReply", None),
        133: ("RouterSolicitation", None),
        134: ("RouterAdvertisement", None),
        135: ("NeighborSolicitation", None),
        136: ("NeighborAdvertisement", None),
        137: ("Redirect", None),
    },
}
PORT_PROTOCOLS = (1, 2, 5)  # TCP, UDP, SCTP: the Layer4 messages with ports
EVENT_DROP, EVENT_CAPTURE, EVENT_TRACE, EVENT_POLICY_VERDICT, EVENT_TRACE_SOCK = 1, 3, 4, 5, 7
FLOW_TYPE_L7 = 2
EGRESS, INGRESS = 2, 1
REDACTED = "(redacted)"
_SOCK_XLATE = {1: "pre-xlate-fwd", 2: "post-xlate-fwd", 3: "pre-xlate-rev", 4: "post-xlate-rev"}
# hubble's terminal escaper (printer/terminal.go) turns ESC and CR into visible text; other control
# characters are escaped too, so that a flow is always exactly one line.
_ESCAPES = {0x1B: "^[", 0x0D: "\\r"}


def _enum_name(enum: Any, number: int) -> str:
    value = enum.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else str(number)


def timestamp_text(row: Mapping[str, Any]) -> str:
    """Go's time.StampMilli ("Jan _2 15:04:05.000") of the flow time, UTC, milliseconds truncated."""
    seconds, nanos = divmod(row_time_ns(row), 1_000_000_000)
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S}.{nanos // 1_000_000:03d}"


def _path_join(*parts: str) -> str:
    """Go's path.Join: the non-empty parts joined by '/', cleaned; '' when all are empty."""
    joined = "/".join(p for p in parts if p)
    if not joined:
        return ""
    cleaned = posixpath.normpath(joined)
    return cleaned[1:] if cleaned.startswith("//") else cleaned  # Go keeps one leading slash


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_text(row: Mapping[str, Any], side: str) -> str:
    """Hubble's Hostname() of one side ('src' or 'dst'), with the port."""
    ip_version = int(row.get("ip_version") or 0)
    if not ip_version:
        return ""  # no IP header: hubble falls back to Ethernet addresses, which are not stored
    ns = row.get(f"{side}_namespace") or ""
    pod = row.get(f"{side}_pod") or ""
    svc = row.get(f"{side}_service") or ""
    svc_ns = row.get(f"{side}_service_namespace") or ""
    if svc or svc_ns:  # hubble takes the namespace from the service message whenever there is one
        ns = svc_ns
    names = row.get(f"{side}_names") or ()
    ip = ip_text(row.get(f"ip_{side}"), ip_version)
    if pod:
        host = _path_join(ns, pod)
    elif svc:
        host = _path_join(ns, svc)
    elif names:
        host = ",".join(names)
    elif ip:
        host = ip
    else:
        # Redacted: only the namespace is the caller's to see (schemas of query_api.scope.redact).
        ns = row.get(f"{side}_namespace") or ""
        host = f"{ns}/{REDACTED}" if ns else REDACTED
    if int(row.get("l4_protocol") or 0) in PORT_PROTOCOLS:
        port = int(row.get(f"{side}_port") or 0)
        if port:
            return _join_host_port(host, str(port))
    return host


def identity_text(identity: int) -> str:
    name = RESERVED_IDENTITIES.get(identity)
    return f"({name})" if name is not None else f"(ID:{identity})"


def flow_type_text(row: Mapping[str, Any]) -> str:
    """Hubble's GetFlowType()."""
    if int(row.get("flow_type") or 0) == FLOW_TYPE_L7:
        # The L7 record (http/dns/kafka) is not stored: hubble's generic "l7-" form.
        return "l7-" + _enum_name(flow_pb2.L7FlowType, int(row.get("l7_type") or 0)).lower()
    etype = int(row.get("event_type") or 0)
    sub = int(row.get("event_sub_type") or 0) & 0xFF  # Go converts the sub type to uint8
    if etype == EVENT_TRACE:
        return TRACE_POINTS[sub] if sub < len(TRACE_POINTS) else str(sub)
    if etype == EVENT_DROP:
        return DROP_REASONS.get(sub, f"{sub}, 0")
    if etype == EVENT_POLICY_VERDICT:
        match = POLICY_MATCH.get(int(row.get("policy_match_type") or 0), "unknown")
        direction = _enum_name(flow_pb2.TrafficDirection, int(row.get("traffic_direction") or 0))
        return f"policy-verdict:{match} {direction}"
    if etype == EVENT_CAPTURE:
        return _enum_name(flow_pb2.DebugCapturePoint, int(row.get("debug_capture_point") or 0))
    if etype == EVENT_TRACE_SOCK:
        point = int(row.get("sock_xlate_point") or 0)
        return _SOCK_XLATE.get(point) or _enum_name(flow_pb2.SocketTranslationPoint, point)
    return "UNKNOWN"


def _policies_text(policies: Iterable[Any] | None) -> str:
    """hubble's formatPolicyNames: ' BY name (Kind), ...' over the policies with a kind and a name."""
    named = []
    for p in policies or ():
        if isinstance(p, Mapping):
            kind, name = p.get("kind") or "", p.get("name") or ""
        else:
            kind, name = p[0] or "", p[2] or ""
        if kind and name:
            named.append(f"{name} ({kind})")
    return " BY " + ", ".join(named) if named else ""


def verdict_text(row: Mapping[str, Any], policy_names: bool = False) -> str:
    """Hubble's getVerdict(): policy-verdict events say ALLOWED/DENIED/AUDITED (BY ... with policy names)."""
    verdict = int(row.get("verdict") or 0)
    text = _enum_name(flow_pb2.Verdict, verdict)
    if int(row.get("event_type") or 0) != EVENT_POLICY_VERDICT:
        return text
    if verdict in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED):
        text, kind = "ALLOWED", "allowed_by"
    elif verdict in (flow_pb2.DROPPED, flow_pb2.ERROR):
        text, kind = "DENIED", "denied_by"
    elif verdict == flow_pb2.AUDIT:
        text, kind = "AUDITED", "denied_by"  # audit mode: the policies that would have denied it
    else:
        return text
    if policy_names:
        direction = int(row.get("traffic_direction") or 0)
        if direction == EGRESS:
            text += _policies_text(row.get(f"egress_{kind}"))
        elif direction == INGRESS:
            text += _policies_text(row.get(f"ingress_{kind}"))
    return text


def _icmp_text(proto: int, itype: int, code: int) -> str:
    info = _ICMP_NAMES[proto].get(itype)
    if info is None:
        return f"{itype}({code})"
    name, codes = info
    if codes is None:
        return name if code == 0 else f"{name}(Code: {code})"
    return f"{name}({codes[code]})" if code in codes else f"{name}(Code: {code})"


def summary_text(row: Mapping[str, Any]) -> str:
    """Flow.Summary as Hubble's agent writes it for L3/L4 flows, from the stored L4 fields."""
    if int(row.get("flow_type") or 0) == FLOW_TYPE_L7:
        return "L7 " + _enum_name(flow_pb2.L7FlowType, int(row.get("l7_type") or 0))
    proto = int(row.get("l4_protocol") or 0)
    if proto == 1:
        bits = int(row.get("tcp_flags") or 0)
        return "TCP Flags: " + ", ".join(name for name, bit in _TCP_SUMMARY_BITS if bits & bit)
    if proto in (3, 4):
        itype, code = int(row.get("icmp_type") or 0), int(row.get("icmp_code") or 0)
        return f"{L4_PROTOCOLS[proto]} {_icmp_text(proto, itype, code)}"
    if proto:
        return L4_PROTOCOLS.get(proto, "")
    # No L4 header: the agent's summary is the last decoded layer's name.
    return {IP_VERSION_IPV4: "IPv4", IP_VERSION_IPV4 + 1: "IPv6"}.get(int(row.get("ip_version") or 0), "")


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(
        _ESCAPES.get(ord(c)) or (c if c.isprintable() else c.encode("unicode_escape").decode("ascii"))
        for c in text
    )


def compact_line(row: Mapping[str, Any], *, node_name: bool = False, policy_names: bool = False) -> str:
    """The `hubble observe -o compact` line of one stored row (no trailing newline)."""
    src, dst = host_text(row, "src"), host_text(row, "dst")
    src_id = identity_text(int(row.get("src_identity") or 0))
    dst_id = identity_text(int(row.get("dst_identity") or 0))
    is_reply = row.get("is_reply")
    if is_reply is None:
        arrow = "<>"
    elif is_reply:
        src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
    else:
        arrow = "->"
    node = f" [{row.get('node_name') or ''}]" if node_name else ""
    return _one_line(
        f"{timestamp_text(row)}{node}: {src} {src_id} {arrow} {dst} {dst_id} "
        f"{flow_type_text(row)} {verdict_text(row, policy_names)} ({summary_text(row)})"
    )

"""ICMP in Cilium policy: type names per family, and the probe protocols that carry an ICMP type.

Cilium turns every `icmps[].fields[]` entry into a port entry of protocol ICMP (family IPv4, the default) or
ICMPv6 whose "port" is the ICMP type (pkg/policy/api/icmp.go `ICMPField.PortProtocol`), so ICMP rules are
matched like ports, in the same rule as the rule's peers. A type name must belong to its family's table
(the agent refuses "PacketTooBig" with family IPv4), and `icmps` may not share a rule with `toPorts`
(rule_validation.go errUnsupportedICMPWithToPorts); the CRD schema lets both through, the agent does not.
"""

from __future__ import annotations

from typing import Any

ICMP_FAMILIES = ("IPv4", "IPv6")
FAMILY_PROTOCOL = {"IPv4": "ICMP", "IPv6": "ICMPv6"}  # the evaluator's protocol names
ICMP_PROTOCOLS = ("ICMP", "ICMPv6")
# Hubble names the IPv4 protocol ICMPv4 (flow.proto Layer4); probes may use either name.
PROTOCOL_ALIASES = {"ICMPv4": "ICMP"}
ECHO_REQUEST = {"ICMP": 8, "ICMPv6": 128}  # what `ping` sends: the default type of an ICMP probe

# pkg/policy/api/icmp.go at v1.16.5 (icmpIpv4TypeNameToCode, icmpIpv6TypeNameToCode).
ICMP_TYPE_NAMES: dict[str, dict[str, int]] = {
    "IPv4": {
        "EchoReply": 0,
        "DestinationUnreachable": 3,
        "Redirect": 5,
        "Echo": 8,
        "EchoRequest": 8,
        "RouterAdvertisement": 9,
        "RouterSelection": 10,
        "TimeExceeded": 11,
        "ParameterProblem": 12,
        "Timestamp": 13,
        "TimestampReply": 14,
        "Photuris": 40,
        "ExtendedEchoRequest": 42,
        "ExtendedEchoReply": 43,
    },
    "IPv6": {
        "DestinationUnreachable": 1,
        "PacketTooBig": 2,
        "TimeExceeded": 3,
        "ParameterProblem": 4,
        "EchoRequest": 128,
        "EchoReply": 129,
        "MulticastListenerQuery": 130,
        "MulticastListenerReport": 131,
        "MulticastListenerDone": 132,
        "RouterSolicitation": 133,
        "RouterAdvertisement": 134,
        "NeighborSolicitation": 135,
        "NeighborAdvertisement": 136,
        "RedirectMessage": 137,
        "RouterRenumbering": 138,
        "ICMPNodeInformationQuery": 139,
        "ICMPNodeInformationResponse": 140,
        "InverseNeighborDiscoverySolicitation": 141,
        "InverseNeighborDiscoveryAdvertisement": 142,
        "HomeAgentAddressDiscoveryRequest": 144,
        "HomeAgentAddressDiscoveryReply": 145,
        "MobilePrefixSolicitation": 146,
        "MobilePrefixAdvertisement": 147,
        "DuplicateAddressRequestCodeSuffix": 157,
        "DuplicateAddressConfirmationCodeSuffix": 158,
        "ExtendedEchoRequest": 160,
        "ExtendedEchoReply": 161,
    },
}


def icmp_type_problem(value: Any, family: str) -> str | None:
    """Why `value` is not an ICMP type of `family` as the Cilium agent reads it, or None."""
    if family not in ICMP_FAMILIES:
        return f"family {family!r} is not one of {', '.join(ICMP_FAMILIES)}"
    if isinstance(value, bool):
        return f"{value!r} is neither a type number (0-255) nor a type name"
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return None if 0 <= int(value) <= 255 else f"{value!r} is not a type number (0-255)"
    if isinstance(value, str) and value in ICMP_TYPE_NAMES[family]:
        return None
    return f"{value!r} is not an {family} ICMP type name (one of {', '.join(ICMP_TYPE_NAMES[family])}) or number"


def icmp_type_number(value: int | str, family: str) -> int:
    """The number of a type already checked with icmp_type_problem."""
    if isinstance(value, int) or value.isdigit():
        return int(value)
    return ICMP_TYPE_NAMES[family][value]


def icmp_family(protocol: str) -> str:
    """"IPv4" or "IPv6" for an ICMP probe protocol."""
    return "IPv6" if protocol == "ICMPv6" else "IPv4"

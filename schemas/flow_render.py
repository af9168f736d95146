"""Stored flow row -> Hubble `GetFlowsResponse`: the inverse of the decoder (streams/decode.py).

Pure functions, no I/O. The output is what `hubble observe -o jsonpb` prints for the same flow, restricted to
the fields the record keeps (schemas/flow_record.py): a line that went in comes out with the same values.

Row shape (a mapping, e.g. one row of `query_api.flow_query.SELECT_COLUMNS` from clickhouse-connect, or a row
of the decoder's Arrow batch):

- `time_ns`: int nanoseconds since the epoch (preferred: Python datetimes cannot hold nanoseconds); `time` is
  accepted instead as int nanoseconds or a datetime (microsecond precision then).
- every other column of `schemas.flow_record.FLOW_COLUMNS` under its own name, where
  - `uuid`: uuid.UUID, 16 bytes or str; rendered only when `uuid_given`;
  - `ip_src` / `ip_dst`: ipaddress.IPv6Address, str or 16 bytes, IPv4 stored IPv4-mapped; `::` = no address;
  - `is_reply`: True / False / None (None = the server did not say);
  - policy arrays: lists of (kind, namespace, name, revision, labels) tuples or of mappings with those keys.
Missing columns count as their zero value.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import json_format

from schemas.flow_record import TCP_FLAG_NAMES
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2

IP_VERSION_IPV4 = 1
FLOW_TYPE_L7 = 2
POLICY_FIELDS = ("ingress_allowed_by", "egress_allowed_by", "ingress_denied_by", "egress_denied_by")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def row_time_ns(row: Mapping[str, Any]) -> int:
    """The flow time of a row in nanoseconds since the epoch."""
    value = row.get("time_ns")
    if value is None:
        value = row.get("time")
    if value is None:
        return 0
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # clickhouse-connect returns naive UTC datetimes
            value = value.replace(tzinfo=dt.UTC)
        delta = value - _EPOCH
        # pandas.Timestamp (Arrow rows of the decoder) is a datetime that also carries nanoseconds.
        nanos = int(getattr(value, "nanosecond", 0) or 0)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000 + nanos
    return int(value)


def ip_text(value: Any, ip_version: int) -> str:
    """Render a stored (IPv6 column) address; '' for none. IPv4 flows come back in dotted form."""
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, bytes | bytearray):
        addr = ipaddress.IPv6Address(bytes(value))
    elif isinstance(value, ipaddress.IPv4Address):
        return str(value)
    else:
        addr = ipaddress.IPv6Address(value) if not isinstance(value, ipaddress.IPv6Address) else value
    if int(addr) == 0:
        return ""
    if ip_version == IP_VERSION_IPV4 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _uuid_text(value: Any) -> str:
    if isinstance(value, uuidlib.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return str(uuidlib.UUID(bytes=bytes(value)))
    return str(uuidlib.UUID(str(value)))


def _fill_endpoint(ep: flow_pb2.Endpoint, row: Mapping[str, Any], side: str) -> None:
    ep.ID = int(row.get(f"{side}_id") or 0)
    ep.identity = int(row.get(f"{side}_identity") or 0)
    ep.cluster_name = row.get(f"{side}_cluster_name") or ""
    ep.namespace = row.get(f"{side}_namespace") or ""
    ep.pod_name = row.get(f"{side}_pod") or ""
    ep.labels.extend(row.get(f"{side}_labels") or ())
    names = row.get(f"{side}_workload_names") or ()
    kinds = row.get(f"{side}_workload_kinds") or ()
    for i, name in enumerate(names):
        ep.workloads.add(name=name, kind=kinds[i] if i < len(kinds) else "")


def _fill_service(svc: flow_pb2.Service, name: str, namespace: str) -> None:
    svc.name = name
    svc.namespace = namespace


def _policies(value: Iterable[Any] | None) -> list[flow_pb2.Policy]:
    out = []
    for item in value or ():
        if isinstance(item, Mapping):
            kind, namespace, name = item.get("kind", ""), item.get("namespace", ""), item.get("name", "")
            revision, labels = item.get("revision", 0), item.get("labels", ())
        else:
            kind, namespace, name, revision, labels = item
        out.append(
            flow_pb2.Policy(
                kind=kind or "",
                namespace=namespace or "",
                name=name or "",
                revision=int(revision or 0),
                labels=list(labels or ()),
            )
        )
    return out


def _fill_l4(l4: flow_pb2.Layer4, row: Mapping[str, Any]) -> None:
    proto = int(row.get("l4_protocol") or 0)
    src_port, dst_port = int(row.get("src_port") or 0), int(row.get("dst_port") or 0)
    icmp_type, icmp_code = int(row.get("icmp_type") or 0), int(row.get("icmp_code") or 0)
    if proto == 1:
        l4.TCP.SetInParent()
        l4.TCP.source_port, l4.TCP.destination_port = src_port, dst_port
        bits = int(row.get("tcp_flags") or 0)
        if bits:  # the stored bitmask cannot tell an absent flags message from an all-false one
            for i, name in enumerate(TCP_FLAG_NAMES):
                if bits & (1 << i):
                    setattr(l4.TCP.flags, name, True)
    elif proto == 2:
        l4.UDP.SetInParent()
        l4.UDP.source_port, l4.UDP.destination_port = src_port, dst_port
    elif proto == 3:
        l4.ICMPv4.SetInParent()
        l4.ICMPv4.type, l4.ICMPv4.code = icmp_type, icmp_code
    elif proto == 4:
        l4.ICMPv6.SetInParent()
        l4.ICMPv6.type, l4.ICMPv6.code = icmp_type, icmp_code
    elif proto == 5:
        l4.SCTP.SetInParent()
        l4.SCTP.source_port, l4.SCTP.destination_port = src_port, dst_port
    elif proto == 6:  # only the message type is kept for VRRP and IGMP (in icmp_type)
        l4.VRRP.SetInParent()
        l4.VRRP.type = icmp_type
    elif proto == 7:
        l4.IGMP.SetInParent()
        l4.IGMP.type = icmp_type


def row_to_flow(row: Mapping[str, Any]) -> flow_pb2.Flow:
    """The Hubble `Flow` of one stored row (only non-default fields set, as protojson would print them)."""
    flow = flow_pb2.Flow()
    time_ns = row_time_ns(row)
    flow.time.seconds, flow.time.nanos = divmod(time_ns, 1_000_000_000)
    if row.get("uuid_given") and row.get("uuid") is not None:
        flow.uuid = _uuid_text(row["uuid"])
    # Enum fields are open in proto3: numbers this descriptor does not know are kept and print as numbers.
    flow.verdict = int(row.get("verdict") or 0)
    flow.drop_reason = int(row.get("drop_reason") or 0)
    flow.drop_reason_desc = int(row.get("drop_reason_desc") or 0)
    flow_type = int(row.get("flow_type") or 0)
    flow.Type = flow_type
    if flow_type == FLOW_TYPE_L7:
        # Only the L7 record's type is stored, not its payload (dns/http/kafka) or latency.
        flow.l7.SetInParent()
        flow.l7.type = int(row.get("l7_type") or 0)
    flow.node_name = row.get("node_name") or ""
    # Hubble's parsers always set both endpoints and the event type, so they render even when empty.
    _fill_endpoint(flow.source, row, "src")
    _fill_endpoint(flow.destination, row, "dst")
    flow.event_type.SetInParent()
    flow.event_type.type = int(row.get("event_type") or 0)
    flow.event_type.sub_type = int(row.get("event_sub_type") or 0)
    flow.traffic_direction = int(row.get("traffic_direction") or 0)
    flow.trace_observation_point = int(row.get("trace_observation_point") or 0)
    flow.trace_reason = int(row.get("trace_reason") or 0)
    if row.get("is_reply") is not None:
        flow.is_reply.value = bool(row["is_reply"])
    flow.reply = bool(row.get("reply"))

    ip_version = int(row.get("ip_version") or 0)
    if ip_version:
        flow.IP.ipVersion = ip_version
        flow.IP.source = ip_text(row.get("ip_src"), ip_version)
        flow.IP.destination = ip_text(row.get("ip_dst"), ip_version)
        flow.IP.encrypted = bool(row.get("ip_encrypted"))
    if int(row.get("l4_protocol") or 0):
        _fill_l4(flow.l4, row)

    for side, field in (("src", "source_service"), ("dst", "destination_service")):
        name = row.get(f"{side}_service") or ""
        namespace = row.get(f"{side}_service_namespace") or ""
        if name or namespace:
            _fill_service(getattr(flow, field), name, namespace)
    flow.source_names.extend(row.get("src_names") or ())
    flow.destination_names.extend(row.get("dst_names") or ())
    for field in POLICY_FIELDS:
        getattr(flow, field).extend(_policies(row.get(field)))
    return flow


def row_to_response(row: Mapping[str, Any]) -> observer_pb2.GetFlowsResponse:
    """The `GetFlowsResponse` Hubble would have streamed for this flow: envelope node_name and time = the flow's."""
    resp = observer_pb2.GetFlowsResponse()
    resp.flow.CopyFrom(row_to_flow(row))
    resp.node_name = resp.flow.node_name
    resp.time.CopyFrom(resp.flow.time)
    return resp


def response_to_jsonpb(resp: observer_pb2.GetFlowsResponse) -> dict[str, Any]:
    """Hubble's jsonpb form: proto field names, enum names, RFC 3339 times, 64-bit ints as strings."""
    return json_format.MessageToDict(resp, preserving_proto_field_name=True)


def row_to_jsonpb(row: Mapping[str, Any]) -> dict[str, Any]:
    return response_to_jsonpb(row_to_response(row))


def rows_to_jsonpb(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [row_to_jsonpb(row) for row in rows]


# ---- netwarden's enrichment (format=json, `flows -o json`) -------------------------------------------

ENRICHMENT_KEY = "netwarden"  # the key next to GetFlowsResponse's own fields; jsonpb output never has it


def _verdict_set_json(row: Mapping[str, Any], prefix: str) -> dict[str, Any] | None:
    """One evaluated policy set (`desired` or `staged`), or None when it was not evaluated (verdict 0)."""
    verdict = int(row.get(f"{prefix}_verdict") or 0)
    if not verdict:
        return None
    out: dict[str, Any] = {
        "verdict": _enum_name(flow_pb2.Verdict, verdict),
        "revision": str(int(row.get(f"{prefix}_revision") or 0)),  # uint64 as a string, like jsonpb
    }
    reason = int(row.get(f"{prefix}_drop_reason") or 0)
    if reason:
        out["drop_reason"] = _enum_name(flow_pb2.DropReason, reason)
    for direction in ("egress", "ingress"):
        dv = int(row.get(f"{prefix}_{direction}_verdict") or 0)
        if not dv:
            continue
        side: dict[str, Any] = {"verdict": _enum_name(flow_pb2.Verdict, dv)}
        for field in ("policy", "rule"):
            value = row.get(f"{prefix}_{direction}_{field}") or ""
            if value:
                side[field] = value
        version = int(row.get(f"{prefix}_{direction}_version") or 0)
        if version:
            side["version"] = version
        out[direction] = side
    return out


def row_enrichment(row: Mapping[str, Any]) -> dict[str, Any]:
    """netwarden's enrichment of a stored flow (schemas.flow_record.ENRICHMENT_COLUMNS), leaving out what
    is empty: each side's project/workspace when known; the desired (and staged) policy set's verdict with
    its attribution only when evaluated (verdict 0 = not evaluated); `verdict_mismatch` only when true."""
    out: dict[str, Any] = {}
    for side, key in (("src", "source"), ("dst", "destination")):
        owner = {f: row.get(f"{side}_{f}") or "" for f in ("project", "workspace")}
        owner = {f: v for f, v in owner.items() if v}
        if owner:
            out[key] = owner
    for prefix in ("desired", "staged"):
        evaluated = _verdict_set_json(row, prefix)
        if evaluated is not None:
            out[prefix] = evaluated
    if row.get("verdict_mismatch"):
        out["verdict_mismatch"] = True
    return out


def row_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """Hubble's jsonpb GetFlowsResponse plus, under `netwarden`, the enrichment (when there is any)."""
    obj = row_to_jsonpb(row)
    enrichment = row_enrichment(row)
    if enrichment:
        obj[ENRICHMENT_KEY] = enrichment
    return obj


def strip_enrichment(obj: dict[str, Any]) -> dict[str, Any]:
    """The Hubble part of a row_to_json object (what jsonpb output prints)."""
    return {k: v for k, v in obj.items() if k != ENRICHMENT_KEY}


def _enum_name(enum: Any, number: int) -> str:
    value = enum.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else str(number)


def jsonpb_line(obj: dict[str, Any]) -> str:
    """One compact JSON line, like Go's json.Encoder used by `hubble observe -o jsonpb`."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

"""Stored flow row -> Hubble protobuf messages (`Flow`, `GetFlowsResponse`), row shape as in schemas.flow_render.

jsonpb text is rendered by schemas.flow_render.row_to_jsonpb without building these messages; this builder is
the reference that renderer is checked against (tests/live: equal to json_format.MessageToDict of the
message, key order included).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format

from schemas.flow_record import TCP_FLAG_NAMES
from schemas.flow_render import FLOW_TYPE_L7, POLICY_FIELDS, ip_text, row_time_ns, uuid_text
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2


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
        flow.uuid = uuid_text(row["uuid"])
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

"""Decode serialized GetFlowsResponse entries into the normalized record, as Arrow columns.

Pure and hot: every flow's fields are read once, straight into column lists, and nothing on this path
builds per-flow dicts or ipaddress objects (both cost more than the protobuf parse itself).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from google.protobuf.message import DecodeError

from schemas.flow_record import FLOW_ARROW_SCHEMA, FLOW_COLUMNS, TCP_FLAG_NAMES
from schemas.hubble.observer import observer_pb2

_ZERO16 = bytes(16)
_V4_PREFIX = bytes(10) + b"\xff\xff"


@dataclass
class Rejected:
    """One entry that could not become a record, and why."""

    index: int
    reason: str
    payload: bytes


@dataclass
class DecodedBatch:
    table: pa.Table  # one row per stored flow, FLOW_ARROW_SCHEMA
    rejected: list[Rejected] = field(default_factory=list)
    lost_events: int = 0  # responses that reported lost events (counted, not stored)
    skipped: int = 0  # node_status and other non-flow responses


def _ip16(text: str, what: str) -> bytes:
    if not text:
        return _ZERO16
    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text)
        return _V4_PREFIX + socket.inet_pton(socket.AF_INET, text)
    except OSError:
        raise ValueError(f"{what} is not an IP address: {text!r}") from None


def _uuid_bytes(text: str) -> bytes:
    hexits = text.replace("-", "")
    if len(hexits) != 32:
        raise ValueError(f"flow.uuid is not a UUID: {text!r}")
    try:
        return bytes.fromhex(hexits)
    except ValueError:
        raise ValueError(f"flow.uuid is not a UUID: {text!r}") from None


def _policies(items: Iterable[object]) -> list[dict[str, object]]:
    return [
        {
            "kind": p.kind,  # type: ignore[attr-defined]
            "namespace": p.namespace,  # type: ignore[attr-defined]
            "name": p.name,  # type: ignore[attr-defined]
            "revision": p.revision,  # type: ignore[attr-defined]
            "labels": list(p.labels),  # type: ignore[attr-defined]
        }
        for p in items
    ]


class FlowDecoder:
    """Turns serialized responses of one cluster into an Arrow table plus the entries it rejected."""

    def decode(self, cluster: str, entries: Sequence[bytes]) -> DecodedBatch:
        rows: list[tuple[object, ...]] = []
        rejected: list[Rejected] = []
        lost = skipped = 0
        parse = observer_pb2.GetFlowsResponse.FromString
        for index, raw in enumerate(entries):
            try:
                resp = parse(raw)
            except DecodeError as exc:
                rejected.append(Rejected(index, f"not a GetFlowsResponse: {exc}", raw))
                continue
            kind = resp.WhichOneof("response_types")
            if kind != "flow":
                if kind == "lost_events":
                    lost += resp.lost_events.num_events_lost or 1
                else:
                    skipped += 1
                continue
            try:
                rows.append(self._row(cluster, resp, raw))
            except ValueError as exc:
                rejected.append(Rejected(index, str(exc), raw))
        # One transpose in C instead of an append per field per flow.
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in _NAMES]
        table = pa.Table.from_arrays(
            [pa.array(col, type=fld.type) for col, fld in zip(columns, FLOW_ARROW_SCHEMA, strict=True)],
            schema=FLOW_ARROW_SCHEMA,
        )
        return DecodedBatch(table, rejected, lost, skipped)

    @staticmethod
    def _row(cluster: str, resp: observer_pb2.GetFlowsResponse, raw: bytes) -> tuple[object, ...]:
        f = resp.flow
        if not f.HasField("time"):
            raise ValueError("flow.time is missing")
        ts = f.time
        time_ns = ts.seconds * 1_000_000_000 + ts.nanos
        if f.uuid:
            uuid, uuid_given = _uuid_bytes(f.uuid), True
        else:
            # No uuid (older servers): derive one from the bytes, so a re-delivered flow still collapses.
            uuid, uuid_given = hashlib.blake2b(raw, digest_size=16).digest(), False
        ip = f.IP
        l4 = f.l4
        proto_name = l4.WhichOneof("protocol")
        sport = dport = flags = icmp_type = icmp_code = 0
        l4_num = 0
        if proto_name == "TCP":
            l4_num, t = 1, l4.TCP
            sport, dport = t.source_port, t.destination_port
            if t.HasField("flags"):
                fl = t.flags
                flags = sum(1 << i for i, n in enumerate(TCP_FLAG_NAMES) if getattr(fl, n))
        elif proto_name == "UDP":
            l4_num, sport, dport = 2, l4.UDP.source_port, l4.UDP.destination_port
        elif proto_name == "ICMPv4":
            l4_num, icmp_type, icmp_code = 3, l4.ICMPv4.type, l4.ICMPv4.code
        elif proto_name == "ICMPv6":
            l4_num, icmp_type, icmp_code = 4, l4.ICMPv6.type, l4.ICMPv6.code
        elif proto_name == "SCTP":
            l4_num, sport, dport = 5, l4.SCTP.source_port, l4.SCTP.destination_port
        elif proto_name == "VRRP":
            l4_num = 6
        elif proto_name == "IGMP":
            l4_num = 7
        if icmp_type > 255 or icmp_code > 255:
            raise ValueError(f"flow.l4 ICMP type/code out of range: {icmp_type}/{icmp_code}")
        src, dst = f.source, f.destination
        et = f.event_type
        return (
            time_ns,
            cluster,
            resp.node_name or f.node_name,
            uuid,
            uuid_given,
            f.verdict,
            f.drop_reason,
            f.drop_reason_desc,
            f.Type,
            f.l7.type if f.HasField("l7") else 0,
            et.type,
            et.sub_type,
            f.traffic_direction,
            f.trace_observation_point,
            f.trace_reason,
            f.is_reply.value if f.HasField("is_reply") else None,
            f.reply,
            ip.ipVersion,
            _ip16(ip.source, "flow.IP.source"),
            _ip16(ip.destination, "flow.IP.destination"),
            ip.encrypted,
            l4_num,
            sport,
            dport,
            flags,
            icmp_type,
            icmp_code,
            *_endpoint(src, f.source_service, f.source_names),
            *_endpoint(dst, f.destination_service, f.destination_names),
            _policies(f.ingress_allowed_by),
            _policies(f.egress_allowed_by),
            _policies(f.ingress_denied_by),
            _policies(f.egress_denied_by),
        )


def _endpoint(ep: object, service: object, names: object) -> tuple[object, ...]:
    workloads = list(ep.workloads)  # type: ignore[attr-defined]
    return (
        ep.ID,  # type: ignore[attr-defined]
        ep.identity,  # type: ignore[attr-defined]
        ep.cluster_name,  # type: ignore[attr-defined]
        ep.namespace,  # type: ignore[attr-defined]
        ep.pod_name,  # type: ignore[attr-defined]
        list(ep.labels),  # type: ignore[attr-defined]
        [w.name for w in workloads],
        [w.kind for w in workloads],
        service.name,  # type: ignore[attr-defined]
        service.namespace,  # type: ignore[attr-defined]
        list(names),  # type: ignore[call-overload]
    )


_NAMES = [c.name for c in FLOW_COLUMNS]

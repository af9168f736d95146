"""The protobuf-free renderer (schemas.flow_render.row_to_jsonpb) gives exactly protobuf's MessageToDict of the
GetFlowsResponse message (schemas.flow_proto)."""

from __future__ import annotations

import ipaddress
import json
import uuid
from typing import Any

import pytest

from collectors.traffic import DemoTraffic
from query_api.live import table_rows
from schemas.flow_proto import response_to_jsonpb, row_to_response
from schemas.flow_render import row_to_jsonpb
from streams.decode import FlowDecoder
from tests.conftest import CAPTURES
from tests.query_api.conftest import capture_lines, encode, filter_dataset

BASE_NS = 1_714_557_600_000_000_000


def same(row: dict[str, Any]) -> None:
    want = response_to_jsonpb(row_to_response(row))
    got = row_to_jsonpb(row)
    # Equal as JSON text: values, types and key order (hubble prints fields in field-number order).
    assert json.dumps(got) == json.dumps(want), f"{got}\n!=\n{want}"


def decoded(cluster: str, payloads: list[bytes]) -> list[dict[str, Any]]:
    batch = FlowDecoder().decode(cluster, payloads)
    assert not batch.rejected
    return table_rows(batch.table)


def test_generated_traffic() -> None:
    for seed in range(3):
        entries = DemoTraffic(f"render-{seed}", seed=seed).serialized(1500)
        for row in decoded("render", [d for _, _, d in entries]):
            same(row)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_reference_captures(path: Any) -> None:
    for row in decoded("cap", [encode(obj) for obj in capture_lines(path)]):
        same(row)


def test_filter_dataset_including_the_rich_flow() -> None:
    for row in decoded("qa", [encode(resp) for _, resp in filter_dataset()]):
        same(row)


def sql_shaped(row: dict[str, Any]) -> dict[str, Any]:
    """The same row as clickhouse-connect returns it (UUID, IPv6Address, policy tuples)."""
    out = dict(row)
    out["uuid"] = uuid.UUID(bytes=row["uuid"])
    for col in ("ip_src", "ip_dst"):
        out[col] = ipaddress.IPv6Address(row[col])
    for col in ("ingress_allowed_by", "egress_allowed_by", "ingress_denied_by", "egress_denied_by"):
        out[col] = [(p["kind"], p["namespace"], p["name"], p["revision"], p["labels"]) for p in row[col]]
    return out


def test_edge_values() -> None:
    entries = DemoTraffic("render-edge", seed=9).serialized(200)
    rows = decoded("edge", [d for _, _, d in entries])
    variants: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        r = sql_shaped(row) if i % 2 else dict(row)
        r["time_ns"] = BASE_NS + [0, 5_000_000, 7_000, 123_456_789][i % 4]
        variants.append(r)
    base = dict(rows[0])
    variants += [
        {**base, "verdict": 99, "drop_reason_desc": 999, "traffic_direction": 7, "trace_reason": 42},
        {**base, "l4_protocol": 5, "src_port": 0, "dst_port": 9},
        {**base, "l4_protocol": 1, "src_port": 0, "dst_port": 0, "tcp_flags": 0},
        {**base, "l4_protocol": 1, "tcp_flags": 0b111111111},
        {**base, "l4_protocol": 6, "icmp_type": 2},
        {**base, "l4_protocol": 7, "icmp_type": 0x11},
        {**base, "l4_protocol": 4, "icmp_type": 0, "icmp_code": 3},
        {**base, "is_reply": None, "reply": True, "uuid_given": False, "ip_encrypted": True},
        {**base, "flow_type": 2, "l7_type": 0},
        {**base, "flow_type": 2, "l7_type": 1},
        {**base, "ip_version": 2, "ip_src": ipaddress.IPv6Address("fd00::1").packed, "ip_dst": bytes(16)},
        {**base, "ip_version": 0},
        {
            **base,
            "src_service": "",
            "src_service_namespace": "ns",
            "dst_service": "svc",
            "dst_service_namespace": "",
        },
        {**base, "src_workload_names": ["a", "b"], "src_workload_kinds": ["Deployment"]},
        {**base, "src_id": 0, "src_identity": 0, "src_labels": [], "src_namespace": "", "src_pod": ""},
        {
            **base,
            "egress_denied_by": [{"kind": "", "namespace": "", "name": "x", "revision": 0, "labels": []}],
        },
        {**base, "node_name": "", "event_type": -1, "event_sub_type": 0},
    ]
    for row in variants:
        same(row)

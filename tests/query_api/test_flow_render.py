"""Rendering stored rows back to hubble's jsonpb: pure rows, and real captures through the chDB store."""

from __future__ import annotations

import ipaddress
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from query_api.flow_query import FlowFilter
from query_api.store import FlowStore
from schemas.flow_proto import row_to_response
from schemas.flow_render import row_to_jsonpb
from tests.query_api.conftest import CAPTURES, RICH_INDEX, capture_cluster, capture_lines, filter_dataset

# Flow fields the record keeps (schemas/flow_record.py); the rest (ethernet, interface, Summary, L7 payload,
# policy_match_type, ...) is not stored and so not expected back.
KEPT_FLOW_FIELDS = {
    "time",
    "uuid",
    "verdict",
    "drop_reason",
    "drop_reason_desc",
    "IP",
    "l4",
    "source",
    "destination",
    "Type",
    "node_name",
    "source_names",
    "destination_names",
    "l7",
    "reply",
    "event_type",
    "source_service",
    "destination_service",
    "traffic_direction",
    "trace_observation_point",
    "trace_reason",
    "is_reply",
    "ingress_allowed_by",
    "egress_allowed_by",
    "ingress_denied_by",
    "egress_denied_by",
}
KEPT_ENDPOINT_FIELDS = {"ID", "identity", "cluster_name", "namespace", "labels", "pod_name", "workloads"}


def expected(resp: dict[str, Any]) -> dict[str, Any]:
    flow = {k: v for k, v in resp["flow"].items() if k in KEPT_FLOW_FIELDS}
    for side in ("source", "destination"):
        if side in flow:
            flow[side] = {k: v for k, v in flow[side].items() if k in KEPT_ENDPOINT_FIELDS}
    if "IP" in flow:
        flow["IP"] = {k: v for k, v in flow["IP"].items() if k != "source_xlated"}
    if "l7" in flow:
        flow["l7"] = {k: v for k, v in flow["l7"].items() if k == "type"}
    return {"flow": flow, "node_name": resp["node_name"], "time": resp["time"]}


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


@pytest.mark.parametrize("path", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_capture_round_trip_through_store(flow_store: FlowStore, path: Path) -> None:
    want = {canonical(expected(r)) for r in capture_lines(path)}
    rows = flow_store.query_flows(FlowFilter(cluster=capture_cluster(path), last=None))
    got = [canonical(row_to_jsonpb(r)) for r in rows]
    assert len(got) == len(want)  # identical lines in one capture collapse to one flow (derived uuid)
    assert set(got) == want


def test_rich_flow_round_trips_exactly(flow_store: FlowStore) -> None:
    """IPv6, workloads, services, DNS names, policies, uuid, reply: every kept field, value for value."""
    (row,) = flow_store.query_flows(FlowFilter(cluster="qa-c3"))
    assert row_to_jsonpb(row) == filter_dataset()[RICH_INDEX][1]


def base_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "time_ns": 1_700_000_000_000_000_001,
        "node_name": "kind-worker",
        "uuid": uuid.UUID("6f0c1c55-4d1e-4f7a-9a57-8e4c1c8d2b10"),
        "uuid_given": False,
        "verdict": 1,
        "flow_type": 1,
        "event_type": 4,
        "ip_version": 1,
        "ip_src": ipaddress.IPv6Address("::ffff:10.1.2.3"),
        "ip_dst": "::ffff:10.1.2.4",
        "l4_protocol": 2,
        "src_port": 5353,
        "dst_port": 53,
        "is_reply": None,
    }
    row.update(overrides)
    return row


def test_jsonpb_format_details() -> None:
    out = row_to_jsonpb(base_row())
    flow = out["flow"]
    assert flow["time"] == "2023-11-14T22:13:20.000000001Z" == out["time"]  # nanoseconds kept
    assert out["node_name"] == flow["node_name"] == "kind-worker"
    assert flow["verdict"] == "FORWARDED" and flow["Type"] == "L3_L4"
    assert flow["IP"] == {"source": "10.1.2.3", "destination": "10.1.2.4", "ipVersion": "IPv4"}
    assert flow["l4"] == {"UDP": {"source_port": 5353, "destination_port": 53}}
    assert flow["event_type"] == {"type": 4}  # sub_type 0 omitted
    # defaults omitted: no uuid (not given), no is_reply (unknown), no reply, no drop fields, no l7
    for absent in (
        "uuid",
        "is_reply",
        "reply",
        "drop_reason",
        "drop_reason_desc",
        "l7",
        "traffic_direction",
        "source_service",
        "policy_match_type",
    ):
        assert absent not in flow
    assert flow["source"] == {} and flow["destination"] == {}
    assert row_to_jsonpb(base_row(time_ns=1_700_000_000_120_000_000))["time"] == "2023-11-14T22:13:20.120Z"


def test_uuid_is_reply_and_int64() -> None:
    flow = row_to_jsonpb(
        base_row(
            uuid_given=True,
            is_reply=False,
            ingress_allowed_by=[("CiliumNetworkPolicy", "shop", "allow-web", 12, ["a=b"])],
        )
    )["flow"]
    assert flow["uuid"] == "6f0c1c55-4d1e-4f7a-9a57-8e4c1c8d2b10"
    assert flow["is_reply"] is False  # a wrapper: present when the server said false
    assert flow["ingress_allowed_by"] == [
        {
            "kind": "CiliumNetworkPolicy",
            "namespace": "shop",
            "name": "allow-web",
            "revision": "12",
            "labels": ["a=b"],
        }
    ]
    assert row_to_jsonpb(base_row(uuid_given=True, uuid=bytes(range(16))))["flow"]["uuid"] == (
        "00010203-0405-0607-0809-0a0b0c0d0e0f"
    )


def test_ip_versions() -> None:
    v6 = row_to_jsonpb(base_row(ip_version=2, ip_src="fd00::1", ip_dst=bytes(15) + b"\x02"))["flow"]
    assert v6["IP"] == {"source": "fd00::1", "destination": "::2", "ipVersion": "IPv6"}
    assert "IP" not in row_to_jsonpb(base_row(ip_version=0))["flow"]
    empty_src = row_to_jsonpb(base_row(ip_src="::"))["flow"]["IP"]
    assert "source" not in empty_src and empty_src["destination"] == "10.1.2.4"


@pytest.mark.parametrize(
    ("overrides", "l4"),
    [
        (
            {"l4_protocol": 1, "src_port": 1, "dst_port": 2, "tcp_flags": 0b10010},
            {"TCP": {"source_port": 1, "destination_port": 2, "flags": {"SYN": True, "ACK": True}}},
        ),
        (
            {"l4_protocol": 1, "src_port": 1, "dst_port": 2, "tcp_flags": 0},
            {"TCP": {"source_port": 1, "destination_port": 2}},
        ),
        ({"l4_protocol": 3, "icmp_type": 8, "icmp_code": 0}, {"ICMPv4": {"type": 8}}),
        ({"l4_protocol": 4, "icmp_type": 1, "icmp_code": 4}, {"ICMPv6": {"type": 1, "code": 4}}),
        (
            {"l4_protocol": 5, "src_port": 9, "dst_port": 10},
            {"SCTP": {"source_port": 9, "destination_port": 10}},
        ),
    ],
)
def test_l4_oneof(overrides: dict[str, Any], l4: dict[str, Any]) -> None:
    assert row_to_jsonpb(base_row(**overrides))["flow"]["l4"] == l4


def test_no_l4() -> None:
    assert "l4" not in row_to_jsonpb(base_row(l4_protocol=0))["flow"]


def test_unknown_enum_numbers_render_as_numbers() -> None:
    flow = row_to_jsonpb(base_row(verdict=99, drop_reason_desc=250, traffic_direction=7))["flow"]
    assert flow["verdict"] == 99 and flow["drop_reason_desc"] == 250 and flow["traffic_direction"] == 7


def test_l7_type_only_for_l7_flows() -> None:
    assert row_to_jsonpb(base_row(flow_type=2, l7_type=2))["flow"]["l7"] == {"type": "RESPONSE"}
    assert row_to_jsonpb(base_row(flow_type=2, l7_type=0))["flow"]["l7"] == {}
    assert "l7" not in row_to_jsonpb(base_row(flow_type=1, l7_type=2))["flow"]


def test_endpoints_services_names_workloads() -> None:
    flow = row_to_response(
        base_row(
            src_id=5,
            src_identity=6,
            src_namespace="ns",
            src_pod="p",
            src_labels=["k8s:a=b"],
            src_workload_names=["w"],
            src_workload_kinds=["Deployment"],
            dst_service="svc",
            dst_service_namespace="ns2",
            dst_names=["x.example"],
        )
    ).flow
    assert flow.source.ID == 5 and flow.source.identity == 6 and flow.source.pod_name == "p"
    assert [(w.name, w.kind) for w in flow.source.workloads] == [("w", "Deployment")]
    assert (flow.destination_service.name, flow.destination_service.namespace) == ("svc", "ns2")
    assert not flow.HasField("source_service")
    assert list(flow.destination_names) == ["x.example"]


def test_datetime_time_fallback() -> None:
    import datetime as dt

    row = base_row(time_ns=None, time=dt.datetime(2024, 1, 2, 3, 4, 5, 678901))
    assert row_to_jsonpb(row)["time"] == "2024-01-02T03:04:05.678901Z"

"""`netwarden flows -o compact` (the default): hubble's compact line (schemas.flow_compact) against hubble's own
expected strings (cilium hubble/pkg/printer/printer_test.go, adapted to the stored row shape), on every reference
capture through the real decoder, through the CLI (data dir and a real API over HTTP), and repeated --label
ORing like hubble's in history (SQL) and the live stream (Python twin)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from netwarden.cli import main
from netwarden.commands.flows import jsonpb_to_rows
from query_api.flow_query import FlowFilter
from query_api.scope import ScopeFilter
from query_api.store import FlowStore
from schemas.flow_compact import RESERVED_IDENTITIES, compact_line, flow_type_text, host_text, timestamp_text
from tests.live import test_follow
from tests.live.test_hub import wait_drained
from tests.query_api import test_flows_cli_server
from tests.query_api.conftest import CAPTURES, capture_lines


def v4(a: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address("::ffff:" + a)


# printer_test.go's `f`: 1.1.1.1:31793 (identity 4) -> 2.2.2.2:8080 (12345), TCP SYN, dropped (133).
F: dict[str, Any] = {
    "time_ns": 1234 * 10**9 + 567_800_000,
    "node_name": "k8s1",
    "verdict": 2,
    "ip_version": 1,
    "ip_src": v4("1.1.1.1"),
    "ip_dst": v4("2.2.2.2"),
    "src_identity": 4,
    "dst_identity": 12345,
    "l4_protocol": 1,
    "src_port": 31793,
    "dst_port": 8080,
    "tcp_flags": 2,  # SYN
    "event_type": 1,
    "event_sub_type": 133,
    "is_reply": False,
}
POLICY = ("CiliumNetworkPolicy", "my-policy-namespace", "my-policy", 0, ())
POLICY_DENIED = {**F, "event_type": 5, "event_sub_type": 0, "is_reply": None, "traffic_direction": 2}
POLICY_DENIED["egress_denied_by"] = [POLICY]
POLICY_ALLOWED = {**POLICY_DENIED, "verdict": 1, "traffic_direction": 1, "policy_match_type": 1}
POLICY_ALLOWED["ingress_allowed_by"] = [
    POLICY,
    {"kind": "CiliumClusterwideNetworkPolicy", "namespace": "", "name": "my-policy-2"},
]
POLICY_AUDITED = {**POLICY_DENIED, "verdict": 4}  # AUDIT

# (name, row, options, hubble's expected line) -- TestPrinter_WriteProtoFlow's compact cases.
HUBBLE_CASES = [
    ("compact", F, {}, "Jan  1 00:20:34.567: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)"),
    ("compact-with-node", F, {"node_name": True}, "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)"),
    ("compact-reply", {**F, "is_reply": True}, {"node_name": True}, "Jan  1 00:20:34.567 [k8s1]: 2.2.2.2:8080 (ID:12345) <- 1.1.1.1:31793 (health) Policy denied DROPPED (TCP Flags: SYN)"),
    ("compact-policy-verdict-denied", POLICY_DENIED, {"node_name": True}, "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:none EGRESS DENIED (TCP Flags: SYN)"),
    ("compact-policy-verdict-denied-with-policy-name", POLICY_DENIED, {"node_name": True, "policy_names": True}, "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:none EGRESS DENIED BY my-policy (CiliumNetworkPolicy) (TCP Flags: SYN)"),
    ("compact-policy-verdict-allowed-with-policy-name", POLICY_ALLOWED, {"node_name": True, "policy_names": True}, "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:L3-Only INGRESS ALLOWED BY my-policy (CiliumNetworkPolicy), my-policy-2 (CiliumClusterwideNetworkPolicy) (TCP Flags: SYN)"),
    ("compact-policy-verdict-audited-with-policy-name", POLICY_AUDITED, {"node_name": True, "policy_names": True}, "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:none EGRESS AUDITED BY my-policy (CiliumNetworkPolicy) (TCP Flags: SYN)"),
    ("compact-direction-unknown", {**F, "is_reply": None}, {"node_name": True}, "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("row", "options", "expected"), [c[1:] for c in HUBBLE_CASES], ids=[c[0] for c in HUBBLE_CASES]
)
def test_hubble_printer_compact_cases(row: dict[str, Any], options: dict[str, bool], expected: str) -> None:
    assert compact_line(row, **options) == expected


IPS = {"ip_version": 1, "ip_src": v4("1.1.1.1"), "ip_dst": v4("2.2.2.2")}


@pytest.mark.parametrize(
    ("row", "src", "dst"),
    [  # Test_getHostNames / TestHostname
        ({}, "", ""),
        (IPS, "1.1.1.1", "2.2.2.2"),
        ({**IPS, "src_namespace": "srcns", "src_pod": "srcpod", "dst_namespace": "dstns", "dst_pod": "dstpod"}, "srcns/srcpod", "dstns/dstpod"),
        ({**IPS, "l4_protocol": 1, "src_port": 55555, "dst_port": 80}, "1.1.1.1:55555", "2.2.2.2:80"),
        ({**IPS, "l4_protocol": 2, "src_port": 55555, "dst_port": 53}, "1.1.1.1:55555", "2.2.2.2:53"),
        ({**IPS, "l4_protocol": 5, "src_port": 55555, "dst_port": 5060}, "1.1.1.1:55555", "2.2.2.2:5060"),
        ({**IPS, "l4_protocol": 1, "src_port": 55555, "dst_port": 80, "src_service": "xwing", "src_service_namespace": "default", "dst_service": "tiefighter", "dst_service_namespace": "deathstar"}, "default/xwing:55555", "deathstar/tiefighter:80"),
        ({**IPS, "l4_protocol": 1, "src_port": 54321, "dst_port": 65432, "src_names": ["a"], "dst_names": ["b"]}, "a:54321", "b:65432"),
        ({**IPS, "src_namespace": "default", "src_pod": "pod", "src_service": "service", "src_service_namespace": "default", "dst_names": ["a", "b"]}, "default/pod", "a,b"),
        ({**IPS, "l4_protocol": 1, "src_port": 0, "dst_port": 80, "ip_version": 2, "ip_src": "2001:db8::1", "ip_dst": "2001:db8::2"}, "2001:db8::1", "[2001:db8::2]:80"),
        ({**IPS, "l4_protocol": 3, "src_port": 7, "dst_port": 7}, "1.1.1.1", "2.2.2.2"),  # ICMP: no ports
    ],
)  # fmt: skip
def test_hubble_host_names(row: dict[str, Any], src: str, dst: str) -> None:
    assert (host_text(row, "src"), host_text(row, "dst")) == (src, dst)


@pytest.mark.parametrize(
    ("row", "expected"),
    [  # Test_getFlowType (the L7 record is not stored: hubble's generic l7- form)
        ({"flow_type": 2, "l7_type": 1, "event_type": 129}, "l7-request"),
        ({"event_type": 4, "event_sub_type": 2}, "to-host"),
        ({"verdict": 1, "event_type": 5, "policy_match_type": 2, "traffic_direction": 1}, "policy-verdict:L3-L4 INGRESS"),
        ({"verdict": 2, "event_type": 5, "drop_reason": 153, "traffic_direction": 1}, "policy-verdict:none INGRESS"),
        ({"verdict": 8, "event_type": 7, "sock_xlate_point": 1}, "pre-xlate-fwd"),
        ({"verdict": 9, "event_type": 7, "sock_xlate_point": 2}, "post-xlate-fwd"),
        ({"event_type": 3, "debug_capture_point": 5}, "DBG_CAPTURE_FROM_LB"),
        ({"event_type": 4, "event_sub_type": 123}, "123"),
        ({}, "UNKNOWN"),
        ({"event_type": 1, "event_sub_type": 159}, "159, 0"),  # DropReasonExt of an unknown reason
    ],
)  # fmt: skip
def test_hubble_flow_types(row: dict[str, Any], expected: str) -> None:
    assert flow_type_text(row) == expected


def test_hubble_timestamps_and_one_line_per_flow() -> None:
    assert timestamp_text({"time_ns": 0}) == "Jan  1 00:00:00.000"
    assert timestamp_text({"time_ns": 1530984600_123_999_999}) == "Jul  7 17:30:00.123"  # truncated, as Go
    hostile = {**F, "src_namespace": "ns", "src_pod": "evil\x1b[2J\r\nx", "is_reply": None}
    line = compact_line(hostile)
    assert "\n" not in line and "\x1b" not in line and "ns/evil^[[2J\\r\\nx:31793 (health) <>" in line


def _hubble_stamp(rfc3339: str) -> str:
    t = dt.datetime.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S")
    millis = (rfc3339[20:23] if rfc3339[19] == "." else "").ljust(3, "0")
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S}.{millis}"


def _hubble_host(flow: dict[str, Any], side: str) -> str:
    """hubble's Hostname() from the capture's own JSON (the oracle for the stored-row path)."""
    ep = flow.get({"src": "source", "dst": "destination"}[side]) or {}
    svc = flow.get({"src": "source_service", "dst": "destination_service"}[side])
    names = flow.get({"src": "source_names", "dst": "destination_names"}[side]) or []
    ns, pod = ep.get("namespace", ""), ep.get("pod_name", "")
    if svc is not None:
        ns = svc.get("namespace", "")
    host = flow["IP"][{"src": "source", "dst": "destination"}[side]]
    if pod:
        host = f"{ns}/{pod}" if ns else pod
    elif svc and svc.get("name"):
        host = f"{ns}/{svc['name']}" if ns else svc["name"]
    elif names:
        host = ",".join(names)
    l4 = flow.get("l4") or {}
    proto = next((k for k in ("TCP", "UDP", "SCTP") if k in l4), None)
    port = l4[proto].get({"src": "source_port", "dst": "destination_port"}[side], 0) if proto else 0
    if port:
        host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return host


def test_every_reference_capture_renders_one_hubble_line_per_flow() -> None:
    """Through the real decoder: one line per flow, no exception; L3/L4 lines say what hubble would (time,
    hosts, identities, arrow, and the agent's own Summary rebuilt from the stored L4 fields)."""
    checked = 0
    for path in CAPTURES:
        responses = capture_lines(path)
        rows = jsonpb_to_rows(responses)  # through the pipeline's decoder, as history and --follow
        assert len(rows) == len(responses), path.name
        lines = [compact_line(row, node_name=True, policy_names=True) for row in rows]
        assert all("\n" not in line for line in lines)
        for line, response in zip(lines, responses, strict=True):
            flow = response["flow"]
            if flow.get("l7"):  # the L7 record and its summary are not stored
                assert " l7-" in line and line.endswith(")")
                continue
            src, dst = _hubble_host(flow, "src"), _hubble_host(flow, "dst")
            src_id, dst_id = (
                f"({RESERVED_IDENTITIES[i]})" if i in RESERVED_IDENTITIES else f"(ID:{i})"
                for i in (flow["source"].get("identity", 0), flow["destination"].get("identity", 0))
            )
            arrow = "<>" if "is_reply" not in flow else "<-" if flow["is_reply"] else "->"
            if arrow == "<-":
                src, dst, src_id, dst_id = dst, src, dst_id, src_id
            head = (
                f"{_hubble_stamp(flow['time'])} [{flow['node_name']}]: {src} {src_id} {arrow} {dst} {dst_id} "
            )
            assert line.startswith(head), (path.name, line, head)
            assert line.endswith(f" ({flow['Summary']})"), (path.name, line)
            checked += 1
    assert checked > 1000  # most captured flows are L3/L4


api = test_follow.api  # the fixture: a live hub behind a real API (uvicorn on loopback)
server = test_flows_cli_server.server  # the fixture: a real API (org-admin token "admin") over loopback


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["flows", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_default_is_compact_other_outputs_unchanged(
    flow_store: FlowStore, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--data-dir", str(data_dir), "--cluster", "qa-c1", "--all")
    _, jsonpb, _ = run(capsys, *base, "-o", "jsonpb")
    rows = jsonpb_to_rows([json.loads(line) for line in jsonpb.splitlines()])
    code, out, err = run(capsys, *base)
    assert code == 0, err
    assert out.splitlines() == [compact_line(row) for row in rows]
    assert "default/frontend-x:5353 (ID:1000) -> 1.1.1.1:53 (world) Policy denied DROPPED (UDP)" in out
    assert (
        "shop/frontend-abc:43000 (ID:1000) <- shop/backend-1:8080 (ID:1000) to-endpoint FORWARDED (TCP Flags: SYN, ACK)"
        in out
    )
    assert run(capsys, *base, "-o", "compact")[1] == out
    _, table, _ = run(capsys, *base, "-o", "table")
    assert table.splitlines()[0].split() == [
        "TIMESTAMP",
        "SOURCE",
        "DESTINATION",
        "TYPE",
        "VERDICT",
        "SUMMARY",
    ]
    assert len(table.splitlines()) == len(rows) + 1
    _, as_json, _ = run(capsys, *base, "-o", "json")
    assert [json.loads(line)["flow"]["uuid"] for line in as_json.splitlines()] == [
        json.loads(line)["flow"]["uuid"] for line in jsonpb.splitlines()
    ]
    _, named, _ = run(capsys, *base, "--print-node-name", "--print-policy-names")
    assert named.splitlines()[0].startswith("May  1 10:00:00.123 [node-a]: ")


def test_a_redacted_peer_prints_its_namespace(flow_store: FlowStore) -> None:
    # qa-c2 flow 5: shop/backend-2 -> payments/api-1:443; a caller who sees only qa-c2/shop.
    scope = ScopeFilter(namespaces=frozenset({("qa-c2", "shop")}))
    rows = flow_store.query_flows(FlowFilter(cluster="qa-c2", namespace="payments", last=None), scope=scope)
    assert [compact_line(r).split(": ", 1)[1] for r in rows] == [
        "shop/backend-2:8080 (ID:1000) -> payments/(redacted):443 (unknown) to-endpoint FORWARDED (TCP Flags: ACK)"
    ]


def test_repeated_labels_or_through_the_api(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--label a --label b` = flows with a OR b (hubble), through the CLI and a real API over HTTP."""
    base = ("--server", server, "--token", "admin", "--cluster", "qa-c1", "--all")

    def uuids(*labels: str) -> set[str]:
        code, out, err = run(capsys, *base, *(a for lb in labels for a in ("--label", lb)), "-o", "jsonpb")
        assert code == 0, err
        return {json.loads(line)["flow"]["uuid"] for line in out.splitlines()}

    shop, world = uuids("io.kubernetes.pod.namespace=shop"), uuids("reserved:world")
    assert shop and world and not shop & world
    assert uuids("io.kubernetes.pod.namespace=shop", "reserved:world") == shop | world
    code, out, _ = run(capsys, *base, "--label", "reserved:world", "--label", "reserved:host")
    assert code == 0 and len(out.splitlines()) == 2
    assert "1.1.1.1:53 (world)" in out and "10.0.0.9:40000 (host) -> shop/frontend-abc:80" in out


def test_repeated_labels_or_in_the_live_stream() -> None:
    from query_api.live import flow_predicate

    rows = [
        {"src_labels": ["k8s:app=a"], "dst_labels": []},
        {"src_labels": [], "dst_labels": ["reserved:world"]},
        {"src_labels": ["k8s:app=c"], "dst_labels": []},
    ]
    matches = flow_predicate(FlowFilter(labels=("app=a", "reserved:world"), last=None))
    assert [matches(r) for r in rows] == [True, True, False]


async def test_follow_prints_the_same_compact_lines(api: tuple[str, Any]) -> None:
    """`flows --follow` (the default output): each streamed flow as the history path would print it."""
    url, hub = api
    rows = test_follow.demo_rows(30)
    proc = await test_follow.run_follow(
        server=url, token=test_follow.TOKEN, output="compact", print_node_name=True
    )
    await test_follow.until_subscribed(hub, proc)
    hub.publish_rows(rows)
    await wait_drained(hub)
    hub.close()
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == [compact_line(row, node_name=True) for row in rows]

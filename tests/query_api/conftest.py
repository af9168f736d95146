"""Fixtures: a real chDB flow store in a tmp data dir, filled through the real decoder (streams/decode.py)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Header, HTTPException
from google.protobuf import json_format

from policy_engine.roles import Principal
from query_api.store import FlowStore, open_clickhouse
from schemas.clickhouse import FLOWS_TABLE
from schemas.hubble.observer import observer_pb2
from streams.decode import FlowDecoder

REPO = Path(__file__).resolve().parents[2]
CAPTURES = sorted((REPO.parent / "shared" / "reference" / "hubble-flows").glob("*.jsonl"))

# 2024-05-01T10:00:00Z plus a nanosecond tail, so ns precision is visible in every test.
BASE_NS = 1_714_557_600_000_000_000 + 123_456_789
INJECTION_NS = "x' OR 1=1 --"
INJECTION_POD = "pod'); DROP TABLE flows; --"


def rfc3339(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def flow_uuid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def endpoint(ns: str = "", pod: str = "", **extra: Any) -> dict[str, Any]:
    ep: dict[str, Any] = {"identity": extra.pop("identity", 1000)}
    if ns:
        ep["namespace"] = ns
        ep["labels"] = [f"k8s:io.kubernetes.pod.namespace={ns}"]
    if pod:
        ep["pod_name"] = pod
    ep.update(extra)
    return ep


def make_response(
    i: int,
    *,
    src: dict[str, Any],
    dst: dict[str, Any],
    l4: dict[str, Any],
    ip: tuple[str, str] = ("10.0.0.1", "10.0.0.2"),
    verdict: str = "FORWARDED",
    node: str = "node-a",
    **extra: Any,
) -> dict[str, Any]:
    """A GetFlowsResponse in hubble's jsonpb form; flow i has time BASE_NS + i and uuid flow_uuid(i)."""
    time = rfc3339(BASE_NS + i)
    flow: dict[str, Any] = {
        "time": time,
        "uuid": flow_uuid(i),
        "verdict": verdict,
        "IP": {"source": ip[0], "destination": ip[1], "ipVersion": "IPv6" if ":" in ip[0] else "IPv4"},
        "l4": l4,
        "source": src,
        "destination": dst,
        "Type": "L3_L4",
        "node_name": node,
        "event_type": {"type": 4},
        "traffic_direction": "EGRESS",
        "is_reply": False,
    }
    flow.update(extra)
    return {"flow": flow, "node_name": node, "time": time}


def tcp(sport: int, dport: int, **flags: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"source_port": sport, "destination_port": dport}
    if flags:
        body["flags"] = flags
    return {"TCP": body}


RICH_INDEX = 8


def filter_dataset() -> list[tuple[str, dict[str, Any]]]:
    """(cluster, response) pairs; the tests in test_flow_query.py state which indexes each filter selects."""
    return [
        (
            "qa-c1",
            make_response(
                0,
                src=endpoint("shop", "frontend-abc"),
                dst=endpoint("shop", "backend-1"),
                l4=tcp(43000, 8080, SYN=True),
            ),
        ),
        (
            "qa-c1",
            make_response(
                1,
                src=endpoint("shop", "backend-1"),
                dst=endpoint("shop", "frontend-abc"),
                l4=tcp(8080, 43000, SYN=True, ACK=True),
                is_reply=True,
            ),
        ),
        (
            "qa-c1",
            make_response(
                2,
                src=endpoint("default", "frontend-x"),
                dst={"identity": 2, "labels": ["reserved:world"]},
                ip=("10.0.0.5", "1.1.1.1"),
                l4={"UDP": {"source_port": 5353, "destination_port": 53}},
                verdict="DROPPED",
                drop_reason=133,
                drop_reason_desc="POLICY_DENIED",
                event_type={"type": 1, "sub_type": 133},
            ),
        ),
        (
            "qa-c2",
            make_response(
                3,
                src=endpoint("kube-system", "coredns-1"),
                dst=endpoint("kube-system", "coredns-2"),
                ip=("fd00::1", "fd00::2"),
                l4={"ICMPv6": {"type": 128}},
            ),
        ),
        (
            "qa-c2",
            make_response(
                4,
                src=endpoint("default", "frontend-y"),
                dst=endpoint("shop", "backend-2"),
                l4={"ICMPv4": {"type": 8}},
            ),
        ),
        (
            "qa-c2",
            make_response(
                5,
                src=endpoint("shop", "backend-2"),
                dst=endpoint("payments", "api-1"),
                l4=tcp(8080, 443, ACK=True),
            ),
        ),
        (
            "qa-c1",
            make_response(
                6,
                src=endpoint(INJECTION_NS, INJECTION_POD),
                dst=endpoint("default", "frontend-z"),
                l4={"SCTP": {"source_port": 9000, "destination_port": 9001}},
                verdict="AUDIT",
            ),
        ),
        (
            "qa-c1",
            make_response(
                7,
                src={"identity": 1, "labels": ["reserved:host"]},
                dst=endpoint("shop", "frontend-abc"),
                ip=("10.0.0.9", "10.0.0.3"),
                l4=tcp(40000, 80, SYN=True),
                verdict="REDIRECTED",
            ),
        ),
        # Every field the record keeps, including those no capture holds (IPv6, workloads, policies, ...).
        (
            "qa-c3",
            make_response(
                RICH_INDEX,
                src=endpoint(
                    "shop",
                    "cart-7d9f",
                    ID=1234,
                    identity=48211,
                    cluster_name="qa-c3",
                    workloads=[{"name": "cart", "kind": "Deployment"}],
                ),
                dst=endpoint(
                    "db",
                    "pg-0",
                    ID=77,
                    identity=9001,
                    cluster_name="qa-c3",
                    workloads=[{"name": "pg", "kind": "StatefulSet"}, {"name": "pg-op", "kind": "Operator"}],
                ),
                ip=("2001:db8::1", "2001:db8::2"),
                l4=tcp(51000, 5432, PSH=True, ACK=True, NS=True),
                verdict="DROPPED",
                drop_reason=181,
                drop_reason_desc="POLICY_DENY",
                event_type={"type": 1, "sub_type": 181},
                traffic_direction="INGRESS",
                trace_observation_point="TO_ENDPOINT",
                trace_reason="ESTABLISHED",
                is_reply=True,
                reply=True,
                source_names=["cart.shop.svc"],
                destination_names=["pg.db.svc", "db.example.com"],
                source_service={"name": "cart", "namespace": "shop"},
                destination_service={"name": "pg", "namespace": "db"},
                ingress_denied_by=[
                    {
                        "name": "deny-shop",
                        "namespace": "db",
                        "kind": "CiliumNetworkPolicy",
                        "revision": "7",
                        "labels": ["k8s:io.cilium.k8s.policy.name=deny-shop"],
                    }
                ],
                egress_allowed_by=[
                    {
                        "name": "allow-egress",
                        "kind": "CiliumClusterwideNetworkPolicy",
                        "revision": "18446744073709551615",
                    }
                ],
            ),
        ),
    ]


def encode(obj: dict[str, Any]) -> bytes:
    return json_format.ParseDict(obj, observer_pb2.GetFlowsResponse()).SerializeToString()


def insert_responses(store: FlowStore, cluster: str, responses: list[dict[str, Any]]) -> int:
    batch = FlowDecoder().decode(cluster, [encode(r) for r in responses])
    assert not batch.rejected, batch.rejected
    store.client.insert_arrow(FLOWS_TABLE, batch.table)
    return batch.table.num_rows


def capture_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="package")
def data_dir(chdb_dir: Path) -> Path:
    """The test process's one chDB data dir (tests/conftest.py); our flows use clusters named qa-*."""
    return chdb_dir


@pytest.fixture(scope="package")
def flow_store(data_dir: Path) -> Iterator[FlowStore]:
    """Our client on the process-wide chDB engine; closing it leaves other clients of the engine working."""
    store = FlowStore(open_clickhouse(str(data_dir), None))
    store.ensure_schema()
    by_cluster: dict[str, list[dict[str, Any]]] = {}
    for cluster, resp in filter_dataset():
        by_cluster.setdefault(cluster, []).append(resp)
    for cluster, responses in by_cluster.items():
        insert_responses(store, cluster, responses)
    for path in CAPTURES:
        insert_responses(store, capture_cluster(path), capture_lines(path))
    yield store
    store.close()


def capture_cluster(path: Path) -> str:
    return "qa-cap-" + path.stem


def bearer_principals(principals: dict[str, Principal]) -> Callable[..., Principal]:
    """A FastAPI dependency standing in for query_api.auth: `Authorization: Bearer <key>` -> principals[key]."""

    async def principal(authorization: str | None = Header(None)) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or token not in principals:
            raise HTTPException(401, "missing or bad bearer token", headers={"WWW-Authenticate": "Bearer"})
        return principals[token]

    return principal

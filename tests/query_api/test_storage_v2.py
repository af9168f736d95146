"""Issue 7 storage: enrichment in format=json / flows -o json, redelivered twins listed once without FINAL,
rollup summaries equal to summaries over the flows themselves, the catalog behind /namespaces and /clusters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from collectors.traffic import DemoTraffic
from netwarden.cli import main
from policy_engine.model import NamespaceRef
from policy_engine.roles import Ownership, Principal
from query_api.app import create_app
from query_api.flow_query import FlowFilter
from query_api.scope import ScopeFilter
from query_api.store import FlowStore
from query_api.summary import SummaryWindow, summarize
from schemas.clickhouse import FLOWS_TABLE
from schemas.flow_record import ENRICHMENT_COLUMNS
from schemas.flow_render import row_enrichment
from streams.decode import FlowDecoder
from tests.query_api.conftest import bearer_principals, encode, endpoint, make_response, tcp

ENR = "qa-enr"
ROLL = "qa-roll"
DUP = "qa-dup"
S = 1_000_000_000
MINUTE = 60 * S

ENRICHED = {
    "src_project": "storefront",
    "src_workspace": "shop-team",
    "dst_project": "storefront",
    "dst_workspace": "data-team",
    "desired_revision": 12,
    "desired_verdict": 2,
    "desired_drop_reason": 133,
    "desired_egress_verdict": 1,
    "desired_egress_policy": "CiliumNetworkPolicy/shop/shop-egress",
    "desired_egress_rule": "egress[0]",
    "desired_egress_version": 3,
    "desired_ingress_verdict": 2,
    "desired_ingress_policy": "",
    "desired_ingress_rule": "default-deny",
    "desired_ingress_version": 0,
    "verdict_mismatch": True,
}


def _zero(t: pa.DataType) -> Any:
    return "" if pa.types.is_string(t) else False if pa.types.is_boolean(t) else 0


def with_enrichment(table: pa.Table, values: list[dict[str, Any]]) -> pa.Table:
    for c in ENRICHMENT_COLUMNS:
        table = table.append_column(
            c.name, pa.array([v.get(c.name, _zero(c.arrow)) for v in values], c.arrow)
        )
    return table


@pytest.fixture(scope="module")
def enriched(flow_store: FlowStore) -> FlowStore:
    """Two flows of qa-enr: #0 enriched (ownership, desired verdict, mismatch), #1 not evaluated."""
    responses = [
        make_response(
            1000 + i,
            src=endpoint("shop", f"cart-{i}"),
            dst=endpoint("data", f"redis-{i}"),
            l4=tcp(41000 + i, 6379, SYN=True),
        )
        for i in range(2)
    ]
    table = FlowDecoder().decode(ENR, [encode(r) for r in responses]).table
    flow_store.client.insert_arrow(FLOWS_TABLE, with_enrichment(table, [ENRICHED, {}]))
    return flow_store


def test_row_enrichment_only_what_is_known() -> None:
    assert row_enrichment({"desired_verdict": 0, "staged_verdict": 0, "src_project": ""}) == {}
    assert row_enrichment(ENRICHED) == {
        "source": {"project": "storefront", "workspace": "shop-team"},
        "destination": {"project": "storefront", "workspace": "data-team"},
        "desired": {
            "verdict": "DROPPED",
            "revision": "12",
            "drop_reason": "POLICY_DENIED",
            "egress": {
                "verdict": "FORWARDED",
                "policy": "CiliumNetworkPolicy/shop/shop-egress",
                "rule": "egress[0]",
                "version": 3,
            },
            "ingress": {"verdict": "DROPPED", "rule": "default-deny"},
        },
        "verdict_mismatch": True,
    }


@pytest.fixture(scope="module")
def api(enriched: FlowStore) -> Iterator[TestClient]:
    ownership = Ownership(
        project_clusters={"storefront": frozenset({ENR})},
        workspace_project={"shop-team": "storefront"},
        workspace_namespaces={"shop-team": frozenset({NamespaceRef(ENR, "shop")})},
    )
    users = {
        "admin": Principal.with_role("org-admin", name="admin"),
        "shop": Principal.with_role("workspace-read-only", "shop-team", name="shop"),
    }
    app = create_app(enriched, principal_dependency=bearer_principals(users), ownership=ownership)
    with TestClient(app) as client:
        yield client


def test_api_json_carries_enrichment_and_jsonpb_stays_hubble(api: TestClient) -> None:
    auth = {"Authorization": "Bearer admin"}
    flows = api.get("/api/v1/flows", params={"cluster": ENR}, headers=auth).json()["flows"]
    assert [("netwarden" in f) for f in flows] == [False, True]  # newest first: #1 not evaluated
    assert flows[1]["netwarden"] == row_enrichment(ENRICHED)
    lines = api.get(
        "/api/v1/flows", params={"cluster": ENR, "format": "jsonpb"}, headers=auth
    ).text.splitlines()
    assert all("netwarden" not in json.loads(x) for x in lines) and len(lines) == 2
    # A workspace reader sees the peer's project/workspace like its namespace, not its pod.
    (seen,) = [
        f
        for f in api.get(
            "/api/v1/flows", params={"cluster": ENR}, headers={"Authorization": "Bearer shop"}
        ).json()["flows"]
        if "netwarden" in f
    ]
    assert seen["netwarden"]["destination"] == {"project": "storefront", "workspace": "data-team"}
    assert (
        "pod_name" not in seen["flow"]["destination"] and seen["flow"]["destination"]["namespace"] == "data"
    )


def test_cli_json_and_jsonpb(enriched: FlowStore, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flows", "--data-dir", str(data_dir), "--cluster", ENR, "-o", "json"]) == 0
    as_json = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert main(["flows", "--data-dir", str(data_dir), "--cluster", ENR, "-o", "jsonpb"]) == 0
    as_jsonpb = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [f.get("netwarden") for f in as_json] == [row_enrichment(ENRICHED), None]  # oldest first
    assert as_jsonpb == [{k: v for k, v in f.items() if k != "netwarden"} for f in as_json]


def test_redelivered_twins_are_listed_once(flow_store: FlowStore) -> None:
    """A batch stored twice (a redelivery the insert dedup did not catch) shows each flow once, before
    any merge and without FINAL; the twins are in their own partition, dropped afterwards."""
    responses = [
        make_response(i, src=endpoint("shop", "a"), dst=endpoint("db", "b"), l4=tcp(40000 + i, 5432))
        for i in range(5)
    ]
    for r in responses:  # 2001-01-01: a partition of its own
        r["time"] = r["flow"]["time"] = r["time"].replace("2024-05-01", "2001-01-01")
    table = FlowDecoder().decode(DUP, [encode(r) for r in responses]).table
    flow_store.client.command(f"SYSTEM STOP MERGES {FLOWS_TABLE}")  # keep the twins apart while we look
    try:
        flow_store.client.insert_arrow(FLOWS_TABLE, table)
        # The same rows once more, as a redelivery in another batch would store them.
        flow_store.client.command(
            f"INSERT INTO {FLOWS_TABLE} SELECT * FROM {FLOWS_TABLE} WHERE cluster = '{DUP}' "
            "SETTINGS insert_deduplicate = 0"
        )
        assert (
            flow_store.client.query(f"SELECT count() FROM {FLOWS_TABLE} WHERE cluster = '{DUP}'").result_rows[
                0
            ][0]
            == 10
        )
        rows = flow_store.query_flows(FlowFilter(cluster=DUP, last=3))
        assert [str(r["uuid"])[-2:] for r in rows] == ["04", "03", "02"]
        assert len(flow_store.query_flows(FlowFilter(cluster=DUP, last=None))) == 5
        assert flow_store.count(DUP) == 5
    finally:
        flow_store.client.command(f"SYSTEM START MERGES {FLOWS_TABLE}")
        flow_store.client.command(f"ALTER TABLE {FLOWS_TABLE} DROP PARTITION '20010101'")


@pytest.fixture(scope="module")
def demo_hours(flow_store: FlowStore) -> tuple[int, int]:
    """3,000 demo flows of qa-roll over 3 h (the rollups count them as the views see each insert)."""
    start = 1_717_236_000 * S + 123_456_789  # 2024-06-01T10:00:00.123456789Z
    entries = DemoTraffic(ROLL, seed=5).serialized(
        3000, now_ns=start + 2999 * 3_600_000_000, spacing_ns=3_600_000_000
    )
    decoder = FlowDecoder()
    for i in range(0, len(entries), 1000):  # several inserts, as the sink would
        table = decoder.decode(ROLL, [raw for _, _, raw in entries[i : i + 1000]]).table
        flow_store.client.insert_arrow(FLOWS_TABLE, table)
    return entries[0][0], entries[-1][0]


@pytest.mark.parametrize(
    ("scope", "flt"),
    [
        (ScopeFilter(everything=True), FlowFilter(cluster=ROLL)),
        (ScopeFilter(everything=True), FlowFilter(cluster=ROLL, namespace="data", verdict="DROPPED")),
        (ScopeFilter(clusters=frozenset({ROLL})), FlowFilter()),
        (ScopeFilter(namespaces=frozenset({(ROLL, "shop")})), FlowFilter()),
        (ScopeFilter(namespaces=frozenset({(ROLL, "monitoring")})), FlowFilter(verdict="DROPPED")),
    ],
)
def test_rollups_answer_as_the_flows_would(
    flow_store: FlowStore, demo_hours: tuple[int, int], scope: ScopeFilter, flt: FlowFilter
) -> None:
    first, last = demo_hours
    # Not minute-aligned on purpose: partial minutes at both ends read flows, whole ones the rollups.
    # Whole hours come from the hour tables (verdict buckets too when they are whole hours).
    for window in (
        SummaryWindow(first + 17 * S, last - 23 * S, 300 * S),
        SummaryWindow(first + 17 * S, last - 23 * S, 3600 * S),
        SummaryWindow(first + 17 * S, first + 17 * S + 45 * MINUTE, 60 * S),
    ):
        rolled = summarize(flow_store, flt, window, scope, top=5, max_edges=10_000)
        raw = summarize(flow_store, flt, window, scope, top=5, max_edges=10_000, use_rollups=False)
        assert rolled["rollup_minutes"] > 0 and raw["rollup_minutes"] == 0
        assert rolled["total"] > 0
        rolled.pop("rollup_minutes"), raw.pop("rollup_minutes")
        assert rolled == raw


def test_namespaces_and_clusters_come_from_the_catalog(
    flow_store: FlowStore, demo_hours: tuple[int, int]
) -> None:
    ownership = Ownership(
        project_clusters={"p": frozenset({ROLL})},
        workspace_project={"w": "p"},
        workspace_namespaces={"w": frozenset({NamespaceRef(ROLL, "shop")})},
    )
    users = {
        "proj": Principal.with_role("project-read-only", "p", name="proj"),
        "ws": Principal.with_role("workspace-read-only", "w", name="ws"),
    }
    app = create_app(flow_store, principal_dependency=bearer_principals(users), ownership=ownership)
    with TestClient(app) as client:
        proj = client.get("/api/v1/namespaces", headers={"Authorization": "Bearer proj"}).json()["namespaces"]
        assert {(n["cluster"], n["namespace"]) for n in proj} == {
            (ROLL, ns) for ns in ("shop", "data", "monitoring", "kube-system")
        }
        ws = client.get("/api/v1/namespaces", headers={"Authorization": "Bearer ws"}).json()["namespaces"]
        assert ws == [{"cluster": ROLL, "namespace": "shop", "project": "p", "workspace": "w"}]
        clusters = client.get("/api/v1/clusters", headers={"Authorization": "Bearer proj"}).json()["clusters"]
        assert clusters == [{"name": ROLL, "projects": ["p"]}]

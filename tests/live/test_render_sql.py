"""ClickHouse's jsonpb text of a stored row (streams.jsonpb_sql, what the live stream sends) is byte for byte
the Python renderer's (query_api.live.render_jsonpb, itself checked against protobuf's json_format), or ''
where the SQL cannot be exact, and then the hub renders it in Python."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from collectors.jsonl import read_capture
from collectors.traffic import DemoTraffic
from query_api.live import LiveHub, StoredRow, stored_rows, table_rows
from query_api.store import FlowStore, open_clickhouse
from schemas.flow_record import FLOW_ARROW_SCHEMA
from schemas.flow_render import row_jsonpb_line as _jsonpb_text
from streams import decode_sql
from streams import sink as sink_module
from streams.decode import FlowDecoder
from streams.jsonpb_sql import JSONPB_COLUMN, JSONPB_SETTINGS, jsonpb_sql
from streams.sink import ClickHouseSink, Part
from tests.conftest import CAPTURES
from tests.query_api.conftest import encode, filter_dataset


@pytest.fixture(scope="module")
def client(chdb_dsn: str) -> Iterator[Any]:
    store = FlowStore(open_clickhouse(None, chdb_dsn))
    store.ensure_schema()
    yield store.client


def stored_texts(client: Any, cluster: str, payloads: list[bytes], min_flows: int = 0) -> pa.Table:
    """The stored rows as the live stream gets them; ClickHouse renders the text from `min_flows` a batch."""
    sink = ClickHouseSink(client)
    sink_module.SQL_JSONPB_MIN_FLOWS, before = min_flows, sink_module.SQL_JSONPB_MIN_FLOWS
    try:
        result = sink.store([Part(cluster, "test[0]@0", payloads)], want_rows=True)
    finally:
        sink_module.SQL_JSONPB_MIN_FLOWS = before
        sink.close()
    assert not result.refused
    return pa.concat_tables(result.tables)


def check(table: pa.Table) -> int:
    """Every SQL text equals Python's rendering of the same row; returns how many rows the SQL rendered."""
    rendered = 0
    for row, text in zip(table_rows(table), table.column(JSONPB_COLUMN).to_pylist(), strict=True):
        if text:
            assert text == _jsonpb_text(row)
            rendered += 1
    return rendered


def own_copy(response: dict[str, Any]) -> dict[str, Any]:
    """The query_api dataset's flow with a uuid, namespaces and workloads of our own: tests there query the
    shared store across clusters (a hostile namespace, a workload, no cluster filter) and must not meet
    these copies. The shapes (hostile characters, IPv6, every field) stay."""
    flow = response["flow"]
    flow["uuid"] = flow["uuid"].replace("-8000-", "-9000-")
    for side in ("source", "destination"):
        endpoint = flow.get(side) or {}
        if endpoint.get("namespace"):
            endpoint["namespace"] += "-rsql"
        for workload in endpoint.get("workloads") or ():
            workload["name"] += "-rsql"
    return response


def test_demo_traffic_captures_and_the_rich_flow(client: Any) -> None:
    batches = [("rsql-demo", [d for _, _, d in DemoTraffic("rsql-demo", seed=4).serialized(3000)])]
    batches += [
        (f"rsql-{c.stem[-12:]}", [ln.response.SerializeToString() for ln in read_capture(c) if ln.response])
        for c in CAPTURES
    ]
    batches.append(("rsql-qa", [encode(own_copy(resp)) for _, resp in filter_dataset()]))
    for cluster, payloads in batches:
        table = stored_texts(client, cluster, payloads)
        # All of these are printable ASCII with IPv4 or plain IPv6 addresses: ClickHouse renders every one.
        assert check(table) == table.num_rows > 0, cluster


def test_edge_values_rendered_exactly_or_left_to_python(client: Any) -> None:
    base = table_rows(FlowDecoder().decode("rsql-edge", [d for _, _, d in DemoTraffic("e", seed=9).serialized(8)]).table)
    variants = [dict(r) for r in base]
    for i, r in enumerate(variants[:4]):
        r["time_ns"] += [0, 5_000_000, 7_000, 123_456_789][i] - r["time_ns"] % 1_000_000_000
    b = base[0]
    variants += [
        {**b, "verdict": 99, "drop_reason_desc": 999, "traffic_direction": 7, "trace_reason": 42},
        {**b, "l4_protocol": 5, "src_port": 0, "dst_port": 9},
        {**b, "l4_protocol": 1, "src_port": 0, "dst_port": 0, "tcp_flags": 0},
        {**b, "l4_protocol": 1, "tcp_flags": 0b111111111},
        {**b, "l4_protocol": 6, "icmp_type": 2},
        {**b, "l4_protocol": 7, "icmp_type": 0x11},
        {**b, "l4_protocol": 4, "icmp_type": 0, "icmp_code": 3},
        {**b, "is_reply": None, "reply": True, "uuid_given": False, "ip_encrypted": True},
        {**b, "flow_type": 2, "l7_type": 0},
        {**b, "flow_type": 2, "l7_type": 1},
        {**b, "ip_version": 2, "ip_src": ipaddress.IPv6Address("fd00::1").packed, "ip_dst": bytes(16)},
        {**b, "ip_version": 2, "ip_src": ipaddress.IPv6Address("::ffff:10.0.0.1").packed},  # Python: hex form
        {**b, "ip_version": 0},
        {**b, "src_service": "", "src_service_namespace": "ns", "dst_service": "svc", "dst_service_namespace": ""},
        {**b, "src_workload_names": ["a", "b"], "src_workload_kinds": ["Deployment"]},
        {**b, "src_id": 0, "src_identity": 0, "src_labels": [], "src_namespace": "", "src_pod": ""},
        {**b, "egress_denied_by": [{"kind": "", "namespace": "", "name": "x", "revision": 0, "labels": []}]},
        {**b, "node_name": "", "event_type": 0, "event_sub_type": 0},
        {**b, "src_pod": 'quote"back\\slash/slash'},
        {**b, "src_pod": "caf\u00e9", "dst_labels": ["k8s:app=\u2028"]},  # not ASCII: left to Python
        {**b, "node_name": "tab\there"},  # a control character: left to Python
    ]
    for r in variants:
        r["time"] = r.pop("time_ns")
    table = pa.Table.from_pylist(variants, schema=FLOW_ARROW_SCHEMA.set(0, pa.field("time", pa.int64())))
    table = table.set_column(0, "time", table.column("time").cast(pa.timestamp("ns", tz="UTC")))
    name = "_rsql_edge"
    client.command(f"DROP TABLE IF EXISTS {name}")
    client.command(decode_sql.stage_ddl(name))
    client.insert_arrow(name, table.select(FLOW_ARROW_SCHEMA.names))
    sql = (
        f"SELECT {jsonpb_sql('s')} AS `{JSONPB_COLUMN}` FROM {name} AS s "
        f"{decode_sql.settings_clause(JSONPB_SETTINGS)}"
    )
    texts = client.query_arrow(sql).column(JSONPB_COLUMN).to_pylist()
    client.command(f"DROP TABLE {name}")
    rows = table_rows(table)
    left = [i for i, t in enumerate(texts) if not t]
    # IPv4-mapped addresses on a flow that is not IPv4 (Python prints them in hex), non-ASCII, a control char
    assert left == [len(rows) - 10, len(rows) - 9, len(rows) - 2, len(rows) - 1], left
    for row, text in zip(rows, texts, strict=True):
        if text:
            assert text == _jsonpb_text(row)


def test_hub_sends_clickhouse_text_only_for_the_row_itself(client: Any) -> None:
    table = stored_texts(client, "rsql-hub", [d for _, _, d in DemoTraffic("rsql-hub", seed=5).serialized(50)])
    rows = stored_rows(table)
    hub = LiveHub()
    plain = table_rows(table)
    for row, want in zip(rows, plain, strict=True):
        assert isinstance(row, StoredRow) and row.jsonpb
        assert dict(row) == want and row.get("nope", 7) == 7  # the same mapping as table_rows
        assert hub.text_of(row) == row.jsonpb == _jsonpb_text(want)
        # A redacted copy (a dict) never borrows the row's text.
        redacted = {**row, "dst_pod": "", "dst_labels": []}
        assert hub.text_of(redacted) == _jsonpb_text(redacted) != row.jsonpb
    # A batch below the threshold comes without ClickHouse's text (analysing that SQL costs more than Python
    # rendering a few rows): the hub renders the same text itself.
    small = stored_texts(client, "rsql-small", [d for _, _, d in DemoTraffic("rsql-small", seed=6).serialized(20)], 21)
    assert JSONPB_COLUMN not in small.column_names
    for row, want in zip(stored_rows(small), table_rows(small), strict=True):
        assert row.jsonpb == "" and hub.text_of(row) == _jsonpb_text(want)

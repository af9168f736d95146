"""ClickHouse decodes Hubble's bytes exactly as the Python decoder (streams.decode, the oracle) does, field for
field, on every reference capture and on generated demo traffic; refused entries are isolated by bisection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from collectors.jsonl import read_capture
from collectors.traffic import DemoTraffic
from query_api.store import FlowStore, open_clickhouse
from schemas.flow_record import ENRICHMENT_COLUMNS, FLOW_COLUMNS
from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2
from streams.decode import FlowDecoder
from streams.enrichment import NoEnrichment
from streams.sink import ClickHouseSink, Part
from tests.conftest import CAPTURES


@pytest.fixture(scope="module")
def client(chdb_dsn: str) -> Iterator[Any]:
    store = FlowStore(open_clickhouse(None, chdb_dsn))
    store.ensure_schema()
    yield store.client


def rows(table: pa.Table) -> list[dict[str, Any]]:
    out = table.select([c.name for c in FLOW_COLUMNS]).to_pylist()
    for row in out:
        if not row["uuid_given"]:
            row["uuid"] = None  # derived from the bytes in Python, from the decoded content in ClickHouse
    return sorted(out, key=lambda r: (r["time"], r["node_name"], repr(r)))


def stored(client: Any, cluster: str, payloads: list[bytes], enricher: Any = None) -> tuple[pa.Table, Any]:
    sink = ClickHouseSink(client, enricher)
    try:
        result = sink.store([Part(cluster, "test[0]@0", payloads)], want_rows=True)
    finally:
        sink.close()
    return pa.concat_tables(result.tables), result


def capture_payloads() -> Iterator[tuple[str, list[bytes]]]:
    for capture in CAPTURES:
        yield capture.stem, [ln.response.SerializeToString() for ln in read_capture(capture) if ln.response]


@pytest.mark.parametrize("name,payloads", list(capture_payloads()), ids=[c.stem for c in CAPTURES])
def test_every_reference_capture_decodes_as_the_python_decoder(
    client: Any, name: str, payloads: list[bytes]
) -> None:
    cluster = f"dec-{name[-20:]}"
    table, result = stored(client, cluster, payloads)
    expected = FlowDecoder().decode(cluster, payloads)
    assert not result.refused and not expected.rejected
    assert table.num_rows == expected.table.num_rows == result.stored_by_cluster[cluster]
    assert rows(table) == rows(expected.table)
    # the rows are in the flows table too, enrichment columns at their defaults
    count = client.query(
        "SELECT count() FROM flows FINAL WHERE cluster = {c:String} AND src_workspace = ''",
        parameters={"c": cluster},
    ).result_rows[0][0]
    assert count == expected.table.num_rows


def test_demo_traffic_decodes_as_the_python_decoder_and_is_enriched_per_key(client: Any) -> None:
    payloads = [raw for _, _, raw in DemoTraffic("dec-demo", seed=11).serialized(20_000)]
    seen: list[int] = []

    class CountingEnricher(NoEnrichment):
        def enrich_keys(self, keys: pa.Table) -> pa.Table:
            seen.append(keys.num_rows)
            out = super().enrich_keys(keys)
            # a visible answer per key: the workspace names the key's source namespace
            return out.set_column(
                out.schema.get_field_index("src_workspace"), "src_workspace", keys.column("src_namespace")
            )

    table, result = stored(client, "dec-demo", payloads, CountingEnricher())
    expected = FlowDecoder().decode("dec-demo", payloads).table
    assert rows(table) == rows(expected)
    assert len(seen) == 1 and 0 < seen[0] < len(payloads)  # once per distinct key, never per flow
    assert table.column("src_workspace").to_pylist() == table.column("src_namespace").to_pylist()
    assert set(table.schema.names) >= {c.name for c in ENRICHMENT_COLUMNS}


def test_lost_events_and_node_status_are_counted_not_stored(client: Any) -> None:
    good = [raw for _, _, raw in DemoTraffic("dec-lost", seed=2).serialized(3)]
    lost = observer_pb2.GetFlowsResponse(
        lost_events=flow_pb2.LostEvent(num_events_lost=7)
    ).SerializeToString()
    status = observer_pb2.GetFlowsResponse(node_status={"state_change": 1}).SerializeToString()
    table, result = stored(client, "dec-lost", [good[0], lost, status, *good[1:]])
    assert table.num_rows == 3 and result.stored_by_cluster == {"dec-lost": 3}
    assert result.lost_events == {"dec-lost": 7}


def test_refused_entries_are_isolated_with_clickhouse_message(client: Any) -> None:
    good = [raw for _, _, raw in DemoTraffic("dec-bad", seed=5).serialized(40)]
    bad_ip = observer_pb2.GetFlowsResponse(
        flow=flow_pb2.Flow(time={"seconds": 1_700_000_000}, IP=flow_pb2.IP(source="10.0.0.300"))
    ).SerializeToString()
    no_time = observer_pb2.GetFlowsResponse(flow=flow_pb2.Flow(uuid="0bad")).SerializeToString()
    payloads = [*good[:10], b"\xff\xfe not protobuf", *good[10:25], bad_ip, *good[25:], no_time]
    table, result = stored(client, "dec-bad", payloads)
    assert table.num_rows == 40 and result.stored_by_cluster == {"dec-bad": 40}
    refused = {i: reason for _, i, reason in result.refused}
    assert sorted(refused) == [10, 26, 42]
    assert refused[10].startswith("not a GetFlowsResponse")
    assert "flow.IP.source is not an IP address" in refused[26]
    assert "flow.time is missing" in refused[42] or "flow.uuid is not a UUID" in refused[42]
    # the oracle rejects the same entries
    assert sorted(r.index for r in FlowDecoder().decode("dec-bad", payloads).rejected) == [10, 26, 42]


def test_framing_reads_back_entry_for_entry_including_large_ones() -> None:
    from google.protobuf.internal.decoder import _DecodeVarint

    from schemas.framing import frame

    entries = [b"", b"a" * 127, b"b" * 128, b"c" * 70_000, b"d" * 300]
    framed = frame(entries)
    pos, back = 0, []
    while pos < len(framed):
        size, pos = _DecodeVarint(framed, pos)
        back.append(framed[pos : pos + size])
        pos += size
    assert back == entries


def test_settings_travel_inline_with_quotes_escaped(client: Any) -> None:
    from streams.decode_sql import settings_clause

    clause = settings_clause({"format_schema": "it's \\ 'quoted'", "max_threads": 1})
    value = client.query("SELECT getSetting('format_schema') " + clause).result_rows[0][0]
    assert value == "it's \\ 'quoted'"


def test_errors_are_classified_retriable_or_refused(client: Any) -> None:
    import clickhouse_connect

    from netwarden.broker import free_port
    from streams.sink import RefusedError, RetriableError, classify

    try:
        clickhouse_connect.get_client(host="127.0.0.1", port=free_port(), connect_timeout=1)
    except Exception as exc:  # nobody listens: ClickHouse unreachable
        assert isinstance(classify(exc), RetriableError)
    else:
        raise AssertionError("a client to a closed port should fail")
    try:
        client.command("SELECT throwIf(1, 'bad data')")
    except Exception as exc:
        assert isinstance(classify(exc), RefusedError) and "bad data" in str(classify(exc))
    try:
        client.command("SELECT * FROM no_such_table_here")
    except Exception as exc:  # our schema is not in place: nothing wrong with the data
        assert isinstance(classify(exc), RetriableError)


def test_a_batch_framed_by_its_producer_is_stored_untouched_and_bisected_when_refused(client: Any) -> None:
    from schemas.framing import frame

    good = [raw for _, _, raw in DemoTraffic("dec-framed", seed=8).serialized(30)]
    payloads = [*good[:12], b"\xff\xfe not protobuf", *good[12:]]
    sink = ClickHouseSink(client)
    try:
        result = sink.store(
            [
                Part("dec-framed", "flows.raw[0]@5", framed=frame(payloads)),
                Part("dec-framed", "flows.raw[0]@6", good),
            ],
            want_rows=True,
        )
    finally:
        sink.close()
    assert result.stored_by_cluster == {"dec-framed": 60}
    assert [(origin, payload) for origin, _, payload, _ in result.refused_entries()] == [
        ("flows.raw[0]@5#12", b"\xff\xfe not protobuf")
    ]
    table = pa.concat_tables(result.tables)
    assert rows(table) == rows(FlowDecoder().decode("dec-framed", good + good).table)


def test_a_large_batch_is_parsed_from_one_file_per_core(client: Any) -> None:
    payloads = [raw for _, _, raw in DemoTraffic("dec-files", seed=12).serialized(16_000)]
    parts = [Part("dec-files", f"flows.raw[0]@{i}", payloads[i * 4000 : (i + 1) * 4000]) for i in range(4)]
    sink = ClickHouseSink(client)
    sink.parallel_files = 2
    try:
        assert len(sink.frames([(p, 0, None) for p in parts])) == 2  # ~3 MB a part: two files of two parts
        result = sink.store(parts, want_rows=True)
    finally:
        sink.close()
    assert result.stored_by_cluster == {"dec-files": 16_000}
    assert rows(pa.concat_tables(result.tables)) == rows(FlowDecoder().decode("dec-files", payloads).table)


def test_a_redelivered_batch_is_stored_and_counted_once_rollups_included(client: Any) -> None:
    """At-least-once delivery: the same Kafka message (same producer batch id) stored twice leaves the flows
    and the per-minute rollups as after one delivery; so does another batch carrying flows already stored (a
    collector that read them again), and a batch of old and new flows stores only the new ones."""
    cluster = "dec-redelivery"
    payloads = [raw for _, _, raw in DemoTraffic(cluster, seed=5).serialized(500)]

    def deliver(batch_id: str) -> None:
        sink = ClickHouseSink(client)
        try:
            sink.store([Part(cluster, "flows.raw[0]@7", payloads, batch_id=batch_id)])
        finally:
            sink.close()

    def counted() -> tuple[int, int]:
        params = {"c": cluster}
        flows = client.query("SELECT count() FROM flows WHERE cluster = {c:String}", parameters=params)
        rollup = client.query("SELECT sum(flows) FROM flows_verdicts_1m WHERE cluster = {c:String}", parameters=params)
        return int(flows.result_rows[0][0]), int(rollup.result_rows[0][0])

    deliver("collector-a#0")
    once = counted()
    assert once[0] == once[1] > 0
    deliver("collector-a#0")  # redelivered after a crash before the commit
    assert counted() == once
    deliver("collector-b#0")  # a different batch with the same flows: nothing new
    assert counted() == once
    more = [raw for _, _, raw in DemoTraffic(cluster, seed=6).serialized(200)]
    sink = ClickHouseSink(client)
    try:
        sink.store([Part(cluster, "flows.raw[0]@9", payloads[:100] + more, batch_id="collector-c#0")])
    finally:
        sink.close()
    assert counted() == (once[0] + 200, once[1] + 200)
    # A flow twice in one batch (a collector re-sent it into the same hold) is stored and counted once.
    twice = [raw for _, _, raw in DemoTraffic(cluster, seed=7).serialized(50)]
    for hold in (False, True):
        sink = ClickHouseSink(client)
        try:
            batch = twice if not hold else [raw for _, _, raw in DemoTraffic(cluster, seed=8).serialized(50)]
            sink.store([Part(cluster, "flows.raw[0]@11", batch + batch, batch_id=f"collector-d#{hold}")], hold=hold)
            sink.flush_held()
        finally:
            sink.close()
    assert counted() == (once[0] + 300, once[1] + 300)

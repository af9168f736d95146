"""Migration of an existing data directory: the v1 flows table (sorted by cluster, time, uuid; with
`predicted_verdict`, without the desired/staged columns) becomes the current layout with its rows kept, and
the rollups and catalog count them. Runs in its own process: chDB allows one data directory per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The v1 DDL, as schemas/clickhouse.py rendered it before the relayout (schemas/flow_record.py at f2f5190~1).
V1_FLOWS_DDL = """CREATE TABLE IF NOT EXISTS flows (
  `time` DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
  `cluster` LowCardinality(String),
  `node_name` LowCardinality(String),
  `uuid` UUID CODEC(ZSTD(1)),
  `uuid_given` Bool,
  `verdict` UInt8,
  `drop_reason` UInt32 CODEC(T64, ZSTD(1)),
  `drop_reason_desc` UInt16 CODEC(T64, ZSTD(1)),
  `flow_type` UInt8,
  `l7_type` UInt8,
  `event_type` Int32 CODEC(T64, ZSTD(1)),
  `event_sub_type` Int32 CODEC(T64, ZSTD(1)),
  `traffic_direction` UInt8,
  `trace_observation_point` UInt8,
  `trace_reason` UInt8,
  `is_reply` Nullable(Bool),
  `reply` Bool,
  `ip_version` UInt8,
  `ip_src` IPv6 CODEC(ZSTD(1)),
  `ip_dst` IPv6 CODEC(ZSTD(1)),
  `ip_encrypted` Bool,
  `l4_protocol` UInt8,
  `src_port` UInt16 CODEC(T64, ZSTD(1)),
  `dst_port` UInt16 CODEC(T64, ZSTD(1)),
  `tcp_flags` UInt16,
  `icmp_type` UInt8,
  `icmp_code` UInt8,
  `src_id` UInt32 CODEC(T64, ZSTD(1)),
  `src_identity` UInt32 CODEC(T64, ZSTD(1)),
  `src_cluster_name` LowCardinality(String),
  `src_namespace` LowCardinality(String),
  `src_pod` String CODEC(ZSTD(1)),
  `src_labels` Array(LowCardinality(String)),
  `src_workload_names` Array(LowCardinality(String)),
  `src_workload_kinds` Array(LowCardinality(String)),
  `src_service` LowCardinality(String),
  `src_service_namespace` LowCardinality(String),
  `src_names` Array(String) CODEC(ZSTD(1)),
  `dst_id` UInt32 CODEC(T64, ZSTD(1)),
  `dst_identity` UInt32 CODEC(T64, ZSTD(1)),
  `dst_cluster_name` LowCardinality(String),
  `dst_namespace` LowCardinality(String),
  `dst_pod` String CODEC(ZSTD(1)),
  `dst_labels` Array(LowCardinality(String)),
  `dst_workload_names` Array(LowCardinality(String)),
  `dst_workload_kinds` Array(LowCardinality(String)),
  `dst_service` LowCardinality(String),
  `dst_service_namespace` LowCardinality(String),
  `dst_names` Array(String) CODEC(ZSTD(1)),
  `ingress_allowed_by` Array(Tuple(kind LowCardinality(String), namespace String, name String, revision UInt64, labels Array(String))),
  `egress_allowed_by` Array(Tuple(kind LowCardinality(String), namespace String, name String, revision UInt64, labels Array(String))),
  `ingress_denied_by` Array(Tuple(kind LowCardinality(String), namespace String, name String, revision UInt64, labels Array(String))),
  `egress_denied_by` Array(Tuple(kind LowCardinality(String), namespace String, name String, revision UInt64, labels Array(String))),
  `src_project` LowCardinality(String),
  `src_workspace` LowCardinality(String),
  `dst_project` LowCardinality(String),
  `dst_workspace` LowCardinality(String),
  `predicted_verdict` UInt8,
  `ingested_at` DateTime DEFAULT now() CODEC(DoubleDelta, ZSTD(1))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(time)
ORDER BY (cluster, time, uuid)
TTL ingested_at + INTERVAL 7 DAY DELETE
SETTINGS index_granularity = 8192"""

SCRIPT = r"""
import json, sys
from collectors.traffic import DemoTraffic
from query_api.flow_query import SELECT_COLUMNS, FlowFilter, build_flow_query
from query_api.scope import ScopeFilter
from query_api.store import FlowStore, open_clickhouse
from query_api.summary import SummaryWindow, summarize
from schemas.clickhouse import FLOWS_TABLE, SORT_KEY
from schemas.flow_render import row_to_jsonpb
from streams.decode import FlowDecoder

data_dir, ddl = sys.argv[1], sys.stdin.read()
store = FlowStore(open_clickhouse(data_dir))
client = store.client
client.command("CREATE TABLE schema_migrations (version UInt32, applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version")
client.command("INSERT INTO schema_migrations (version) VALUES (1)")
client.command(ddl)
entries = DemoTraffic("mig-east", seed=3).serialized(2000, spacing_ns=1_000_000)
table = FlowDecoder().decode("mig-east", [raw for _, _, raw in entries]).table
client.insert_arrow(FLOWS_TABLE, table)
client.command("ALTER TABLE flows UPDATE predicted_verdict = 1 WHERE 1 SETTINGS mutations_sync = 1")
v1_columns = ["toUnixTimestamp64Nano(time) AS time_ns"] + [c for c in SELECT_COLUMNS[1:] if not c.strip("`").startswith(("desired_", "staged_", "verdict_mismatch"))]
before = [json.dumps(row_to_jsonpb(r), sort_keys=True) for r in store.run(*build_flow_query(FlowFilter(last=None), columns=v1_columns))]
applied = store.ensure_schema()
after_rows = store.query_flows(FlowFilter(last=None))
after = [json.dumps(row_to_jsonpb(r), sort_keys=True) for r in after_rows]
columns = [r[0] for r in client.query("SELECT name FROM system.columns WHERE table = 'flows' AND database = currentDatabase()").result_rows]
key = client.query("SELECT sorting_key FROM system.tables WHERE name = 'flows' AND database = currentDatabase()").result_rows[0][0]
first, last = entries[0][0], entries[-1][0]
window = SummaryWindow(first // 60_000_000_000 * 60_000_000_000, (last // 60_000_000_000 + 1) * 60_000_000_000 - 1, 60_000_000_000)
doc = summarize(store, FlowFilter(), window, ScopeFilter(everything=True))
namespaces = {(c.namespace_cluster, c.namespace) for c in store.catalog()}
def ttls():
    rows = client.query("SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase() AND name IN ('flows', 'flows_talkers_1m', 'flows_talkers_1m_1h', 'flow_catalog')").result_rows
    return {name: q.split(" TTL ")[1].split(" SETTINGS")[0] for name, q in rows}
ttl_default = ttls()
store.ensure_schema(30, 365)
ttl_set = ttls()
store.ensure_schema()  # a reader (netwarden flows) leaves the configured retention alone
ttl_kept = ttls()
print(json.dumps({
    "applied": applied,
    "before": before,
    "after": after,
    "columns": columns,
    "sorting_key": key,
    "expected_key": ", ".join(SORT_KEY),
    "summary_total": doc["total"],
    "rollup_minutes": doc["rollup_minutes"],
    "desired_verdicts": sorted({int(r["desired_verdict"]) for r in after_rows}),
    "namespaces": sorted(namespaces),
    "ttl": [ttl_default, ttl_set, ttl_kept],
    "conversation_flows": int(client.query("SELECT sum(flows) FROM flow_conversations_1h").result_rows[0][0]),
    "tables": sorted(r[0] for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows),
}))
"""


def test_v1_data_dir_is_migrated_with_its_rows(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        input=V1_FLOWS_DDL,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["applied"] == [2, 3, 4, 5, 6, 7]
    assert len(got["before"]) == 2000 and got["after"] == got["before"]  # every row, field for field
    assert got["sorting_key"] == got["expected_key"]
    assert "predicted_verdict" not in got["columns"] and "desired_verdict" in got["columns"]
    assert got["desired_verdicts"] == [0]  # new columns: not evaluated
    # The rollups and the catalog know the migrated rows (backfilled once, before the views existed).
    assert got["summary_total"] == 2000 and got["rollup_minutes"] > 0
    assert ["mig-east", "shop"] in got["namespaces"]
    assert got["conversation_flows"] == 2000  # history by conversation knows them too
    assert "flows_v1" not in got["tables"] and "flows_relayout" not in got["tables"]
    # Retention on ingestion time: 7 / 90 days by default, configurable, kept by readers.
    default, configured, kept = got["ttl"]
    day = "ingested_at + toIntervalDay({})"
    assert default == {
        "flows": day.format(7),
        "flows_talkers_1m": day.format(90),
        "flows_talkers_1m_1h": day.format(90),
        "flow_catalog": day.format(90),
    }
    assert configured == {
        "flows": day.format(30),
        "flows_talkers_1m": day.format(365),
        "flows_talkers_1m_1h": day.format(365),
        "flow_catalog": day.format(365),
    }
    assert kept == configured

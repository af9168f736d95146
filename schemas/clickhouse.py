"""ClickHouse DDL for the flow history, as ordered migrations applied once each."""

from __future__ import annotations

from schemas.flow_record import RECORD_COLUMNS

FLOWS_TABLE = "flows"
DEFAULT_RETENTION_DAYS = 7


def flows_table_ddl(retention_days: int = DEFAULT_RETENTION_DAYS) -> str:
    columns = ",\n  ".join(f"`{c.name}` {c.clickhouse}" for c in RECORD_COLUMNS)
    # ReplacingMergeTree on (cluster, time, uuid): a flow delivered twice (collector resume, Faust
    # redelivery after a rebalance) collapses to one row; queries read with FINAL.
    # Partitioned by flow time so a duplicate always meets its twin; TTL is on ingestion time, not flow time: a replayed capture from last year must still be kept.
    return f"""CREATE TABLE IF NOT EXISTS {FLOWS_TABLE} (
  {columns},
  `ingested_at` DateTime DEFAULT now() CODEC(DoubleDelta, ZSTD(1))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(time)
ORDER BY (cluster, time, uuid)
TTL ingested_at + INTERVAL {int(retention_days)} DAY DELETE
SETTINGS index_granularity = 8192"""


def migrations(retention_days: int = DEFAULT_RETENTION_DAYS) -> list[tuple[int, str]]:
    """(version, statement) pairs; new schema changes are appended, never edited."""
    return [(1, flows_table_ddl(retention_days))]


MIGRATIONS_TABLE_DDL = """CREATE TABLE IF NOT EXISTS schema_migrations (
  version UInt32, applied_at DateTime DEFAULT now()
) ENGINE = MergeTree ORDER BY version"""

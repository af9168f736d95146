"""ClickHouse DDL for the flow history, its per-minute rollups and its catalog, as ordered migrations.

Layout (issue 7, "Storage and queries for the way people ask"):

- `flows`: one row per stored flow. Sorted by (cluster, 10 minutes, src_namespace, dst_namespace, src_pod,
  dst_pod, time, uuid): "this namespace, this hour" and "flows touching my scope, newest first" are key
  ranges (query_api.flow_query builds plain column predicates the key can use), and rows of the same pod
  pair sit together, so pods, labels, IPs, policies and enrichment compress to almost nothing; what is left
  per flow is Hubble's random uuid (16 B, kept: dedup and round trip), the time and the ephemeral port.
  ReplacingMergeTree on that key (it contains uuid): a redelivered flow collapses to one row at merge time;
  readers drop not-yet-merged twins by key instead of paying FINAL (query_api.store). Partitioned by flow
  day, so a duplicate always meets its twin and FINAL, where still used, need not merge across partitions.
  TTL on ingestion time, not flow time: a replayed capture from last year must still be kept.
- per-minute rollups fed by materialized views (`*_1m`, AggregatingMergeTree summing `flows` per
  dimensions; TTL on the time the rows were written, like flows):
  verdicts per namespace pair, top talkers, service-map edges, drops by policy, netwarden-verdict
  mismatches. Summaries read them for whole minutes and `flows` only for the partial minutes at the
  window's edges (query_api.summary). Endpoints there are (cluster, namespace, workload) plus the first
  `reserved:` label, which is all a redacted peer may show.
- `flow_catalog`: (cluster, namespace_cluster, namespace) -> first/last flow time, fed by a view: the
  namespaces and clusters ever seen, and where to start looking for the newest flows of a scope.

Rollups and catalog count what was inserted: a duplicate that ClickHouse's insert deduplication
(`insert_deduplication_token`) rejects never reaches them; one redelivered in a different batch is counted
twice until it ages out (flows themselves are exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.flow_record import RECORD_COLUMNS

FLOWS_TABLE = "flows"
CATALOG_TABLE = "flow_catalog"
VERDICTS_1M = "flows_verdicts_1m"
TALKERS_1M = "flows_talkers_1m"
EDGES_1M = "flows_edges_1m"
POLICY_DROPS_1M = "flows_policy_drops_1m"
MISMATCHES_1M = "flows_mismatches_1m"
MINUTE_ROLLUPS = (VERDICTS_1M, TALKERS_1M, EDGES_1M, POLICY_DROPS_1M, MISMATCHES_1M)
HOURLY_SUFFIX = "_1h"  # flows_talkers_1m -> flows_talkers_1m_1h: the same rows summed per hour


def hourly(table: str) -> str:
    return table + HOURLY_SUFFIX


ROLLUP_TABLES = MINUTE_ROLLUPS + tuple(hourly(t) for t in MINUTE_ROLLUPS)
DEFAULT_RETENTION_DAYS = 7
DEFAULT_ROLLUP_RETENTION_DAYS = 90
# Same-flow twins land in one partition (same time), which makes this safe for FINAL.
FINAL_SETTINGS = "do_not_merge_across_partitions_select_final = 1"
# Redelivered batches carrying the same insert_deduplication_token are dropped (before the views see them).
DEDUP_WINDOW = 10_000

# The coarse time bucket of the sort key: a query's time range maps onto it (the function is monotonic).
# Ten minutes: the newest flows of a cluster are one bucket; per minute, similar rows would sit together
# too rarely (+5 B/flow measured at 3M demo flows a day), per hour +1 B less but 6x more read per window.
TIME_BUCKET = "toStartOfTenMinutes(time)"
SORT_KEY = (
    "cluster",
    TIME_BUCKET,
    "src_namespace",
    "dst_namespace",
    "src_pod",
    "dst_pod",
    "time",
    "uuid",
)
PRIMARY_KEY = SORT_KEY[:4]


# An endpoint's cluster: its own cluster_name when Hubble reports one (cluster mesh), else the flow's.
def side_cluster(side: str, alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return f"if({p}{side}_cluster_name != '', {p}{side}_cluster_name, {p}cluster)"


def side_reserved(side: str, labels: str | None = None) -> str:
    """The endpoint's first `reserved:` label ('' when none): what a redacted peer still shows."""
    return f"arrayFirst(l -> startsWith(l, 'reserved:'), {labels or side + '_labels'})"


def side_workload(
    side: str, workloads: str | None = None, labels: str | None = None, pod: str | None = None
) -> str:
    """Summary endpoint workload: first workload name, else first reserved label, else the pod name."""
    w = workloads or f"{side}_workload_names"
    return f"if(notEmpty({w}), {w}[1], if({side_reserved(side, labels)} != '', {side_reserved(side, labels)}, {pod or side + '_pod'}))"


def flows_table_ddl(retention_days: int = DEFAULT_RETENTION_DAYS, table: str = FLOWS_TABLE) -> str:
    columns = ",\n  ".join(f"`{c.name}` {c.clickhouse}" for c in RECORD_COLUMNS)
    return f"""CREATE TABLE IF NOT EXISTS {table} (
  {columns},
  `ingested_at` DateTime DEFAULT now() CODEC(Delta, ZSTD(1)),
  INDEX time_minmax time TYPE minmax GRANULARITY 1,
  INDEX verdict_set verdict TYPE set(16) GRANULARITY 1
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(time)
PRIMARY KEY ({", ".join(PRIMARY_KEY)})
ORDER BY ({", ".join(SORT_KEY)})
TTL ingested_at + INTERVAL {int(retention_days)} DAY DELETE
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = {DEDUP_WINDOW}"""


# ---- rollups ----------------------------------------------------------------------------------------

_LC = "LowCardinality(String)"


@dataclass(frozen=True)
class Rollup:
    table: str
    dims: tuple[tuple[str, str, str], ...]  # (name, ClickHouse type, expression over flows)
    where: str = ""  # which flows it counts
    array_join: str = ""  # ARRAY JOIN <expr> AS p (drops by policy)

    def ddl(self, retention_days: int) -> str:
        cols = ",\n  ".join(f"`{n}` {t}" for n, t, _ in self.dims)
        rest = ", ".join(n for n, _, _ in self.dims if n != "cluster")
        return f"""CREATE TABLE IF NOT EXISTS {self.table} (
  `minute` DateTime CODEC(Delta, ZSTD(1)),
  {cols},
  `flows` SimpleAggregateFunction(sum, UInt64) CODEC(T64, ZSTD(1)),
  `ingested_at` SimpleAggregateFunction(max, DateTime) CODEC(Delta, ZSTD(1))
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (cluster, minute, {rest})
TTL ingested_at + INTERVAL {int(retention_days)} DAY DELETE"""

    def select(self, source: str = FLOWS_TABLE, where: str = "") -> str:
        """The view's SELECT (also the backfill): one row per (minute, dims) with its flow count."""
        dims = ", ".join(f"{e} AS `{n}`" for n, _, e in self.dims)
        conds = [c for c in (self.where, where) if c]
        cond = f"\nWHERE {' AND '.join(conds)}" if conds else ""
        join = f"\nARRAY JOIN {self.array_join} AS p" if self.array_join else ""
        key = ", ".join(f"`{n}`" for n, _, _ in self.dims)
        return (
            f"SELECT toStartOfMinute(time) AS minute, {dims}, count() AS flows, now() AS ingested_at\n"
            f"FROM {source}{join}{cond}\n"
            f"GROUP BY minute, {key}"
        )

    def view_ddl(self) -> str:
        return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self.table}_mv TO {self.table} AS\n{self.select()}"

    def hourly_ddl(self, retention_days: int) -> str:
        return self.ddl(retention_days).replace(
            f"CREATE TABLE IF NOT EXISTS {self.table} (",
            f"CREATE TABLE IF NOT EXISTS {hourly(self.table)} (",
            1,
        )

    def hourly_select(self, source: str | None = None) -> str:
        """Minute rows summed per hour (the hourly view's SELECT, also its backfill)."""
        key = ", ".join(f"`{n}`" for n, _, _ in self.dims)
        return (
            f"SELECT toStartOfHour(minute) AS minute, {key}, sum(flows) AS flows, max(ingested_at) AS ingested_at\n"
            f"FROM {source or self.table}\nGROUP BY minute, {key}"
        )

    def hourly_view_ddl(self) -> str:
        # Chained: each insert into the minute table (by its own view) is summed into the hour table.
        return (
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {hourly(self.table)}_mv TO {hourly(self.table)} AS\n"
            f"{self.hourly_select()}"
        )


def _place_dims() -> tuple[tuple[str, str, str], ...]:
    return (
        ("cluster", _LC, "cluster"),
        ("src_cluster", _LC, side_cluster("src")),
        ("src_namespace", _LC, "src_namespace"),
        ("dst_cluster", _LC, side_cluster("dst")),
        ("dst_namespace", _LC, "dst_namespace"),
    )


def _endpoint_dims() -> tuple[tuple[str, str, str], ...]:
    return (
        ("cluster", _LC, "cluster"),
        ("src_cluster", _LC, side_cluster("src")),
        ("src_namespace", _LC, "src_namespace"),
        ("src_workload", _LC, side_workload("src")),
        ("src_reserved", _LC, side_reserved("src")),
        ("dst_cluster", _LC, side_cluster("dst")),
        ("dst_namespace", _LC, "dst_namespace"),
        ("dst_workload", _LC, side_workload("dst")),
        ("dst_reserved", _LC, side_reserved("dst")),
    )


_DENIED = (
    "arrayDistinct(arrayMap(x -> (tupleElement(x, 'kind'), tupleElement(x, 'namespace'), "
    "tupleElement(x, 'name')), arrayConcat(ingress_denied_by, egress_denied_by)))"
)
DROPPED = 2  # flow.Verdict.DROPPED

ROLLUPS: dict[str, Rollup] = {
    # Verdict counts per namespace pair and cluster; drops by reason.
    VERDICTS_1M: Rollup(
        VERDICTS_1M,
        _place_dims() + (("verdict", "UInt8", "verdict"), ("drop_reason_desc", "UInt16", "drop_reason_desc")),
    ),
    # Top talkers: endpoint pairs, every flow.
    TALKERS_1M: Rollup(TALKERS_1M, _endpoint_dims() + (("verdict", "UInt8", "verdict"),)),
    # Service-map edges: requests only (a reply's destination port is the client's ephemeral one).
    EDGES_1M: Rollup(
        EDGES_1M,
        _endpoint_dims()
        + (
            ("dst_port", "UInt16", "dst_port"),
            ("l4_protocol", "UInt8", "l4_protocol"),
            ("verdict", "UInt8", "verdict"),
        ),
        where="NOT ifNull(is_reply, false)",
    ),
    POLICY_DROPS_1M: Rollup(
        POLICY_DROPS_1M,
        _place_dims()
        + (
            ("verdict", "UInt8", "verdict"),
            ("policy_kind", _LC, "p.1"),
            ("policy_namespace", _LC, "p.2"),
            ("policy_name", _LC, "p.3"),
        ),
        where=f"verdict = {DROPPED}",
        array_join=_DENIED,
    ),
    # Where Hubble and netwarden's desired policy set disagree, and which rule netwarden applied.
    MISMATCHES_1M: Rollup(
        MISMATCHES_1M,
        _endpoint_dims()
        + (
            ("dst_port", "UInt16", "dst_port"),
            ("l4_protocol", "UInt8", "l4_protocol"),
            ("verdict", "UInt8", "verdict"),
            ("desired_verdict", "UInt8", "desired_verdict"),
            ("desired_drop_reason", "UInt16", "desired_drop_reason"),
            ("desired_egress_policy", _LC, "desired_egress_policy"),
            ("desired_egress_rule", _LC, "desired_egress_rule"),
            ("desired_ingress_policy", _LC, "desired_ingress_policy"),
            ("desired_ingress_rule", _LC, "desired_ingress_rule"),
        ),
        where="verdict_mismatch AND NOT ifNull(is_reply, false)",
    ),
}


def catalog_ddl(retention_days: int) -> str:
    # Kept as long as the longer of the two retentions: it must know every place `flows` still holds.
    return f"""CREATE TABLE IF NOT EXISTS {CATALOG_TABLE} (
  `cluster` {_LC},
  `namespace_cluster` {_LC},
  `namespace` {_LC},
  `first_seen` SimpleAggregateFunction(min, DateTime64(9, 'UTC')),
  `last_seen` SimpleAggregateFunction(max, DateTime64(9, 'UTC')),
  `ingested_at` SimpleAggregateFunction(max, DateTime)
) ENGINE = AggregatingMergeTree
ORDER BY (cluster, namespace_cluster, namespace)
TTL ingested_at + INTERVAL {int(retention_days)} DAY DELETE"""


def catalog_select(source: str = FLOWS_TABLE) -> str:
    side = (
        "SELECT cluster, {c} AS namespace_cluster, {s}_namespace AS namespace, min(time) AS first_seen, "
        "max(time) AS last_seen, now() AS ingested_at FROM {src} GROUP BY cluster, namespace_cluster, namespace"
    )
    return " UNION ALL ".join(side.format(c=side_cluster(s), s=s, src=source) for s in ("src", "dst"))


def catalog_view_ddls() -> list[str]:
    # One view per side: a view is one SELECT, and UNION ALL views are not supported by every server.
    out = []
    for s in ("src", "dst"):
        out.append(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {CATALOG_TABLE}_{s}_mv TO {CATALOG_TABLE} AS\n"
            f"SELECT cluster, {side_cluster(s)} AS namespace_cluster, {s}_namespace AS namespace, "
            f"min(time) AS first_seen, max(time) AS last_seen, now() AS ingested_at FROM {FLOWS_TABLE} "
            "GROUP BY cluster, namespace_cluster, namespace"
        )
    return out


# ---- conversations ----------------------------------------------------------------------------------
# One row per hour and connection key: what reports, what-if, recommendations and "why" read (they cost the
# number of distinct conversations, not of flows). A reply is folded into its connection: `src_*` is the
# client, `dst_*` the server and `port` the server's port (for ICMP the request's type). Pod sides keep no
# IP (so pod churn does not multiply rows); labels and Hubble's attribution follow from the key and are
# kept as any().

CONVERSATIONS_1H = "flow_conversations_1h"
_REPLY = "ifNull(is_reply, false)"


def server_port_sql(table: str = "") -> str:
    """The connection's server port of a flow (over `table.` columns when given): a reply is keyed on its
    source port; ICMP on the request's type (echo reply 0 -> 8, v6 129 -> 128), so replies and requests
    of one conversation share one key. The stream's enrichment key and the conversation table use it."""
    t = f"{table}." if table else ""
    reply = f"ifNull({t}is_reply, false)"
    request_type = (
        f"if({reply}, multiIf({t}l4_protocol = 3 AND {t}icmp_type = 0, 8, "
        f"{t}l4_protocol = 4 AND {t}icmp_type = 129, 128, {t}icmp_type), {t}icmp_type)"
    )
    return f"multiIf({t}l4_protocol IN (3, 4), {request_type}, {reply}, {t}src_port, {t}dst_port)"


def _client_server(column: str, role: str) -> str:
    """`column` ("{}_namespace" with the side as {}) of the client (role "src") or server ("dst")."""
    other = "dst" if role == "src" else "src"
    return f"if({_REPLY}, {column.format(other)}, {column.format(role)})"


def _hubble_attribution(which: str) -> str:
    return (
        "arrayDistinct(arrayMap(x -> concat(tupleElement(x, 'kind'), '/', tupleElement(x, 'namespace'), '/', "
        f"tupleElement(x, 'name')), arrayConcat(ingress_{which}_by, egress_{which}_by)))"
    )


def _conversation_dims() -> tuple[tuple[str, str, str], ...]:
    dims: list[tuple[str, str, str]] = [("cluster", _LC, "cluster")]
    for role in ("src", "dst"):
        ns = _client_server("{}_namespace", role)
        workloads = _client_server("{}_workload_names", role)
        kinds = _client_server("{}_workload_kinds", role)
        dims += [
            (f"{role}_cluster", _LC, _client_server("if({0}_cluster_name != '', {0}_cluster_name, cluster)", role)),
            (f"{role}_namespace", _LC, ns),
            (f"{role}_workload", _LC,
             f"if({ns} = '', '', if(notEmpty({workloads}), {workloads}[1], {_client_server('{}_pod', role)}))"),
            (f"{role}_workload_kind", _LC,
             f"if({ns} = '' OR empty({kinds}), '', {kinds}[1])"),
            (f"{role}_identity", "UInt32", _client_server("{}_identity", role)),
            (f"{role}_ip", "IPv6", f"if({ns} = '', {_client_server('ip_{}', role)}, toIPv6('::'))"),
        ]
    dims += [
        ("port", "UInt16", server_port_sql()),
        ("l4_protocol", "UInt8", "l4_protocol"),
        ("traffic_direction", "UInt8", "traffic_direction"),
        ("verdict", "UInt8", "verdict"),
        ("drop_reason_desc", "UInt16", "drop_reason_desc"),
    ]
    for prefix in ("desired", "staged"):
        for name, ch_type in _VERDICT_DIMS:
            dims.append((f"{prefix}_{name}", ch_type, f"{prefix}_{name}"))
    return tuple(dims)


_VERDICT_DIMS = (
    ("revision", "UInt64"),
    ("verdict", "UInt8"),
    ("drop_reason", "UInt16"),
    ("egress_verdict", "UInt8"),
    ("egress_policy", _LC),
    ("egress_rule", _LC),
    ("egress_version", "UInt32"),
    ("ingress_verdict", "UInt8"),
    ("ingress_policy", _LC),
    ("ingress_rule", _LC),
    ("ingress_version", "UInt32"),
)
# Functions of the key, kept once per row, and the counts: (name, type, aggregate, SELECT expression).
_CONVERSATION_VALUES = (
    ("src_labels", "Array(String)", "any", f"any({_client_server('{}_labels', 'src')})"),
    ("dst_labels", "Array(String)", "any", f"any({_client_server('{}_labels', 'dst')})"),
    ("hubble_allowed_by", "Array(String)", "any", f"any({_hubble_attribution('allowed')})"),
    ("hubble_denied_by", "Array(String)", "any", f"any({_hubble_attribution('denied')})"),
    ("flows", "UInt64", "sum", "count()"),
    ("first_seen", "DateTime64(9, 'UTC')", "min", "min(time)"),
    ("last_seen", "DateTime64(9, 'UTC')", "max", "max(time)"),
    ("ingested_at", "DateTime", "max", "now()"),
)
CONVERSATION_DIMS = _conversation_dims()
CONVERSATION_KEY = tuple(n for n, _, _ in CONVERSATION_DIMS)


def conversations_ddl(retention_days: int) -> str:
    dims = ",\n  ".join(f"`{n}` {t}" for n, t, _ in CONVERSATION_DIMS)
    values = ",\n  ".join(f"`{n}` SimpleAggregateFunction({agg}, {t})" for n, t, agg, _ in _CONVERSATION_VALUES)
    rest = ", ".join(n for n in CONVERSATION_KEY if n != "cluster")
    return f"""CREATE TABLE IF NOT EXISTS {CONVERSATIONS_1H} (
  `hour` DateTime CODEC(Delta, ZSTD(1)),
  {dims},
  {values}
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (cluster, hour, {rest})
TTL ingested_at + INTERVAL {int(retention_days)} DAY DELETE
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"""


def conversations_select(source: str = FLOWS_TABLE, where: str = "") -> str:
    """The view's SELECT (also the backfill, and the partial hours at a window's edges): one row per hour
    and conversation key. Computed under `c_` aliases in a subquery: ClickHouse aliases are global, and
    `if(reply, dst_namespace, src_namespace) AS src_namespace` would change what `dst_namespace` reads."""
    inner = ", ".join(f"{e} AS `c_{n}`" for n, _, e in CONVERSATION_DIMS)
    values = ", ".join(f"{e} AS `c_{n}`" for n, _, _, e in _CONVERSATION_VALUES)
    key = ", ".join(f"`c_{n}`" for n in CONVERSATION_KEY)
    outer = ", ".join(f"`c_{n}` AS `{n}`" for n in (*CONVERSATION_KEY, *(v[0] for v in _CONVERSATION_VALUES)))
    cond = f" WHERE {where}" if where else ""
    return (
        f"SELECT c_hour AS hour, {outer}\nFROM (SELECT toStartOfHour(time) AS c_hour, {inner}, {values}\n"
        f"FROM {source}{cond}\nGROUP BY c_hour, {key})"
    )


def conversations_view_ddl() -> str:
    return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {CONVERSATIONS_1H}_mv TO {CONVERSATIONS_1H} AS\n{conversations_select()}"


def _create_conversations(retention: Retention) -> list[Step]:
    def backfill(client: Any) -> None:
        client.command(
            f"INSERT INTO {CONVERSATIONS_1H} {conversations_select()} SETTINGS max_partitions_per_insert_block = 0"
        )

    return [conversations_ddl(retention.rollup_days), backfill, conversations_view_ddl()]


# ---- lost ranges --------------------------------------------------------------------------------------
# Ranges of a node's flows that Hubble no longer held when a collector resumed (collectors.hubble_client): the
# validation report's health section. A range sent again (a collector that re-read it) collapses by key.

LOST_RANGES_TABLE = "flow_lost_ranges"


def lost_ranges_ddl(retention_days: int) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {LOST_RANGES_TABLE} (
  `cluster` {_LC},
  `node` String,
  `after` DateTime64(9, 'UTC'),
  `before` DateTime64(9, 'UTC'),
  `recorded_at` DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree
ORDER BY (cluster, node, after, before)
TTL recorded_at + INTERVAL {int(retention_days)} DAY DELETE"""


# ---- migrations -------------------------------------------------------------------------------------

Step = str | Callable[[Any], None]  # a statement, or a function of the clickhouse-connect client


@dataclass(frozen=True)
class Retention:
    flows_days: int = DEFAULT_RETENTION_DAYS
    rollup_days: int = DEFAULT_ROLLUP_RETENTION_DAYS

    @property
    def catalog_days(self) -> int:
        return max(self.flows_days, self.rollup_days)


def _table_exists(client: Any, table: str) -> bool:
    rows = client.query(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    return bool(rows[0][0])


def _columns(client: Any, table: str) -> list[str]:
    rows = client.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
        "ORDER BY position",
        parameters={"t": table},
    ).result_rows
    return [r[0] for r in rows]


def _sorting_key(client: Any, table: str) -> str:
    rows = client.query(
        "SELECT sorting_key FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    return str(rows[0][0]) if rows else ""


def _relayout_flows(retention: Retention) -> Callable[[Any], None]:
    """v1 (sorted by cluster, time, uuid; `predicted_verdict`, no desired/staged columns) -> this layout,
    rows kept. Columns both layouts have are copied; new ones get their defaults; dropped ones are gone."""

    def step(client: Any) -> None:
        if not _table_exists(client, FLOWS_TABLE):
            client.command(flows_table_ddl(retention.flows_days))
            return
        if _sorting_key(client, FLOWS_TABLE).replace(" ", "") == ",".join(SORT_KEY).replace(" ", ""):
            return  # created by migration 1 in this layout already
        new = f"{FLOWS_TABLE}_relayout"
        client.command(f"DROP TABLE IF EXISTS {new}")
        client.command(flows_table_ddl(retention.flows_days, table=new))
        old_cols = set(_columns(client, FLOWS_TABLE))
        keep = [c for c in _columns(client, new) if c in old_cols]
        cols = ", ".join(f"`{c}`" for c in keep)
        # Every old partition in one go: lift the per-insert partition limit for this copy.
        client.command(
            f"INSERT INTO {new} ({cols}) SELECT {cols} FROM {FLOWS_TABLE} "
            "SETTINGS max_partitions_per_insert_block = 0"
        )
        client.command(f"RENAME TABLE {FLOWS_TABLE} TO {FLOWS_TABLE}_v1, {new} TO {FLOWS_TABLE}")
        client.command(f"DROP TABLE {FLOWS_TABLE}_v1")

    return step


def _create_rollups(retention: Retention) -> list[Step]:
    steps: list[Step] = []
    for rollup in ROLLUPS.values():
        steps.append(rollup.ddl(retention.rollup_days))
    steps.append(catalog_ddl(retention.catalog_days))

    def backfill(client: Any) -> None:
        # Views see only new inserts: count what is already stored once, before the views exist.
        for rollup in ROLLUPS.values():
            client.command(
                f"INSERT INTO {rollup.table} {rollup.select()} SETTINGS max_partitions_per_insert_block = 0"
            )
        client.command(f"INSERT INTO {CATALOG_TABLE} {catalog_select()}")

    steps.append(backfill)
    steps += [rollup.view_ddl() for rollup in ROLLUPS.values()]
    steps += catalog_view_ddls()
    return steps


def _create_hourly_rollups(retention: Retention) -> list[Step]:
    """Hour tables beside the minute ones: a day's summary then reads ~24 rows per key instead of 1,440."""
    steps: list[Step] = [rollup.hourly_ddl(retention.rollup_days) for rollup in ROLLUPS.values()]

    def backfill(client: Any) -> None:
        for rollup in ROLLUPS.values():
            client.command(f"INSERT INTO {hourly(rollup.table)} {rollup.hourly_select()}")

    steps.append(backfill)
    steps += [rollup.hourly_view_ddl() for rollup in ROLLUPS.values()]
    return steps


def migrations(
    retention_days: int = DEFAULT_RETENTION_DAYS, rollup_retention_days: int = DEFAULT_ROLLUP_RETENTION_DAYS
) -> list[tuple[int, Sequence[Step]]]:
    """(version, steps) pairs; new schema changes are appended, never edited. A data directory created
    before a version gets that version's steps once (query_api.store.FlowStore.ensure_schema)."""
    retention = Retention(retention_days, rollup_retention_days)
    return [
        (1, [flows_table_ddl(retention_days)]),
        (2, [_relayout_flows(retention)]),
        (3, _create_rollups(retention)),
        (4, _create_hourly_rollups(retention)),
        # Views inherit an insert's deduplication only where their target tables keep a window of their own:
        # without it a redelivered batch, dropped from flows, was still counted again by every rollup.
        (5, [
            f"ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = {DEDUP_WINDOW}"
            for table in (*ROLLUP_TABLES, CATALOG_TABLE)
        ]),
        (6, _create_conversations(retention)),
        (7, [lost_ranges_ddl(retention.rollup_days)]),
    ]


def ttl_statements(client: Any, retention: Retention, flows: bool = True, rollups: bool = True) -> list[str]:
    """ALTERs bringing the stored tables' TTLs to `retention` (only those asked for; empty when they match).
    The catalog follows the longer of the two when both are given."""
    wanted: dict[str, tuple[int, str]] = {}
    if flows:
        wanted[FLOWS_TABLE] = (retention.flows_days, "ingested_at")
    if rollups:
        wanted.update({table: (retention.rollup_days, "ingested_at") for table in (*ROLLUP_TABLES, CONVERSATIONS_1H)})
        wanted[LOST_RANGES_TABLE] = (retention.rollup_days, "recorded_at")
    if flows and rollups:  # the catalog must outlive both; with one unknown, leave it
        wanted[CATALOG_TABLE] = (retention.catalog_days, "ingested_at")
    rows = client.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase() "
        "AND name IN {names:Array(String)}",
        parameters={"names": list(wanted)},
    ).result_rows
    out = []
    for name, create in rows:
        days, column = wanted[name]
        if f"TTL {column} + toIntervalDay({int(days)})" not in create:
            out.append(f"ALTER TABLE {name} MODIFY TTL {column} + INTERVAL {int(days)} DAY DELETE")
    return out


RETENTION_ENV = "NETWARDEN_RETENTION_DAYS"
ROLLUP_RETENTION_ENV = "NETWARDEN_ROLLUP_RETENTION_DAYS"


def retention_days_from(value: str | int | None, what: str) -> int | None:
    """A retention in whole days (>= 1) from a flag or an environment variable; None when not set."""
    if value is None or value == "":
        return None
    try:
        days = int(str(value).strip())
    except ValueError:
        days = 0
    if days < 1:
        raise ValueError(f"{what}: expected a whole number of days >= 1, got {value!r}")
    return days


MIGRATIONS_TABLE_DDL = """CREATE TABLE IF NOT EXISTS schema_migrations (
  version UInt32, applied_at DateTime DEFAULT now()
) ENGINE = MergeTree ORDER BY version"""

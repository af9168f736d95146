"""Every Grafana panel's query, in one place: when the rollup layout (schemas/clickhouse.py) changes, this is
the module to update; `netwarden grafana dashboards --out deploy/grafana/dashboards` then regenerates the JSON
and tests/grafana runs each query (macros expanded as the plugin does) against the real engine.

SQL uses the grafana-clickhouse-datasource macros (netwarden/grafana/macros.py says what each becomes) and
the dashboard variables `$cluster` and `$namespace`. Rates divide by `greatest($__interval_s, 60)`: a minute
rollup row falls into one bucket whatever the interval, and Grafana's intervals of a minute and more are
whole minutes (hours from 1h on), so the rate is flows per second of the bucket.

Sources: the per-minute rollups (`flows_*_1m`) for short intervals and ranges, their `_1h` twins for long
ones, chosen in SQL (a constant-false branch reads nothing); `flow_conversations_1h` for netwarden's policy
decisions per rule; `flow_catalog` for variables; `flows` only for the newest dropped flows.
"""

from __future__ import annotations

from schemas.clickhouse import (
    CATALOG_TABLE,
    CONVERSATIONS_1H,
    EDGES_1M,
    FLOWS_TABLE,
    MISMATCHES_1M,
    POLICY_DROPS_1M,
    TALKERS_1M,
    VERDICTS_1M,
    hourly,
    side_cluster,
)
from schemas.hubble.flow import flow_pb2


def _names(column: str, enum: object) -> str:
    """`column` as its Hubble enum name (the number itself when unknown)."""
    items = enum.items()  # type: ignore[attr-defined]
    numbers = ", ".join(str(n) for _, n in items)
    names = ", ".join(f"'{name}'" for name, _ in items)
    return f"transform({column}, [{numbers}], [{names}], toString({column}))"


def verdict_name(column: str = "verdict") -> str:
    return _names(column, flow_pb2.Verdict)


def drop_reason_name(column: str = "drop_reason_desc") -> str:
    return _names(column, flow_pb2.DropReason)


PROTOCOL = "transform(l4_protocol, [1, 2, 3, 4, 5], ['TCP', 'UDP', 'ICMPv4', 'ICMPv6', 'SCTP'], toString(l4_protocol))"
DROPPED = 2

# Minute rows for series finer than an hour, hour rows from 1h buckets on; tables: hour rows for a day or more.
HOURLY_FOR_SERIES = "$__interval_s >= 3600"
HOURLY_FOR_TABLES = "dateDiff('second', $__fromTime, $__toTime) >= 86400"
RATE_SECONDS = "greatest($__interval_s, 60)"


def rollup(table: str, where: str = "1", hourly_when: str = HOURLY_FOR_SERIES) -> str:
    """A subquery over the minute table `table` or its hourly twin, rows in the panel's range matching `where`."""
    branches = (
        f"SELECT * FROM {table} WHERE NOT ({hourly_when}) AND $__timeFilter(minute) AND {where}",
        f"SELECT * FROM {hourly(table)} WHERE {hourly_when} AND $__timeFilter(minute) AND {where}",
    )
    return "(\n  " + "\n  UNION ALL\n  ".join(branches) + "\n)"


def table_rollup(table: str, where: str = "1") -> str:
    return rollup(table, where, HOURLY_FOR_TABLES)


# ---- filters ------------------------------------------------------------------------------------------

CLUSTERS = "$__conditionalAll(cluster IN (${cluster:singlequote}), $cluster)"


def in_namespace(side: str, cluster: str | None = None) -> str:
    """The `side` endpoint lies in the selected cluster and namespace(s) (rollups store each side's cluster)."""
    return (f"{cluster or side + '_cluster'} = ${{cluster:singlequote}} AND "
            f"$__conditionalAll({side}_namespace IN (${{namespace:singlequote}}), $namespace)")


TOUCHING = f"(({in_namespace('src')}) OR ({in_namespace('dst')}))"


def endpoint(side: str) -> str:
    """cluster/namespace/workload of a rollup endpoint; a reserved identity (world, host) has no namespace."""
    return (f"if({side}_namespace = '', concat({side}_cluster, '/', {side}_workload), "
            f"concat({side}_cluster, '/', {side}_namespace, '/', {side}_workload))")


# ---- fleet overview -----------------------------------------------------------------------------------

FLEET_FLOWS_BY_VERDICT = f"""SELECT $__timeInterval(minute) AS time, {verdict_name()} AS verdict,
  sum(flows) / {RATE_SECONDS} AS flows_per_second
FROM {rollup(VERDICTS_1M, CLUSTERS)}
GROUP BY time, verdict
ORDER BY time"""

FLEET_FLOWS_BY_CLUSTER = f"""SELECT $__timeInterval(minute) AS time, cluster, sum(flows) / {RATE_SECONDS} AS flows_per_second
FROM {rollup(VERDICTS_1M, CLUSTERS)}
GROUP BY time, cluster
ORDER BY time"""

FLEET_DROPS_BY_REASON = f"""SELECT $__timeInterval(minute) AS time, {drop_reason_name()} AS reason,
  sum(flows) / {RATE_SECONDS} AS drops_per_second
FROM {rollup(VERDICTS_1M, f"verdict = {DROPPED} AND {CLUSTERS}")}
GROUP BY time, reason
ORDER BY time"""

FLEET_TOTAL_FLOWS = f"""SELECT sum(flows) AS total_flows
FROM {table_rollup(VERDICTS_1M, CLUSTERS)}"""

FLEET_DROPPED_SHARE = f"""SELECT if(sum(flows) = 0, 0, sumIf(flows, verdict = {DROPPED}) / sum(flows)) AS dropped
FROM {table_rollup(VERDICTS_1M, CLUSTERS)}"""

FLEET_MISMATCH_TOTAL = f"""SELECT sum(flows) AS mismatched_requests
FROM {table_rollup(MISMATCHES_1M, CLUSTERS)}"""

FLEET_ACTIVE_NAMESPACES = f"""SELECT count() AS namespaces
FROM (
  SELECT namespace_cluster, namespace
  FROM {CATALOG_TABLE}
  WHERE namespace != '' AND {CLUSTERS}
  GROUP BY namespace_cluster, namespace
  HAVING max(last_seen) >= $__fromTime AND min(first_seen) <= $__toTime
)"""

FLEET_TOP_TALKERS = f"""SELECT {endpoint('src')} AS source, {endpoint('dst')} AS destination,
  sum(flows) AS total_flows, sumIf(flows, verdict = {DROPPED}) AS dropped
FROM {table_rollup(TALKERS_1M, CLUSTERS)}
GROUP BY source, destination
ORDER BY total_flows DESC
LIMIT 20"""

FLEET_POLICY_DROPS = f"""SELECT policy_kind AS kind, policy_namespace AS namespace, policy_name AS policy,
  sum(flows) AS dropped_flows, uniqExact(cluster) AS clusters
FROM {table_rollup(POLICY_DROPS_1M, CLUSTERS)}
GROUP BY kind, namespace, policy
ORDER BY dropped_flows DESC
LIMIT 20"""

_NETWARDEN_POLICY = "if(desired_ingress_policy != '', desired_ingress_policy, desired_egress_policy)"
_NETWARDEN_RULE = "if(desired_ingress_policy != '', desired_ingress_rule, desired_egress_rule)"

FLEET_MISMATCHES = f"""SELECT cluster, {endpoint('src')} AS source, {endpoint('dst')} AS destination,
  concat(toString(dst_port), '/', {PROTOCOL}) AS port, {verdict_name()} AS hubble,
  {verdict_name('desired_verdict')} AS netwarden, {_NETWARDEN_POLICY} AS netwarden_policy,
  {_NETWARDEN_RULE} AS netwarden_rule, sum(flows) AS requests
FROM {table_rollup(MISMATCHES_1M, CLUSTERS)}
GROUP BY cluster, source, destination, port, hubble, netwarden, netwarden_policy, netwarden_rule
ORDER BY requests DESC
LIMIT 50"""

FLEET_MISMATCHES_OVER_TIME = f"""SELECT $__timeInterval(minute) AS time, cluster, sum(flows) / {RATE_SECONDS} AS mismatches_per_second
FROM {rollup(MISMATCHES_1M, CLUSTERS)}
GROUP BY time, cluster
ORDER BY time"""

# ---- namespace view (variables: cluster, namespace) ---------------------------------------------------

NS_FLOWS_BY_VERDICT = f"""SELECT $__timeInterval(minute) AS time,
  concat(if({in_namespace('src')}, 'egress', 'ingress'), ' ', {verdict_name()}) AS series,
  sum(flows) / {RATE_SECONDS} AS flows_per_second
FROM {rollup(VERDICTS_1M, TOUCHING)}
GROUP BY time, series
ORDER BY time"""

NS_DROPS_BY_REASON = f"""SELECT $__timeInterval(minute) AS time, {drop_reason_name()} AS reason,
  sum(flows) / {RATE_SECONDS} AS drops_per_second
FROM {rollup(VERDICTS_1M, f"verdict = {DROPPED} AND {TOUCHING}")}
GROUP BY time, reason
ORDER BY time"""

NS_TOP_SOURCES = f"""SELECT {endpoint('src')} AS source, {endpoint('dst')} AS destination,
  sum(flows) AS total_flows, sumIf(flows, verdict = {DROPPED}) AS dropped
FROM {table_rollup(TALKERS_1M, in_namespace('dst'))}
GROUP BY source, destination
ORDER BY total_flows DESC
LIMIT 20"""

NS_TOP_DESTINATIONS = f"""SELECT {endpoint('src')} AS source, {endpoint('dst')} AS destination,
  concat(toString(dst_port), '/', {PROTOCOL}) AS port,
  sum(flows) AS requests, sumIf(flows, verdict = {DROPPED}) AS dropped
FROM {table_rollup(EDGES_1M, in_namespace('src'))}
GROUP BY source, destination, port
ORDER BY requests DESC
LIMIT 20"""

NS_DROPPED_CONNECTIONS = f"""SELECT {endpoint('src')} AS source, {endpoint('dst')} AS destination,
  concat(toString(dst_port), '/', {PROTOCOL}) AS port, sum(flows) AS dropped_requests
FROM {table_rollup(EDGES_1M, f"verdict = {DROPPED} AND {TOUCHING}")}
GROUP BY source, destination, port
ORDER BY dropped_requests DESC
LIMIT 20"""

NS_POLICY_DROPS = f"""SELECT concat(policy_kind, '/', if(policy_namespace = '', '-', policy_namespace), '/', policy_name) AS policy,
  sum(flows) AS dropped_flows
FROM {table_rollup(POLICY_DROPS_1M, TOUCHING)}
GROUP BY policy
ORDER BY dropped_flows DESC
LIMIT 20"""

NS_MISMATCHES = f"""SELECT {endpoint('src')} AS source, {endpoint('dst')} AS destination,
  concat(toString(dst_port), '/', {PROTOCOL}) AS port, {verdict_name()} AS hubble,
  {verdict_name('desired_verdict')} AS netwarden, {_NETWARDEN_POLICY} AS netwarden_policy,
  {_NETWARDEN_RULE} AS netwarden_rule, sum(flows) AS requests
FROM {table_rollup(MISMATCHES_1M, TOUCHING)}
GROUP BY source, destination, port, hubble, netwarden, netwarden_policy, netwarden_rule
ORDER BY requests DESC
LIMIT 50"""

_FLOW_SIDE_IN_NAMESPACE = {side: in_namespace(side, side_cluster(side)) for side in ("src", "dst")}

NS_RECENT_DROPS = f"""SELECT time, node_name AS node,
  concat({side_cluster('src')}, '/', src_namespace, '/', src_pod) AS source,
  concat({side_cluster('dst')}, '/', dst_namespace, '/', dst_pod) AS destination,
  concat(toString(dst_port), '/', {PROTOCOL}) AS port, {drop_reason_name()} AS reason,
  {verdict_name('desired_verdict')} AS netwarden
FROM {FLOWS_TABLE}
WHERE $__timeFilter(time) AND verdict = {DROPPED}
  AND (({_FLOW_SIDE_IN_NAMESPACE['src']}) OR ({_FLOW_SIDE_IN_NAMESPACE['dst']}))
ORDER BY time DESC
LIMIT 100"""

# ---- policy verdicts: netwarden's decisions per policy and rule (conversations, whole hours) -----------

# Each conversation row carries the deciding policy and rule per direction; one row per direction here.
_DECISIONS = (
    "ARRAY JOIN [('egress', desired_egress_policy, desired_egress_rule, desired_egress_verdict), "
    "('ingress', desired_ingress_policy, desired_ingress_rule, desired_ingress_verdict)] AS d"
)

POLICY_DECISIONS = f"""SELECT tupleElement(d, 2) AS policy, tupleElement(d, 3) AS rule, tupleElement(d, 1) AS direction,
  sumIf(flows, tupleElement(d, 4) = 1) AS allowed_flows, sumIf(flows, tupleElement(d, 4) = {DROPPED}) AS denied_flows,
  uniqExact(cluster, src_namespace, src_workload, dst_namespace, dst_workload, port, l4_protocol) AS conversations,
  max(last_seen) AS last_decision
FROM {CONVERSATIONS_1H}
{_DECISIONS}
WHERE $__timeFilter(hour) AND {CLUSTERS} AND tupleElement(d, 2) != ''
GROUP BY policy, rule, direction
ORDER BY denied_flows + allowed_flows DESC"""

POLICY_DENIALS_OVER_TIME = f"""SELECT $__timeInterval(hour) AS time, concat(tupleElement(d, 2), ' ', tupleElement(d, 3)) AS rule,
  sum(flows) AS denied_flows
FROM {CONVERSATIONS_1H}
{_DECISIONS}
WHERE $__timeFilter(hour) AND {CLUSTERS} AND tupleElement(d, 2) != '' AND tupleElement(d, 4) = {DROPPED}
GROUP BY time, rule
ORDER BY time"""

# "Unused" as ClickHouse can know it: rules that decided flows within retention but none in the range.
POLICY_IDLE_RULES = f"""SELECT tupleElement(d, 2) AS policy, tupleElement(d, 3) AS rule, tupleElement(d, 1) AS direction,
  max(last_seen) AS last_decision, sum(flows) AS flows_in_retention
FROM {CONVERSATIONS_1H}
{_DECISIONS}
WHERE {CLUSTERS} AND tupleElement(d, 2) != ''
GROUP BY policy, rule, direction
HAVING sumIf(flows, hour >= toStartOfHour($__fromTime) AND hour <= $__toTime) = 0
ORDER BY last_decision DESC"""

HUBBLE_POLICY_DROPS_OVER_TIME = f"""SELECT $__timeInterval(minute) AS time,
  concat(policy_kind, '/', if(policy_namespace = '', '-', policy_namespace), '/', policy_name) AS policy,
  sum(flows) / {RATE_SECONDS} AS drops_per_second
FROM {rollup(POLICY_DROPS_1M, CLUSTERS)}
GROUP BY time, policy
ORDER BY time"""

HUBBLE_ATTRIBUTION = f"""SELECT policy, sumIf(flows, decision = 'allowed') AS allowed_flows,
  sumIf(flows, decision = 'denied') AS denied_flows
FROM (
  SELECT flows, tupleElement(a, 1) AS decision, tupleElement(a, 2) AS policy
  FROM {CONVERSATIONS_1H}
  ARRAY JOIN arrayConcat(arrayMap(p -> ('allowed', p), hubble_allowed_by), arrayMap(p -> ('denied', p), hubble_denied_by)) AS a
  WHERE $__timeFilter(hour) AND {CLUSTERS}
)
GROUP BY policy
ORDER BY allowed_flows + denied_flows DESC
LIMIT 50"""

# ---- pipeline health (ClickHouse side) ------------------------------------------------------------------

PIPELINE_NEWEST_FLOW = f"""SELECT cluster, max(last_seen) AS newest_flow,
  dateDiff('second', max(last_seen), now64(9)) AS seconds_behind
FROM {CATALOG_TABLE}
GROUP BY cluster
ORDER BY seconds_behind DESC"""

PIPELINE_STORED_BY_CLUSTER = FLEET_FLOWS_BY_CLUSTER

PIPELINE_INGEST_DELAY = f"""SELECT $__timeInterval(time) AS time_bucket, cluster,
  quantile(0.95)(dateDiff('second', time, ingested_at)) AS p95_seconds
FROM {FLOWS_TABLE}
WHERE $__timeFilter(time)
GROUP BY time_bucket, cluster
ORDER BY time_bucket"""

# ---- variables ----------------------------------------------------------------------------------------

VAR_STORED_CLUSTERS = f"SELECT DISTINCT cluster FROM {CATALOG_TABLE} ORDER BY cluster"
VAR_NAMESPACE_CLUSTERS = f"SELECT DISTINCT namespace_cluster FROM {CATALOG_TABLE} WHERE namespace != '' ORDER BY namespace_cluster"
VAR_NAMESPACES = (f"SELECT DISTINCT namespace FROM {CATALOG_TABLE} "
                  "WHERE namespace_cluster = ${cluster:singlequote} AND namespace != '' ORDER BY namespace")

# ---- Prometheus (metrics the code registers; tests/grafana checks every name) --------------------------

RATE = "$__rate_interval"
PROM_COLLECTOR_FLOWS = f"sum by (cluster) (rate(netwarden_collector_flows_total[{RATE}]))"
PROM_COLLECTOR_CHILD_FLOWS = f'sum by (cluster) (rate(netwarden_collector_child_total{{what="flows"}}[{RATE}]))'
PROM_COLLECTOR_LAG = "time() - max by (cluster) (netwarden_collector_watermark_seconds)"
PROM_COLLECTOR_LOST = f"sum by (cluster, source) (increase(netwarden_collector_lost_events_total[{RATE}]))"
PROM_COLLECTOR_CHILD_LOST = f'sum by (cluster) (increase(netwarden_collector_child_total{{what="lost_events"}}[{RATE}]))'
PROM_STREAM_LOST = f"sum by (cluster) (increase(netwarden_stream_lost_events_total[{RATE}]))"
PROM_RECONNECTS = f"sum by (cluster) (increase(netwarden_collector_reconnects_total[{RATE}]))"
PROM_STORED = f"sum by (cluster) (rate(netwarden_stream_flows_stored_total[{RATE}]))"
PROM_WORKER_IDLE = "time() - max(netwarden_stream_last_insert_timestamp_seconds)"
PROM_DLQ = f"sum by (reason_kind) (increase(netwarden_stream_dead_lettered_total[{RATE}]))"
PROM_INSERT_P95 = (f"histogram_quantile(0.95, sum by (le, stage) (rate(netwarden_sink_stage_seconds_bucket[{RATE}])))")
PROM_COMMIT_P95 = f"histogram_quantile(0.95, sum by (le) (rate(netwarden_stream_commit_seconds_bucket[{RATE}])))"
PROM_RETRIES = f"sum by (stage) (increase(netwarden_stream_retries_total[{RATE}]))"
PROM_BACKING_OFF = "max by (stage) (netwarden_stream_backing_off)"
PROM_BROKER_RSS = "netwarden_broker_rss_bytes"
PROM_CHILD_RSS = "netwarden_child_rss_bytes"
PROM_ROTATIONS = f"increase(netwarden_broker_rotations_total[{RATE}])"
PROM_API_P95 = (f"histogram_quantile(0.95, sum by (le, route) "
                f"(rate(netwarden_api_request_duration_seconds_bucket[{RATE}])))")

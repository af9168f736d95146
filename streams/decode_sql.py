"""SQL that turns framed GetFlowsResponse bytes into stored flow rows inside ClickHouse (no per-flow Python).

ClickHouse's `Protobuf` input format parses length-delimited messages with the reduced schema in
schemas/hubble/store.proto (Hubble's field numbers, only what the record keeps), sent inline with the query
(format_schema_source='string'), so a ClickHouse server needs no schema file. The transforms below produce
exactly the values of the Python decoder (streams.decode, kept as the tests' oracle), with one documented
difference: a flow without a uuid gets one derived from its decoded content here (from its bytes there).

Per batch, in a per-worker scratch database area (tables named after the worker):
  stage  <- INSERT ... SELECT <transforms>, ekey FROM <framed bytes>      (one pass over the protobuf)
  keys   <- enrich_keys(SELECT ekey, any(...) FROM stage GROUP BY ekey)   (once per distinct key)
  flows  <- INSERT INTO flows (<RECORD_COLUMNS>) SELECT ... FROM stage LEFT JOIN keys USING ekey
"""

from __future__ import annotations

import os
from pathlib import Path

from schemas.clickhouse import server_port_sql
from schemas.flow_record import (
    ENRICHMENT_COLUMNS,
    ENRICHMENT_KEY_COLUMNS,
    FLOW_COLUMNS,
    RECORD_COLUMNS,
    TCP_FLAG_NAMES,
)
from streams.jsonpb_sql import JSONPB_COLUMN, JSONPB_SETTINGS, jsonpb_sql

PROTO_PATH = Path(__file__).resolve().parents[1] / "schemas" / "hubble" / "store.proto"
PROTO_TEXT = PROTO_PATH.read_text()
MESSAGE = "GetFlowsResponse"

# response kind (the `kind` oneof's field numbers)
KIND_FLOW, KIND_NODE_STATUS, KIND_LOST = 1, 2, 3


def _endpoint_inputs(side: str) -> list[str]:
    p = f"f_{side}"
    return [
        f"{p}_ID UInt32",
        f"{p}_identity UInt32",
        f"{p}_cluster_name String",
        f"{p}_namespace String",
        f"{p}_pod_name String",
        f"{p}_labels Array(String)",
        f"{p}_workloads_name Array(String)",
        f"{p}_workloads_kind Array(String)",
        f"f_{side}_service_name String",
        f"f_{side}_service_namespace String",
        f"f_{side}_names Array(String)",
    ]


_POLICY_INPUT = (
    "Array(Tuple(kind String, namespace String, name String, revision UInt64, labels Array(String)))"
)

# The columns ClickHouse reads from each message (names follow the field paths of store.proto).
INPUT_COLUMNS: list[str] = [
    "kind UInt8",  # oneof presence: 1 flow, 2 node_status, 3 lost events
    "r_node_name String",
    "lost_num_events_lost UInt64",
    "f_present_time UInt8",
    "f_time_seconds Int64",
    "f_time_nanos Int32",
    "f_uuid String",
    "f_verdict Int32",
    "f_drop_reason UInt32",
    "f_drop_reason_desc Int32",
    "f_Type Int32",
    "f_l7_type Int32",
    "f_event_type_type Int32",
    "f_event_type_sub_type Int32",
    "f_traffic_direction Int32",
    "f_trace_observation_point Int32",
    "f_trace_reason Int32",
    "f_present_is_reply UInt8",
    "f_is_reply_value Bool",
    "f_reply Bool",
    "f_node_name String",
    "f_IP_ipVersion Int32",
    "f_IP_source String",
    "f_IP_destination String",
    "f_IP_encrypted Bool",
    "f_l4_protocol UInt8",  # oneof presence = Layer4's field number = our l4_protocol number
    "f_l4_TCP_source_port UInt32",
    "f_l4_TCP_destination_port UInt32",
    *[f"f_l4_TCP_flags_{n} Bool" for n in TCP_FLAG_NAMES],
    "f_l4_UDP_source_port UInt32",
    "f_l4_UDP_destination_port UInt32",
    "f_l4_SCTP_source_port UInt32",
    "f_l4_SCTP_destination_port UInt32",
    "f_l4_ICMPv4_type UInt32",
    "f_l4_ICMPv4_code UInt32",
    "f_l4_ICMPv6_type UInt32",
    "f_l4_ICMPv6_code UInt32",
    *_endpoint_inputs("source"),
    *_endpoint_inputs("destination"),
    f"f_ingress_allowed_by {_POLICY_INPUT}",
    f"f_egress_allowed_by {_POLICY_INPUT}",
    f"f_ingress_denied_by {_POLICY_INPUT}",
    f"f_egress_denied_by {_POLICY_INPUT}",
]
INPUT_STRUCTURE = ", ".join(INPUT_COLUMNS)


def _endpoint_exprs(side: str, out: str) -> dict[str, str]:
    p = f"f_{side}"
    return {
        f"{out}_id": f"{p}_ID",
        f"{out}_identity": f"{p}_identity",
        f"{out}_cluster_name": f"{p}_cluster_name",
        f"{out}_namespace": f"{p}_namespace",
        f"{out}_pod": f"{p}_pod_name",
        f"{out}_labels": f"{p}_labels",
        f"{out}_workload_names": f"{p}_workloads_name",
        f"{out}_workload_kinds": f"{p}_workloads_kind",
        f"{out}_service": f"f_{side}_service_name",
        f"{out}_service_namespace": f"f_{side}_service_namespace",
        f"{out}_names": f"f_{side}_names",
    }


def _checked(parsed: str, given: str, message: str) -> str:
    """`parsed` (an ...OrNull conversion of a non-empty input) or an error naming the field."""
    return f"if(throwIf({given} AND isNull({parsed}), '{message}') = 0 AND {given}, assumeNotNull({parsed}), "


def _ip(col: str, what: str) -> str:
    # IPv4 strings become IPv4-mapped IPv6 (as socket.inet_pton in the Python decoder); '' is '::'.
    return _checked(f"toIPv6OrNull({col})", f"{col} != ''", f"{what} is not an IP address") + "toIPv6('::'))"


_UUID_HEX = "replaceAll(f_uuid, '-', '')"
_UUID_TEXT = (
    f"concat(substring({_UUID_HEX}, 1, 8), '-', substring({_UUID_HEX}, 9, 4), '-', substring({_UUID_HEX}, 13, 4), "
    f"'-', substring({_UUID_HEX}, 17, 4), '-', substring({_UUID_HEX}, 21, 12))"
)
# A flow without a uuid (older servers) gets one derived from its decoded content, so a re-delivered flow
# still collapses with its twin in the ReplacingMergeTree.
_DERIVED_UUID = (
    "reinterpretAsUUID(sipHash128(r_node_name, f_time_seconds, f_time_nanos, f_node_name, f_verdict, f_Type, "
    "f_event_type_type, f_event_type_sub_type, f_IP_source, f_IP_destination, f_l4_protocol, f_l4_TCP_source_port, "
    "f_l4_TCP_destination_port, f_l4_UDP_source_port, f_l4_UDP_destination_port, f_l4_ICMPv4_type, "
    "f_source_pod_name, f_destination_pod_name, f_source_labels, f_destination_labels, f_source_names, "
    "f_destination_names, f_traffic_direction, f_trace_observation_point, f_drop_reason_desc, f_is_reply_value))"
)
_TCP_FLAGS = " + ".join(f"toUInt16(f_l4_TCP_flags_{n}) * {1 << i}" for i, n in enumerate(TCP_FLAG_NAMES))
_ICMP_TYPE = "multiIf(f_l4_protocol = 3, f_l4_ICMPv4_type, f_l4_protocol = 4, f_l4_ICMPv6_type, 0)"
_ICMP_CODE = "multiIf(f_l4_protocol = 3, f_l4_ICMPv4_code, f_l4_protocol = 4, f_l4_ICMPv6_code, 0)"

# Text fields -> their name in errors. ClickHouse's String takes any bytes, while protobuf (and the Python
# decoder) refuse a string that is not UTF-8: such a flow was stored, then missing from history and fatal to
# the live stream's batch (found by tests/fuzz). uuid and IPs are not listed: their parsing refuses bad bytes.
_TEXT_FIELDS: dict[str, str] = {
    "r_node_name": "node_name",
    "f_node_name": "flow.node_name",
    **{
        f"f_{side}_{column}": f"flow.{side}{path}"
        for side in ("source", "destination")
        for column, path in (
            ("cluster_name", ".cluster_name"),
            ("namespace", ".namespace"),
            ("pod_name", ".pod_name"),
            ("labels", ".labels"),
            ("workloads_name", ".workloads.name"),
            ("workloads_kind", ".workloads.kind"),
            ("service_name", "_service.name"),
            ("service_namespace", "_service.namespace"),
            ("names", "_names"),
        )
    },
    **{f"f_{p}": f"flow.{p}" for p in ("ingress_allowed_by", "egress_allowed_by", "ingress_denied_by", "egress_denied_by")},
}
_TEXT_TYPES = dict(c.split(" ", 1) for c in INPUT_COLUMNS)


def _text(column: str) -> str:
    kind = _TEXT_TYPES[column]
    # Joined by an ASCII byte: a truncated sequence at the end of one value can never be completed by the next.
    return column if kind == "String" else f"arrayStringConcat({column}, ' ')" if kind == "Array(String)" else f"toString({column})"


# 0, or an error naming the first text field that is not UTF-8 (one vectorized check when all are).
_UTF8_CHECK = (
    f"if(isValidUTF8(concatWithSeparator(' ', {', '.join(_text(c) for c in _TEXT_FIELDS)})), 0, multiIf("
    + ", ".join(f"NOT isValidUTF8({_text(c)}), throwIf(1, '{path} is not valid UTF-8')" for c, path in _TEXT_FIELDS.items())
    + ", 0))"
)

# Stored column -> expression over INPUT_COLUMNS (flows only: rows of other kinds are filtered first).
FLOW_EXPRESSIONS: dict[str, str] = {
    "time": (
        "fromUnixTimestamp64Nano(if(f_present_time = 0 AND kind = 1, throwIf(1, 'flow.time is missing'), "
        f"f_time_seconds * 1000000000 + f_time_nanos + {_UTF8_CHECK}), 'UTC')"
    ),
    "cluster": "{cluster:String}",
    "node_name": "if(r_node_name != '', r_node_name, f_node_name)",
    "uuid": (
        # The canonical 36-character form parses directly; other layouts of 32 hex digits are normalized.
        "if(f_uuid = '', "
        + _DERIVED_UUID
        + ", if(isNotNull(toUUIDOrNull(f_uuid)), assumeNotNull(toUUIDOrNull(f_uuid)), "
        + _checked(
            f"if(length({_UUID_HEX}) = 32, toUUIDOrNull({_UUID_TEXT}), NULL)", "1", "flow.uuid is not a UUID"
        )
        + "toUUID('00000000-0000-0000-0000-000000000000'))))"
    ),
    "uuid_given": "f_uuid != ''",
    "verdict": "toUInt8(f_verdict)",
    "drop_reason": "f_drop_reason",
    "drop_reason_desc": "toUInt16(f_drop_reason_desc)",
    "flow_type": "toUInt8(f_Type)",
    "l7_type": "toUInt8(f_l7_type)",
    "event_type": "f_event_type_type",
    "event_sub_type": "f_event_type_sub_type",
    "traffic_direction": "toUInt8(f_traffic_direction)",
    "trace_observation_point": "toUInt8(f_trace_observation_point)",
    "trace_reason": "toUInt8(f_trace_reason)",
    "is_reply": "if(f_present_is_reply != 0, f_is_reply_value, NULL)",
    "reply": "f_reply",
    "ip_version": "toUInt8(f_IP_ipVersion)",
    "ip_src": _ip("f_IP_source", "flow.IP.source"),
    "ip_dst": _ip("f_IP_destination", "flow.IP.destination"),
    "ip_encrypted": "f_IP_encrypted",
    "l4_protocol": "f_l4_protocol",
    "src_port": (
        "toUInt16(multiIf(f_l4_protocol = 1, f_l4_TCP_source_port, f_l4_protocol = 2, f_l4_UDP_source_port, "
        "f_l4_protocol = 5, f_l4_SCTP_source_port, 0))"
    ),
    "dst_port": (
        "toUInt16(multiIf(f_l4_protocol = 1, f_l4_TCP_destination_port, f_l4_protocol = 2, "
        "f_l4_UDP_destination_port, f_l4_protocol = 5, f_l4_SCTP_destination_port, 0))"
    ),
    "tcp_flags": f"if(f_l4_protocol = 1, {_TCP_FLAGS}, 0)",
    "icmp_type": (
        f"toUInt8(if({_ICMP_TYPE} > 255 OR {_ICMP_CODE} > 255, "
        "throwIf(1, 'flow.l4 ICMP type/code out of range'), " + _ICMP_TYPE + "))"
    ),
    "icmp_code": f"toUInt8({_ICMP_CODE})",
    **_endpoint_exprs("source", "src"),
    **_endpoint_exprs("destination", "dst"),
    "ingress_allowed_by": "f_ingress_allowed_by",
    "egress_allowed_by": "f_egress_allowed_by",
    "ingress_denied_by": "f_ingress_denied_by",
    "egress_denied_by": "f_egress_denied_by",
}
assert list(FLOW_EXPRESSIONS) == [c.name for c in FLOW_COLUMNS], "one transform per stored flow column"

# Side IPs only count for sides that are not pods (world, CIDR, reserved): pod IPs would multiply the keys.
_KEY_EXPRESSIONS: dict[str, str] = {
    "src_ip": "if(src_namespace = '', ip_src, toIPv6('::'))",
    "dst_ip": "if(dst_namespace = '', ip_dst, toIPv6('::'))",
    # A reply is judged as its connection (streams.verdicts): keyed on the server's port (ICMP: the
    # request's type), so replies of one conversation share one key instead of one per ephemeral port.
    "dst_port": server_port_sql(),
    # Hubble's verdict only matters for verdict_mismatch, which compares policy drops alone.
    "verdict": "if(verdict = 2 AND drop_reason_desc NOT IN (133, 181), 0, verdict)",
}
_STAGE_KEY_EXPRESSIONS = {
    "src_ip": "if(s.src_namespace = '', s.ip_src, toIPv6('::'))",
    "dst_ip": "if(s.dst_namespace = '', s.ip_dst, toIPv6('::'))",
    "dst_port": server_port_sql("s"),
    "verdict": "if(s.verdict = 2 AND s.drop_reason_desc NOT IN (133, 181), 0, s.verdict)",
}
KEY_INPUTS = [c.name for c in ENRICHMENT_KEY_COLUMNS if c.name != "ekey"]
EKEY_EXPRESSION = "cityHash64(" + ", ".join(_KEY_EXPRESSIONS.get(n, n) for n in KEY_INPUTS) + ")"


PARALLEL = max(1, os.cpu_count() or 1)

# For inserts into the flows table. A replayed capture may span months: one block may touch any number of
# daily partitions. optimize_on_insert would run the ReplacingMergeTree's merge over every inserted block
# (4x the insert's cost, measured); duplicates collapse at merge time and under FINAL anyway.
INSERT_SETTINGS: dict[str, str | int] = {
    "max_partitions_per_insert_block": 0,
    "optimize_on_insert": 0,
    "max_insert_threads": PARALLEL,  # blocks of one batch are written by every core, not one
}


def stage_ddl(table: str) -> str:
    """Per-worker scratch table holding one batch's decoded flows (Memory: no parts, no merges)."""
    cols = [f"`{c.name}` {_plain(c.clickhouse)}" for c in FLOW_COLUMNS]
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(cols)}, `ekey` UInt64, `kind` UInt8, `lost` UInt64) "
        "ENGINE = Memory"
    )


def keys_ddl(table: str) -> str:
    cols = [f"`{c.name}` {_plain(c.clickhouse)}" for c in ENRICHMENT_COLUMNS]
    return f"CREATE TABLE IF NOT EXISTS {table} (`ekey` UInt64, {', '.join(cols)}) ENGINE = Memory"


def held_ddl(table: str) -> str:
    """Per-worker table of enriched rows waiting for one insert into flows (streams.sink hold)."""
    cols = [f"`{c.name}` {_plain(c.clickhouse)}" for c in RECORD_COLUMNS]
    return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(cols)}) ENGINE = Memory"


def held_flush(flows_table: str, held: str, dedup_token: str = "") -> str:
    """Every held row not stored yet into flows, each flow once (a collector that read flows again after a
    crash may have sent them twice into the same hold): one insert, so the rollup views run once for all the
    held batches."""
    cols = ", ".join(f"`{c.name}`" for c in RECORD_COLUMNS)
    settings = _deduplicated(dedup_token) if dedup_token else INSERT_SETTINGS
    return (
        f"INSERT INTO {flows_table} ({cols}) SELECT {cols} FROM {held} "
        f"WHERE {not_yet_stored(flows_table, held)} LIMIT 1 BY cluster, uuid {settings_clause(settings)}"
    )


def not_yet_stored(flows_table: str, source: str, alias: str = "") -> str:
    """Rows of `source` (columns cluster, time, uuid) whose flow is not in the flows table yet: a flow sent
    again (a collector that read it again after a crash, a replayed capture) is not stored, nor counted
    again by the rollup views, whatever batch it comes in. Reads only the key range of the batch's clusters
    and times (constants by the time the condition runs)."""
    a = f"{alias}." if alias else ""
    return (
        f"({a}cluster, {a}uuid) NOT IN (SELECT cluster, uuid FROM {flows_table} "
        f"WHERE cluster IN (SELECT DISTINCT cluster FROM {source}) "
        f"AND time >= (SELECT min(time) FROM {source}) AND time <= (SELECT max(time) FROM {source}) "
        f"AND uuid IN (SELECT uuid FROM {source}))"
    )


def _plain(ch_type: str) -> str:
    # Codecs belong to the stored table, not to scratch tables; so do LowCardinality dictionaries (built once,
    # when the rows reach the flows table: building them for the stage too costs ~1.5 us a flow, measured).
    return ch_type.split(" CODEC(")[0].replace("LowCardinality(String)", "String")


# Settings of every query reading the framed bytes. The schema travels with the query, so a ClickHouse
# server needs no schema file.
SCHEMA_SETTINGS: dict[str, str | int] = {
    "format_schema_source": "string",
    "format_schema": PROTO_TEXT,
    "format_schema_message_name": MESSAGE,
    "input_format_protobuf_oneof_presence": 1,
}
# file() (chDB): read with pread, never mmap: a mapped file truncated by someone else kills the process.
# The frames are cut in files parsed in parallel (streams.sink).
FILE_SETTINGS: dict[str, str | int] = {"storage_file_read_method": "pread"}


def settings_clause(settings: dict[str, str | int]) -> str:
    """A SETTINGS clause for settings sent inline (chDB); a server gets them as request parameters."""
    parts = []
    for name, value in settings.items():
        text = (
            str(value)
            if isinstance(value, int)
            else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        )
        parts.append(f"{name} = {text}")
    return "SETTINGS " + ", ".join(parts)


def decode_select(source: str, with_ekey: bool = True, stage: bool = True) -> str:
    """SELECT of stage rows from `source` (file(...) or input(...)): FLOW_COLUMNS, then (stage) the enrichment
    key (0 without enrichment: the hash costs ~1 us a flow), the response kind and its lost-event count.
    Stage rows that are not flows (lost events, node status) keep defaults and are filtered out when stored;
    without `stage` only flows are selected."""
    exprs = ",\n  ".join(f"{expr} AS `{name}`" for name, expr in FLOW_EXPRESSIONS.items())
    if not stage:
        return f"SELECT {exprs}\nFROM {source}\nWHERE kind = {KIND_FLOW}"
    ekey = EKEY_EXPRESSION if with_ekey else "toUInt64(0)"
    return (
        f"SELECT {exprs},\n  {ekey} AS ekey, kind AS kind, "
        f"if(kind = {KIND_LOST}, greatest(lost_num_events_lost, 1), 0) AS lost\nFROM {source}"
    )


def file_source(path: str) -> str:
    """chDB (in-process): the framed bytes are a file ClickHouse reads itself (see FILE_SETTINGS)."""
    return f"file('{path}', 'Protobuf', '{INPUT_STRUCTURE}')"


def input_source() -> str:
    """ClickHouse server: the framed bytes are the HTTP request body."""
    return f"input('{INPUT_STRUCTURE}')"


def stage_insert(stage: str, source: str, with_ekey: bool = True) -> str:
    """Framed bytes -> stage rows. Send with SCHEMA_SETTINGS (and FORMAT Protobuf after input())."""
    cols = ", ".join(f"`{c.name}`" for c in FLOW_COLUMNS) + ", `ekey`, `kind`, `lost`"
    return f"INSERT INTO {stage} ({cols})\n{decode_select(source, with_ekey)}"


def direct_insert(table: str, source: str) -> str:
    """Framed bytes straight into a flows-like table, no stage and no enrichment: the sink bench's ceiling.
    Send with SCHEMA_SETTINGS and INSERT_SETTINGS."""
    cols = ", ".join(f"`{c.name}`" for c in FLOW_COLUMNS)
    return f"INSERT INTO {table} ({cols})\n{decode_select(source, stage=False)}"


def stage_counts(stage: str) -> str:
    """(cluster, flows, lost events, responses) of the staged batch."""
    return f"SELECT cluster, countIf(kind = {KIND_FLOW}), sum(lost), count() FROM {stage} GROUP BY cluster"


def keys_select(stage: str) -> str:
    """One row per distinct enrichment key of the batch (ENRICHMENT_KEY_COLUMNS order). Rows sharing an ekey
    share every key column, so any one of them stands for the key (LIMIT 1 BY: 6x cheaper than any()s)."""
    cols = [f"{_STAGE_KEY_EXPRESSIONS.get(name, 's.' + name)} AS `{name}`" for name in KEY_INPUTS]
    return f"SELECT s.ekey AS ekey, {', '.join(cols)} FROM {stage} AS s WHERE s.kind = {KIND_FLOW} LIMIT 1 BY s.ekey"


def _deduplicated(token: str) -> dict[str, str | int]:
    # The views' blocks are checked too, by tokens derived from this one: a redelivered batch is not counted
    # again by the rollups. Only with a token: without one the check would hash rollup blocks, and two
    # different batches can aggregate to identical ones.
    return {**INSERT_SETTINGS, "insert_deduplication_token": token,
            "deduplicate_blocks_in_dependent_materialized_views": 1}


def flows_insert(
    flows_table: str, stage: str, keys: str | None, dedup_token: str = "", only_new: bool = True
) -> str:
    """Stage rows plus their key's enrichment into the flows table, columns named (any sort key works).

    keys=None stores the enrichment columns' defaults without a join (no enricher). dedup_token names the
    batch (its Kafka origins): a redelivered batch is dropped by the table's deduplication window before
    the rollup views count it again, and no block has to be hashed to find out."""
    target = ", ".join(f"`{c.name}`" for c in RECORD_COLUMNS)
    flow_cols = ", ".join(f"s.`{c.name}`" for c in FLOW_COLUMNS)
    if keys is None:
        enrich_cols = ", ".join(
            f"defaultValueOfTypeName('{_plain(c.clickhouse)}')" for c in ENRICHMENT_COLUMNS
        )
        source = f"{stage} AS s"
    else:
        enrich_cols = ", ".join(f"k.`{c.name}`" for c in ENRICHMENT_COLUMNS)
        source = f"{stage} AS s LEFT JOIN {keys} AS k ON s.ekey = k.ekey"
    # only_new: flows already stored are left out, and a flow twice in the batch is stored once (a held
    # table takes the batch as it is: its flush does both).
    fresh = f"AND {not_yet_stored(flows_table, stage, 's')} " if only_new else ""
    once = "LIMIT 1 BY s.cluster, s.uuid " if only_new else ""
    return (
        f"INSERT INTO {flows_table} ({target}) SELECT {flow_cols}, {enrich_cols} FROM {source} "
        f"WHERE s.kind = {KIND_FLOW} {fresh}{once}"
        f"{settings_clause(_deduplicated(dedup_token) if dedup_token else INSERT_SETTINGS)}"
    )


def stored_select(stage: str, keys: str | None, with_text: bool = True) -> str:
    """The rows just stored, RECORD_COLUMNS order, then (with_text) their jsonpb text (streams.jsonpb_sql; for
    the live stream)."""
    flow_cols = ", ".join(f"s.`{c.name}` AS `{c.name}`" for c in FLOW_COLUMNS)
    text = f", {jsonpb_sql('s')} AS `{JSONPB_COLUMN}`" if with_text else ""
    settings = settings_clause(JSONPB_SETTINGS) if with_text else ""
    if keys is None:
        enrich_cols = ", ".join(
            f"defaultValueOfTypeName('{_plain(c.clickhouse)}') AS `{c.name}`" for c in ENRICHMENT_COLUMNS
        )
        return f"SELECT {flow_cols}, {enrich_cols}{text} FROM {stage} AS s WHERE s.kind = {KIND_FLOW} {settings}"
    enrich_cols = ", ".join(f"k.`{c.name}` AS `{c.name}`" for c in ENRICHMENT_COLUMNS)
    return (
        f"SELECT {flow_cols}, {enrich_cols}{text} FROM {stage} AS s LEFT JOIN {keys} AS k ON s.ekey = k.ekey "
        f"WHERE s.kind = {KIND_FLOW} {settings}"
    )

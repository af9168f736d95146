"""The normalized flow record: what netwarden stores of a Hubble flow, as Arrow columns and ClickHouse columns.

One list of columns is the single source of truth for the Arrow schema the decoder builds, the ClickHouse
DDL, and the query layer. Enum-valued fields are stored as their numbers (tiny after compression) and
rendered back to Hubble's names from the proto descriptors, so new upstream enum values survive.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

POLICY_STRUCT = pa.struct(
    [
        ("kind", pa.string()),
        ("namespace", pa.string()),
        ("name", pa.string()),
        ("revision", pa.uint64()),
        ("labels", pa.list_(pa.string())),
    ]
)
POLICY_CH = (
    "Array(Tuple(kind LowCardinality(String), namespace String, name String, revision UInt64, "
    "labels Array(String)))"
)

# l4_protocol values: the field numbers of flow.Layer4's `protocol` oneof (0 = no L4 header).
L4_PROTOCOLS = {1: "TCP", 2: "UDP", 3: "ICMPv4", 4: "ICMPv6", 5: "SCTP", 6: "VRRP", 7: "IGMP"}
L4_PROTOCOL_NUMBERS = {name: number for number, name in L4_PROTOCOLS.items()}
# tcp_flags bit i = flow.TCPFlags field i+1.
TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


@dataclass(frozen=True)
class Column:
    name: str
    clickhouse: str  # type (and codec) in the flows table
    arrow: pa.DataType  # type in the Arrow batches the decoder builds


def _endpoint(side: str) -> list[Column]:
    lc_str = "LowCardinality(String)"
    return [
        Column(f"{side}_id", "UInt32 CODEC(T64, ZSTD(1))", pa.uint32()),
        Column(f"{side}_identity", "UInt32 CODEC(T64, ZSTD(1))", pa.uint32()),
        Column(f"{side}_cluster_name", lc_str, pa.string()),
        Column(f"{side}_namespace", lc_str, pa.string()),
        Column(f"{side}_pod", "String CODEC(ZSTD(1))", pa.string()),
        Column(f"{side}_labels", "Array(LowCardinality(String))", pa.list_(pa.string())),
        Column(f"{side}_workload_names", "Array(LowCardinality(String))", pa.list_(pa.string())),
        Column(f"{side}_workload_kinds", "Array(LowCardinality(String))", pa.list_(pa.string())),
        Column(f"{side}_service", lc_str, pa.string()),
        Column(f"{side}_service_namespace", lc_str, pa.string()),
        Column(f"{side}_names", "Array(String) CODEC(ZSTD(1))", pa.list_(pa.string())),
    ]


# Columns the decoder fills, in insert order.
FLOW_COLUMNS: list[Column] = [
    Column("time", "DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1))", pa.timestamp("ns", tz="UTC")),
    Column("cluster", "LowCardinality(String)", pa.string()),
    Column("node_name", "LowCardinality(String)", pa.string()),
    # Hubble's uuid; flows from older servers have none, and get one derived from their bytes so that
    # deduplication still works (uuid_given says which).
    Column("uuid", "UUID CODEC(ZSTD(1))", pa.binary(16)),
    Column("uuid_given", "Bool", pa.bool_()),
    Column("verdict", "UInt8", pa.uint8()),
    Column("drop_reason", "UInt32 CODEC(T64, ZSTD(1))", pa.uint32()),
    Column("drop_reason_desc", "UInt16 CODEC(T64, ZSTD(1))", pa.uint16()),
    Column("flow_type", "UInt8", pa.uint8()),
    Column("l7_type", "UInt8", pa.uint8()),
    Column("event_type", "Int32 CODEC(T64, ZSTD(1))", pa.int32()),
    Column("event_sub_type", "Int32 CODEC(T64, ZSTD(1))", pa.int32()),
    Column("traffic_direction", "UInt8", pa.uint8()),
    Column("trace_observation_point", "UInt8", pa.uint8()),
    Column("trace_reason", "UInt8", pa.uint8()),
    Column("is_reply", "Nullable(Bool)", pa.bool_()),
    Column("reply", "Bool", pa.bool_()),
    Column("ip_version", "UInt8", pa.uint8()),
    # IPv4 addresses are stored IPv4-mapped; ip_version says how to render them.
    Column("ip_src", "IPv6 CODEC(ZSTD(1))", pa.binary(16)),
    Column("ip_dst", "IPv6 CODEC(ZSTD(1))", pa.binary(16)),
    Column("ip_encrypted", "Bool", pa.bool_()),
    Column("l4_protocol", "UInt8", pa.uint8()),
    Column("src_port", "UInt16 CODEC(T64, ZSTD(1))", pa.uint16()),
    Column("dst_port", "UInt16 CODEC(T64, ZSTD(1))", pa.uint16()),
    Column("tcp_flags", "UInt16", pa.uint16()),
    Column("icmp_type", "UInt8", pa.uint8()),
    Column("icmp_code", "UInt8", pa.uint8()),
    *_endpoint("src"),
    *_endpoint("dst"),
    Column("ingress_allowed_by", POLICY_CH, pa.list_(POLICY_STRUCT)),
    Column("egress_allowed_by", POLICY_CH, pa.list_(POLICY_STRUCT)),
    Column("ingress_denied_by", POLICY_CH, pa.list_(POLICY_STRUCT)),
    Column("egress_denied_by", POLICY_CH, pa.list_(POLICY_STRUCT)),
]

# Filled by enrichment (ownership, predicted verdict); empty until an enricher is configured.
ENRICHMENT_COLUMNS: list[Column] = [
    Column("src_project", "LowCardinality(String)", pa.string()),
    Column("src_workspace", "LowCardinality(String)", pa.string()),
    Column("dst_project", "LowCardinality(String)", pa.string()),
    Column("dst_workspace", "LowCardinality(String)", pa.string()),
    Column("predicted_verdict", "UInt8", pa.uint8()),
]

RECORD_COLUMNS = FLOW_COLUMNS + ENRICHMENT_COLUMNS
FLOW_ARROW_SCHEMA = pa.schema([pa.field(c.name, c.arrow) for c in FLOW_COLUMNS])
RECORD_ARROW_SCHEMA = pa.schema([pa.field(c.name, c.arrow) for c in RECORD_COLUMNS])
COLUMN_NAMES = [c.name for c in RECORD_COLUMNS]

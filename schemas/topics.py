"""Kafka topic names and their layout. Created explicitly: Tansu auto-creates unknown topics with 4 partitions."""

from __future__ import annotations

from dataclasses import dataclass

FLOWS_RAW = "flows.raw"  # key "<cluster>/<node>", value netwarden.v1.FlowBatch
FLOWS_ENRICHED = "flows.enriched"  # live feed for the query API (issue: role-filtered visibility)
FLOWS_DLQ = "flows.dlq"  # value: DeadLetter JSON (schemas.dead_letter)
INVENTORY = "inventory"  # compacted: namespace ownership, policy revisions
FLOWS_STORED = "flows.stored"  # key collector id, value StoredNotice JSON (collectors.stored_acks)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


def pipeline_topics(partitions: int) -> list[TopicSpec]:
    """The topics the pipeline needs; `partitions` bounds how many Faust workers can share flows.raw."""
    return [
        TopicSpec(FLOWS_RAW, partitions),
        TopicSpec(FLOWS_ENRICHED, partitions),
        TopicSpec(FLOWS_DLQ, 1),
        TopicSpec(INVENTORY, 1, compacted=True),
        TopicSpec(FLOWS_STORED, 1),
    ]


def batch_key(cluster: str, node: str) -> bytes:
    """Partition key: all flows of one node stay in order on one partition."""
    return f"{cluster}/{node}".encode()

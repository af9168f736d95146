"""policy_engine.flow_keys.decide judges a history Conversation exactly as the stream judged the same key: the
conversation built from each stored key (replies folded into their connection, as the hourly table stores them)
gets the very SetDecision the enricher stored, on demo traffic and every reference capture."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from policy_engine.flow_keys import (
    TRAFFIC_UNKNOWN,
    EvaluatorCache,
    conversation_connection,
    decide,
    policy_evaluator,
)
from policy_engine.store import ControlPlaneStore
from schemas.conversation import Conversation, SetDecision, Side
from schemas.flow_record import L4_PROTOCOLS
from schemas.inventory import ClusterInventory
from streams.verdicts import PolicyEnricher
from tests.conftest import CAPTURES
from tests.enrichment.flowkeys import ZERO_IP, FlowKey, enrich_flows
from tests.enrichment.test_verdicts import RecordedInventory, _capture_store, demo_keys

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def _side(namespace: str, labels: Sequence[str], identity: int, ip: bytes) -> Side:
    text = ""
    if ip != ZERO_IP:
        addr = ipaddress.IPv6Address(ip)
        text = str(addr.ipv4_mapped or addr)
    return Side(namespace=namespace, labels=tuple(labels), identity=identity, ip=text)


def conversation_of(key: FlowKey) -> Conversation:
    """The conversation row a key lands in: replies folded (sides swapped back, port = the server port)."""
    src = _side(key.src_namespace, key.src_labels, key.src_identity, key.src_ip)
    dst = _side(key.dst_namespace, key.dst_labels, key.dst_identity, key.dst_ip)
    client, server = (dst, src) if key.is_reply else (src, dst)
    return Conversation(
        cluster=key.cluster, source=client, destination=server, port=key.dst_port,
        protocol=L4_PROTOCOLS.get(key.l4_protocol, f"proto-{key.l4_protocol}"), verdict=key.verdict, drop_reason=0,
        flows=1, first_seen=NOW, last_seen=NOW,
        # A reply is judged as its connection, which is what an unknown point means.
        traffic_direction=TRAFFIC_UNKNOWN if key.is_reply else key.traffic_direction,
    )


def stored_decision(row: Mapping[str, Any], prefix: str) -> SetDecision:
    return SetDecision(**{name: row[f"{prefix}_{name}"] for name in SetDecision.__dataclass_fields__})


def assert_decide_equals_stream(inventory: Mapping[str, ClusterInventory], keys: Sequence[FlowKey]) -> int:
    rows = enrich_flows(PolicyEnricher(_Snapshot(inventory)), keys)
    cache = EvaluatorCache()
    evaluated = 0
    for key, row in zip(keys, rows, strict=True):
        inv = inventory[key.cluster]
        conv = conversation_of(key)
        assert decide(conv, inv.desired, cache) == stored_decision(row, "desired"), key
        assert decide(conv, inv.staged, cache) == stored_decision(row, "staged"), key
        evaluated += row["desired_verdict"] != 0
    # Each connection was judged once per set, however many keys (Hubble verdicts) it had.
    assert cache.evaluations <= 2 * len({(conversation_of(k).source, conversation_of(k).destination,
                                      conversation_of(k).port, conversation_of(k).protocol,
                                      conversation_of(k).traffic_direction, k.cluster) for k in keys})
    return evaluated


class _Snapshot:
    def __init__(self, clusters: Mapping[str, ClusterInventory]) -> None:
        self.clusters = clusters

    def snapshot(self) -> Mapping[str, ClusterInventory]:
        return self.clusters


def test_a_demo_conversation_is_decided_as_the_stream_stored_it(demo_store: ControlPlaneStore) -> None:
    inventory = RecordedInventory(demo_store).clusters
    keys = list(dict.fromkeys(demo_keys(4000)))
    assert decide(conversation_of(keys[0]), None) == SetDecision()
    evaluated = assert_decide_equals_stream(inventory, keys)
    assert evaluated > 100
    # Both verdicts occur, so the equality above covered drops with their reasons and attribution.
    east = inventory["demo-east"].desired
    decisions = {decide(conversation_of(k), east) for k in keys if k.cluster == "demo-east"}
    assert {d.verdict for d in decisions} >= {1, 2} and {d.drop_reason for d in decisions} >= {133, 181}


def test_the_connection_verdict_ignores_the_observation_point(demo_store: ControlPlaneStore) -> None:
    """What-if asks "would this connection be denied": egress first, then ingress, wherever it was seen."""
    east = RecordedInventory(demo_store).clusters["demo-east"].desired
    assert east is not None
    evaluator = policy_evaluator(east)
    compared = 0
    for key in dict.fromkeys(k for k in demo_keys(3000) if k.cluster == "demo-east"):
        conv = conversation_of(key)
        connection = conversation_connection(conv, east.namespace_labels)
        decision = decide(conv, east, traffic_direction=TRAFFIC_UNKNOWN)
        if connection is None:
            assert conv.protocol not in ("TCP", "UDP", "SCTP") and decision == SetDecision(revision=east.revision)
            continue
        verdict = evaluator.evaluate(connection)
        assert (decision.verdict == 1) == verdict.allowed and decision.drop_reason == verdict.drop_reason
        compared += 1
    assert compared > 50


@pytest.mark.skipif(not CAPTURES, reason="reference captures not found")
def test_every_reference_capture_conversation_is_decided_as_the_stream_stored_it(tmp_path: Path) -> None:
    store, keys_by_cluster = _capture_store(tmp_path, CAPTURES)
    try:
        inventory = RecordedInventory(store).clusters
        keys = list(dict.fromkeys(k for keys in keys_by_cluster.values() for k in keys))
        assert assert_decide_equals_stream(inventory, keys) > 50
    finally:
        store.close()

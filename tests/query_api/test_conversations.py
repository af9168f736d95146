"""History by conversation: counts equal a direct count of the flows, replies fold into their connection,
partial hours at the window's edges count exactly, the scope filters and redacts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from query_api.conversations import ConversationQueryError, read_conversations
from query_api.scope import ScopeFilter
from query_api.store import FlowStore
from tests.query_api.conftest import BASE_NS, endpoint, insert_responses, make_response, rfc3339, tcp

CLUSTER = "conv-c1"
MIN_NS = 60 * 1_000_000_000
# A year after the package's dataset, with uuids of their own: the package's tests query across clusters.
OWN_BASE_NS = BASE_NS + 365 * 24 * 60 * MIN_NS
UUID_OFFSET = 700_000
BASE = dt.datetime.fromtimestamp(OWN_BASE_NS // 1_000_000_000, tz=dt.UTC)  # 10:00:00Z


def at(response: dict[str, Any], ns: int) -> dict[str, Any]:
    response["flow"]["time"] = response["time"] = rfc3339(ns)
    return response


def dataset() -> list[dict[str, Any]]:
    out = []
    for k in range(8):  # every 25 minutes from 10:00 to 12:55
        t = OWN_BASE_NS + k * 25 * MIN_NS
        front = endpoint("shop", f"frontend-{k}", workloads=[{"name": "frontend", "kind": "Deployment"}],
                         identity=5001)
        back = endpoint("data", "backend-0", workloads=[{"name": "backend", "kind": "StatefulSet"}],
                        identity=5002)
        out.append(at(make_response(UUID_OFFSET + 3 * k, src=front, dst=back, l4=tcp(40000 + k, 8080, SYN=True)), t))
        out.append(at(make_response(UUID_OFFSET + 3 * k + 1, src=back, dst=front, l4=tcp(8080, 40000 + k, SYN=True, ACK=True),
                                    is_reply=True), t + 1000))
        out.append(at(make_response(
            UUID_OFFSET + 3 * k + 2, src=front, dst={"identity": 2, "labels": ["reserved:world"]}, ip=("10.0.0.5", "1.1.1.1"),
            l4={"UDP": {"source_port": 5353, "destination_port": 53}}, verdict="DROPPED", drop_reason=133,
            drop_reason_desc="POLICY_DENIED", event_type={"type": 1, "sub_type": 133},
            egress_denied_by=[{"kind": "CiliumNetworkPolicy", "namespace": "shop", "name": "deny-dns"}],
        ), t + 2000))
    # An ICMP echo and its reply: one conversation, port = the request's type.
    out.append(at(make_response(UUID_OFFSET + 100, src=endpoint("shop", "frontend-0", identity=5001),
                                dst=endpoint("data", "backend-0", identity=5002), l4={"ICMPv4": {"type": 8}}),
                  OWN_BASE_NS + 5 * MIN_NS))
    out.append(at(make_response(UUID_OFFSET + 101, src=endpoint("data", "backend-0", identity=5002),
                                dst=endpoint("shop", "frontend-0", identity=5001), l4={"ICMPv4": {"type": 0}},
                                is_reply=True), OWN_BASE_NS + 5 * MIN_NS + 1))
    return out


@pytest.fixture(scope="module")
def store(flow_store: FlowStore) -> FlowStore:
    insert_responses(flow_store, CLUSTER, dataset())
    return flow_store


def direct_count(store: FlowStore, since: dt.datetime, until: dt.datetime) -> int:
    rows = store.client.query(
        "SELECT count() FROM flows WHERE cluster = {c:String} AND time >= {s:DateTime64(9)} AND time < {u:DateTime64(9)}",
        parameters={"c": CLUSTER, "s": since, "u": until},
    ).result_rows
    return int(rows[0][0])


@pytest.mark.parametrize(
    ("since_min", "until_min"),
    [(0, 200), (10, 140), (70, 110), (5, 6), (61, 179)],  # whole hours with and without edges, inside one hour
)
def test_counts_equal_the_flows_of_the_window(store: FlowStore, since_min: int, until_min: int) -> None:
    since, until = BASE + dt.timedelta(minutes=since_min), BASE + dt.timedelta(minutes=until_min)
    convs = read_conversations(store.client, since=since, until=until, clusters=[CLUSTER])
    assert sum(c.flows for c in convs) == direct_count(store, since, until)
    for c in convs:
        assert since <= c.first_seen <= c.last_seen < until


def test_replies_fold_into_their_connection(store: FlowStore) -> None:
    convs = read_conversations(store.client, since=BASE, until=BASE + dt.timedelta(hours=4), clusters=[CLUSTER])
    by_port = {(c.protocol, c.port): c for c in convs}
    assert set(by_port) == {("TCP", 8080), ("UDP", 53), ("ICMPv4", 8)}
    web = by_port[("TCP", 8080)]
    assert web.flows == 16  # 8 requests + 8 replies
    assert (web.source.namespace, web.source.workload, web.source.workload_kind) == ("shop", "frontend", "Deployment")
    assert (web.destination.namespace, web.destination.workload) == ("data", "backend")
    assert web.source.ip == "" and web.destination.ip == ""  # pods keep no IP
    assert "k8s:io.kubernetes.pod.namespace=shop" in web.source.labels
    dns = by_port[("UDP", 53)]
    assert (dns.verdict, dns.drop_reason, dns.flows) == (2, 133, 8)
    assert dns.destination.reserved == "world" and dns.destination.ip == "1.1.1.1"
    assert dns.hubble_denied_by == ("CiliumNetworkPolicy/shop/deny-dns",)
    assert by_port[("ICMPv4", 8)].flows == 2


def test_scope_filters_and_redacts_the_peer(store: FlowStore) -> None:
    shop = ScopeFilter(namespaces=frozenset({(CLUSTER, "shop")}))
    window = {"since": BASE, "until": BASE + dt.timedelta(hours=4), "clusters": [CLUSTER]}
    convs = read_conversations(store.client, scope=shop, **window)
    web = next(c for c in convs if c.port == 8080)
    assert not web.source.redacted and web.source.workload == "frontend"
    assert web.destination.redacted and web.destination.namespace == "data"
    assert web.destination.workload == "" and web.destination.identity == 0
    assert not [lb for lb in web.destination.labels if not lb.startswith("reserved:")]
    # Unredacted on request (for evaluation), same conversations.
    raw = read_conversations(store.client, scope=shop, redact=False, **window)
    assert {(c.port, c.flows) for c in raw} == {(c.port, c.flows) for c in convs}
    assert next(c for c in raw if c.port == 8080).destination.workload == "backend"
    nowhere = ScopeFilter(namespaces=frozenset({(CLUSTER, "payments")}))
    assert read_conversations(store.client, scope=nowhere, **window) == []


def test_filters_and_bad_parameters(store: FlowStore) -> None:
    window = {"since": BASE, "until": BASE + dt.timedelta(hours=4), "clusters": [CLUSTER]}
    assert {c.port for c in read_conversations(store.client, protocol="udp", **window)} == {53}
    assert {c.port for c in read_conversations(store.client, protocol="ICMP", **window)} == {8}
    assert {c.port for c in read_conversations(store.client, port=8080, **window)} == {8080}
    assert read_conversations(store.client, places=[(CLUSTER, "kube-system")], **window) == []
    with pytest.raises(ConversationQueryError, match="protocol"):
        read_conversations(store.client, protocol="GRE", **window)
    with pytest.raises(ConversationQueryError, match="until"):
        read_conversations(store.client, since=BASE, until=BASE)
    with pytest.raises(ConversationQueryError, match="timezone"):
        read_conversations(store.client, since=BASE.replace(tzinfo=None), until=BASE + dt.timedelta(hours=1))

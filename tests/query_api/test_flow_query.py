"""Filters with `hubble observe` meanings, on the real chDB engine; bad and hostile values."""

from __future__ import annotations

from typing import Any

import pytest

from query_api.flow_query import (
    FilterValueError,
    FlowFilter,
    build_flow_query,
    parse_time_ns,
)
from query_api.store import FlowStore
from tests.query_api.conftest import BASE_NS, INJECTION_NS, INJECTION_POD, flow_uuid, rfc3339

SYNTHETIC = ("qa-c1", "qa-c2")  # clusters of the filter dataset's flows 0-7 (c3 holds the rich flow 8)


def indexes(store: FlowStore, **kw: Any) -> set[int]:
    kw.setdefault("last", None)
    # The session's chDB holds every test module's flows: read only this dataset's clusters.
    only_dataset = ("cluster IN {qa_clusters:Array(String)}", {"qa_clusters": list(SYNTHETIC)})
    rows = store.query_flows(FlowFilter(**kw), extra_where=[only_dataset])
    ids = {flow_uuid(i): i for i in range(10)}
    return {ids[str(r["uuid"])] for r in rows if r["cluster"] in SYNTHETIC}


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({}, {0, 1, 2, 3, 4, 5, 6, 7}),
        ({"cluster": "qa-c2"}, {3, 4, 5}),
        # --namespace: either side
        ({"namespace": "shop"}, {0, 1, 4, 5, 7}),
        ({"namespace": "default"}, {2, 4, 6}),
        ({"namespace": "nope"}, set()),
        # --pod: name prefix, either side; no namespace = "default" (cilium's ParseNamespaceName)
        ({"pod": "frontend"}, {2, 4, 6}),
        ({"pod": "shop/frontend"}, {0, 1, 7}),
        ({"pod": "shop/frontend-abc"}, {0, 1, 7}),
        ({"pod": "shop/"}, {0, 1, 4, 5, 7}),
        ({"pod": "backend", "namespace": "shop"}, {0, 1, 4, 5}),
        ({"pod": "shop/backend", "namespace": "shop"}, {0, 1, 4, 5}),
        ({"pod": "kube-system/coredns-1"}, {3}),
        # verdict by name, case-insensitive
        ({"verdict": "DROPPED"}, {2}),
        ({"verdict": "dropped"}, {2}),
        ({"verdict": "AUDIT"}, {6}),
        ({"verdict": "REDIRECTED"}, {7}),
        ({"verdict": "FORWARDED"}, {0, 1, 3, 4, 5}),
        # protocol: icmp = ICMPv4 or ICMPv6
        ({"protocol": "tcp"}, {0, 1, 5, 7}),
        ({"protocol": "UDP"}, {2}),
        ({"protocol": "icmp"}, {3, 4}),
        ({"protocol": "icmpv4"}, {4}),
        ({"protocol": "icmpv6"}, {3}),
        ({"protocol": "sctp"}, {6}),
        # --port: source or destination port
        ({"port": 8080}, {0, 1, 5}),
        ({"port": "53"}, {2}),
        ({"port": 443}, {5}),
        ({"port": 9001}, {6}),
        ({"port": 0}, set()),  # ICMP flows have no port: port 0 must not match them
        # hubble combines side filters per side: (src ns shop AND src port 443) OR (dst ns shop AND dst port 443)
        ({"namespace": "shop", "port": 443}, set()),
        ({"namespace": "payments", "port": 443}, {5}),
        ({"pod": "shop/backend", "port": 8080}, {0, 1, 5}),
        ({"pod": "shop/frontend", "port": 8080}, set()),
        # combinations across kinds AND
        ({"namespace": "shop", "verdict": "FORWARDED", "protocol": "tcp"}, {0, 1, 5}),
        ({"cluster": "qa-c1", "namespace": "shop"}, {0, 1, 7}),
        # since/until inclusive, nanosecond precision
        ({"since": rfc3339(BASE_NS + 3)}, {3, 4, 5, 6, 7}),
        ({"until": rfc3339(BASE_NS + 3)}, {0, 1, 2, 3}),
        ({"since": rfc3339(BASE_NS + 3), "until": rfc3339(BASE_NS + 3)}, {3}),
        ({"since": "2024-05-01T12:00:00.123456792+02:00"}, {3, 4, 5, 6, 7}),  # offsets honoured
        ({"since": "1000w"}, {0, 1, 2, 3, 4, 5, 6, 7}),
        ({"since": "1m"}, set()),
        ({"until": "1m"}, {0, 1, 2, 3, 4, 5, 6, 7}),
        # injection-looking values are plain values
        ({"namespace": INJECTION_NS}, {6}),
        ({"pod": f"{INJECTION_NS}/{INJECTION_POD}"}, {6}),
        ({"namespace": "' OR '1'='1"}, set()),
        ({"cluster": "c1' OR '1'='1"}, set()),
        ({"pod": "x') OR 1=1 --"}, set()),
        ({"namespace": "shop}; DROP TABLE flows"}, set()),
    ],
)
def test_filter_meanings(flow_store: FlowStore, kw: dict[str, Any], want: set[int]) -> None:
    assert indexes(flow_store, **kw) == want


def test_injection_leaves_table_intact(flow_store: FlowStore) -> None:
    before = flow_store.count()
    indexes(flow_store, namespace="x'; DROP TABLE flows; --", pod="b'); TRUNCATE flows; --")
    assert flow_store.count() == before > 0
    sql, params = build_flow_query(FlowFilter(namespace=INJECTION_NS, pod=INJECTION_POD))
    assert INJECTION_NS not in sql and INJECTION_POD not in sql
    assert params["ns"] == INJECTION_NS and params["pod_prefix"] == INJECTION_POD


def test_last_selects_newest_first(flow_store: FlowStore) -> None:
    rows = flow_store.query_flows(FlowFilter(cluster="qa-c1", last=3))
    assert [str(r["uuid"]) for r in rows] == [flow_uuid(7), flow_uuid(6), flow_uuid(2)]
    assert len(flow_store.query_flows(FlowFilter())) == 20  # default --last


def test_count(flow_store: FlowStore) -> None:
    assert flow_store.count("qa-c2") == 3
    assert flow_store.count("c1' OR 1=1 --") == 0


@pytest.mark.parametrize(
    ("kw", "parameter", "fragment"),
    [
        ({"verdict": "BOGUS"}, "verdict", "'BOGUS'"),
        ({"verdict": "VERDICT_UNKNOWN"}, "verdict", "VERDICT_UNKNOWN"),
        ({"verdict": "FORWARDED' OR 1=1"}, "verdict", "FORWARDED' OR 1=1"),
        ({"protocol": "http"}, "protocol", "L7"),
        ({"protocol": "tcpx"}, "protocol", "'tcpx'"),
        ({"port": 70000}, "port", "70000"),
        ({"port": "eighty"}, "port", "eighty"),
        ({"port": -1}, "port", "-1"),
        ({"since": "yesterday"}, "since", "'yesterday'"),
        ({"until": "2024-13-45T00:00:00Z"}, "until", "2024-13-45"),
        ({"since": "5"}, "since", "'5'"),
        ({"pod": "a/b/c"}, "pod", "a/b/c"),
        ({"pod": "/x"}, "pod", "/x"),
        ({"pod": "other/x", "namespace": "shop"}, "pod", "conflicts"),
        ({"namespace": ""}, "namespace", "''"),
        ({"last": 0}, "last", "0"),
    ],
)
def test_bad_values_name_parameter_and_value(kw: dict[str, Any], parameter: str, fragment: str) -> None:
    with pytest.raises(FilterValueError) as info:
        build_flow_query(FlowFilter(**kw))
    assert info.value.parameter == parameter
    assert str(info.value).startswith(f"{parameter}: ") and fragment in str(info.value)


def test_time_parsing() -> None:
    now = 1_800_000_000_000_000_000
    assert parse_time_ns("since", "5m", now) == now - 300 * 10**9
    assert parse_time_ns("since", "2h", now) == now - 7200 * 10**9
    assert parse_time_ns("since", "1d", now) == now - 86_400 * 10**9
    assert parse_time_ns("since", "1h30m", now) == now - 5400 * 10**9
    assert parse_time_ns("since", "2024-05-01T10:00:00.123456789Z") == BASE_NS
    assert parse_time_ns("since", "2024-05-01T10:00:00Z") == BASE_NS - 123_456_789
    assert parse_time_ns("since", "2024-05-01") == BASE_NS - 123_456_789 - 10 * 3600 * 10**9


def test_extra_where_is_anded_with_its_own_parameters(flow_store: FlowStore) -> None:
    scope = (
        "(src_namespace = {scope_ns:String} OR dst_namespace = {scope_ns:String})",
        {"scope_ns": "default"},
    )
    rows = flow_store.query_flows(FlowFilter(cluster="qa-c2", last=None), extra_where=[scope])
    assert {str(r["uuid"]) for r in rows} == {flow_uuid(4)}
    with pytest.raises(ValueError, match="cluster"):
        build_flow_query(
            FlowFilter(cluster="qa-c1"), extra_where=[("cluster = {cluster:String}", {"cluster": "x"})]
        )

"""Summary windows and buckets (pure), and the summary's scope on the small filter dataset."""

from __future__ import annotations

import pytest

from query_api.flow_query import FilterValueError, FlowFilter
from query_api.scope import ScopeFilter
from query_api.store import FlowStore
from query_api.summary import DEFAULT_WINDOW_NS, parse_window, summarize
from tests.query_api.conftest import BASE_NS, rfc3339

S = 1_000_000_000
NOW = 1_714_560_000 * S


def test_window_defaults_and_buckets() -> None:
    w = parse_window(None, None, None, now_ns=NOW)
    assert (w.since_ns, w.until_ns) == (NOW - DEFAULT_WINDOW_NS, NOW) and w.bucket_ns == 60 * S
    w = parse_window(None, "2024-05-01T10:00:00Z", None, now_ns=NOW)
    assert w.until_ns - w.since_ns == DEFAULT_WINDOW_NS
    assert parse_window("1d", None, None, now_ns=NOW).bucket_ns == 1800 * S  # ~60 nice buckets
    assert parse_window("10m", None, "15s", now_ns=NOW).bucket_ns == 15 * S


@pytest.mark.parametrize(
    ("since", "until", "bucket", "parameter"),
    [
        ("5m", "10m", None, "since"),  # since after until
        ("1h", None, "1s", "bucket"),  # 3601 buckets
        ("1h", None, "500ms", "bucket"),
        ("1h", None, "soon", "bucket"),
        ("yesterday", None, None, "since"),
    ],
)
def test_bad_windows_name_the_parameter(
    since: str, until: str | None, bucket: str | None, parameter: str
) -> None:
    with pytest.raises(FilterValueError) as info:
        parse_window(since, until, bucket, now_ns=NOW)
    assert info.value.parameter == parameter


def test_summary_redacts_the_peer_to_its_namespace(flow_store: FlowStore) -> None:
    window = parse_window(rfc3339(BASE_NS - S), rfc3339(BASE_NS + S), "1s")
    ws = ScopeFilter(namespaces=frozenset({("qa-c2", "payments")}))
    doc = summarize(flow_store, FlowFilter(), window, ws)
    # Flow 5: qa-c2 shop/backend-2 -> payments/api-1; shop is outside the scope, so no workload name.
    assert doc["total"] == 1
    (talker,) = doc["top_talkers"]
    assert talker["source"] == {"cluster": "qa-c2", "namespace": "shop", "workload": ""}
    assert talker["destination"] == {"cluster": "qa-c2", "namespace": "payments", "workload": "api-1"}
    (edge,) = doc["edges"]
    assert edge["port"] == 443 and edge["protocol"] == "TCP" and edge["verdicts"] == {"FORWARDED": 1}
    everything = summarize(flow_store, FlowFilter(cluster="qa-c1"), window, ScopeFilter(everything=True))
    assert everything["drops_by_reason"] == [{"reason": "POLICY_DENIED", "flows": 1}]
    assert sum(sum(b["verdicts"].values()) for b in everything["buckets"]) == everything["total"] == 5

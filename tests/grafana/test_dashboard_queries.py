"""Every ClickHouse query of every dashboard, expanded as Grafana and the plugin expand it, on the real engine
(chDB) over demo traffic stored through the real sink: each returns rows, for single, multi-value and All
selections, and the rollup-backed figures add up to the flows stored."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from netwarden.grafana import queries as q
from netwarden.grafana.dashboards import DASHBOARDS, NAMESPACE, POLICY, Dashboard
from netwarden.grafana.macros import ALL, QueryContext, TemplateVariable, expand
from tests.grafana.conftest import CLUSTERS, EAST, PER_CLUSTER, T_END, T_START


def run(client: Any, sql: str, ctx: QueryContext) -> list[tuple[Any, ...]]:
    return client.query(expand(sql, ctx)).result_rows


def options(client: Any, dashboard: Dashboard, name: str, ctx: QueryContext) -> list[str]:
    """What the variable's own query offers (All stands for these)."""
    variable = next(v for v in dashboard.variables if v.name == name)
    return [str(r[0]) for r in run(client, variable.sql, ctx)]


def contexts(client: Any, dashboard: Dashboard, start: datetime = T_START,
             end: datetime = T_END) -> Iterator[tuple[str, QueryContext]]:
    """The selections a user makes: for the namespace view one cluster and one, two or All namespaces;
    elsewhere our two clusters, one of them, or All."""
    bare = QueryContext(start, end, 60)
    if dashboard is NAMESPACE:
        cluster = TemplateVariable("cluster", EAST)
        with_cluster = QueryContext(start, end, 60, {"cluster": cluster})
        namespaces = options(client, dashboard, "namespace", with_cluster)
        assert {"shop", "data"} <= set(namespaces)
        for label, value in (("one", ["shop"]), ("two", ["shop", "data"]), ("all", [ALL])):
            ns = TemplateVariable("namespace", value, namespaces)
            yield label, QueryContext(start, end, 60, {"cluster": cluster, "namespace": ns})
        return
    clusters = options(client, dashboard, "cluster", bare)
    assert set(CLUSTERS) <= set(clusters)
    for label, value in (("both", list(CLUSTERS)), ("one", [EAST]), ("all", [ALL])):
        yield label, QueryContext(start, end, 60, {"cluster": TemplateVariable("cluster", value, clusters)})


def panel_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    return [(p.title, query.expr) for p in dashboard.panels for query in p.queries if query.source == "clickhouse"]


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_every_panel_query_returns_rows(flow_client: Any, dashboard: Dashboard) -> None:
    for label, ctx in contexts(flow_client, dashboard):
        for title, sql in panel_queries(dashboard):
            if sql == q.POLICY_IDLE_RULES:
                continue  # rows only when a rule was idle in the range: test_idle_rules
            rows = run(flow_client, sql, ctx)
            assert rows, f"{dashboard.uid} / {title} ({label}): no rows"


def test_idle_rules_are_those_with_decisions_before_the_range_only(flow_client: Any) -> None:
    cluster = {"cluster": TemplateVariable("cluster", [EAST], list(CLUSTERS))}
    during = QueryContext(T_START, T_END, 3600, cluster)
    after = QueryContext(T_END + timedelta(hours=1), T_END + timedelta(hours=3), 3600, cluster)
    decided = {(r[0], r[1], r[2]) for r in run(flow_client, q.POLICY_DECISIONS, during)}
    assert ("zero-trust-day0-default-deny" in {p.split("/")[-1] for p, _, _ in decided}
            or any(rule == "default-deny" for _, rule, _ in decided)), decided
    assert not run(flow_client, q.POLICY_IDLE_RULES, during)
    idle = {(r[0], r[1], r[2]) for r in run(flow_client, q.POLICY_IDLE_RULES, after)}
    assert idle == decided


def _total(client: Any, sql: str, ctx: QueryContext) -> float:
    return float(run(client, sql, ctx)[0][0])


@pytest.mark.parametrize("interval_s", [15, 60, 3600])
def test_rates_add_up_to_the_flows_stored(flow_client: Any, interval_s: int) -> None:
    """Minute rollups below 1 h intervals, hourly from 1 h: either way rate x bucket = flows stored."""
    ctx = QueryContext(T_START, T_END, interval_s, {"cluster": TemplateVariable("cluster", list(CLUSTERS))})
    rows = run(flow_client, q.FLEET_FLOWS_BY_CLUSTER, ctx)
    assert {r[1] for r in rows} == set(CLUSTERS)
    assert round(sum(r[2] for r in rows) * max(interval_s, 60)) == 2 * PER_CLUSTER
    by_verdict = run(flow_client, q.FLEET_FLOWS_BY_VERDICT, ctx)
    assert {r[1] for r in by_verdict} >= {"FORWARDED", "DROPPED"}


@pytest.mark.parametrize("hours", [2, 26])
def test_stats_read_minute_or_hour_rollups_and_agree(flow_client: Any, hours: int) -> None:
    pad = timedelta(hours=(hours - 2) / 2)
    ctx = QueryContext(T_START - pad, T_END + pad, 60, {"cluster": TemplateVariable("cluster", list(CLUSTERS))})
    assert _total(flow_client, q.FLEET_TOTAL_FLOWS, ctx) == 2 * PER_CLUSTER
    assert 0 < _total(flow_client, q.FLEET_DROPPED_SHARE, ctx) < 1
    assert _total(flow_client, q.FLEET_MISMATCH_TOTAL, ctx) > 0


def test_namespace_view_shows_only_flows_touching_the_namespace(flow_client: Any) -> None:
    ctx = QueryContext(T_START, T_END, 60, {"cluster": TemplateVariable("cluster", EAST),
                                           "namespace": TemplateVariable("namespace", ["shop"], ["shop"])})
    drops = run(flow_client, q.NS_RECENT_DROPS, ctx)
    sources = run(flow_client, q.NS_TOP_SOURCES, ctx)
    destinations = run(flow_client, q.NS_TOP_DESTINATIONS, ctx)
    assert drops and sources and destinations
    assert all(f"{EAST}/shop/" in r[2] or f"{EAST}/shop/" in r[3] for r in drops), drops
    assert all(r[1].startswith(f"{EAST}/shop/") for r in sources), sources
    assert all(r[0].startswith(f"{EAST}/shop/") for r in destinations), destinations


def test_policy_dashboard_cluster_filter(flow_client: Any) -> None:
    west = QueryContext(T_START, T_END, 3600, {"cluster": TemplateVariable("cluster", ["grafana-west"])})
    # No policy assigned on the west cluster: netwarden decided nothing there by a rule.
    assert not run(flow_client, q.POLICY_DECISIONS, west)
    assert POLICY.panels[0].queries[0].expr == q.POLICY_DECISIONS

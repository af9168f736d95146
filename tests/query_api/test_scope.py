"""ScopeFilter: scope per role, and the SQL twin agreeing with the Python twin on real chDB rows."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from policy_engine.model import NamespaceRef
from policy_engine.roles import Ownership, Principal
from query_api.flow_query import FlowFilter, build_flow_query
from query_api.scope import ScopeFilter
from query_api.store import FlowStore

OWNERSHIP = Ownership(
    project_clusters={"p1": frozenset({"qa-c2"}), "p2": frozenset({"qa-c3"})},
    workspace_project={"w1": "p1", "w2": "p2"},
    workspace_namespaces={
        "w1": frozenset({NamespaceRef("qa-c1", "shop"), NamespaceRef("qa-c2", "shop")}),
        "w2": frozenset({NamespaceRef("qa-c3", "db")}),
    },
)


def scope(role: str, name: str = "") -> ScopeFilter:
    return ScopeFilter.for_principal(Principal.with_role(role, name), OWNERSHIP)


def test_scope_per_role() -> None:
    assert scope("org-read-only").everything
    for role in ("infra-admin", "project-admin", "project-read-only"):
        s = scope(role, "p1")
        # qa-c1/shop belongs to w1 of p1 though qa-c1 is no cluster of p1; qa-c2/shop is covered by qa-c2.
        assert s == ScopeFilter(False, frozenset({"qa-c2"}), frozenset({("qa-c1", "shop")}))
    for role in ("workspace-admin", "workspace-read-only"):
        assert scope(role, "w2") == ScopeFilter(False, frozenset(), frozenset({("qa-c3", "db")}))
    bindings = Principal.with_role("workspace-admin", "w2").bindings
    both = Principal("u", bindings + Principal.with_role("project-read-only", "p1").bindings)
    s = ScopeFilter.for_principal(both, OWNERSHIP)
    assert s.clusters == {"qa-c2"} and s.namespaces == {("qa-c1", "shop"), ("qa-c3", "db")}
    assert ScopeFilter.for_principal(Principal("nobody"), OWNERSHIP).empty
    assert scope("workspace-admin", "unknown").empty


def row(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cluster": "qa-c1",
        "src_cluster_name": "",
        "dst_cluster_name": "",
        "src_namespace": "shop",
        "dst_namespace": "db",
        "src_pod": "a",
        "dst_pod": "b",
        "src_id": 5,
        "dst_id": 6,
        "src_identity": 40000,
        "dst_identity": 2,
        "src_labels": ["k8s:app=a"],
        "dst_labels": ["k8s:app=b", "reserved:world"],
        "src_workload_names": ["a"],
        "src_workload_kinds": ["Deployment"],
        "dst_workload_names": ["b"],
        "dst_workload_kinds": ["Deployment"],
        "src_service": "a",
        "dst_service": "b",
        "src_service_namespace": "shop",
        "dst_service_namespace": "db",
        "src_names": ["a.shop"],
        "dst_names": ["b.db"],
        "ip_src": ipaddress.IPv6Address("::ffff:10.0.0.1"),
        "ip_dst": b"\x20" * 16,
        "src_port": 1234,
        "dst_port": 80,
    }
    base.update(kw)
    return base


def test_python_twin_visible_and_redact() -> None:
    ws = scope("workspace-admin", "w1")
    r = row()
    assert ws.visible(r) and ws.side_in_scope(r, "src") and not ws.side_in_scope(r, "dst")
    red = ws.redact(r)
    assert red["src_pod"] == "a" and red["ip_src"] == r["ip_src"]  # in scope: untouched
    assert red["dst_pod"] == "" and red["dst_id"] == 0 and red["dst_labels"] == ["reserved:world"]
    assert red["dst_identity"] == 2  # reserved identity kept
    assert red["dst_workload_names"] == [] and red["dst_names"] == [] and red["dst_service"] == ""
    assert red["dst_service_namespace"] == "db" and red["dst_namespace"] == "db" and red["dst_port"] == 80
    assert red["ip_dst"] == bytes(16)
    assert not ws.visible(row(src_namespace="other"))
    # Cross-cluster: the endpoint's own cluster_name wins over the collector's cluster.
    assert not ws.visible(row(src_cluster_name="qa-c9"))
    assert ws.visible(row(cluster="qa-c9", src_cluster_name="qa-c1"))
    red = ws.redact(row(src_namespace="x", dst_namespace="shop", src_identity=70000))
    assert red["src_identity"] == 0 and str(red["ip_src"]) == "::"
    assert scope("org-admin").redact(r) == r


@pytest.mark.parametrize(
    ("role", "name"),
    [
        ("org-admin", ""),
        ("project-admin", "p1"),
        ("infra-admin", "p2"),
        ("workspace-admin", "w1"),
        ("workspace-read-only", "w2"),
        ("workspace-admin", "nope"),
    ],
)
def test_sql_twin_equals_python_twin(flow_store: FlowStore, role: str, name: str) -> None:
    """The same stored rows through redacted SQL and through visible()+redact() are identical, and
    FlowStore.query_flows (SQL scope, Python redaction) returns exactly that too."""
    s = scope(role, name)
    # This package's flows only: the session's chDB also holds every other module's.
    ours = ("startsWith(cluster, 'qa-')", {})
    sql, params = build_flow_query(FlowFilter(last=None), extra_where=[ours])
    everything = list(flow_store.client.query(sql, parameters=params).named_results())
    expected = [s.redact(r) for r in everything if s.visible(r)]
    where, scope_params = s.sql_where()
    columns = ["toUnixTimestamp64Nano(f.time) AS time_ns"] + [
        e for e in s.redacted_select() if not e.endswith("AS `time`")
    ]
    sql = (
        f"SELECT {', '.join(columns)} FROM flows AS f FINAL WHERE {where} AND startsWith(f.cluster, 'qa-') "
        "ORDER BY f.time DESC, f.uuid DESC, f.cluster DESC"
    )
    got = list(flow_store.client.query(sql, parameters=scope_params).named_results())
    assert got == expected
    assert flow_store.query_flows(FlowFilter(last=None), extra_where=[ours], scope=s) == expected
    if role == "workspace-admin" and name == "w1":
        assert got and any(r["src_pod"] == "" and r["dst_pod"] for r in got)

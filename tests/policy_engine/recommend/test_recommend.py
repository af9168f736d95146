"""Recommendations from observed traffic: every rule validates against the schemas, and what-if of the whole
recommendation with default deny on (the zero-trust-day0 blueprint on the cluster) denies no observed
conversation, on demo traffic (Cilium and Kubernetes form) and on the reference captures; yet it is least
privilege: traffic that was not observed is denied."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from policy_engine.control_plane import validate_policy
from policy_engine.model import Cluster
from policy_engine.recommend import port_ranges, recommend, stable_labels
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.whatif import SetJudge, candidate_policy_sets, parse_documents
from query_api.conversations import read_conversations
from query_api.policy_traffic_routes import Window, recommendation, what_if
from query_api.store import FlowStore
from schemas.clickhouse import FLOWS_TABLE
from schemas.conversation import Side
from tests.conftest import CAPTURES
from tests.policy_engine.whatif.conftest import admin, store_demo_traffic

ORG = Principal.with_role("org-admin", name="ci")
DEMO_NAMESPACES = ("shop", "data", "monitoring", "kube-system")
CLUSTERS = {"rc-cilium": "cilium", "rc-calico": "calico"}  # primary CNI: Cilium enforces / the CNI enforces


def day0(cluster: str) -> dict[str, Any]:
    return {"apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": f"{cluster}-day0"},
            "spec": {"blueprint": "zero-trust-day0", "clusters": [cluster]}}


@pytest.fixture(scope="module")
def demo(flows: FlowStore) -> Window:
    windows = [store_demo_traffic(flows, c, 3_000, seed=i) for i, c in enumerate(CLUSTERS)]
    return Window(min(w[0] for w in windows), max(w[1] for w in windows))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ControlPlaneStore]:
    s = ControlPlaneStore.open(tmp_path)
    with s.transaction():
        for name, cni in CLUSTERS.items():
            admin(s).put_cluster(Cluster(name, "upstream", cni, namespaces=DEMO_NAMESPACES))
    yield s
    s.close()


def recommend_all(flows: FlowStore, store: ControlPlaneStore, cluster: str, window: Window, namespaces: Any) -> list[dict[str, Any]]:
    result = recommendation(flows.client, store, ORG, window, cluster=cluster, namespaces=namespaces)
    return list(result.documents)


@pytest.mark.parametrize("cluster", list(CLUSTERS))
def test_demo_recommendation_denies_nothing_observed(
    flows: FlowStore, demo: Window, store: ControlPlaneStore, cluster: str
) -> None:
    documents = recommend_all(flows, store, cluster, demo, DEMO_NAMESPACES)
    form = "cilium" if CLUSTERS[cluster] == "cilium" else "kubernetes"
    policies = [d for d in documents if d["kind"] == "Policy"]
    assert len(policies) == len(DEMO_NAMESPACES)
    assert all(form in r for p in policies for r in p["spec"]["rules"])
    docs = parse_documents([*documents, day0(cluster)], "recommendation")
    report = what_if(flows.client, store, ORG, docs, demo, clusters=[cluster])
    assert [c.cluster for c in report.clusters] == [cluster]
    assert report.clusters[0].newly_denied == ()
    # Least privilege: under the same sets, a connection nobody made is denied.
    sets = candidate_policy_sets(admin(store), docs, [cluster])
    conv = next(c for c in read_conversations(flows.client, since=demo.since, until=demo.until, clusters=[cluster])
                if c.source.workload == "frontend" and c.destination.workload == "cart")
    judge = SetJudge()
    assert judge(sets.after[cluster], conv) is True
    assert judge(sets.after[cluster], replace(conv, port=conv.port + 1000)) is False
    assert judge(sets.after[cluster], replace(conv, source=conv.destination, destination=conv.source)) is False


def test_demo_rules_by_stable_labels_dns_and_world(flows: FlowStore, demo: Window, store: ControlPlaneStore) -> None:
    (policy, assignment) = recommendation(flows.client, store, ORG, demo, cluster="rc-cilium", namespace="shop").documents
    assert assignment["spec"] == {"policy": policy["metadata"]["name"],
                                  "targets": [{"cluster": "rc-cilium", "namespace": "shop"}]}
    rules = {r["name"]: r["cilium"] for r in policy["spec"]["rules"]}
    assert rules["default-deny"] == {"endpointSelector": {}, "ingress": [{}], "egress": [{}]}
    frontend = rules["frontend"]
    assert frontend["endpointSelector"] == {"matchLabels": {"app": "frontend", "app.kubernetes.io/part-of": "shop"}}
    dns = [e for e in frontend["egress"] if any(
        s.get("matchLabels", {}).get("k8s:k8s-app") == "kube-dns" for s in e.get("toEndpoints", []))]
    assert dns and {"port": "53", "protocol": "UDP"} in dns[0]["toPorts"][0]["ports"]
    for rule in rules.values():
        for entry in rule.get("ingress", []) + rule.get("egress", []):
            for sel in entry.get("fromEndpoints", []) + entry.get("toEndpoints", []):
                assert not any("pod-template-hash" in k or "io.cilium.k8s.policy" in k for k in sel.get("matchLabels", {}))


def store_capture(flows: FlowStore, path: Path) -> tuple[str, Window, list[str]]:
    """The capture stored under its own cluster name; its window and the namespaces its pods are in."""
    from streams.decode import FlowDecoder
    from tests.query_api.conftest import capture_lines, encode

    cluster = "rc-cap-" + path.stem.split("__")[-1][:30]
    batch = FlowDecoder().decode(cluster, [encode(r) for r in capture_lines(path)])
    flows.client.insert_arrow(FLOWS_TABLE, batch.table)
    times = [t.to_pydatetime() if hasattr(t, "to_pydatetime") else t for t in batch.table.column("time").to_pylist()]
    window = Window(min(times).astimezone(dt.UTC), max(times).astimezone(dt.UTC) + dt.timedelta(seconds=1))
    labelled = [lb.partition("=")[2] for side in ("src", "dst") for labels in batch.table.column(f"{side}_labels").to_pylist()
                for lb in labels or () if lb.startswith("k8s:io.kubernetes.pod.namespace=")]
    named = [ns for side in ("src", "dst") for ns in batch.table.column(f"{side}_namespace").to_pylist() if ns]
    return cluster, window, sorted(set(labelled) | set(named))


def test_reference_captures_recommendation_denies_nothing_observed(flows: FlowStore, tmp_path: Path) -> None:
    """Every capture under its own cluster: recommend for each of its namespaces from one read of all of
    them, then one what-if of everything with default deny on every cluster."""
    captured = [store_capture(flows, path) for path in CAPTURES]
    window = Window(min(w.since for _, w, _ in captured), max(w.until for _, w, _ in captured))
    clusters = [c for c, _, _ in captured]
    convs = read_conversations(flows.client, since=window.since, until=window.until, clusters=clusters)
    store = ControlPlaneStore.open(tmp_path)
    documents: list[dict[str, Any]] = []
    with store.transaction():
        for cluster, _, namespaces in captured:
            admin(store).put_cluster(Cluster(cluster, "upstream", "cilium", namespaces=tuple(namespaces)))
            result = recommend(convs, cluster, namespaces, "cilium")
            assert len(result.policies) == len(namespaces)  # the ICMP capture is host <-> health only: none
            assert bool(result.conversations) == bool(namespaces)
            for spec in result.policies:
                validate_policy(spec)
            documents += [*result.documents, day0(cluster)]
    report = what_if(flows.client, store, ORG, parse_documents(documents, "recommendation"), window)
    assert sorted(c.cluster for c in report.clusters) == sorted(clusters)
    assert all(c.newly_denied == () for c in report.clusters), report.to_dict()
    store.close()


def test_ports_merge_into_ranges_only_where_consecutive() -> None:
    assert port_ranges([8082, 80, 8080, 8081, 443]) == [(80, 80), (443, 443), (8080, 8082)]
    assert port_ranges([]) == []


def test_stable_labels_drop_per_pod_and_cilium_labels() -> None:
    side = Side("shop", "cart", labels=(
        "k8s:app=cart", "k8s:pod-template-hash=5d8f7", "k8s:controller-revision-hash=abc",
        "k8s:statefulset.kubernetes.io/pod-name=cart-0", "k8s:io.kubernetes.pod.namespace=shop",
        "k8s:io.cilium.k8s.policy.serviceaccount=cart", "k8s:io.cilium.k8s.namespace.labels.team=a",
        "reserved:init"))
    assert stable_labels(side) == (("app", "cart"),)


def test_every_recommended_rule_validates(flows: FlowStore, demo: Window) -> None:
    convs = read_conversations(flows.client, since=demo.since, until=demo.until, clusters=["rc-calico"])
    for form in ("cilium", "kubernetes"):
        result = recommend(convs, "rc-calico", DEMO_NAMESPACES, form)  # type: ignore[arg-type]
        assert result.policies
        for spec in result.policies:
            validate_policy(spec)


def _conv(src: Side, dst: Side, port: int, protocol: str = "TCP", flows: int = 1) -> Any:
    from schemas.conversation import Conversation

    t = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    return Conversation("rc-unit", src, dst, port, protocol, 1, 0, flows, t, t)


def _pod(ns: str, workload: str, **labels: str) -> Side:
    return Side(ns, workload, labels=(f"k8s:io.kubernetes.pod.namespace={ns}",
                                       *(f"k8s:{k}={v}" for k, v in {"app": workload, **labels}.items())))


def test_hand_built_traffic_in_both_forms() -> None:
    web, api = _pod("web", "web"), _pod("web", "api", tier="backend")
    host = Side(reserved="host", ip="172.18.0.2", labels=("reserved:host",), identity=1)
    convs = [
        *(_conv(web, api, p) for p in (8080, 8081, 8082, 9090)),  # 8080-8082 merge; 9090 stays alone
        _conv(host, api, 8080),
        _conv(web, api, 8, "ICMPv4"),
        *(_conv(web, Side(reserved="world", ip=f"198.51.100.{i}", labels=("reserved:world",), identity=2), 443)
          for i in range(20)),  # more world IPs than MAX_WORLD_CIDRS: the world entity
    ]
    cilium = recommend(convs, "rc-unit", ["web"], "cilium")
    rules = {r.name: r.spec for r in cilium.policies[0].rules}
    ingress = rules["api"]["ingress"]
    ports = [e["toPorts"][0]["ports"] for e in ingress if "fromEndpoints" in e and "toPorts" in e]
    assert ports == [[{"port": "8080", "protocol": "TCP", "endPort": 8082}, {"port": "9090", "protocol": "TCP"}]]
    assert {"fromEndpoints": [{"matchLabels": {"app": "web"}}], "icmps": [{"fields": [{"type": 8, "family": "IPv4"}]}]} in ingress
    assert any(e.get("fromEntities") == ["host"] for e in ingress)
    assert {"toEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]} in rules["web"]["egress"]
    kube = recommend(convs, "rc-unit", ["web"], "kubernetes")
    kspec = {r.name: r.spec for r in kube.policies[0].rules}
    assert {"from": [{"ipBlock": {"cidr": "172.18.0.2/32"}}], "ports": [{"protocol": "TCP", "port": 8080}]} in kspec["api"]["ingress"]
    world = [e for e in kspec["web"]["egress"] if any("ipBlock" in p for p in e["to"])]
    assert world == [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
                      "ports": [{"protocol": "TCP", "port": 443}]}]
    assert any("ICMPv4" in n for n in kube.notes)  # NetworkPolicy cannot say ICMP: said so, and let through
    assert {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]} in kspec["api"]["ingress"]
    for result in (cilium, kube):
        for spec in result.policies:
            validate_policy(spec)


@pytest.mark.parametrize("cni", ["cilium", "calico"])
def test_hand_built_recommendation_allows_what_it_learned_from(tmp_path: Path, cni: str) -> None:
    """Judged by the stream's rules (flow_keys) with default deny on: ports, ranges, host probes and ICMP
    (Cilium: once port rules select an endpoint, ICMP needs `icmps`) all pass; an unseen peer or port does not."""
    from policy_engine.flow_keys import EVALUATED_PROTOCOLS

    web, api = _pod("web", "web"), _pod("web", "api", tier="backend")
    host = Side(reserved="host", ip="172.18.0.2", labels=("reserved:host",), identity=1)
    convs = [*(_conv(web, api, p) for p in (8080, 8081, 8082)), _conv(host, api, 8080), _conv(web, api, 8, "ICMPv4")]
    convs = [replace(c, cluster="rc-unit") for c in convs]
    store = ControlPlaneStore.open(tmp_path)
    admin(store).put_cluster(Cluster("rc-unit", "upstream", cni, namespaces=("web",)))
    result = recommend(convs, "rc-unit", ["web"], "cilium" if cni == "cilium" else "kubernetes")
    sets = candidate_policy_sets(admin(store), parse_documents([*result.documents, day0("rc-unit")], "r"))
    judge = SetJudge()
    for conv in convs:
        verdict = judge(sets.after["rc-unit"], conv)
        assert verdict is True or (verdict is None and conv.protocol not in EVALUATED_PROTOCOLS), conv
    assert judge(sets.after["rc-unit"], replace(convs[0], source=_pod("web", "other"))) is False  # unseen peer
    if cni == "cilium":  # (in Kubernetes form the ICMP rule opens every port between web and api)
        assert judge(sets.after["rc-unit"], replace(convs[0], port=8083)) is False
    store.close()

"""Pure assembly of the validation report: planted situations, hand-built conversations and policy sets."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from policy_engine.flow_keys import decide
from policy_engine.traffic_report import (
    ClusterFacts,
    DropRollups,
    KubeFacts,
    KubePod,
    ObjectDrift,
    ReportView,
    UnmanagedPod,
    validation_report,
)
from schemas.conversation import Conversation, SetDecision, Side
from schemas.inventory import PolicySet, RenderedFrom

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
CLUSTER = "rep-east"
SELECT_ALL = {
    "matchExpressions": [
        {"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"},
        {"key": "k8s:io.kubernetes.pod.namespace", "operator": "NotIn", "values": ["kube-system"]},
    ]
}


def ccnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": name},
            "spec": spec}


def cnp(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


DEFAULT_DENY = ccnp("deny-all", {"endpointSelector": SELECT_ALL, "ingress": [{}], "egress": [{}]})
WEB_TO_API = cnp("api-from-web", "shop", {
    "endpointSelector": {"matchLabels": {"app": "api"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                 "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]},
                {"fromEndpoints": [{"matchLabels": {"app": "nothing-has-this"}}]}],
})
WEB_EGRESS = cnp("web-egress", "shop", {
    "endpointSelector": {"matchLabels": {"app": "web"}},
    "egress": [{"toEndpoints": [{"matchLabels": {"app": "api"}}],
                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}],
})
STAGED_DENY = cnp("api-lockdown", "shop", {
    "endpointSelector": {"matchLabels": {"app": "api"}},
    "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}],
})


def key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def policy_set(*objects: dict[str, Any], revision: int = 3, versions: dict[str, int] | None = None) -> PolicySet:
    versions = versions or {}
    return PolicySet(
        revision=revision,
        engine="cilium",
        netwarden_engine="cilium-chaining",
        namespace_labels={"shop": {}, "blog": {}},
        policies=tuple(objects),
        rendered_from={key(o): RenderedFrom(o["metadata"]["name"], versions.get(o["metadata"]["name"], 1))
                       for o in objects},
    )


DESIRED = policy_set(DEFAULT_DENY, WEB_TO_API, WEB_EGRESS)


def pod(ns: str, app: str) -> Side:
    return Side(namespace=ns, workload=app, workload_kind="Deployment",
                labels=(f"k8s:app={app}", f"k8s:io.kubernetes.pod.namespace={ns}"), identity=1000 + len(app))


WEB, API, DB, BLOG = pod("shop", "web"), pod("shop", "api"), pod("shop", "db"), pod("blog", "blog")


def conv(src: Side, dst: Side, port: int, verdict: int, flows: int, **kw: Any) -> Conversation:
    c = Conversation(CLUSTER, src, dst, port, kw.pop("protocol", "TCP"), verdict, kw.pop("drop_reason", 0),
                     flows, T0, T0 + timedelta(minutes=flows), **kw)
    # What the stream stored: the desired set's decision under its current revision.
    return replace(c, desired=decide(c, DESIRED))


def everything(cluster: str, namespace: str) -> bool:
    return True


def report(*facts: ClusterFacts, view: ReportView | None = None) -> dict[str, Any]:
    return validation_report(T0, T0 + timedelta(hours=24), facts, view or ReportView(everything))


def test_json_shape_and_window() -> None:
    doc = report(ClusterFacts(CLUSTER, [conv(WEB, API, 8080, 1, 5)], DESIRED, namespace_workspaces={"shop": "team"}))
    assert doc["window"] == {"since": "2026-11-29T10:00:00Z", "until": "2026-11-30T10:00:00Z"}
    (c,) = doc["clusters"]
    assert {"cluster", "namespaces", "not_in_effect", "unexpected_drops", "unused_rules", "staged", "drops",
            "health"} <= set(c)
    (shop,) = c["namespaces"]
    assert shop["namespace"] == "shop" and shop["workspace"] == "team"
    assert set(shop["default_deny"]) == {"ingress", "egress"} and set(shop["coverage"]) == {"ingress", "egress"}
    for rule in c["unused_rules"]:
        assert {"policy", "version", "rule", "flows", "last_matched"} <= set(rule)


def test_coverage_and_default_deny() -> None:
    desired = policy_set(WEB_TO_API, WEB_EGRESS)  # no default deny for all
    c = replace(conv(WEB, API, 8080, 1, 30), desired=SetDecision())
    d = replace(conv(DB, BLOG, 80, 1, 10), desired=SetDecision())
    kube = KubeFacts(True, pods=(KubePod("shop", "cache-0", {"app": "cache"}, "cache", "StatefulSet"),))
    (cl,) = report(ClusterFacts(CLUSTER, [c, d], desired, kube=kube))["clusters"]
    shop = next(n for n in cl["namespaces"] if n["namespace"] == "shop")
    assert shop["default_deny"] == {"ingress": False, "egress": False}
    # shop workloads: web, api (flows), db (flows), cache (kube only); api selected for ingress, web for egress
    assert shop["coverage"]["ingress"]["workloads_total"] == 4
    assert shop["coverage"]["ingress"]["workloads_selected"] == 1
    assert shop["coverage"]["egress"]["workloads_selected"] == 1
    # ingress flows into shop: web->api 30 (api selected); egress flows out of shop: web 30 (selected) + db 10
    assert shop["coverage"]["ingress"]["flows"] == 1.0
    assert shop["coverage"]["egress"]["flows"] == 0.75
    assert {w["workload"]: w["seen_in"] for w in shop["workloads"]}["cache"] == ["kube"]
    (cl,) = report(ClusterFacts(CLUSTER, [c, d], DESIRED))["clusters"]
    shop = next(n for n in cl["namespaces"] if n["namespace"] == "shop")
    assert shop["default_deny"] == {"ingress": True, "egress": True}
    assert shop["coverage"]["egress"]["flows"] == 1.0


def test_not_in_effect_names_unmanaged_pods_and_the_sync_command() -> None:
    leak = conv(DB, BLOG, 5432, 1, 40)  # forwarded, but default deny denies db's egress
    assert leak.desired.verdict == 2
    kube = KubeFacts(True, unmanaged_pods=(UnmanagedPod("shop", "db-7c9-x", "Deployment", "db", "no CiliumEndpoint"),),
                     desired_objects=3)
    (cl,) = report(ClusterFacts(CLUSTER, [leak, conv(WEB, API, 8080, 1, 5)], DESIRED, kube=kube))["clusters"]
    (group,) = cl["not_in_effect"]
    assert (group["namespace"], group["workload"], group["direction"]) == ("shop", "db", "egress")
    assert group["cause"] == "unmanaged-pods" and group["flows"] == 40
    assert group["causes"][0]["pods"][0]["name"] == "db-7c9-x"
    assert group["causes"][0]["fix"] == f"netwarden sync --cluster {CLUSTER} --restart-unmanaged"
    assert group["policy"] == "deny-all" and group["rule"] == "default-deny"


def test_not_in_effect_cause_drifted_missing_not_synced_unknown() -> None:
    leak = conv(DB, BLOG, 5432, 1, 40)

    def cause(drift: tuple[ObjectDrift, ...], kube: bool = True) -> str:
        facts = KubeFacts(True, drift=drift, desired_objects=3) if kube else KubeFacts(False, "refused")
        (cl,) = report(ClusterFacts(CLUSTER, [leak], DESIRED, kube=facts))["clusters"]
        return cl["not_in_effect"][0]["cause"]

    deny = key(DEFAULT_DENY)
    assert cause((ObjectDrift(deny, "changed", ("spec.egress[0]: want {}, found ...",)),)) == "drifted"
    assert cause((ObjectDrift(deny, "missing", ("deleted by hand",)),)) == "missing"
    assert cause((ObjectDrift(deny, "changed", ("metadata.labels[netwarden.io/policy-version]: want \"2\", found \"1\"",)),)) == "not-synced"
    everything_missing = tuple(ObjectDrift(key(o), "missing") for o in (DEFAULT_DENY, WEB_TO_API, WEB_EGRESS))
    assert cause(everything_missing) == "not-synced"
    assert cause((), kube=False) == "unknown"
    # nothing wrong on the cluster now: the report says when it last happened (fixed since?)
    (cl,) = report(ClusterFacts(CLUSTER, [leak], DESIRED, kube=KubeFacts(True, desired_objects=3)))["clusters"]
    (group,) = cl["not_in_effect"]
    assert group["cause"] == "unknown" and group["last_seen"] == "2026-11-29T10:40:00Z"
    assert "fixed since the last such flow (2026-11-29T10:40:00Z)" in group["causes"][0]["detail"]


def test_unexpected_drops_named_from_hubble_attribution() -> None:
    foreign = conv(WEB, API, 8080, 2, 7, drop_reason=181, hubble_denied_by=("CiliumNetworkPolicy/shop/hand-made",))
    unattributed = conv(WEB, API, 8080, 2, 3, drop_reason=133, traffic_direction=1)
    allowed_drop = conv(DB, BLOG, 5432, 2, 9, drop_reason=133)  # desired denies it too: not unexpected
    (cl,) = report(ClusterFacts(CLUSTER, [foreign, unattributed, allowed_drop], DESIRED))["clusters"]
    drops = cl["unexpected_drops"]
    assert [d["flows"] for d in drops] == [7, 3]
    assert drops[0]["cause"] == "unmanaged-policy" and "CiliumNetworkPolicy/shop/hand-made" in drops[0]["causes"][0]["detail"]
    assert drops[1]["cause"] == "unattributed-default-deny"
    assert {a["policy"] for a in drops[0]["allowed_by"]} == {"api-from-web", "web-egress"}
    assert [t["flows"] for t in cl["drops"]["top_conversations"]] == [9, 7, 3]


def test_unexpected_drop_from_an_allowing_object_edited_on_the_cluster() -> None:
    dropped = conv(WEB, API, 8080, 2, 4, drop_reason=133)
    kube = KubeFacts(True, drift=(ObjectDrift(key(WEB_TO_API), "changed", ("spec.ingress[0]: ...",)),), desired_objects=3)
    (cl,) = report(ClusterFacts(CLUSTER, [dropped], DESIRED, kube=kube))["clusters"]
    assert cl["unexpected_drops"][0]["cause"] == "drifted"


def test_rules_usage_and_unused() -> None:
    convs = [conv(WEB, API, 8080, 1, 5), conv(DB, BLOG, 5432, 2, 2)]
    (cl,) = report(ClusterFacts(CLUSTER, convs, DESIRED))["clusters"]
    usage = {(r["object"], r["rule"]): (r["flows"], r["last_matched"]) for r in cl["rules"]}
    assert usage[(key(WEB_TO_API), "ingress[0]")] == (5, "2026-11-29T10:05:00Z")
    assert usage[(key(WEB_EGRESS), "egress[0]")][0] == 5
    # the empty rules of the default deny count its default-deny decisions (db's egress to blog)
    assert usage[(key(DEFAULT_DENY), "egress[0]")][0] == 2
    unused = {(r["policy"], r["rule"]) for r in cl["unused_rules"]}
    assert ("api-from-web", "ingress[1]") in unused
    assert ("api-from-web", "ingress[0]") not in unused
    assert all(r["flows"] == 0 and r["last_matched"] is None for r in cl["unused_rules"])


def test_stale_stored_verdicts_are_decided_again() -> None:
    c = replace(conv(DB, BLOG, 5432, 1, 40), desired=SetDecision(verdict=1, revision=1))  # older revision
    (cl,) = report(ClusterFacts(CLUSTER, [c], DESIRED))["clusters"]
    assert cl["not_in_effect"] and cl["not_in_effect"][0]["workload"] == "db"


def test_staged_policy_newly_denies() -> None:
    staged = policy_set(DEFAULT_DENY, WEB_TO_API, WEB_EGRESS, STAGED_DENY, revision=4)
    (cl,) = report(ClusterFacts(CLUSTER, [conv(WEB, API, 8080, 1, 5), conv(DB, BLOG, 5432, 2, 2)], DESIRED,
                                staged=staged))["clusters"]
    (entry,) = cl["staged"]
    assert entry["policy"] == "api-lockdown" and entry["newly_denied_flows"] == 5
    assert entry["newly_denied"][0]["rule"] == "ingressDeny[0]" and entry["newly_allowed"] == []


def test_scope_limits_namespaces_and_redacts_peers() -> None:
    from query_api.conversations import redact_conversation
    from query_api.scope import ScopeFilter

    scope = ScopeFilter(namespaces=frozenset({(CLUSTER, "blog")}))
    view = ReportView(in_report=scope.can_see_namespace, redact=lambda c: redact_conversation(c, scope))
    leak = conv(DB, BLOG, 5432, 1, 40)
    (cl,) = report(ClusterFacts(CLUSTER, [leak], DESIRED, known_namespaces=["shop", "blog"]), view=view)["clusters"]
    assert [n["namespace"] for n in cl["namespaces"]] == ["blog"]
    assert cl["not_in_effect"] == []  # db's egress is shop's business
    assert all(not r["object"].split("/")[1] == "shop" for r in cl["rules"])
    top = report(ClusterFacts(CLUSTER, [conv(DB, BLOG, 5432, 2, 2)], DESIRED), view=view)["clusters"][0]
    assert top["drops"]["top_conversations"][0]["source"]["workload"] == ""


def test_drops_by_reason_and_policy() -> None:
    denied = conv(WEB, API, 8080, 2, 7, drop_reason=181, hubble_denied_by=("CiliumNetworkPolicy/shop/x",))
    isolated = conv(DB, BLOG, 5432, 2, 5, drop_reason=133)
    rollups = DropRollups(by_reason=({"reason": "POLICY_DENY", "flows": 7}, {"reason": "POLICY_DENIED", "flows": 5}),
                          buckets=({"start": "2026-11-29T10:00:00Z", "verdicts": {"DROPPED": 12}},))
    doc = validation_report(T0, T0 + timedelta(hours=1), [ClusterFacts(CLUSTER, [denied, isolated], DESIRED)],
                            ReportView(everything), rollups=rollups)
    (cl,) = doc["clusters"]
    assert cl["drops"]["by_reason"] == [{"reason": "POLICY_DENY", "flows": 7}, {"reason": "POLICY_DENIED", "flows": 5}]
    assert cl["drops"]["by_policy"] == [{"kind": "CiliumNetworkPolicy", "namespace": "shop", "name": "x", "flows": 7}]
    assert doc["drops"]["by_reason"] == cl["drops"]["by_reason"]
    assert doc["drops"]["buckets"][0]["verdicts"] == {"DROPPED": 12}


def test_one_connection_seen_at_both_observation_points_is_listed_once() -> None:
    egress_point = conv(DB, BLOG, 5432, 1, 30, traffic_direction=2)
    ingress_point = conv(DB, BLOG, 5432, 1, 10, traffic_direction=1)
    (cl,) = report(ClusterFacts(CLUSTER, [egress_point, ingress_point], DESIRED))["clusters"]
    (group,) = cl["not_in_effect"]
    assert group["conversation_count"] == 1 and group["flows"] == 40
    assert group["conversations"][0]["flows"] == 40


def test_drift_named_only_where_the_object_acts() -> None:
    web_leak = conv(WEB, BLOG, 80, 1, 6)  # web's egress allows only api: default deny
    db_leak = conv(DB, BLOG, 5432, 1, 4)
    kube = KubeFacts(True, drift=(ObjectDrift(key(WEB_EGRESS), "changed", ("spec.egress[1]: not desired",)),),
                     desired_objects=3)
    (cl,) = report(ClusterFacts(CLUSTER, [web_leak, db_leak], DESIRED, kube=kube))["clusters"]
    groups = {g["workload"]: g for g in cl["not_in_effect"]}
    assert groups["web"]["cause"] == "drifted" and groups["web"]["causes"][0]["objects"] == [key(WEB_EGRESS)]
    assert groups["db"]["cause"] == "unknown"  # web-egress does not select db

"""policy_engine.why, pure: the pair's history, both sets' decisions, and a fix that validates and, added to
the set, allows the pair (checked by evaluating it here again, independently of why's own check)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from policy_engine import validation
from policy_engine.gitops import DocumentRef, parse_document
from policy_engine.model import NamespaceRef
from policy_engine.render import rule_object
from policy_engine.roles import Authorizer, Ownership, PermissionDenied, Principal
from policy_engine.why import (
    WhyInputError,
    decide_pair,
    explain,
    parse_query,
)
from schemas.conversation import Conversation, SetDecision, Side
from schemas.inventory import PolicySet, RenderedFrom

CLUSTER = "east"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WINDOW = (NOW - timedelta(hours=24), NOW)
OWNERSHIP = Ownership(
    project_clusters={"storefront": frozenset({CLUSTER})},
    workspace_project={"shop-team": "storefront", "data-team": "storefront"},
    workspace_namespaces={
        "shop-team": frozenset({NamespaceRef(CLUSTER, "shop")}),
        "data-team": frozenset({NamespaceRef(CLUSTER, "data")}),
    },
)


def pod(ns: str, app: str, identity: int) -> Side:
    return Side(namespace=ns, workload=app, workload_kind="Deployment", identity=identity,
                labels=(f"k8s:app={app}", "k8s:pod-template-hash=7c9", f"k8s:io.kubernetes.pod.namespace={ns}"))


WEB, API, DB = pod("shop", "web", 5001), pod("shop", "api", 5002), pod("data", "db", 5003)

DEFAULT_DENY = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
    "metadata": {"name": "zero-trust-day0-default-deny"},
    "spec": {"endpointSelector": {"matchExpressions": [
        {"key": "k8s:io.kubernetes.pod.namespace", "operator": "NotIn", "values": ["kube-system"]}]},
        "ingress": [{}], "egress": [{}]},
}
WEB_EGRESS = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "shop-web-egress", "namespace": "shop"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
             "egress": [{"toEndpoints": [{"matchLabels": {"app": "api"}}],
                         "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]},
}
NO_DB_FROM_SHOP = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "db-guard", "namespace": "data"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "db"}},
             "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "shop"}}]}]},
}


def policy_set(*objects: dict[str, Any], engine: str = "cilium", revision: int = 7) -> PolicySet:
    rendered = {
        "CiliumClusterwideNetworkPolicy//zero-trust-day0-default-deny": RenderedFrom("zero-trust-day0-default-deny", 1),
        "CiliumNetworkPolicy/shop/shop-web-egress": RenderedFrom("shop-internal", 3, "web-egress"),
        "CiliumNetworkPolicy/data/db-guard": RenderedFrom("db-guard", 2, "no-shop"),
    }
    return PolicySet(revision=revision, engine=engine, netwarden_engine="cilium-chaining",
                     namespace_labels={"shop": {}, "data": {}}, policies=tuple(objects), rendered_from=rendered)


def conv(src: Side, dst: Side, port: int, verdict: int, flows: int, *, protocol: str = "TCP", reason: int = 0,
         at: int = 1, denied_by: tuple[str, ...] = ()) -> Conversation:
    return Conversation(CLUSTER, src, dst, port, protocol, verdict, reason, flows, NOW - timedelta(hours=2),
                        NOW - timedelta(minutes=5), hubble_denied_by=denied_by, traffic_direction=at,
                        desired=SetDecision(verdict=verdict, drop_reason=reason, revision=6))


def everything(_cluster: str, _namespace: str) -> bool:
    return True


def only_shop(cluster: str, namespace: str) -> bool:
    return (cluster, namespace) == (CLUSTER, "shop")


def why(src: str, dst: str, port: int | None, conversations: list[Conversation], desired: PolicySet | None,
        staged: PolicySet | None = None, protocol: str = "TCP", visible=everything) -> dict[str, Any]:
    query = parse_query(CLUSTER, src, dst, port, protocol)
    return explain(query, conversations, desired, staged, window=WINDOW, visible=visible, ownership=OWNERSHIP,
                   validate=validation.validate_object)


def applied(documents: list[dict[str, Any]], desired: PolicySet) -> PolicySet:
    """The set with the fix's documents as `netwarden apply` would read and render them."""
    objects = []
    policies = [parse_document(d, DocumentRef("fix.yaml", i), Path(".")) for i, d in enumerate(documents, 1)]
    targets = {d.name: d.model for d in policies if d.kind == "Assignment"}
    for doc in (d for d in policies if d.kind == "Policy"):
        (target,) = targets[doc.name].targets
        for rule in doc.model.rules:
            obj = rule_object(doc.model, rule, 1, target.namespace)
            validation.validate_object(obj)
            objects.append(obj)
    return PolicySet(revision=desired.revision + 1, engine=desired.engine, namespace_labels=desired.namespace_labels,
                     policies=(*desired.policies, *objects))


def test_dropped_pair_gets_history_verdicts_and_a_verified_fix() -> None:
    desired = policy_set(DEFAULT_DENY, WEB_EGRESS)
    history = [
        conv(WEB, API, 8080, 2, 40, reason=133, at=1),
        conv(WEB, API, 8080, 2, 2, reason=133, at=1),  # same key, another hour
        conv(WEB, API, 9090, 1, 5),  # another port: not this question
        conv(API, WEB, 8080, 1, 3),  # the other direction: not this question
    ]
    doc = why("shop/web", "shop/api", 8080, history, desired)
    assert doc["observed"]["flows"] == 42
    (row,) = doc["observed"]["by_verdict"]
    assert (row["verdict"], row["drop_reason"], row["observed_at"]) == ("DROPPED", "POLICY_DENIED", "INGRESS")
    d = doc["desired"]
    assert (d["verdict"], d["drop_reason"], d["revision"]) == ("DROPPED", "POLICY_DENIED", 7)
    assert d["egress"] == {"verdict": "FORWARDED", "policy": "CiliumNetworkPolicy/shop/shop-web-egress",
                           "rule": "egress[0]", "netwarden_policy": "shop-internal", "netwarden_rule": "web-egress",
                           "version": 3}
    assert d["ingress"]["rule"] == "default-deny"
    assert d["ingress"]["netwarden_policy"] == "zero-trust-day0-default-deny"
    fix = doc["fix"]
    assert fix["verified"] is True
    (direction,) = fix["directions"]
    assert direction["direction"] == "ingress" and direction["at"] == "shop/api"
    assert direction["writers"] == ["org-admin", "project-admin of storefront", "workspace-admin of shop-team"]
    policy, assignment = fix["documents"]
    assert assignment["spec"] == {"policy": policy["metadata"]["name"], "targets": [{"cluster": CLUSTER, "namespace": "shop"}]}
    (rule,) = policy["spec"]["rules"]
    # The smallest rule: api's stable labels, from web's, exactly TCP/8080 (no pod-template-hash).
    assert rule["cilium"] == {
        "endpointSelector": {"matchLabels": {"app": "api"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                     "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}],
    }
    assert "kind: Policy" in fix["yaml"] and "kind: Assignment" in fix["yaml"]
    # Independently: parsed as `apply` reads it and rendered, the set allows the pair, and only it.
    after = applied(fix["documents"], desired)
    assert decide_pair(WEB, API, 8080, "TCP", after).verdict == 1
    assert decide_pair(WEB, API, 8081, "TCP", after).verdict == 2
    assert decide_pair(DB, API, 8080, "TCP", after).verdict == 2


def test_no_history_uses_the_sides_seen_elsewhere_and_both_directions_get_rules() -> None:
    desired = policy_set(DEFAULT_DENY)
    history = [conv(WEB, API, 8080, 1, 3), conv(DB, WEB, 5432, 1, 1)]  # web and db seen, never together
    doc = why("data/db", "shop/web", 9000, history, desired, staged=policy_set(DEFAULT_DENY))
    assert doc["observed"] == {"flows": 0, "last_seen": None, "by_verdict": []}
    assert any("Hubble saw no flow" in n for n in doc["notes"])
    assert doc["source"]["labels"] == list(DB.labels)
    assert doc["desired"]["egress"]["verdict"] == "DROPPED" and doc["desired"]["ingress"]["verdict"] == "DROPPED"
    assert doc["staged"]["differs"] is False
    fix = doc["fix"]
    assert fix["verified"] is True
    assert [d["direction"] for d in fix["directions"]] == ["egress", "ingress"]
    kinds = [(d["kind"], d["metadata"]["name"], d["spec"].get("targets", [{}])[0].get("namespace"))
             for d in fix["documents"]]
    assert kinds == [("Policy", "allow-db-to-web-tcp-9000-data", None),
                     ("Assignment", "allow-db-to-web-tcp-9000-data", "data"),
                     ("Policy", "allow-db-to-web-tcp-9000-shop", None),
                     ("Assignment", "allow-db-to-web-tcp-9000-shop", "shop")]
    egress_rule = fix["documents"][0]["spec"]["rules"][0]["cilium"]["egress"][0]
    # Another namespace: the peer carries its namespace label.
    assert egress_rule["toEndpoints"] == [{"matchLabels": {"app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}}]
    assert decide_pair(DB, WEB, 9000, "TCP", applied(fix["documents"], desired)).verdict == 1


def test_fix_selects_what_every_pod_of_a_workload_carries() -> None:
    # A rollout: the newest api pods carry version=v2, the older ones v1; the fix must select both.
    v1 = replace(API, labels=(*API.labels, "k8s:version=v1"))
    v2 = replace(API, labels=(*API.labels, "k8s:version=v2"), identity=5009)
    history = [conv(WEB, v1, 8080, 2, 3, reason=133), replace(conv(WEB, v2, 8080, 2, 1, reason=133),
                                                             last_seen=NOW)]
    doc = why("shop/web", "shop/api", 8080, history, policy_set(DEFAULT_DENY, WEB_EGRESS))
    assert doc["destination"]["labels"] == list(v2.labels)  # judged as last seen
    (policy, _a) = doc["fix"]["documents"]
    assert policy["spec"]["rules"][0]["cilium"]["endpointSelector"] == {"matchLabels": {"app": "api"}}
    after = applied(doc["fix"]["documents"], policy_set(DEFAULT_DENY, WEB_EGRESS))
    assert decide_pair(WEB, v1, 8080, "TCP", after).verdict == decide_pair(WEB, v2, 8080, "TCP", after).verdict == 1


def test_fix_never_takes_the_name_of_a_stored_policy() -> None:
    query = parse_query(CLUSTER, "shop/web", "shop/api", 8080, "TCP")
    doc = explain(query, [conv(WEB, API, 8080, 2, 1, reason=133)], policy_set(DEFAULT_DENY), None, window=WINDOW,
                  visible=everything, ownership=OWNERSHIP,
                  existing_policies={"allow-web-to-api-tcp-8080", "allow-web-to-api-tcp-8080-2"})
    assert [d["metadata"]["name"] for d in doc["fix"]["documents"]] == ["allow-web-to-api-tcp-8080-3"] * 2


def test_unknown_side_is_judged_by_namespace_with_a_note() -> None:
    doc = why("shop/ghost", "shop/api", 80, [], policy_set(DEFAULT_DENY))
    assert any("shop/ghost: no flows of it" in n for n in doc["notes"])
    assert doc["fix"]["verified"] is True
    assert any("every pod of namespace shop" in n for n in doc["fix"]["notes"])


def test_allowed_pair_has_no_fix_and_staged_difference_is_shown() -> None:
    desired = policy_set(DEFAULT_DENY, WEB_EGRESS)
    staged_ingress = {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "api-ingress", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                              "toPorts": [{"ports": [{"port": "8080"}]}]}]},
    }
    seen = [conv(WEB, API, 9090, 1, 1)]  # the sides' labels come from history
    doc = why("shop/web", "shop/api", 8080, seen, policy_set(DEFAULT_DENY, WEB_EGRESS, staged_ingress),
              staged=desired)
    assert doc["desired"]["verdict"] == "FORWARDED" and doc["fix"] is None
    assert doc["staged"]["verdict"] == "DROPPED" and doc["staged"]["differs"] is True


def test_hubble_and_desired_disagreeing_is_explained() -> None:
    allowed_now = policy_set(DEFAULT_DENY, WEB_EGRESS, {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "api-in", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}]}})
    dropped = [conv(WEB, API, 8080, 2, 4, reason=181, denied_by=("CiliumNetworkPolicy/shop/hand-made",))]
    doc = why("shop/web", "shop/api", 8080, dropped, allowed_now)
    assert any("something netwarden does not manage" in n and "CiliumNetworkPolicy/shop/hand-made" in n
               and "--namespace shop" in n for n in doc["notes"])
    forwarded = [conv(WEB, API, 8080, 1, 4)]
    doc = why("shop/web", "shop/api", 8080, forwarded, policy_set(DEFAULT_DENY))
    assert any("not in effect" in n and "`netwarden report validate --cluster east --namespace shop`" in n
               for n in doc["notes"])


def test_deny_rule_is_named_not_outweighed() -> None:
    desired = policy_set(NO_DB_FROM_SHOP)
    doc = why("shop/web", "data/db", 5432, [conv(WEB, DB, 5432, 2, 9, reason=181,
                                               denied_by=("CiliumNetworkPolicy/data/db-guard",))], desired)
    assert doc["observed"]["by_verdict"][0]["hubble_denied_by"] == ["CiliumNetworkPolicy/data/db-guard"]
    assert doc["desired"]["drop_reason"] == "POLICY_DENY"
    fix = doc["fix"]
    assert fix["documents"] == [] and fix["verified"] is None
    (direction,) = fix["directions"]
    assert direction["blocked_by"] == "CiliumNetworkPolicy/data/db-guard" and direction["netwarden_policy"] == "db-guard"
    assert "no allow rule can outweigh it" in direction["action"]
    assert direction["writers"] == ["org-admin", "project-admin of storefront", "workspace-admin of data-team"]


def test_world_ip_and_icmp_fixes() -> None:
    desired = policy_set(DEFAULT_DENY)
    world = Side(ip="203.0.113.9", reserved="world", identity=2, labels=("reserved:world",))
    doc = why("shop/web", "203.0.113.9", 443, [conv(WEB, world, 443, 2, 4, reason=133, at=2)], desired)
    (policy, _assignment) = doc["fix"]["documents"]
    assert policy["spec"]["rules"][0]["cilium"]["egress"][0]["toCIDR"] == ["203.0.113.9/32"]
    assert doc["fix"]["verified"] is True
    assert policy["metadata"]["name"] == "allow-web-to-203-0-113-9-tcp-443"

    doc = why("shop/web", "shop/api", None, [conv(WEB, API, 8, 2, 3, protocol="ICMPv4", reason=133)], desired,
              protocol="ICMP")
    assert doc["query"]["port"] == 8 and doc["observed"]["flows"] == 3
    assert doc["desired"]["verdict"] == "DROPPED"
    rules = [r["cilium"] for d in doc["fix"]["documents"] if d["kind"] == "Policy" for r in d["spec"]["rules"]]
    assert {json_key(r) for r in rules} == {"egress", "ingress"}
    assert all(r[json_key(r)][0]["icmps"] == [{"fields": [{"type": 8, "family": "IPv4"}]}] for r in rules)
    assert doc["fix"]["verified"] is True
    v6 = why("shop/web", "shop/api", None, [], desired, protocol="ICMPv6")
    assert v6["query"]["port"] == 128 and v6["fix"]["verified"] is True


def json_key(rule: dict[str, Any]) -> str:
    return "egress" if "egress" in rule else "ingress"


def test_reserved_identity_by_name() -> None:
    apiserver = Side(ip="172.18.0.10", reserved="kube-apiserver", identity=7, labels=("reserved:kube-apiserver",))
    doc = why("shop/web", "kube-apiserver", 6443, [conv(WEB, apiserver, 6443, 2, 5, reason=133, at=2)],
              policy_set(DEFAULT_DENY))
    assert doc["observed"]["flows"] == 5 and doc["destination"]["reserved"] == "kube-apiserver"
    (policy, _a) = doc["fix"]["documents"]
    assert policy["spec"]["rules"][0]["cilium"]["egress"][0]["toEntities"] == ["kube-apiserver"]
    assert policy["metadata"]["name"] == "allow-web-to-kube-apiserver-tcp-6443"
    assert doc["fix"]["verified"] is True


def test_kubernetes_engine_gets_networkpolicy_form() -> None:
    isolate = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "default-deny", "namespace": "data"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    desired = policy_set(isolate, engine="kubernetes")
    doc = why("shop/web", "data/db", 5432, [conv(WEB, DB, 5432, 1, 1)], desired)
    (policy, _a) = doc["fix"]["documents"]
    assert sorted(policy["spec"]["enforcers"]) == ["cilium", "kubernetes"]  # a NetworkPolicy renders anywhere
    assert policy["spec"]["rules"][0]["kubernetes"] == {
        "podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}},
                               "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}],
                     "ports": [{"port": 5432, "protocol": "TCP"}]}],
    }
    assert doc["fix"]["verified"] is True


def test_scope_peer_redacted_and_foreign_direction_left_to_its_writers() -> None:
    desired = policy_set(DEFAULT_DENY)
    doc = why("shop/web", "data/db", 5432, [conv(WEB, DB, 5432, 2, 6, reason=133, at=2)], desired,
              visible=only_shop)
    assert doc["destination"] == {"namespace": "data", "workload": "", "workload_kind": "", "ip": "",
                                  "reserved": "", "in_scope": False}
    fix = doc["fix"]
    egress, ingress = fix["directions"]
    assert egress["action"] == "apply the documents"
    assert "outside your scope" in ingress["action"]
    assert ingress["writers"] == ["org-admin", "project-admin of storefront", "workspace-admin of data-team"]
    (policy, _a) = fix["documents"]
    # db's labels are not the caller's to see: the peer is selected by its namespace only.
    assert policy["spec"]["rules"][0]["cilium"]["egress"][0]["toEndpoints"] == [
        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "data"}}]
    answer = json.dumps({k: v for k, v in doc.items() if k != "query"})  # the query echoes what was asked
    assert "k8s:app=db" not in answer and "/db" not in answer and "-db-" not in answer and '"db"' not in answer
    assert fix["verified"] is False  # the ingress at db is still someone else's to allow


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        (("", "shop/web", "shop/api", 80, "TCP"), "cluster"),
        ((CLUSTER, "web", "shop/api", 80, "TCP"), "from"),
        ((CLUSTER, "shop/web", "apiserver", 80, "TCP"), "to"),
        ((CLUSTER, "shop/web", "shop/api/x", 80, "TCP"), "to"),
        ((CLUSTER, "shop/web", "shop/api", None, "TCP"), "port"),
        ((CLUSTER, "shop/web", "shop/api", 70000, "TCP"), "port"),
        ((CLUSTER, "shop/web", "shop/api", 300, "ICMP"), "port"),
        ((CLUSTER, "shop/web", "shop/api", 80, "GRE"), "protocol"),
    ],
)
def test_bad_questions_name_the_parameter(args: tuple[Any, ...], parameter: str) -> None:
    with pytest.raises(WhyInputError) as info:
        parse_query(*args)
    assert info.value.parameter == parameter


def test_writers_are_exactly_who_the_authorizer_lets_write() -> None:
    authorizer = Authorizer(OWNERSHIP)
    unowned = NamespaceRef(CLUSTER, "tools")
    for ref in (NamespaceRef(CLUSTER, "shop"), unowned):
        names = authorizer.namespace_writers(ref)
        for text in names:
            role, _, scope = text.partition(" of ")
            authorizer.require_namespace_write(Principal.with_role(role, scope), "write", [ref])
        for role, scope in (("workspace-admin", "data-team"), ("project-admin", "other"), ("org-read-only", "")):
            if f"{role} of {scope}" in names:
                continue
            with pytest.raises(PermissionDenied):
                authorizer.require_namespace_write(Principal.with_role(role, scope), "write", [ref])
    assert authorizer.namespace_writers(unowned) == ["org-admin", "project-admin of storefront"]
    assert authorizer.cluster_writers(CLUSTER) == ["org-admin", "infra-admin of storefront"]
    for text in authorizer.cluster_writers(CLUSTER):
        role, _, scope = text.partition(" of ")
        authorizer.require_cluster_write(Principal.with_role(role, scope), "write", [CLUSTER])
    for role, scope in (("infra-admin", "other"), ("project-admin", "storefront")):
        with pytest.raises(PermissionDenied):
            authorizer.require_cluster_write(Principal.with_role(role, scope), "write", [CLUSTER])

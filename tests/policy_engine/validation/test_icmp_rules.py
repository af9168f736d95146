"""ICMP rules from upload to verdict: a netwarden policy with Cilium `icmps` renders to an object the real
CRD schema accepts, and that object, evaluated, admits exactly the ICMP types written; a primary-CNI cluster
refuses it with the policy, rule, field and cluster named, or skips it when the policy is Cilium-only."""

from __future__ import annotations

from typing import Any

import pytest

from policy_engine import validation
from policy_engine.evaluator import Connection, Pod, PolicyEvaluator
from policy_engine.model import Cluster, PolicyRule, PolicySpec, PolicyVersion, VersionInfo
from policy_engine.render import ClusterPolicySet, NamespacePlacement, RenderError, render_cluster

PING_FROM_CLIENTS = {
    "endpointSelector": {"matchLabels": {"app": "web"}},
    "ingress": [
        {
            "fromEndpoints": [{"matchLabels": {"app": "client"}}],
            "icmps": [{"fields": [{"type": "EchoRequest"}, {"type": "EchoRequest", "family": "IPv6"}]}],
        },
        {"fromEndpoints": [{"matchLabels": {"app": "client"}}], "toPorts": [{"ports": [{"port": "8080"}]}]},
    ],
}


def _policy_set(cluster: Cluster, engine: str, enforcers: tuple[str, ...] = ("cilium", "kubernetes")) -> ClusterPolicySet:
    spec = PolicySpec("web-ping", "namespace", (PolicyRule("ping", "cilium", PING_FROM_CLIENTS),), enforcers=enforcers)
    version = PolicyVersion(spec, VersionInfo(3, "2026-11-29T00:00:00+00:00", "test"))
    return ClusterPolicySet(cluster, engine, None, (), (NamespacePlacement(version, ("web",)),), ("web",))


def _verdicts(objects: tuple[dict[str, Any], ...]) -> dict[tuple[str, str, int], bool]:
    pods = [
        Pod("web", "web-0", {"app": "web"}, None),
        Pod("web", "client-0", {"app": "client"}, None),
        Pod("web", "other-0", {"app": "other"}, None),
    ]
    evaluator = PolicyEvaluator({"web": {}}, pods, list(objects), "cilium")
    answers = {}
    for source in ("web/client-0", "web/other-0"):
        for protocol, port in (("ICMP", 8), ("ICMPv6", 128), ("ICMP", 0), ("TCP", 8080)):
            conn = Connection(evaluator.endpoint(source), evaluator.endpoint("web/web-0"), port, protocol)
            answers[(source, protocol, port)] = evaluator.evaluate(conn).allowed
    return answers


def test_icmp_rule_renders_a_valid_object_that_admits_exactly_its_types() -> None:
    rendered = render_cluster(
        _policy_set(Cluster("east", "upstream", "cilium"), "cilium-primary"), validate=validation.validate_object
    )
    (obj,) = rendered.objects
    assert obj["kind"] == "CiliumNetworkPolicy" and obj["metadata"]["namespace"] == "web"
    assert obj["spec"]["ingress"][0]["icmps"] == PING_FROM_CLIENTS["ingress"][0]["icmps"]
    assert _verdicts(rendered.objects) == {
        ("web/client-0", "ICMP", 8): True,
        ("web/client-0", "ICMPv6", 128): True,
        ("web/client-0", "ICMP", 0): False,  # EchoReply was not written
        ("web/client-0", "TCP", 8080): True,
        ("web/other-0", "ICMP", 8): False,
        ("web/other-0", "ICMPv6", 128): False,
        ("web/other-0", "ICMP", 0): False,
        ("web/other-0", "TCP", 8080): False,
    }


def test_primary_cni_cluster_refuses_icmp_rules_naming_policy_rule_field_and_cluster() -> None:
    with pytest.raises(RenderError) as info:
        render_cluster(_policy_set(Cluster("lab", "upstream", "calico"), "primary-cni"))
    err = info.value
    assert (err.policy, err.version, err.rule, err.cluster) == ("web-ping", 3, "ping", "lab")
    assert err.path == "spec.ingress[0].icmps"
    assert "ICMP rules" in str(err) and "only TCP, UDP and SCTP" in str(err) and "enforcers: [cilium]" in str(err)


def test_cilium_only_icmp_policy_is_skipped_with_a_note_on_a_primary_cni_cluster() -> None:
    rendered = render_cluster(_policy_set(Cluster("lab", "upstream", "calico"), "primary-cni", ("cilium",)))
    assert rendered.objects == ()
    assert any("web-ping skipped" in note for note in rendered.notes)

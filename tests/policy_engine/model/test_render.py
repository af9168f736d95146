"""Rendering: every reference example and the built-in blueprint render to objects the real schemas accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from policy_engine import validation
from policy_engine.blueprints import builtin_blueprints, policy_from_object
from policy_engine.model import BlueprintVersion, Cluster, PolicyRule, PolicySpec, PolicyVersion, VersionInfo
from policy_engine.render import (
    MANAGED_BY_LABEL,
    POLICY_LABEL,
    POLICY_VERSION_LABEL,
    ClusterPolicySet,
    NamespacePlacement,
    RenderError,
    Untranslatable,
    cilium_to_network_policy,
    render_cluster,
)

EXAMPLES = Path(__file__).resolve().parents[4] / "shared" / "reference" / "cilium-crds" / "examples"
NEGATIVE = ("l3_match-expressions_and-statement.yaml", "l3_match-expressions_or-statement.yaml")
CILIUM = Cluster("cil", "upstream", "cilium")
CALICO = Cluster("cal", "upstream", "calico")
NAMESPACES = ("default", "kube-system", "web")


def _example_files() -> list[Path]:
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert len(files) > 40, f"reference examples missing under {EXAMPLES}"
    return files


def _version(spec: PolicySpec, version: int = 1) -> PolicyVersion:
    return PolicyVersion(spec, VersionInfo(version, "2025-01-01T00:00:00+00:00", "test"))


def _policy_set(cluster: Cluster, engine: str, policies: list[PolicySpec]) -> ClusterPolicySet:
    cluster_wide = tuple(_version(p) for p in policies if p.scope == "cluster")
    namespaced = tuple(NamespacePlacement(_version(p), ("web",)) for p in policies if p.scope == "namespace")
    return ClusterPolicySet(cluster, engine, None, cluster_wide, namespaced, NAMESPACES)


def _check_managed(obj: dict[str, Any], policy: str, version: str = "1") -> None:
    labels = obj["metadata"]["labels"]
    assert labels[MANAGED_BY_LABEL] == "netwarden"
    assert labels[POLICY_LABEL] == policy
    assert labels[POLICY_VERSION_LABEL] == version


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: p.name)
def test_every_example_renders_valid_objects(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    policies = [policy_from_object(d) for d in docs]
    if path.name in NEGATIVE:
        # The upstream files use operator "in"; upload validation refuses them with the path and value.
        with pytest.raises(validation.PolicyValidationError) as err:
            validation.validate_object(docs[0])
        assert "operator" in err.value.path and err.value.value == "in"
        return
    rendered = render_cluster(_policy_set(CILIUM, "cilium-primary", policies), validate=validation.validate_object)
    assert rendered.objects
    for obj in rendered.objects:
        validation.validate_object(obj)  # explicit, beside the validate hook
        assert obj["kind"] in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
        _check_managed(obj, obj["metadata"]["labels"][POLICY_LABEL])
    # Where the primary CNI enforces: a valid NetworkPolicy, or a clear refusal naming the field.
    for policy in policies:
        try:
            result = render_cluster(_policy_set(CALICO, "primary-cni", [policy]), validate=validation.validate_object)
        except RenderError as exc:
            assert exc.policy == policy.name and exc.path.startswith("spec") and "cannot express" in str(exc)
            continue
        for obj in result.objects:
            assert obj["kind"] == "NetworkPolicy"
            validation.validate_object(obj)


def test_examples_translate_to_network_policy_when_expressible() -> None:
    translated = refused = 0
    for path in _example_files():
        if path.name in NEGATIVE:
            continue
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            try:
                render_cluster(_policy_set(CALICO, "primary-cni", [policy_from_object(doc)]))
                translated += 1
            except RenderError:
                refused += 1
    assert translated >= 10 and refused >= 10


@pytest.mark.parametrize(("cluster", "engine"), [(CILIUM, "cilium-primary"), (CALICO, "primary-cni"),
                                                 (Cluster("eks", "EKS", "aws-cni"), "cilium-chaining")])
def test_builtin_blueprint_renders_valid_objects(cluster: Cluster, engine: str) -> None:
    builtin = builtin_blueprints()[0]
    bp = BlueprintVersion(builtin.blueprint, VersionInfo(1, "", "test"), builtin=True)
    policy_set = ClusterPolicySet(cluster, engine, bp, tuple(_version(p) for p in builtin.policies), (), NAMESPACES)
    rendered = render_cluster(policy_set, validate=validation.validate_object)
    for obj in rendered.objects:
        validation.validate_object(obj)
        assert obj["metadata"]["annotations"]["netwarden.io/blueprint"] == "zero-trust-day0"
    kinds = {o["kind"] for o in rendered.objects}
    if engine == "primary-cni":
        assert kinds == {"NetworkPolicy"}
        # one NetworkPolicy per namespace, never in kube-system, and the output says so
        assert {o["metadata"]["namespace"] for o in rendered.objects} == {"default", "web"}
        assert any("one per namespace" in n for n in rendered.notes)
        assert any("skipped" in n and "cilium-health" in n for n in rendered.notes)
        deny = next(o for o in rendered.objects if o["metadata"]["name"].endswith("default-deny"))
        assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}
    else:
        assert kinds == {"CiliumClusterwideNetworkPolicy"} and len(rendered.objects) == 5
        dns = next(o for o in rendered.objects if o["metadata"]["name"].endswith("allow-dns"))
        ports = dns["spec"]["egress"][0]["toPorts"][0]["ports"]
        assert {(p["port"], p["protocol"]) for p in ports} == {("53", "UDP"), ("53", "TCP")}


def test_translation_details() -> None:
    spec = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{}, {"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "80"}]}]}],
        "egress": [{"toEntities": ["world"]}, {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}],
    }
    np, selects = cilium_to_network_policy(spec, clusterwide=True)
    assert np is not None and selects("anything")
    # the empty Cilium rule allows nothing, so it is dropped rather than copied as allow-all
    assert np["ingress"] == [{"from": [{"podSelector": {}, "namespaceSelector": {}}],
                              "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 80},
                                        {"protocol": "SCTP", "port": 80}]}]
    assert np["egress"][0] == {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]}
    assert np["egress"][1] == {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}
    # a CNP peer without namespace stays in the policy's namespace
    np, _ = cilium_to_network_policy({"endpointSelector": {}, "ingress": [{"fromEndpoints": [{}]}]}, clusterwide=False)
    assert np is not None and np["ingress"] == [{"from": [{"podSelector": {}}]}]
    for bad, where in (
        ({"endpointSelector": {}, "ingressDeny": [{}]}, "ingressDeny"),
        ({"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "x.io"}]}]}, "egress[0].toFQDNs"),
        ({"endpointSelector": {"matchLabels": {"reserved:health": ""}}, "ingress": [{}]}, "endpointSelector.matchLabels"),
        ({"endpointSelector": {}, "ingress": [{"fromEntities": ["host"]}]}, "ingress[0].fromEntities[0]"),
    ):
        with pytest.raises(Untranslatable) as err:
            cilium_to_network_policy(bad, clusterwide=True)
        assert err.value.path == where


def test_refusal_names_policy_rule_and_cluster() -> None:
    l7 = PolicySpec("api-l7", "namespace", (PolicyRule("get-only", "cilium", {
        "endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                                          "rules": {"http": [{"method": "GET"}]}}]}]}),))
    with pytest.raises(RenderError) as err:
        render_cluster(_policy_set(CALICO, "primary-cni", [l7]))
    text = str(err.value)
    assert "api-l7 v1 rule get-only for cluster cal" in text
    assert "spec.ingress[0].toPorts[0].rules" in text and "L7 rules" in text
    # restricted to Cilium, it is skipped there with a note instead
    only = PolicySpec("api-l7", "namespace", l7.rules, enforcers=("cilium",))
    assert render_cluster(_policy_set(CALICO, "primary-cni", [only])).objects == ()

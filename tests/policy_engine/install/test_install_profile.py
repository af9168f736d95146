"""The support matrix row by row, and the Helm values / ConfigMap per primary CNI (cilium-chaining.md)."""

from __future__ import annotations

import json

import pytest

from policy_engine.install_profile import (
    CLUSTER_TYPES,
    PRIMARY_CNIS,
    InstallPlan,
    UnsupportedCombination,
    check_support,
    render_install,
)

# (cluster type, CNI, supported, chaining supported, recommendation): the table, expanded.
MATRIX = [
    ("AKS", "azure", True, True, "Azure's policy enforcement, or Cilium in chaining mode"),
    ("AKS", "calico", True, True, "Calico's enforcement, or Cilium in chaining mode"),
    ("AKS", "kubenet", False, False, "not supported"),
    (
        "AKS",
        "azure-cni-overlay",
        True,
        False,
        "azure-cni-overlay with Cilium dataplane, or Cilium in chaining mode",
    ),
    ("EKS", "aws-cni", True, True, "aws-cni's enforcement, or Cilium in chaining mode"),
    ("EKS", "calico", True, True, "Calico's enforcement, or Cilium in chaining mode"),
    ("MKS", "calico", True, True, "Calico's enforcement, or Cilium in chaining mode"),
    ("upstream", "calico", True, True, "Calico's enforcement, or Cilium in chaining mode"),
    ("bare-metal", "calico", True, True, "Calico's enforcement, or Cilium in chaining mode"),
    ("VM", "calico", True, True, "Calico's enforcement, or Cilium in chaining mode"),
    ("MicroK8s", "calico", True, True, "Calico's enforcement, or Cilium in chaining mode"),
    ("MKS", "canal", True, True, "Cilium in chaining mode"),
] + [(t, "cilium", True, False, "Cilium's own enforcement; install nothing") for t in CLUSTER_TYPES]


@pytest.mark.parametrize(("ctype", "cni", "supported", "chaining", "rec"), MATRIX)
def test_matrix_rows(ctype: str, cni: str, supported: bool, chaining: bool, rec: str) -> None:
    d = check_support(ctype, cni)
    assert (d.supported, d.chaining_supported, d.recommendation) == (supported, chaining, rec)


def test_combinations_outside_the_matrix_are_unsupported() -> None:
    listed = {(t, c) for t, c, *_ in MATRIX}
    for ctype in CLUSTER_TYPES:
        for cni in PRIMARY_CNIS:
            if (ctype, cni) not in listed:
                d = check_support(ctype, cni)
                assert not d.supported and not d.chaining_supported, (ctype, cni)
                assert "not in the support matrix" in d.recommendation
                with pytest.raises(UnsupportedCombination) as info:
                    render_install("c", ctype, cni)
                assert info.value.recommendation == d.recommendation


def test_names_are_normalised_and_unknown_names_rejected() -> None:
    assert check_support("eks", "AWS-CNI").chaining_supported
    assert check_support("bare metal", "calico").supported
    with pytest.raises(ValueError, match="unknown cluster type 'GKE'"):
        check_support("GKE", "calico")
    with pytest.raises(ValueError, match="unknown primary CNI 'weave'"):
        check_support("EKS", "weave")


def test_kubenet_refused_with_recommendation() -> None:
    with pytest.raises(UnsupportedCombination) as info:
        render_install("c", "AKS", "kubenet")
    assert info.value.recommendation == "not supported"
    assert "AKS with primary CNI kubenet is not supported" in str(info.value)


@pytest.mark.parametrize(("ctype", "cni"), [(t, c) for t, c, s, ch, _ in MATRIX if ch])
def test_every_chaining_row_renders_common_values(ctype: str, cni: str) -> None:
    plan = render_install("prod-1", ctype, cni, policy_enforcement_mode="always", audit_mode=True)
    v = plan.helm_values
    assert not plan.installs_nothing and plan.engine == "cilium-chaining"
    assert v["routingMode"] == "native" and v["enableIPv4Masquerade"] is False
    assert v["policyEnforcementMode"] == "always" and v["policyAuditMode"] is True
    assert v["hubble"] == {"enabled": True, "relay": {"enabled": True}}
    assert v["cluster"]["name"] == "prod-1"
    assert any("restart" in n for n in plan.notes)
    assert plan.policy_kinds == ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")


def test_aws_cni_values() -> None:
    plan = render_install("eks-1", "EKS", "aws-cni")
    v = plan.helm_values
    assert v["cni"] == {"chainingMode": "aws-cni", "exclusive": False}
    assert v["endpointRoutes"] == {"enabled": True}
    assert v["policyEnforcementMode"] == "default" and v["policyAuditMode"] is False
    assert plan.objects == []  # aws-cni chaining needs no custom CNI config
    args = plan.helm_set_args()
    for flag in (
        "--set cni.chainingMode=aws-cni",
        "--set cni.exclusive=false",
        "--set enableIPv4Masquerade=false",
        "--set routingMode=native",
        "--set endpointRoutes.enabled=true",
        "--set hubble.relay.enabled=true",
    ):
        assert flag in args
    assert any("1.11.2" in n for n in plan.notes)


def _conflist(plan: InstallPlan) -> dict:
    (cm,) = plan.objects
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "cni-configuration"
    assert cm["metadata"]["namespace"] == "kube-system"
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "netwarden"
    return json.loads(cm["data"]["cni-config"])


@pytest.mark.parametrize("ctype", ["EKS", "AKS", "MKS", "upstream", "bare-metal", "VM", "MicroK8s"])
def test_calico_values_and_configmap(ctype: str) -> None:
    plan = render_install("c", ctype, "calico")
    v = plan.helm_values
    assert v["cni"] == {"chainingMode": "generic-veth", "customConf": True, "configMap": "cni-configuration"}
    assert "exclusive" not in v["cni"]  # the Calico guide leaves cni.exclusive at its default
    assert v["enableIdentityMark"] is False and "endpointRoutes" not in v
    conf = _conflist(plan)
    assert conf["name"] == "generic-veth" and conf["cniVersion"] == "0.3.1"
    assert [p["type"] for p in conf["plugins"]] == ["calico", "portmap", "cilium-cni"]
    assert conf["plugins"][0]["ipam"] == {"type": "calico-ipam"} and conf["plugins"][0]["mtu"] == 1440


def test_azure_values_and_configmap() -> None:
    plan = render_install("aks-1", "AKS", "azure")
    v = plan.helm_values
    assert v["cni"] == {
        "chainingMode": "generic-veth",
        "customConf": True,
        "exclusive": False,
        "configMap": "cni-configuration",
    }
    assert v["nodeinit"] == {"enabled": True} and v["endpointRoutes"] == {"enabled": True}
    conf = _conflist(plan)
    assert conf["name"] == "azure" and conf["cniVersion"] == "0.3.0"
    assert conf["plugins"][0] == {
        "type": "azure-vnet",
        "mode": "transparent",
        "ipam": {"type": "azure-vnet-ipam"},
    }
    assert [p["type"] for p in conf["plugins"]] == ["azure-vnet", "portmap", "cilium-cni"]


def test_canal_uses_generic_veth_and_says_it_is_an_inference() -> None:
    plan = render_install("mks-1", "MKS", "canal")
    assert plan.helm_values["cni"]["chainingMode"] == "generic-veth"
    assert _conflist(plan)["plugins"][-1] == {"type": "cilium-cni", "chaining-mode": "generic-veth"}
    assert any("inference" in n for n in plan.notes)
    with pytest.raises(UnsupportedCombination, match="Cilium in chaining mode"):
        render_install("mks-1", "MKS", "canal", engine="primary-cni")


@pytest.mark.parametrize("ctype", CLUSTER_TYPES)
@pytest.mark.parametrize("engine", ["cilium-chaining", "cilium-primary", "primary-cni"])
def test_cilium_primary_installs_nothing(ctype: str, engine: str) -> None:
    plan = render_install("c", ctype, "cilium", engine=engine)
    assert plan.installs_nothing and plan.helm_values == {} and plan.objects == []
    assert plan.policy_kinds == ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")


@pytest.mark.parametrize(
    ("ctype", "cni"),
    [("AKS", "azure"), ("AKS", "calico"), ("EKS", "aws-cni"), ("EKS", "calico"), ("upstream", "calico")],
)
def test_primary_cni_enforcement_installs_nothing_and_uses_networkpolicy(ctype: str, cni: str) -> None:
    plan = render_install("c", ctype, cni, engine="primary-cni")
    assert plan.installs_nothing and plan.helm_values == {} and plan.objects == []
    assert plan.policy_kinds == ("NetworkPolicy",)
    assert any("one NetworkPolicy per namespace" in n for n in plan.notes)


def test_cilium_primary_engine_requires_cilium_as_the_cni() -> None:
    with pytest.raises(UnsupportedCombination) as info:
        render_install("c", "EKS", "aws-cni", engine="cilium-primary")
    assert info.value.recommendation == "aws-cni's enforcement, or Cilium in chaining mode"


def test_azure_cni_overlay() -> None:
    with pytest.raises(UnsupportedCombination) as info:
        render_install("c", "AKS", "azure-cni-overlay")
    assert info.value.recommendation.startswith("azure-cni-overlay with Cilium dataplane")
    plan = render_install("c", "AKS", "azure-cni-overlay", engine="primary-cni")
    assert plan.installs_nothing and plan.policy_kinds == ("NetworkPolicy",)


def test_bad_engine_and_mode() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        render_install("c", "EKS", "aws-cni", engine="calico")
    with pytest.raises(ValueError, match="policy enforcement mode"):
        render_install("c", "EKS", "aws-cni", policy_enforcement_mode="strict")


def test_to_dict_is_json_serialisable() -> None:
    d = render_install("c", "AKS", "azure").to_dict()
    assert json.loads(json.dumps(d))["helmValues"]["cni"]["configMap"] == "cni-configuration"
    assert d["objects"][0]["kind"] == "ConfigMap"

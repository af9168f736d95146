"""`netwarden policy check`: output shape, and one clear line (field and value) with exit 2 on bad input."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from netwarden import cli
from policy_engine.evaluator import DROP_POLICY_DENIED, DROP_POLICY_DENY, PolicyEvaluator, parse_pod

BASE: dict[str, Any] = {
    "namespaces": {"x": {"ns": "x"}, "y": {"ns": "y"}},
    "pods": [
        {
            "namespace": "x",
            "name": "a",
            "labels": {"pod": "a"},
            "ip": "10.0.1.1",
            "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
        },
        {"namespace": "y", "name": "b", "labels": {"pod": "b"}, "ip": "10.0.2.1", "ports": []},
    ],
    "policies": [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "a-from-y", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                        "ports": [{"port": "http"}],
                    }
                ],
            },
        },
    ],
    "probes": [{"from": "y/b", "to": "x/a", "port": 80, "protocol": "TCP"}],
}


def test_policy_check_is_registered() -> None:
    assert "netwarden.commands.policy_check" in cli.COMMAND_MODULES


def test_output_keeps_probe_and_adds_verdict(run_check) -> None:
    doc = copy.deepcopy(BASE)
    doc["probes"] = [
        {"from": "y/b", "to": "x/a", "port": 80, "protocol": "TCP", "label": "kept as given"},
        {"from": "10.0.2.1", "to": "10.0.1.1", "port": 81, "protocol": "TCP"},  # pod IPs resolve to pods
    ]
    code, out, err = run_check(doc)
    assert code == 0, err
    first, second = out["probes"]
    assert first["label"] == "kept as given"
    assert first["allowed"] is True
    assert first["allowed_by"] == [
        {"kind": "NetworkPolicy", "namespace": "x", "name": "a-from-y", "direction": "ingress"}
    ]
    assert first["denied_by"] == [] and isinstance(first["reason"], str)
    assert second["allowed"] is False and second["drop_reason"] == DROP_POLICY_DENIED
    assert "x/a" in second["reason"] and "a-from-y" in second["reason"]


def _broken(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


SELECTOR = ["policies", 0, "spec", "ingress", 0, "from", 0, "namespaceSelector"]


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        (_broken(["probes"], KeyError), ["probes", "missing"]),
        (_broken(["probes", 0, "to"], KeyError), ["probes[0].to", "missing"]),
        (_broken(["probes", 0, "from"], "x/nope"), ["probes[0].from", "x/nope"]),
        (_broken(["probes", 0, "to"], "not-an-ip"), ["probes[0].to", "not-an-ip"]),
        (_broken(["probes", 0, "port"], 70000), ["probes[0].port", "70000"]),
        (_broken(["probes", 0, "protocol"], "GRE"), ["probes[0].protocol", "GRE"]),
        (
            _broken(["probes", 0], {"from": "y/b", "to": "x/a", "protocol": "ICMP", "port": 300}),
            ["probes[0].port", "300", "ICMP type (0-255)"],
        ),
        (_broken(["probes", 0, "port"], KeyError), ["probes[0].port", "missing"]),
        (_broken(["pods", 1, "name"], KeyError), ["pods[1].name", "missing"]),
        (_broken(["pods", 1, "namespace"], "q"), ["q", "namespace"]),
        (_broken(["pods", 0, "ip"], "10.0.1"), ["pods[0].ip", "10.0.1"]),
        (_broken(["engine"], "calico"), ["engine", "calico"]),
        (_broken(["policies", 0, "kind"], "NetPol"), ["policies[0].kind", "NetPol"]),
        (_broken(["policies", 0, "metadata", "namespace"], KeyError), ["policies[0].metadata.namespace"]),
        (
            _broken(SELECTOR, {"matchExpressions": [{"key": "ns", "operator": "in", "values": ["y"]}]}),
            ["namespaceSelector.matchExpressions[0].operator", "'in'"],
        ),
        (
            _broken(SELECTOR, {"matchExpressions": [{"key": "ns", "operator": "Exists", "values": ["y"]}]}),
            ["matchExpressions[0].values", "Exists"],
        ),
        (_broken(SELECTOR, {"matchLabels": ["ns"]}), ["namespaceSelector.matchLabels", "['ns']"]),
        (
            _broken(["policies", 0, "spec", "ingress", 0, "ports", 0], {"port": "http", "endPort": 90}),
            ["ports[0].endPort", "http"],
        ),
        (
            _broken(["policies", 0, "spec", "ingress", 0, "from", 0], {"ipBlock": {"cidr": "10.0.0.0/33"}}),
            ["ipBlock.cidr", "10.0.0.0/33"],
        ),
        ("{not json", ["invalid JSON", "line 1"]),
    ],
)
def test_bad_input_is_one_clear_line(run_check, doc: Any, needles: list[str]) -> None:
    code, out, err = run_check(doc)
    assert code == 2 and out is None
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def test_cilium_entity_validation(run_check) -> None:
    doc = copy.deepcopy(BASE)
    doc["engine"] = "cilium"
    doc["policies"] = [
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["planet"]}]},
        }
    ]
    code, _, err = run_check(doc)
    assert code == 2 and "policies[0].spec.ingress[0].fromEntities[0]" in err and "planet" in err


def test_evaluator_api_without_cli() -> None:
    pods = [parse_pod(p, f"pods[{i}]") for i, p in enumerate(BASE["pods"])]
    deny = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "no-y"},
        "spec": {
            "endpointSelector": {},
            "ingressDeny": [
                {
                    "fromEndpoints": [
                        {"matchLabels": {"ns-missing": "1"}},
                        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "y"}},
                    ]
                }
            ],
        },
    }
    evaluator = PolicyEvaluator(BASE["namespaces"], pods, [*BASE["policies"], deny], "cilium")
    verdict = evaluator.check("y/b", "x/a", 80)
    assert not verdict.allowed and verdict.drop_reason == DROP_POLICY_DENY
    assert verdict.denied_by == [
        {"kind": "CiliumClusterwideNetworkPolicy", "namespace": "", "name": "no-y", "direction": "ingress"}
    ]
    assert verdict.denied_direction == "ingress"
    # The same policies on the kubernetes engine: the CCNP is ignored and a note says so.
    k8s = PolicyEvaluator(BASE["namespaces"], pods, [*BASE["policies"], deny], "kubernetes").check(
        "y/b", "x/a", 80
    )
    assert k8s.allowed and any("does not enforce Cilium policies" in n for n in k8s.notes)

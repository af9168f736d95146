"""Validation of CNP/CCNP against the real Cilium CRD schemas and of NetworkPolicy against Kubernetes'."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from policy_engine import validation
from policy_engine.validation import PolicyValidationError, validate_object, validate_spec, validation_errors

SHARED = validation.shared_crd_directory()
EXAMPLES = sorted((SHARED / "examples").rglob("*.yaml")) if SHARED else []
NEGATIVE = {"l3_match-expressions_and-statement.yaml", "l3_match-expressions_or-statement.yaml"}
needs_shared = pytest.mark.skipif(SHARED is None, reason="../shared/reference/cilium-crds not present")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _refusal(obj: dict) -> PolicyValidationError:
    with pytest.raises(PolicyValidationError) as info:
        validate_object(obj)
    return info.value


def cnp(spec: dict, **meta: str) -> dict:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", **meta},
        "spec": spec,
    }


def np(spec: dict, name: str = "np") -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": spec,
    }


# ----------------------------------------------------------------------------- schema sources


@needs_shared
def test_vendored_crds_equal_shared_copy() -> None:
    for name in validation.CRD_FILES.values():
        assert (validation.SCHEMA_DIR / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_vendored_copy_is_preferred_and_env_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NETWARDEN_CILIUM_CRDS", raising=False)
    assert validation.crd_directory() == validation.SCHEMA_DIR
    monkeypatch.setenv("NETWARDEN_CILIUM_CRDS", str(tmp_path))
    assert validation.crd_directory() == tmp_path


# ----------------------------------------------------------------------------- the Cilium examples


@needs_shared
@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.name not in NEGATIVE], ids=lambda p: p.name)
def test_every_positive_example_validates(path: Path) -> None:
    for doc in _docs(path):
        validate_object(doc)


@needs_shared
@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_match_expressions_examples_are_refused_at_the_operator(name: str) -> None:
    (path,) = [p for p in EXAMPLES if p.name == name]
    (doc,) = _docs(path)
    err = _refusal(doc)
    # Lower-case "in" is not one of the CRD's operator enum values In/NotIn/Exists/DoesNotExist.
    assert err.path == "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator"
    assert err.value == "in"
    assert err.kind == "CiliumNetworkPolicy" and err.name == doc["metadata"]["name"]
    assert "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator" in str(err) and '"in"' in str(err)
    assert "\n" not in str(err)
    # Both expressions are wrong; every fault is kept, in document order.
    assert [e.path for e in err.errors][1].endswith(".operator") and len(err.errors) == 2


@needs_shared
def test_negative_example_with_operator_fixed_validates() -> None:
    (doc,) = _docs(next(p for p in EXAMPLES if p.name == "l3_match-expressions_or-statement.yaml"))
    for sel in doc["spec"]["ingress"][0]["fromEndpoints"]:
        sel["matchExpressions"][0]["operator"] = "In"
    validate_object(doc)


# ----------------------------------------------------------------------------- hand-written invalid CNP/CCNP

SEL = {"matchLabels": {"app": "web"}}


@pytest.mark.parametrize(
    ("spec", "path", "value", "words"),
    [
        (
            {"endpointSelector": SEL, "ingress": [{"fromEndpoint": [SEL]}]},
            "spec.ingress[0].fromEndpoint",
            [SEL],
            "unknown field",
        ),
        (
            {"endpointSelector": SEL, "nodeSelector": SEL},
            "spec",
            {"endpointSelector": SEL, "nodeSelector": SEL},
            "exactly one of endpointSelector, nodeSelector",
        ),
        ({"ingress": [{}]}, "spec", None, "exactly one of endpointSelector, nodeSelector must be set"),
        (
            {"endpointSelector": SEL, "ingress": [{"toPorts": [{"ports": [{"port": "99999"}]}]}]},
            "spec.ingress[0].toPorts[0].ports[0].port",
            "99999",
            "0-65535",
        ),
        (
            {
                "endpointSelector": SEL,
                "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]}],
            },
            "spec.ingress[0].toPorts[0].ports[0].protocol",
            "tcp",
            "supported values",
        ),
        (
            {"endpointSelector": SEL, "ingress": [{"toPorts": [{"ports": [{"port": True}]}]}]},
            "spec.ingress[0].toPorts[0].ports[0].port",
            True,
            "must be of type string",
        ),
        (
            {"endpointSelector": SEL, "egress": [{"toCIDR": ["10.0.0.0/33"]}]},
            "spec.egress[0].toCIDR[0]",
            "10.0.0.0/33",
            "cidr",
        ),
        (
            {"endpointSelector": SEL, "egress": [{"toEntities": ["internet"]}]},
            "spec.egress[0].toEntities[0]",
            "internet",
            "supported values",
        ),
        (
            {"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
            "spec.endpointSelector.matchExpressions[0].values",
            None,
            "must be specified",
        ),
        (
            {
                "endpointSelector": {
                    "matchExpressions": [{"key": "app", "operator": "Exists", "values": ["a"]}]
                }
            },
            "spec.endpointSelector.matchExpressions[0].values",
            ["a"],
            "may not be specified",
        ),
        (
            {
                "endpointSelector": SEL,
                "egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]}],
            },
            "spec.egress[0].toCIDRSet[0].except[0]",
            "192.168.0.0/16",
            "subset of cidr",
        ),
        (
            {"endpointSelector": SEL, "egress": [{"toFQDNs": [{"matchName": "a" * 40 + "!"}]}]},
            "spec.egress[0].toFQDNs[0].matchName",
            "a" * 40 + "!",
            "regular expression",
        ),
        (
            {
                "endpointSelector": SEL,
                "egress": [{"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": [{}]}}]}],
            },
            "spec.egress[0].toPorts[0].rules.dns[0]",
            None,
            "exactly one of matchName, matchPattern must be set",
        ),
        (
            {
                "endpointSelector": SEL,
                "ingressDeny": [
                    {
                        "fromEntities": ["world"],
                        "toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{}]}}],
                    }
                ],
            },
            "spec.ingressDeny[0].toPorts[0].rules",
            {"http": [{}]},
            "unknown field",
        ),
        # The agent's ICMP checks, which the CRD schema lets through (pkg/policy/api icmp.go, rule_validation.go).
        (
            {
                "endpointSelector": SEL,
                "ingress": [
                    {
                        "fromEntities": ["world"],
                        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
                        "icmps": [{"fields": [{"type": 8}]}],
                    }
                ],
            },
            "spec.ingress[0].icmps",
            None,
            "may not be combined with toPorts",
        ),
        (
            {"endpointSelector": SEL, "egress": [{"icmps": [{"fields": [{"type": "PacketTooBig"}]}]}]},
            "spec.egress[0].icmps[0].fields[0].type",
            "PacketTooBig",
            "not an IPv4 ICMP type name",
        ),
        (
            {
                "endpointSelector": SEL,
                "egressDeny": [{"icmps": [{"fields": [{"type": "Echo", "family": "IPv6"}]}]}],
            },
            "spec.egressDeny[0].icmps[0].fields[0].type",
            "Echo",
            "not an IPv6 ICMP type name",
        ),
    ],
)
def test_invalid_cilium_rules_are_refused_with_the_path(
    spec: dict, path: str, value: object, words: str
) -> None:
    err = _refusal(cnp(spec))
    assert (err.path, err.value) == (path, value), str(err)
    assert words in err.message
    assert str(err).startswith('CiliumNetworkPolicy "p": ' + path + ":")


def test_valid_edge_cases_are_accepted() -> None:
    validate_object(
        cnp(
            {
                "endpointSelector": {},
                "ingress": None,
                "egress": [{"toPorts": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}],
            }
        )
    )
    validate_object(
        cnp(
            {
                "endpointSelector": SEL,
                "egress": [{"icmps": [{"fields": [{"type": 8}, {"type": "EchoRequest", "family": "IPv6"}]}]}],
            }
        )
    )
    validate_object(cnp({"nodeSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]}))
    # Cilium's label sources ("k8s:") are fine in Cilium selectors.
    validate_object(
        cnp(
            {
                "endpointSelector": {
                    "matchExpressions": [
                        {"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["a"]}
                    ]
                }
            }
        )
    )
    validate_object(
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "multi", "namespace": "x"},
            "specs": [{"endpointSelector": {}, "ingress": [{}]}, {"endpointSelector": SEL, "egress": [{}]}],
        }
    )


def test_icmp_type_pattern_and_int_or_string() -> None:
    err = _refusal(cnp({"endpointSelector": SEL, "egress": [{"icmps": [{"fields": [{"type": "Ping"}]}]}]}))
    assert err.path == "spec.egress[0].icmps[0].fields[0].type" and err.value == "Ping"


def test_object_level_checks() -> None:
    ccnp = cnp({"endpointSelector": {}}, namespace="x")
    ccnp["kind"] = "CiliumClusterwideNetworkPolicy"
    assert _refusal(ccnp).path == "metadata.namespace"
    assert (
        _refusal({**cnp({"endpointSelector": {}}), "metadata": {"name": "Bad_Name"}}).path == "metadata.name"
    )
    assert _refusal({**cnp({"endpointSelector": {}}), "apiVersion": "cilium.io/v1"}).path == "apiVersion"
    assert _refusal({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}).path == "kind"
    empty = cnp({})
    del empty["spec"]
    assert "spec or specs" in _refusal(empty).message
    labelled = cnp({"endpointSelector": {}}, labels={"app.kubernetes.io/managed-by": "net warden"})  # type: ignore[arg-type]
    assert _refusal(labelled).path == "metadata.labels[app.kubernetes.io/managed-by]"


def test_validate_spec_wraps_a_bare_rule() -> None:
    validate_spec(
        "CiliumClusterwideNetworkPolicy", {"endpointSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]}
    )
    with pytest.raises(PolicyValidationError) as info:
        validate_spec(
            "NetworkPolicy", {"podSelector": {}, "policyTypes": ["ingress"]}, name="deny", namespace="a"
        )
    assert info.value.path == "spec.policyTypes[0]" and info.value.value == "ingress"


# ----------------------------------------------------------------------------- NetworkPolicy

VALID_NP = np(
    {
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {
                        "namespaceSelector": {"matchLabels": {"project": "myproject"}},
                        "podSelector": {
                            "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["x"]}]
                        },
                    },
                    {"podSelector": {}},
                ],
                "ports": [
                    {"protocol": "TCP", "port": 6379},
                    {"port": "http"},
                    {"protocol": "SCTP", "port": 32000, "endPort": 32768},
                ],
            }
        ],
        "egress": [
            {"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}], "ports": [{"protocol": "UDP", "port": 53}]},
            {},
        ],
    }
)


def test_valid_networkpolicy() -> None:
    validate_object(VALID_NP)
    validate_object(np({"podSelector": {}}))
    validate_object(np({"podSelector": {}, "ingress": [], "egress": None}))


def _np_with(mutate) -> dict:  # type: ignore[no-untyped-def]
    obj = copy.deepcopy(VALID_NP)
    mutate(obj["spec"])
    return obj


@pytest.mark.parametrize(
    ("mutate", "path", "value"),
    [
        (lambda s: s.pop("podSelector"), "spec.podSelector", None),
        (lambda s: s["policyTypes"].append("Forward"), "spec.policyTypes", ["Ingress", "Egress", "Forward"]),
        (lambda s: s.update(policyTypes=["ingress"]), "spec.policyTypes[0]", "ingress"),
        (
            lambda s: s["ingress"][0]["ports"][0].update(protocol="ICMP"),
            "spec.ingress[0].ports[0].protocol",
            "ICMP",
        ),
        (lambda s: s["ingress"][0]["ports"][0].update(port=0), "spec.ingress[0].ports[0].port", 0),
        (lambda s: s["ingress"][0]["ports"][0].update(port=70000), "spec.ingress[0].ports[0].port", 70000),
        (lambda s: s["ingress"][0]["ports"][1].update(port="Http"), "spec.ingress[0].ports[1].port", "Http"),
        (lambda s: s["ingress"][0]["ports"][1].update(port="8080"), "spec.ingress[0].ports[1].port", "8080"),
        (
            lambda s: s["ingress"][0]["ports"][1].update(port="very-long-port-name"),
            "spec.ingress[0].ports[1].port",
            "very-long-port-name",
        ),
        (lambda s: s["ingress"][0]["ports"][1].update(endPort=90), "spec.ingress[0].ports[1].endPort", 90),
        (
            lambda s: s["ingress"][0]["ports"][2].update(endPort=31000),
            "spec.ingress[0].ports[2].endPort",
            31000,
        ),
        (lambda s: s["ingress"][0]["ports"][2].pop("port"), "spec.ingress[0].ports[2].endPort", 32768),
        (
            lambda s: s["ingress"][0]["from"][0]["ipBlock"].update(cidr="172.17.0.0"),
            "spec.ingress[0].from[0].ipBlock.cidr",
            "172.17.0.0",
        ),
        (
            lambda s: (
                s["ingress"][0]["from"][0]["ipBlock"].update(except_=1)
                or s["ingress"][0]["from"][0]["ipBlock"].pop("except_")
            ),
            None,
            None,
        ),
        (
            lambda s: s["ingress"][0]["from"][0]["ipBlock"]["except"].append("10.0.0.0/8"),
            "spec.ingress[0].from[0].ipBlock.except[1]",
            "10.0.0.0/8",
        ),
        (
            lambda s: s["ingress"][0]["from"][0]["ipBlock"]["except"].append("172.17.0.0/16"),
            "spec.ingress[0].from[0].ipBlock.except[1]",
            "172.17.0.0/16",
        ),
        (lambda s: s["ingress"][0]["from"][0].update(podSelector={}), "spec.ingress[0].from[0]", None),
        (lambda s: s["ingress"][0]["from"].append({}), "spec.ingress[0].from[3]", {}),
        (
            lambda s: s["ingress"][0]["from"][1]["podSelector"]["matchExpressions"][0].update(values=[]),
            "spec.ingress[0].from[1].podSelector.matchExpressions[0].values",
            [],
        ),
        (
            lambda s: s["ingress"][0]["from"][1]["podSelector"]["matchExpressions"][0].update(operator="in"),
            "spec.ingress[0].from[1].podSelector.matchExpressions[0].operator",
            "in",
        ),
        (
            lambda s: s["ingress"][0]["from"][1]["podSelector"]["matchExpressions"][0].update(key="bad key"),
            "spec.ingress[0].from[1].podSelector.matchExpressions[0].key",
            "bad key",
        ),
        (
            lambda s: s["podSelector"]["matchLabels"].update(app="x" * 64),
            "spec.podSelector.matchLabels.app",
            "x" * 64,
        ),
        (lambda s: s["egress"][0].update(ports={"port": 53}), "spec.egress[0].ports", {"port": 53}),
        (
            lambda s: (
                s["egress"][0].update(from_=[])
                or s["egress"][0].update({"from": s["egress"][0].pop("from_")})
            ),
            "spec.egress[0].from",
            [],
        ),
    ],
)
def test_invalid_networkpolicy_is_refused_with_the_path(mutate, path: str | None, value: object) -> None:  # type: ignore[no-untyped-def]
    obj = _np_with(mutate)
    if path is None:
        validate_object(obj)
        return
    err = _refusal(obj)
    if err.path == "spec.ingress[0].from[0]":
        assert "ipBlock" in err.message
    else:
        assert (err.path, err.value) == (path, value), str(err)
    assert err.kind == "NetworkPolicy" and err.name == "np"


def test_networkpolicy_metadata_and_unknown_top_level_fields() -> None:
    assert _refusal({**VALID_NP, "metadata": {"namespace": "x"}}).path == "metadata.name"
    assert _refusal({**VALID_NP, "metadata": {"name": "a", "namespace": "X_y"}}).path == "metadata.namespace"
    assert _refusal({**VALID_NP, "status": {}}).path == "status"
    assert _refusal({**VALID_NP, "apiVersion": "extensions/v1beta1"}).path == "apiVersion"


def test_all_errors_are_listed_in_document_order() -> None:
    bad = np(
        {"podSelector": {}, "policyTypes": ["X"], "ingress": [{"ports": [{"port": 0, "protocol": "tcp"}]}]}
    )
    paths = [e.path for e in validation_errors(bad)]
    assert paths == [
        "spec.policyTypes[0]",
        "spec.ingress[0].ports[0].port",
        "spec.ingress[0].ports[0].protocol",
    ]
    assert validation_errors(VALID_NP) == []

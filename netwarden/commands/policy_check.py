"""`netwarden policy check FILE.json`: verdicts for probes under a cluster's policies, with attribution."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from netwarden.cli import CommandError
from policy_engine.evaluator import (
    ECHO_REQUEST,
    PROBE_PROTOCOLS,
    PROTOCOL_ALIASES,
    Connection,
    EvaluatorInputError,
    PolicyEvaluator,
    evaluator_from_document,
)


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    check = groups["policy"].add_parser(
        "check",
        help="evaluate probes (from, to, port, protocol) against namespaces, pods and policies",
        description=(
            'FILE.json: {"namespaces": {ns: {labels}}, "pods": [{namespace, name, labels, ip, ports}], '
            '"policies": [NetworkPolicy / CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy objects], '
            '"probes": [{"from": "ns/pod" or IP, "to": "ns/pod" or IP, "port": 80, "protocol": "TCP"}] (protocol TCP, UDP, '
            'SCTP, ICMP or ICMPv6; for ICMP the port is the ICMP type, default echo request: 8, ICMPv6 128), '
            '"engine": "kubernetes" | "cilium" (default kubernetes), optional "entities": {IP: entity} '
            'and "policyEnforcementMode": "default" | "always" | "never"}. Prints the probes with verdicts as JSON.'
        ),
    )
    check.add_argument("file", metavar="FILE.json", help="cluster, policies and probes ('-' reads stdin)")
    check.set_defaults(handler=run_check)


def _load(path: str) -> Any:
    try:
        if path == "-":
            return json.load(sys.stdin)
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def check_probes(doc: Any) -> list[dict[str, Any]]:
    """The probes of `doc`, each with its verdict, in order. Raises EvaluatorInputError on bad input."""
    evaluator: PolicyEvaluator = evaluator_from_document(doc)
    if "probes" not in doc:
        raise EvaluatorInputError("probes: missing")
    probes = doc["probes"]
    if not isinstance(probes, list):
        raise EvaluatorInputError(f"probes: expected a list, got {probes!r}")
    results = []
    for i, probe in enumerate(probes):
        path = f"probes[{i}]"
        if not isinstance(probe, dict):
            raise EvaluatorInputError(f"{path}: expected an object, got {probe!r}")
        for key in ("from", "to"):
            if probe.get(key) is None:
                raise EvaluatorInputError(f"{path}.{key}: missing")
        protocol = probe.get("protocol") or "TCP"
        protocol = PROTOCOL_ALIASES.get(protocol, protocol)
        if protocol not in PROBE_PROTOCOLS:
            raise EvaluatorInputError(
                f"{path}.protocol: {probe['protocol']!r} is not one of {', '.join(PROBE_PROTOCOLS)}"
            )
        # An ICMP probe's port is the ICMP type; without one it is what `ping` sends (echo request).
        port = probe.get("port", ECHO_REQUEST.get(protocol))
        if port is None:
            raise EvaluatorInputError(f"{path}.port: missing")
        source = evaluator.endpoint(probe["from"], f"{path}.from")
        destination = evaluator.endpoint(probe["to"], f"{path}.to")
        try:
            verdict = evaluator.evaluate(Connection(source, destination, port, protocol))
        except EvaluatorInputError as exc:
            raise EvaluatorInputError(f"{path}.{exc}") from None
        results.append({**probe, "port": port, **verdict.to_dict()})
    return results


def run_check(args: argparse.Namespace) -> int:
    doc = _load(args.file)
    try:
        results = check_probes(doc)
    except EvaluatorInputError as exc:
        raise CommandError(f"{args.file}: {exc}") from None
    json.dump({"probes": results}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0

"""deploy/kubernetes: every overlay renders with `kubectl kustomize` (Debian's kubectl, installed by
scripts/setup), every object is valid for the API server (Kubernetes' schemas through kubernetes-validate,
strict: an unknown field fails; NetworkPolicy and CiliumNetworkPolicy also through policy_engine.validation;
ServiceMonitor through models generated from the prometheus-operator CRD), every container runs a real
`netwarden` command line, and the NetworkPolicies allow exactly the flows each component needs."""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
# The oldest and newest Kubernetes the manifests are checked against.
KUBERNETES_VERSIONS = ("1.29", "1.37")
# Secrets hold credentials and are created by the operator (README: "Deploying in scale mode"), never rendered.
EXTERNAL_SECRETS = re.compile(r"^(netwarden-clickhouse|hubble-relay-tls-[a-z0-9-]+)$")
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
CLUSTERS = {"single-cluster": {"local"}, "fleet": {"east", "west", "central"}}

Object = dict[str, Any]


@functools.cache
def render(overlay: str) -> tuple[Object, ...]:
    beside_python = Path(sys.executable).parent / "kubectl"  # scripts/setup's fallback: the PyPI wheel
    kubectl = shutil.which("kubectl") or (str(beside_python) if beside_python.exists() else None)
    assert kubectl, "kubectl is missing: scripts/setup installs it (Debian's kubernetes-client)"
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize overlays/{overlay}: {out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(objects: tuple[Object, ...], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[Object, ...], kind: str, name: str) -> Object:
    (found,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def containers(objects: tuple[Object, ...]) -> Iterator[tuple[Object, Object]]:
    for deployment in of_kind(objects, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


def component(deployment: Object) -> str:
    return str(deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def test_every_overlay_is_found() -> None:
    assert OVERLAYS == ["fleet", "single-cluster"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_api_server(overlay: str) -> None:
    import kubernetes_validate
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    from policy_engine.validation import validate_object

    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Deployment", "Service", "NetworkPolicy", "ServiceMonitor", "PersistentVolumeClaim"} <= kinds
    for obj in objects:
        where = f"{overlay}: {obj['kind']} {obj['metadata'].get('name')}"
        assert obj["kind"] == "Namespace" or obj["metadata"].get("namespace") == "netwarden", where
        if obj["kind"] == "ServiceMonitor":
            model = ServiceMonitor.model_validate(obj)
            # The models drop what they do not know: a round trip that loses a field found an unknown one.
            assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj, where
        elif obj["kind"] == "CiliumNetworkPolicy":
            validate_object(obj)
        else:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{where} (Kubernetes {version}): {exc.message} at {list(exc.path)}")
            if obj["kind"] == "NetworkPolicy":
                validate_object(obj)


def test_an_invalid_object_is_refused() -> None:
    """The validators above refuse what the API server refuses (so a pass means something)."""
    import kubernetes_validate
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    objects = render("single-cluster")
    deployment = named(objects, "Deployment", "netwarden-api")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[0], strict=True)
    monitor = named(objects, "ServiceMonitor", "netwarden-api")
    typo = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    assert ServiceMonitor.model_validate(typo).model_dump(by_alias=True, exclude_unset=True, mode="json") != typo


def environment(objects: tuple[Object, ...], container: Object) -> dict[str, str]:
    """The container's environment as the kubelet builds it; a secret's value stands in as `<secret>`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            secret = var["valueFrom"]["secretKeyRef"]["name"]
            assert EXTERNAL_SECRETS.match(secret), f"{secret}: not a Secret the README tells you to create"
            env[var["name"]] = "<secret>"
    return env


def command_line(objects: tuple[Object, ...], container: Object) -> argparse.Namespace:
    """The container's command parsed by netwarden's own CLI parser after the kubelet's $(VAR) expansion."""
    from netwarden.cli import build_parser

    assert container["command"] == ["netwarden"]
    env = environment(objects, container)
    args = []
    for arg in container["args"]:
        unknown = [v for v in VAR.findall(arg) if v not in env]
        assert not unknown, f"{container['name']}: {arg} uses {unknown}, which no ConfigMap or env defines"
        args.append(VAR.sub(lambda m: env[m.group(1)], arg))
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{container['name']}: `netwarden {' '.join(args)}` is not a valid command line")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_real_netwarden_commands(overlay: str) -> None:
    objects = render(overlay)
    commands: dict[str, list[argparse.Namespace]] = {}
    for deployment, container in containers(objects):
        parsed = command_line(objects, container)
        commands.setdefault(component(deployment), []).append(parsed)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if getattr(parsed, "metrics_port", None) is not None:
            assert ports["metrics"] == parsed.metrics_port
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                named(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
            if "secret" in volume:
                assert EXTERNAL_SECRETS.match(volume["secret"]["secretName"]), volume
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in {
            o["metadata"]["name"] for o in of_kind(objects, "ServiceAccount")
        }

    (api,) = commands["api"]
    assert api.command == "serve" and api.port == 8080 and api.kafka
    assert api.control_plane == "/var/lib/netwarden/control-plane"
    assert api.clickhouse is None, "the DSN (with its password) comes from NETWARDEN_CLICKHOUSE, not the args"
    (worker,) = commands["worker"]
    assert worker.command == "worker" and worker.kafka == api.kafka
    (publisher,) = commands["inventory-publisher"]
    assert (publisher.command, publisher.follow, publisher.data_dir) == ("admin", True, api.control_plane)
    collected = sorted(c.cluster for c in commands["collector"])
    assert collected == sorted(CLUSTERS[overlay]), "one collector per cluster"
    assert all(c.command == "collect" and c.kafka == api.kafka for c in commands["collector"])
    if overlay == "fleet":  # remote relays: mTLS with the cluster's own Secret
        assert all(c.tls_ca_cert and c.tls_client_cert and c.tls_client_key and c.tls_server_name
                   for c in commands["collector"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_collectors_and_replicas(overlay: str) -> None:
    from netwarden.embedded import StackConfig

    objects = render(overlay)
    deployments = of_kind(objects, "Deployment")
    # Deployments own disjoint sets of pods: a selector matching another Deployment's pods makes them fight.
    for a in deployments:
        for b in deployments:
            if a is not b:
                selector = a["spec"]["selector"]["matchLabels"].items()
                assert not selector <= b["spec"]["template"]["metadata"]["labels"].items(), (a, b)
    replicas = {component(d): d["spec"]["replicas"] for d in deployments}
    assert replicas["inventory-publisher"] == 1
    assert replicas["api"] >= 2, "several API replicas behind the Service"
    if overlay == "single-cluster":  # the workers create flows.raw with this many partitions
        assert replicas["worker"] <= StackConfig.partitions
    for service in of_kind(objects, "Service"):
        pods = [d for d in deployments
                if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {service['metadata']['name']} selects no pods"
        names = {p["name"] for d in pods for c in d["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    for monitor in of_kind(objects, "ServiceMonitor"):
        selected = [s for s in of_kind(objects, "Service")
                    if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert selected and all(
            {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in s["spec"]["ports"]}
            for s in selected
        ), monitor["metadata"]["name"]


# ---- NetworkPolicies: what each component may reach, and who may reach it -------------------------


def selects(selector: Object, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr  # the only operator the manifests use
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def peer(p: Object) -> str:
    if "ipBlock" in p:
        return f"ip {p['ipBlock']['cidr']}"
    ns = p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name", "*")
    pods = ",".join(f"{k}={v}" for k, v in sorted(p.get("podSelector", {}).get("matchLabels", {}).items()))
    return f"{ns}/{pods or '*'}"


def allowed(objects: tuple[Object, ...], labels: dict[str, str], direction: str) -> set[str]:
    """'peer port/proto' the policies selecting these pod labels allow in `direction` (ingress|egress)."""
    out = set()
    for policy in of_kind(objects, "NetworkPolicy"):
        spec = policy["spec"]
        if direction.capitalize() not in spec["policyTypes"] or not selects(spec["podSelector"], labels):
            continue
        for rule in spec.get(direction, []):
            peers = [peer(p) for p in rule.get("to" if direction == "egress" else "from", [])] or ["any"]
            for p in peers:
                for port in rule["ports"]:
                    out.add(f"{p} {port['port']}/{port['protocol']}")
    for policy in of_kind(objects, "CiliumNetworkPolicy"):
        if direction == "egress" and selects(policy["spec"]["endpointSelector"], labels):
            for rule in policy["spec"]["egress"]:
                for entity in rule["toEntities"]:
                    for port in rule["toPorts"][0]["ports"]:
                        out.add(f"entity {entity} {port['port']}/{port['protocol']}")
    return out


DNS = {"kube-system/k8s-app=kube-dns 53/UDP", "kube-system/k8s-app=kube-dns 53/TCP"}
KAFKA = {"kafka/* 9092/TCP"}
CLICKHOUSE = {"clickhouse/* 8123/TCP", "clickhouse/* 8443/TCP"}
SCRAPE = {"monitoring/* 9102/TCP"}
KUBE_APIS = {
    "single-cluster": {"entity kube-apiserver 443/TCP", "entity kube-apiserver 6443/TCP"},
    "fleet": {f"ip {cidr} {port}/TCP" for cidr in ("192.0.2.0/28", "198.51.100.0/28", "203.0.113.0/28")
              for port in (443, 6443)},
}
RELAYS = {
    "local": {"kube-system/k8s-app=hubble-relay 4245/TCP"},
    "east": {"ip 192.0.2.16/28 443/TCP"},
    "west": {"ip 198.51.100.16/28 443/TCP"},
    "central": {"ip 203.0.113.16/28 443/TCP"},
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_what_each_component_needs(overlay: str) -> None:
    objects = render(overlay)
    deny = named(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    expected = {
        "api": (DNS | KAFKA | CLICKHOUSE | KUBE_APIS[overlay], {"any 8080/TCP"}),
        "worker": (DNS | KAFKA | CLICKHOUSE, SCRAPE),
        "inventory-publisher": (DNS | KAFKA, set()),
    }
    seen_clusters = set()
    for deployment in of_kind(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        name = component(deployment)
        if name == "collector":
            cluster = labels["netwarden.io/cluster"]
            seen_clusters.add(cluster)
            egress, ingress = DNS | KAFKA | RELAYS[cluster], SCRAPE
        else:
            egress, ingress = expected[name]
        assert allowed(objects, labels, "egress") == egress, deployment["metadata"]["name"]
        assert allowed(objects, labels, "ingress") == ingress, deployment["metadata"]["name"]
    assert seen_clusters == CLUSTERS[overlay]

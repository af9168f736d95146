"""Acceptance: apply -> render -> sync against two local Kubernetes API stand-ins with different
primary CNIs (EKS/aws-cni with Cilium chaining; upstream/calico with Calico's own enforcement):
creates, updates, prunes and reports drift."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from netwarden.cli import main
from tests.kube_api_stub import KubeApiStub

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "gitops"
MANAGED = {"app.kubernetes.io/managed-by": "netwarden"}


def _names(stub: KubeApiStub, kind: str) -> set[str]:
    return {f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}".lstrip("/") for o in stub.objects(kind, labels=MANAGED)}


def test_apply_render_sync_two_clusters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (
        KubeApiStub(cilium=True, namespaces=("default", "kube-system", "web", "payments")) as eks,
        KubeApiStub(cilium=False, namespaces=("default", "kube-system", "web")) as calico,
    ):
        tree = tmp_path / "tree"
        shutil.copytree(EXAMPLE, tree)
        clusters = tree / "clusters.yaml"
        clusters.write_text(clusters.read_text()
                            .replace("kubeContext: eks-prod", f"apiServer: {eks.url}")
                            .replace("kubeContext: lab-calico", f"apiServer: {calico.url}"))
        data = ["--data-dir", str(tmp_path / "data")]

        def run(*argv: str, rc: int = 0) -> str:
            assert main([*argv, *data]) == rc, capsys.readouterr()
            return capsys.readouterr().out

        # apply, then idempotent re-apply
        assert "12 document(s), 12 change(s)" in run("apply", "-f", str(tree))
        assert "12 document(s), 0 change(s)" in run("apply", "-f", str(tree))

        # render: CCNP/CNP where Cilium (chained) enforces, NetworkPolicy per namespace where Calico does
        rendered = [d for d in yaml.safe_load_all(run("render", "--cluster", "eks-prod")) if d]
        assert {o["kind"] for o in rendered} == {"CiliumClusterwideNetworkPolicy", "CiliumNetworkPolicy"}
        out = run("render", "--cluster", "lab-calico")
        assert "one per namespace" in out
        assert {o["kind"] for o in yaml.safe_load_all(out) if o} == {"NetworkPolicy"}

        # sync creates everything
        out = run("sync")
        assert "status: synced" in out and "cluster eks-prod:" in out and "cluster lab-calico:" in out
        day0 = {"zero-trust-day0-default-deny", "zero-trust-day0-allow-dns", "zero-trust-day0-allow-kube-system",
                "zero-trust-day0-allow-host-probes", "zero-trust-day0-cilium-health"}
        assert _names(eks, "CiliumClusterwideNetworkPolicy") == day0
        assert _names(eks, "CiliumNetworkPolicy") == {"web/web-allow-frontend", "payments/payments-from-web"}
        assert _names(eks, "NetworkPolicy") == set()
        # the live namespace `default` also gets the per-namespace copies; kube-system never
        portable = ("zero-trust-day0-default-deny", "zero-trust-day0-allow-dns", "zero-trust-day0-allow-kube-system")
        assert _names(calico, "NetworkPolicy") == {f"{ns}/{p}" for ns in ("default", "web") for p in portable} | {
            "web/web-allow-frontend"}
        cnp = eks.get("CiliumNetworkPolicy", "web-allow-frontend", "web")
        assert cnp is not None and cnp["metadata"]["labels"]["netwarden.io/policy-version"] == "1"
        assert "5 created" not in run("sync") and "0 created, 0 updated" in run("sync", "--cluster", "lab-calico")

        # update: a new policy version reaches both clusters
        web = tree / "policies" / "web.yaml"
        web.write_text(web.read_text().replace('port: "8080"', 'port: "9090"'))
        assert "update    Policy web-allow-frontend (version 2)" in run("apply", "-f", str(tree))
        out = run("diff", "-f", str(tree))
        assert "store:\n  no changes" in out
        assert "CiliumNetworkPolicy web/web-allow-frontend: changed" in out
        out = run("sync")
        assert "updated CiliumNetworkPolicy web/web-allow-frontend" in out
        assert "updated NetworkPolicy web/web-allow-frontend" in out
        cnp = eks.get("CiliumNetworkPolicy", "web-allow-frontend", "web")
        assert cnp["metadata"]["labels"]["netwarden.io/policy-version"] == "2"
        assert cnp["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] == "9090"
        np = calico.get("NetworkPolicy", "web-allow-frontend", "web")
        assert np["spec"]["ingress"][0]["ports"][0] == {"protocol": "TCP", "port": 9090}

        # drift: hand edits and deletions are reported, then repaired by sync
        calico.edit("NetworkPolicy", "zero-trust-day0-default-deny", "web",
                    lambda o: o["spec"].update(policyTypes=["Ingress"], egress=None))
        eks.delete("CiliumClusterwideNetworkPolicy", "zero-trust-day0-allow-dns")
        out = run("diff", "-f", str(tree))
        assert "NetworkPolicy web/zero-trust-day0-default-deny: changed" in out
        assert "CiliumClusterwideNetworkPolicy zero-trust-day0-allow-dns: missing" in out
        out = run("sync")
        assert "drift: NetworkPolicy web/zero-trust-day0-default-deny: changed" in out
        assert "drift: CiliumClusterwideNetworkPolicy zero-trust-day0-allow-dns: missing" in out
        assert calico.get("NetworkPolicy", "zero-trust-day0-default-deny", "web")["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert eks.get("CiliumClusterwideNetworkPolicy", "zero-trust-day0-allow-dns") is not None
        assert "drift:" not in run("sync")

        # prune: dropping an assignment from Git removes its objects from the cluster
        assignments = tree / "assignments.yaml"
        assignments.write_text(assignments.read_text().split("---")[0])
        assert "delete    Assignment payments-ingress" in run("apply", "-f", str(tree), "--prune")
        out = run("diff", "-f", str(tree))
        assert "CiliumNetworkPolicy payments/payments-from-web: extra" in out
        out = run("sync", "--cluster", "eks-prod")
        assert "pruned  CiliumNetworkPolicy payments/payments-from-web" in out
        assert _names(eks, "CiliumNetworkPolicy") == {"web/web-allow-frontend"}
        # an engine the support matrix does not allow for a cluster is refused with the advice
        blueprints = tree / "blueprints.yaml"
        blueprints.write_text(blueprints.read_text().replace("engine: cilium-chaining", "engine: cilium-primary"))
        assert main(["apply", "-f", str(tree), *data]) == 2
        err = capsys.readouterr().err
        assert f"netwarden: {blueprints}: document 1 (Blueprint eks-zero-trust): spec.installProfile.engine: blueprint " \
               "eks-zero-trust wants engine cilium-primary on cluster eks-prod (EKS, primary CNI aws-cni)" in err
        assert "recommendation: aws-cni's enforcement, or Cilium in chaining mode" in err

        # an unreachable cluster is reported per cluster, the others still sync
        eks.stop()
        out = run("sync", rc=1)
        assert "cluster lab-calico:" in out and "status: error:" in out

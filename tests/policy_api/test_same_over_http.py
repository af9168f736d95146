"""The CLI over HTTP (`--server URL --token T`, the org admin's token) prints what it prints on a data directory
(the operator, org-admin): two stores seeded alike, the same commands, the same output, for apply of a
multi-document file, diff, get, render, policy history and rollback, install-profile, sync and its drift (each
data directory's clusters served by a kube API stand-in of its own), and admin listings."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube_api_stub import KubeApiStub
from tests.policy_api.conftest import SHOP_POLICY, Cli, Served, seed, served

NAMESPACES = ("default", "kube-system", "shop", "data", "monitoring")
CHANGE = SHOP_POLICY + """---
apiVersion: netwarden.io/v1
kind: Policy
metadata: {name: frontend-egress}
spec:
  scope: namespace
  mode: staged
  rules:
    - name: dns-only
      cilium:
        endpointSelector: {matchLabels: {app: frontend}}
        egress:
          - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}]
"""


class Both:
    """The same command on the local data directory and against the API."""

    def __init__(self, cli: Cli, local: Path, remote: Served) -> None:
        self.cli, self.local, self.remote = cli, local, remote

    def __call__(self, *argv: str, code: int = 0) -> tuple[str, str]:
        here = self.cli(*argv, "--data-dir", str(self.local), code=code)
        there = self.cli(*argv, "--server", self.remote.url, "--token", self.remote.tokens["org-admin"], code=code)
        return _same(here), _same(there)


def _same(output: tuple[str, str]) -> str:
    """Output with what rightly differs between the two stores masked: who wrote (the OS user vs olivia), when,
    and each cluster's kube API. (Where each version came from, `file#index`, is the same.)"""
    text = re.sub(r"http://127\.0\.0\.1:\d+", "KUBE-API", "".join(output))  # each store's own stand-in
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?", "TIME", text)
    text = re.sub(r'("(createdBy|updatedBy)": )"[^"]*"', r'\1"X"', text)
    return re.sub(r"^(\s*(createdBy|updatedBy): ).*$", r"\1X", text, flags=re.MULTILINE)


@pytest.fixture
def both(cli: Cli, tmp_path: Path) -> Iterator[tuple[Both, KubeApiStub, KubeApiStub]]:
    with KubeApiStub(namespaces=NAMESPACES) as kube_local, KubeApiStub(namespaces=NAMESPACES) as kube_remote:
        local = tmp_path / "local"
        seed(local, {"demo-east": kube_local.url})
        with served(tmp_path / "served", {"demo-east": kube_remote.url}) as remote:
            yield Both(cli, local, remote), kube_local, kube_remote


def test_policy_commands_print_the_same_locally_and_over_http(both: tuple[Both, KubeApiStub, KubeApiStub],
                                                              tmp_path: Path) -> None:
    run, _, _ = both
    change = tmp_path / "change.yaml"
    change.write_text(CHANGE)
    here, there = run("diff", "-f", str(change), "--no-live")
    assert here == there and "create    Policy shop-allow-web (version 1)" in here
    assert "cluster demo-east: staged objects (evaluated on flows, never synced)" in here
    here, there = run("apply", "-f", str(change))
    assert here == there and here.endswith("3 document(s), 3 change(s)\n")
    here, there = run("apply", "-f", str(change))  # idempotent
    assert here == there and here.endswith("3 document(s), 0 change(s)\n")
    change.write_text(CHANGE.replace('"8080"', '"8081"'))
    run("apply", "-f", str(change))
    here, there = run("policy", "rollback", "shop-allow-web", "--to", "1")
    assert here == there == "policy shop-allow-web: version 1 restored as version 3\n"
    here, there = run("policy", "history", "shop-allow-web", "-o", "json")
    assert here == there and [v["version"] for v in json.loads(here)] == [1, 2, 3]
    assert json.loads(here)[0]["source"].startswith(f"{change}#1")  # recorded over HTTP as locally
    for argv in (("get", "policies", "-o", "yaml"), ("get", "clusters", "-o", "json"), ("get", "assignments"),
                 ("get", "blueprints"), ("render", "--cluster", "demo-east"),
                 ("install-profile", "--cluster", "demo-east"),
                 ("admin", "project", "list", "-o", "json"), ("admin", "workspace", "list")):
        here, there = run(*argv)
        assert here == there, argv
    assert "CiliumNetworkPolicy" in run("render", "--cluster", "demo-east")[0]
    here, there = run("install-profile", "--cluster", "demo-west", "--engine", "cilium-primary", code=2)
    assert here == there and "recommendation: Calico's enforcement, or Cilium in chaining mode" in here
    # A bad document is refused with the same line, naming file, document and field.
    change.write_text(CHANGE.replace("mode: staged", "mode: sometimes"))
    here, there = run("apply", "-f", str(change), code=2)
    assert here == there and f"{change}: document 3 (Policy frontend-egress): spec.mode: expected one of" in here


def test_sync_status_drift_and_sync_over_http(both: tuple[Both, KubeApiStub, KubeApiStub], cli: Cli,
                                              tmp_path: Path) -> None:
    run, kube_local, kube_remote = both
    here, there = run("sync", "--cluster", "demo-east", "--dry-run")
    assert here == there and "status: drifted" in here and ": missing" in here
    here, there = run("sync", "--cluster", "demo-east")
    assert here == there and "status: synced" in here
    assert {o["metadata"]["name"] for o in kube_remote.objects("CiliumClusterwideNetworkPolicy")} == \
        {o["metadata"]["name"] for o in kube_local.objects("CiliumClusterwideNetworkPolicy")} != set()
    # Edited on the cluster by hand: the status over HTTP reports the drift, the next sync repairs it.
    for kube in (kube_local, kube_remote):
        kube.edit("CiliumClusterwideNetworkPolicy", "deny-cloud-metadata",
                  change=lambda o: o["spec"]["egressDeny"][0].update(toCIDR=["10.0.0.1/32"]))
    here, there = run("sync", "--cluster", "demo-east", "--dry-run")
    assert here == there and "drift: CiliumClusterwideNetworkPolicy deny-cloud-metadata: changed (spec.egressDeny[0].toCIDR[0]" in here
    remote = both[0].remote
    with remote.http("org-admin") as olivia:
        status = olivia.get("/api/v1/clusters/demo-east/sync").json()
    assert status["status"] == "drifted" and status["applied"] is False
    assert [(d["name"], d["drift"]) for d in status["drift"]] == [("deny-cloud-metadata", "changed")]
    here, there = run("sync", "--cluster", "demo-east")
    assert here == there and "updated CiliumClusterwideNetworkPolicy deny-cloud-metadata" in here
    here, there = run("sync", "--cluster", "demo-east", "--dry-run")
    assert here == there and "status: in-sync" in here
    # diff asks the live cluster what the next sync would change.
    change = tmp_path / "change.yaml"
    change.write_text(SHOP_POLICY)
    here, there = run("diff", "-f", str(change))
    assert here == there and "cluster demo-east: what sync would change on the live cluster" in here
    assert "shop-allow-web: missing" in here
    # Sync is infrastructure: a workspace admin reads the status but may not sync.
    with remote.http("workspace-admin") as wendy:
        assert wendy.get("/api/v1/clusters/demo-east/sync").status_code == 200
        r = wendy.post("/api/v1/clusters/demo-east/sync")
    assert r.status_code == 403 and r.json()["needed"].startswith("role org-admin or infra-admin")
    _, err = cli("sync", "--cluster", "demo-east", "--server", remote.url, "--token",
                 remote.tokens["workspace-admin"], code=2)
    assert "permission denied: syncing cluster demo-east needs role org-admin or infra-admin" in err

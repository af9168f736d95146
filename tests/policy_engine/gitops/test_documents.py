"""GitOps documents: parsing, one-line errors naming file/document/field, idempotent apply, prune, diff."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from netwarden.cli import main
from policy_engine.control_plane import ControlPlane
from policy_engine.gitops import GitOpsErrors, apply_documents, diff_documents, load_documents
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "gitops"


def _write(tmp_path: Path, text: str, name: str = "docs.yaml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def _errors(path: Path, store: ControlPlaneStore, role: str = "org-admin", scope: str = "") -> list[str]:
    with pytest.raises(GitOpsErrors) as err:
        apply_documents(ControlPlane(store, Principal.with_role(role, scope)), load_documents(path))
    return [str(e) for e in err.value.errors]


@pytest.fixture
def store(tmp_path: Path) -> ControlPlaneStore:
    s = ControlPlaneStore.open(tmp_path / "data")
    yield s
    s.close()


def test_example_tree_applies_idempotently(store: ControlPlaneStore) -> None:
    cp = ControlPlane(store, Principal.with_role("org-admin"))
    docs = load_documents(EXAMPLE)
    assert {d.kind for d in docs} == {"Cluster", "Project", "Workspace", "Policy", "Blueprint", "Assignment"}
    first = apply_documents(cp, docs)
    assert all(c.action == "create" for c in first) and len(first) == len(docs)
    again = apply_documents(cp, load_documents(EXAMPLE))
    assert all(c.action == "unchanged" for c in again)
    assert [v.version for v in store.policy_history("web-allow-frontend")] == [1]
    # rules read from a plain CNP manifest referenced with fromFile
    rule = store.get_policy("payments-from-web").spec.rules[0]
    assert rule.kind == "cilium" and rule.spec["endpointSelector"] == {"matchLabels": {"app": "payments"}}
    assert "policies/web.yaml#2" in store.get_policy("payments-from-web").info.source


def test_bad_yaml_unknown_kind_and_typos(tmp_path: Path, store: ControlPlaneStore) -> None:
    _write(tmp_path, "a: [\n", "broken.yaml")
    _write(tmp_path, """\
apiVersion: netwarden.io/v1
kind: Polizy
metadata: {name: x}
spec: {}
---
apiVersion: netwarden.io/v1
kind: Cluster
metadata: {name: c}
spec: {type: EKS, primaryCNI: aws-cni, kubeContex: c}
---
apiVersion: netwarden.io/v1
kind: Cluster
metadata: {name: Bad_Name}
spec: {type: EKS, primaryCNI: aws-cni}
---
apiVersion: netwarden.io/v1
kind: Cluster
metadata: {name: d}
spec: {type: GKE, primaryCNI: aws-cni}
""")
    errors = _errors(tmp_path, store)
    assert len(errors) == 5
    assert errors[0].startswith(f"{tmp_path / 'broken.yaml'}: invalid YAML at line 2")
    docs = str(tmp_path / "docs.yaml")
    assert errors[1] == f"{docs}: document 1 (Polizy x): kind: unknown kind 'Polizy'; one of Cluster, Project, Workspace, Policy, Blueprint, Assignment"
    assert errors[2].startswith(f"{docs}: document 2 (Cluster c): spec.kubeContex: unknown field")
    assert errors[3].startswith(f"{docs}: document 3 (Cluster Bad_Name): metadata.name:")
    assert errors[4].startswith(f"{docs}: document 4 (Cluster d): spec.type: unknown cluster type 'GKE'")
    assert all("\n" not in e for e in errors)


def test_invalid_rule_refused_with_schema_path_and_value(tmp_path: Path, store: ControlPlaneStore) -> None:
    _write(tmp_path, """\
apiVersion: netwarden.io/v1
kind: Policy
metadata: {name: bad}
spec:
  scope: namespace
  rules:
    - name: ok
      kubernetes: {podSelector: {}, policyTypes: [Ingress]}
    - name: wrong
      cilium:
        endpointSelector:
          matchExpressions: [{key: app, operator: in, values: [x]}]
""")
    [error] = _errors(tmp_path, store)
    assert "document 1 (Policy bad): spec.rules[1].cilium.endpointSelector.matchExpressions[0].operator:" in error
    assert "(value 'in')" in error
    assert store.get_policy("bad") is None


def test_missing_references(tmp_path: Path, store: ControlPlaneStore) -> None:
    _write(tmp_path, """\
apiVersion: netwarden.io/v1
kind: Workspace
metadata: {name: w}
spec: {project: nope, namespaces: [c/ns]}
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {name: a}
spec: {policy: ghost, targets: [{cluster: c, namespace: ns}]}
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {name: b}
spec: {blueprint: zero-trust-day0, clusters: [nowhere]}
---
apiVersion: netwarden.io/v1
kind: Blueprint
metadata: {name: bp}
spec: {clusterPolicies: [ghost-policy]}
""")
    errors = _errors(tmp_path, store)
    docs = str(tmp_path / "docs.yaml")
    assert errors == [
        f"{docs}: document 1 (Workspace w): spec.project: unknown project 'nope'",
        f"{docs}: document 4 (Blueprint bp): spec.clusterPolicies[0]: unknown policy 'ghost-policy'",
        f"{docs}: document 2 (Assignment a): spec.policy: unknown policy 'ghost'",
        f"{docs}: document 3 (Assignment b): spec.clusters[0]: unknown cluster 'nowhere'",
    ]


def test_role_violation_names_file_document_and_field(tmp_path: Path, store: ControlPlaneStore) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(EXAMPLE, tree)
    apply_documents(ControlPlane(store, Principal.with_role("org-admin")), load_documents(tree))
    web = tree / "policies" / "web.yaml"
    web.write_text(web.read_text().replace('port: "8080"', 'port: "8081"').replace('port: "443"', 'port: "8443"'))
    (tree / "policies" / "rules" / "payments-ingress.yaml").write_text(
        (tree / "policies" / "rules" / "payments-ingress.yaml").read_text().replace('"443"', '"8443"'))
    errors = _errors(tree, store, "workspace-admin", "storefront")
    assert len(errors) == 1
    assert errors[0].startswith(f"{web}: document 2 (Policy payments-from-web): spec.scope: permission denied: "
                                "writing namespace policy payments-from-web needs role org-admin, project-admin "
                                "or workspace-admin covering namespace(s) eks-prod/payments")
    assert store.get_policy("web-allow-frontend").version == 1  # all or nothing


def test_cilium_only_rule_refused_for_network_policy_cluster(tmp_path: Path, store: ControlPlaneStore) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(EXAMPLE, tree)
    (tree / "l7.yaml").write_text("""\
apiVersion: netwarden.io/v1
kind: Policy
metadata: {name: web-l7}
spec:
  scope: namespace
  rules:
    - name: get-only
      cilium:
        endpointSelector: {matchLabels: {app: web}}
        ingress:
          - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {name: web-l7}
spec: {policy: web-l7, targets: [{workspace: storefront}]}
""")
    [error] = _errors(tree, store)
    assert error.startswith(f"{tree / 'l7.yaml'}: document 1 (Policy web-l7): spec.rules[0].cilium.ingress[0].toPorts[0].rules: L7 rules")
    assert "cluster lab-calico" in error


def test_prune_and_diff(tmp_path: Path, store: ControlPlaneStore) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(EXAMPLE, tree)
    cp = ControlPlane(store, Principal.with_role("org-admin"))
    apply_documents(cp, load_documents(tree))
    (tree / "assignments.yaml").write_text((tree / "assignments.yaml").read_text().split("---")[0])
    report = diff_documents(cp, load_documents(tree), prune=True)
    assert [str(c) for c in report.store if c.action != "unchanged"] == [
        "delete    Assignment payments-ingress (pruned: not in the applied files)"]
    assert [str(c) for c in report.clusters["eks-prod"]] == ["delete CiliumNetworkPolicy payments/payments-from-web"]
    assert report.clusters["lab-calico"] == []
    assert store.get_assignment("payments-ingress") is not None  # diff wrote nothing
    changes = apply_documents(cp, load_documents(tree))  # without --prune nothing is deleted
    assert all(c.action == "unchanged" for c in changes)
    apply_documents(cp, load_documents(tree), prune=True)
    assert store.get_assignment("payments-ingress") is None
    assert store.get_policy("zero-trust-day0-allow-dns") is not None  # built-ins are never pruned


def test_cli_history_rollback_and_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    tree = tmp_path / "tree"
    shutil.copytree(EXAMPLE, tree)
    assert main(["apply", "-f", str(tree), *data]) == 0
    web = tree / "policies" / "web.yaml"
    web.write_text(web.read_text().replace('port: "8080"', 'port: "8081"'))
    assert main(["apply", "-f", str(tree), *data]) == 0
    assert "update    Policy web-allow-frontend (version 2)" in capsys.readouterr().out
    assert main(["policy", "rollback", "web-allow-frontend", "--to", "1", *data]) == 0
    assert "version 1 restored as version 3" in capsys.readouterr().out
    assert main(["policy", "history", "web-allow-frontend", *data]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["VERSION", "MODE", "CREATED", "BY", "SOURCE", "MESSAGE"] and len(lines) == 4
    assert [line.split()[1] for line in lines[1:]] == ["enforced"] * 3
    assert lines[3].endswith("rollback to version 1")
    assert main(["get", "clusters", "-o", "json", *data]) == 0
    assert '"primaryCNI": "aws-cni"' in capsys.readouterr().out
    assert main(["get", "policies", "-o", "yaml", *data]) == 0
    assert "kind: Policy" in capsys.readouterr().out
    assert main(["get", "assignments", *data]) == 0
    assert "storefront-web" in capsys.readouterr().out
    assert main(["get", "blueprints", *data, "--as-role", "workspace-read-only", "--scope", "payments"]) == 0
    assert "zero-trust-day0" in capsys.readouterr().out
    assert main(["policy", "rollback", "web-allow-frontend", "--to", "1", *data, "--as-role", "org-read-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netwarden: permission denied: rolling back policy web-allow-frontend needs role")
    assert main(["render", "--cluster", "lab-calico", *data]) == 0
    out = capsys.readouterr().out
    assert "# note: cluster-wide policy zero-trust-day0-default-deny rendered as 1 NetworkPolicy object(s)" in out
    assert main(["install-profile", "--cluster", "eks-prod", *data]) == 0
    assert "chainingMode: aws-cni" in capsys.readouterr().out

"""`netwarden admin ...` through the real CLI entry point, on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netwarden.cli import main
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy
from query_api.auth import Authenticator


class Cli:
    def __init__(self, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.data_dir = data_dir
        self.capsys = capsys

    def __call__(self, *argv: str, code: int = 0) -> tuple[str, str]:
        assert main([*argv, "--data-dir", str(self.data_dir)]) == code, self.capsys.readouterr()
        captured = self.capsys.readouterr()
        return captured.out, captured.err

    def json(self, *argv: str) -> list[dict[str, object]]:
        out, _ = self(*argv, "-o", "json")
        data: list[dict[str, object]] = json.loads(out)
        return data


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


def _org(cli: Cli) -> None:
    cli("admin", "cluster", "create", "east")
    cli("admin", "cluster", "create", "west", "--type", "eks", "--cni", "aws-cni")
    cli("admin", "project", "create", "shop", "--cluster", "east")
    cli("admin", "project", "create", "ops", "--cluster", "west,east", "--description", "platform")
    cli("admin", "workspace", "create", "shop-team", "--project", "shop", "--namespace", "east/web",
        "--namespace", "east/cart")


def test_org_structure(cli: Cli) -> None:
    _org(cli)
    assert cli("admin", "project", "create", "shop", "--cluster", "east")[0] == "project shop unchanged\n"
    assert cli.json("admin", "project", "list") == [
        {"name": "ops", "clusters": ["east", "west"], "description": "platform", "workspaces": []},
        {"name": "shop", "clusters": ["east"], "description": "", "workspaces": ["shop-team"]},
    ]
    [ws] = cli.json("admin", "workspace", "list")
    assert ws["namespaces"] == [{"cluster": "east", "namespace": "cart"}, {"cluster": "east", "namespace": "web"}]
    assert [c["name"] for c in cli.json("admin", "cluster", "list")] == ["east", "west"]
    out, _ = cli("admin", "project", "list")
    assert out.splitlines()[0].split() == ["NAME", "CLUSTERS", "WORKSPACES", "DESCRIPTION"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("admin", "project", "create", "p", "--cluster", "ghost"), "unknown cluster(s) ghost"),
        (("admin", "workspace", "create", "w", "--project", "nope", "--namespace", "east/x"), "unknown project 'nope'"),
        (("admin", "workspace", "create", "w", "--project", "shop", "--namespace", "west/x"),
         "cluster west of namespace west/x is not in project shop"),
        (("admin", "workspace", "create", "w", "--project", "shop", "--namespace", "east/web"),
         "already belongs to workspace shop-team"),
        (("admin", "workspace", "create", "w", "--project", "shop", "--namespace", "web"), "expected CLUSTER/NAMESPACE"),
        (("admin", "project", "delete", "shop"), "still has workspace(s) shop-team"),
        (("admin", "project", "delete", "nope"), "no project named 'nope'"),
        (("admin", "workspace", "delete", "nope"), "no workspace named 'nope'"),
        (("admin", "cluster", "create", "c", "--cni", "flannel"), "--cni: unknown primary CNI 'flannel'"),
        (("admin", "user", "create", "bad name"), "user name 'bad name' is not valid"),
        (("admin", "binding", "create", "ghost", "--role", "org-admin"), "no user named 'ghost'"),
        (("admin", "token", "create", "ghost"), "no user named 'ghost'"),
        (("admin", "token", "delete", "abc"), "no token with id 'abc'"),
        (("admin", "token", "list", "--user", "ghost"), "no user named 'ghost'"),
    ],
)
def test_clear_one_line_errors(cli: Cli, argv: tuple[str, ...], message: str) -> None:
    _org(cli)
    _, err = cli(*argv, code=2)
    assert err.startswith("netwarden: ") and message in err and err.count("\n") == 1


def test_users_bindings_tokens(cli: Cli, tmp_path: Path) -> None:
    _org(cli)
    assert cli("admin", "user", "create", "alice")[0] == "user alice created\n"
    assert cli("admin", "user", "create", "alice")[0] == "user alice already exists\n"
    out, _ = cli("admin", "binding", "create", "alice", "--role", "workspace-admin", "--scope", "shop-team")
    assert out == "user alice: workspace-admin of workspace shop-team granted\n"
    _, err = cli("admin", "binding", "create", "alice", "--role", "workspace-admin", code=2)
    assert "needs a workspace name" in err
    _, err = cli("admin", "binding", "create", "alice", "--role", "infra-admin", "--scope", "shop-team", code=2)
    assert "no project named 'shop-team'" in err
    cli("admin", "binding", "create", "alice", "--role", "project-read-only", "--scope", "ops")
    assert cli.json("admin", "binding", "list", "--user", "alice") == [
        {"user": "alice", "role": "project-read-only", "scope_kind": "project", "scope": "ops", "stale": False},
        {"user": "alice", "role": "workspace-admin", "scope_kind": "workspace", "scope": "shop-team", "stale": False},
    ]
    cli("admin", "binding", "delete", "alice", "--role", "project-read-only", "--scope", "ops")

    secret, err = cli("admin", "token", "create", "alice", "--expires", "30d", "--description", "ci")
    secret = secret.strip()
    assert secret.startswith("nw_") and "shown once" in err and "expires 20" in err
    tenancy = Tenancy.open(tmp_path)
    try:
        principal = Authenticator(tenancy).authenticate(f"Bearer {secret}")
    finally:
        tenancy.close()
    assert principal.name == "alice" and [b.scope_name for b in principal.bindings] == ["shop-team"]

    [token] = cli.json("admin", "token", "list")
    assert token["user"] == "alice" and token["status"] == "active" and token["description"] == "ci"
    assert token["last_used_at"] is not None and token["expires_at"] is not None
    out, _ = cli("admin", "token", "list")
    assert secret not in out and secret[:20] not in out
    assert cli("admin", "token", "delete", str(token["id"]))[0] == f"token {token['id']} revoked\n"
    assert cli.json("admin", "token", "list")[0]["status"] == "revoked"

    [user] = cli.json("admin", "user", "list")
    assert user["roles"] == [{"role": "workspace-admin", "scope": "shop-team", "stale": False}]
    assert user["active_tokens"] == 0
    # Deleting the workspace drops bindings to it; deleting the user drops everything of it.
    assert "1 role binding(s) removed" in cli("admin", "workspace", "delete", "shop-team")[0]
    cli("admin", "user", "delete", "alice")
    assert cli.json("admin", "user", "list") == [] and cli.json("admin", "token", "list") == []


def test_oidc_check(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from .test_auth import AUDIENCE, ISSUER, ROLES, Issuer

    _org(cli)
    issuer = Issuer()
    try:
        config = tmp_path / "oidc.json"
        config.write_text(json.dumps({"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": issuer.jwks_url,
                                      "roles": ROLES}))
        out, _ = cli("admin", "oidc", "check", "--config", str(config), "--token", issuer.token(groups=["shop-devs"]))
        assert out == "user user-123: workspace-admin of workspace frontend, project-read-only of project shop\n"
        _, err = cli("admin", "oidc", "check", "--config", str(config), "--token", issuer.token(aud="x"), code=2)
        assert err == "netwarden: token refused (401): invalid token: JWT audience is not 'netwarden'\n"
        _, err = cli("admin", "oidc", "check", "--config", str(config), "--token", issuer.token(groups=[]), code=2)
        assert "token refused (403)" in err
        monkeypatch.delenv("NETWARDEN_OIDC_CONFIG", raising=False)
        _, err = cli("admin", "oidc", "check", "--token", "x", code=2)
        assert "no OIDC configuration" in err
        config.write_text(json.dumps({"issuer": ISSUER}))
        _, err = cli("admin", "oidc", "check", "--config", str(config), "--token", "x", code=2)
        assert err == "netwarden: OIDC configuration: audience: required (the client id netwarden's tokens are issued for)\n"
    finally:
        issuer.close()


def test_namespace_sync_reads_workspace_labels(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    from policy_engine.tenancy import WORKSPACE_LABEL
    from tests.kube_api_stub import KubeApiStub

    with KubeApiStub(namespaces=("default", "kube-system", "web")) as stub:
        stub.put({"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": "payments", "labels": {WORKSPACE_LABEL: "shop-team"}}})
        stub.put({"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": "web", "labels": {WORKSPACE_LABEL: "elsewhere"}}})
        cli("admin", "cluster", "create", "east")
        _org(cli)
        # Register the API server of `east` (GitOps would set apiServer; here through the store).
        from policy_engine.model import Cluster

        with ControlPlaneStore.open(cli.data_dir) as store:
            store.put_cluster(Cluster("east", "upstream", "cilium", api_server=stub.url))
        out, err = cli("admin", "namespace", "sync")
        assert out == "cluster east: 4 namespace(s), 2 labelled (payments, web)\n"
        assert "east/web: label netwarden.io/workspace=elsewhere ignored" in err
        rows = cli.json("admin", "namespace", "list", "--cluster", "east")
        assert {(r["namespace"], r["workspace"], r["source"]) for r in rows} == {
            ("payments", "shop-team", "label"), ("web", "shop-team", "store"), ("cart", "shop-team", "store")}
        out, _ = cli("admin", "namespace", "list")
        assert ["east", "payments", "shop", "shop-team", "label"] in [line.split() for line in out.splitlines()]
        # The label goes away in the cluster: the next sync forgets it.
        stub.edit("Namespace", "payments", None, lambda o: o["metadata"].pop("labels"))
        cli("admin", "namespace", "sync", "--cluster", "east")
        assert not any(r["namespace"] == "payments" for r in cli.json("admin", "namespace", "list"))
    # Cluster unreachable now: reported, one-line error, nothing forgotten.
    _, err = cli("admin", "namespace", "sync", code=2)
    assert "cluster east: cannot list namespaces" in err and err.endswith("netwarden: 1 cluster(s) could not be read\n")
    _, err = cli("admin", "namespace", "sync", "--cluster", "nope", code=2)
    assert "no cluster named 'nope'" in err


def test_stale_bindings_are_shown(cli: Cli) -> None:
    _org(cli)
    cli("admin", "user", "create", "bob")
    cli("admin", "binding", "create", "bob", "--role", "project-admin", "--scope", "ops")
    # The project disappears behind the CLI's back (a GitOps prune) and comes back later.
    with ControlPlaneStore.open(cli.data_dir) as store:
        store.delete_project("ops")
    [row] = cli.json("admin", "binding", "list")
    assert row["stale"] is True
    out, _ = cli("admin", "binding", "list")
    assert "stale: its scope was deleted" in out
    assert "project-admin@ops (stale)" in cli("admin", "user", "list")[0]
    cli("admin", "project", "create", "ops", "--cluster", "west")
    with ControlPlaneStore.open(cli.data_dir) as store:
        store.execute("UPDATE projects SET created_at = ? WHERE name = 'ops'", ("2999-01-01T00:00:00+00:00",))
    assert cli.json("admin", "binding", "list")[0]["stale"] is True
    assert "granted" in cli("admin", "binding", "create", "bob", "--role", "project-admin", "--scope", "ops")[0]

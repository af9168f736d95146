"""Local mode (the data directory) is the machine's operator, acting as org-admin; `--as-role/--scope` only
narrow it, to rehearse a role (checked with the engine's own rules), and never reach an API. Administration
over HTTP is for org admins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netwarden.cli import CommandError
from netwarden.commands.gitops import narrowed_principal
from policy_engine.roles import Principal
from policy_engine.store import ControlPlaneStore
from tests.policy_api.conftest import DATA_POLICY, SHOP_POLICY, Cli, Served, seed


def test_as_role_narrows_the_operator_and_is_enforced(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    seed(data)
    local = ["--data-dir", str(data)]
    shop, other = tmp_path / "shop.yaml", tmp_path / "data.yaml"
    shop.write_text(SHOP_POLICY)
    other.write_text(DATA_POLICY)
    wendy = ["--as-role", "workspace-admin", "--scope", "shop-team"]
    _, err = cli("apply", "-f", str(other), *local, *wendy, code=2)
    assert "spec.targets: permission denied" in err and "has workspace-admin of workspace shop-team" in err
    assert cli("apply", "-f", str(shop), *local, *wendy)[0].endswith("2 document(s), 2 change(s)\n")
    _, err = cli("policy", "rollback", "shop-allow-web", "--to", "1", *local,
                 "--as-role", "workspace-read-only", "--scope", "shop-team", code=2)
    assert err.startswith("netwarden: permission denied: rolling back policy shop-allow-web needs role")
    # Without a role the operator is org-admin: the same document is written.
    assert cli("apply", "-f", str(other), *local)[0].endswith("2 document(s), 2 change(s)\n")
    # A rehearsal names a real scope; a scope alone says nothing.
    _, err = cli("get", "policies", *local, "--as-role", "workspace-admin", "--scope", "no-such-team", code=2)
    assert err == "netwarden: --scope: no workspace named 'no-such-team' (role workspace-admin binds to a workspace)\n"
    _, err = cli("get", "policies", *local, "--scope", "shop-team", code=2)
    assert "--scope: needs --as-role" in err
    _, err = cli("get", "policies", *local, "--as-role", "galaxy-admin", code=2)
    assert err.startswith("netwarden: --as-role: unknown role 'galaxy-admin'")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneStore]:
    data = tmp_path_factory.mktemp("demo") / "data"
    seed(data)
    with ControlPlaneStore.open(data) as store:
        yield store


@pytest.mark.parametrize(("held", "wanted", "allowed"), [
    (("org-admin", ""), ("infra-admin", "storefront"), True),
    (("project-admin", "storefront"), ("workspace-admin", "shop-team"), True),
    (("project-admin", "storefront"), ("workspace-admin", "observability"), False),  # platform's
    (("project-admin", "storefront"), ("project-admin", "platform"), False),
    (("workspace-admin", "shop-team"), ("org-admin", ""), False),
    (("workspace-admin", "shop-team"), ("workspace-read-only", "shop-team"), True),
    (("workspace-read-only", "shop-team"), ("workspace-admin", "shop-team"), False),
    (("org-read-only", ""), ("project-read-only", "platform"), True),
    (("org-read-only", ""), ("project-admin", "platform"), False),
    (("infra-admin", "storefront"), ("infra-admin", "platform"), False),
])
def test_a_rehearsal_never_widens(demo_store: ControlPlaneStore, held: tuple[str, str], wanted: tuple[str, str],
                                  allowed: bool) -> None:
    base = Principal.with_role(held[0], held[1], name="me")
    if allowed:
        assert narrowed_principal(base, *wanted, demo_store).bindings == Principal.with_role(*wanted).bindings
    else:
        with pytest.raises(CommandError, match="--as-role: only narrows: permission denied: acting as"):
            narrowed_principal(base, *wanted, demo_store)


def test_administration_over_http(api: Served, cli: Cli) -> None:
    olivia = ["--server", api.url, "--token", api.tokens["org-admin"]]
    cli("admin", "project", "create", "labs", "--cluster", "demo-west", *olivia)
    cli("admin", "workspace", "create", "lab-team", "--project", "labs", "--namespace", "demo-west/lab", *olivia)
    assert cli("admin", "user", "create", "lena", *olivia)[0] == "user lena created\n"
    out, _ = cli("admin", "binding", "create", "lena", "--role", "workspace-admin", "--scope", "lab-team", *olivia)
    assert out == "user lena: workspace-admin of workspace lab-team granted\n"
    token, err = cli("admin", "token", "create", "lena", "--expires", "1d", *olivia)
    assert "shown once" in err and "workspace-admin of workspace lab-team" in err
    # The new token works, with the role just granted.
    with api.http("org-admin") as client:
        r = client.get("/api/v1/documents/policies", headers={"Authorization": f"Bearer {token.strip()}"})
        assert r.status_code == 200
        users = {u["name"]: u for u in client.get("/api/v1/admin/users").json()["users"]}
    assert users["lena"]["roles"] == [{"role": "workspace-admin", "scope": "lab-team", "stale": False}]
    # Tenancy administration is not a workspace admin's.
    wendy = ["--server", api.url, "--token", api.tokens["workspace-admin"]]
    _, err = cli("admin", "user", "create", "mallory", *wendy, code=2)
    assert err == ("netwarden: permission denied: creating user mallory needs role org-admin; principal 'wendy' has "
                   "workspace-admin of workspace shop-team\n")
    _, err = cli("admin", "workspace", "create", "lab-team", "--project", "labs", "--namespace", "demo-west/x",
                 *wendy, code=2)
    assert "needs role org-admin or project-admin of project labs" in err
    _, err = cli("admin", "project", "delete", "labs", *olivia, code=2)
    assert err == "netwarden: project labs still has workspace(s) lab-team\n"  # 409, as locally
    assert cli("admin", "workspace", "delete", "lab-team", *olivia)[0] == "workspace lab-team deleted\n"
    _, err = cli("admin", "binding", "list", "--user", "nobody", *olivia, code=2)
    assert err == "netwarden: no user named 'nobody'\n"

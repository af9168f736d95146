"""`netwarden flows --server URL --token T`: the CLI against a real API over HTTP (uvicorn on loopback)."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from netwarden.cli import main
from netwarden.commands import flows as flows_command
from policy_engine.model import NamespaceRef
from policy_engine.roles import Ownership, Principal
from query_api.app import create_app
from query_api.store import FlowStore
from tests.query_api.conftest import bearer_principals, flow_uuid

TOKENS = {
    "admin": Principal.with_role("org-admin", name="admin"),
    "shop-dev": Principal.with_role("workspace-read-only", "shop", name="shop-dev"),
}
OWNERSHIP = Ownership(
    project_clusters={"p": frozenset({"qa-c2"})},
    workspace_project={"shop": "p"},
    workspace_namespaces={"shop": frozenset({NamespaceRef("qa-c1", "shop")})},
)


@pytest.fixture(scope="module")
def server(flow_store: FlowStore) -> Iterator[str]:
    app = create_app(flow_store, principal_dependency=bearer_principals(TOKENS), ownership=OWNERSHIP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=api.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not api.started:
        assert time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    api.should_exit = True
    thread.join(10)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["flows", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def uuids(out: str) -> list[str]:
    return [json.loads(line)["flow"]["uuid"] for line in out.splitlines()]


def test_scoped_history_over_the_api(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", server, "--token", "shop-dev", "--all", "-o", "jsonpb")
    assert code == 0, err
    # Only flows touching qa-c1/shop, oldest first; the workspace reader sees no other cluster's flows.
    assert uuids(out) == [flow_uuid(0), flow_uuid(1), flow_uuid(7)]
    code, out, _ = run(capsys, "--server", server, "--token", "admin", "--cluster", "qa-c1", "--last", "2", "-o", "table")
    assert code == 0 and out.splitlines()[0].split()[0] == "TIMESTAMP" and len(out.splitlines()) == 3


def test_env_and_new_filters(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETWARDEN_SERVER", server)
    monkeypatch.setenv("NETWARDEN_TOKEN", "admin")
    code, out, err = run(
        capsys,
        "--cluster",
        "qa-c3",
        "--label",
        "k8s:io.kubernetes.pod.namespace=db",
        "--workload",
        "statefulset/pg",
        "-o",
        "json",
    )
    assert code == 0, err
    assert uuids(out) == [flow_uuid(8)]
    # Each query names its cluster: the test process's chDB also holds other tests' flows.
    code, out, _ = run(
        capsys, "--cluster", "qa-c1", "--drop-reason", "policy_denied", "--direction", "egress", "-o", "json"
    )
    assert uuids(out) == [flow_uuid(2)]
    code, out, _ = run(capsys, "--cluster", "qa-c3", "--ip", "2001:db8::/64", "-o", "json")
    assert uuids(out) == [flow_uuid(8)]


def test_all_pages_through_the_cursor(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows_command, "API_PAGE", 2)
    code, out, _ = run(
        capsys, "--server", server, "--token", "admin", "--cluster", "qa-c1", "--all", "-o", "json"
    )
    assert code == 0 and uuids(out) == [flow_uuid(i) for i in (0, 1, 2, 6, 7)]
    code, out, _ = run(
        capsys, "--server", server, "--token", "admin", "--cluster", "qa-c1", "--last", "3", "-o", "json"
    )
    assert uuids(out) == [flow_uuid(i) for i in (2, 6, 7)]


def test_errors_are_one_line(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--server", server, "--token", "wrong")
    assert code == 2 and "refused the token" in err
    code, _, err = run(capsys, "--server", server, "--token", "admin", "--verdict", "BOGUS")
    assert code == 2 and err.startswith("netwarden: --verdict: ") and "BOGUS" in err
    code, _, err = run(capsys, "--server", server, "--token", "admin", "--drop-reason", "nope")
    assert code == 2 and "--drop-reason" in err
    code, _, err = run(capsys, "--server", "http://127.0.0.1:1", "--token", "admin")
    assert code == 2 and "--server http://127.0.0.1:1" in err


def test_local_data_dir_knows_the_new_filters(
    flow_store: FlowStore, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--data-dir", str(data_dir), "--workload", "pg", "-o", "json")
    assert code == 0, err
    assert uuids(out) == [flow_uuid(8)]
    code, _, err = run(capsys, "--data-dir", str(data_dir), "--direction", "sideways")
    assert code == 2 and "--direction" in err


def test_follow_dispatches_to_the_live_module(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import netwarden.commands.flows_follow as live

    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(live, "follow", lambda args: seen.append(args) or 0)
    code, _, _ = run(capsys, "--follow", "--server", "http://x", "--label", "app=a", "--workload", "w")
    assert code == 0 and seen[0].label == ["app=a"] and seen[0].workload == "w" and seen[0].follow

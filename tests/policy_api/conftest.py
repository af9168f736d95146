"""The demo organization (seed_demo: one user and API token per role; seed_demo_policies: the demo blueprint and
namespace policies) in a control-plane store served by the real app on loopback uvicorn, with the real
Authenticator; a second data directory seeded the same way for the local (data-dir) CLI to compare with."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from netwarden.cli import main
from netwarden.demo_seed import seed_demo, seed_demo_policies
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy
from query_api.app import create_app
from query_api.auth import Authenticator
from tests.reports.loopback_api import serve

_TEMPLATE: list[Path] = []


def seed(data_dir: Path, api_servers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The demo organization in `data_dir`; role id -> that demo user's token. Seeded once per test process and
    copied (applying the demo's documents is most of a test's set-up); the tokens differ per copy only in use."""
    if not _TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="nw-policy-api-"))
        atexit.register(shutil.rmtree, template, ignore_errors=True)
        with ControlPlaneStore.open(template) as store:
            seed_demo(store, template)
            seed_demo_policies(store, {})
        _TEMPLATE.append(template)
    shutil.copytree(_TEMPLATE[0], data_dir)
    with ControlPlaneStore.open(data_dir) as store:
        entries = seed_demo(store, data_dir)  # keeps the copied tokens
        seed_demo_policies(store, api_servers or {})
    return {e["role"]: e["token"] for e in entries}


def app_on(data_dir: Path) -> tuple[Any, Tenancy]:
    tenancy = Tenancy.open(data_dir)
    # No flow store: these routes read only the control plane.
    return create_app(None, CollectorRegistry(), authenticator=Authenticator(tenancy),  # type: ignore[arg-type]
                      ownership=tenancy.ownership), tenancy


@dataclass
class Served:
    url: str
    tokens: dict[str, str]
    data_dir: Path

    def http(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[role]}"}, timeout=30)


@contextlib.contextmanager
def served(data_dir: Path, api_servers: Mapping[str, str] | None = None) -> Iterator[Served]:
    tokens = seed(data_dir, api_servers)
    app, tenancy = app_on(data_dir)
    try:
        with serve(app) as url:
            yield Served(url, tokens, data_dir)
    finally:
        tenancy.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path / "served") as s:
        yield s


@dataclass
class Cli:
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *argv: str, code: int | None = 0) -> tuple[str, str]:
        rc = main(list(argv))
        out, err = self.capsys.readouterr()
        if code is not None:
            assert rc == code, (argv, rc, out, err)
        return out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    for name in ("NETWARDEN_SERVER", "NETWARDEN_TOKEN", "NETWARDEN_ROLE", "NETWARDEN_SCOPE", "NETWARDEN_KAFKA"):
        monkeypatch.delenv(name, raising=False)
    return Cli(capsys)


SHOP_POLICY = """\
apiVersion: netwarden.io/v1
kind: Policy
metadata: {name: shop-allow-web}
spec:
  scope: namespace
  rules:
    - name: web
      cilium:
        endpointSelector: {matchLabels: {app: frontend}}
        ingress:
          - toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
---
apiVersion: netwarden.io/v1
kind: Assignment
metadata: {name: shop-allow-web}
spec: {policy: shop-allow-web, targets: [{cluster: demo-east, namespace: shop}]}
"""

DATA_POLICY = SHOP_POLICY.replace("shop-allow-web", "data-allow-web").replace("namespace: shop}", "namespace: data}")

CLUSTER_POLICY = """\
apiVersion: netwarden.io/v1
kind: Policy
metadata: {name: guard-smtp}
spec:
  scope: cluster
  rules:
    - name: smtp
      cilium:
        endpointSelector: {}
        egressDeny:
          - toPorts: [{ports: [{port: "25", protocol: TCP}]}]
"""

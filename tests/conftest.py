"""Shared fixtures: the reference folder beside the repo, and a real Tansu broker per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
CAPTURES = sorted((SHARED / "reference" / "hubble-flows").glob("*.jsonl"))


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[object]:
    from netwarden.broker import TansuBroker

    broker = TansuBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB data directory of this test process.

    chDB's embedded server is initialized once per process with one path and refuses any other
    ("EmbeddedServer already initialized with path ..."), so every in-process test that touches
    ClickHouse shares this directory and keeps to its own cluster names.
    """
    return tmp_path_factory.mktemp("netwarden-data")


@pytest.fixture(scope="session")
def chdb_dsn(chdb_dir: Path) -> str:
    return f"chdb://{(chdb_dir / 'clickhouse').resolve()}"

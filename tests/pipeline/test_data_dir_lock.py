"""A data directory held by another process is refused in one line, before a broker or worker starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from query_api.store import open_clickhouse
from tests.conftest import CAPTURES, REPO_ROOT


def test_ingest_into_a_data_dir_in_use_says_so_and_starts_nothing(chdb_dir: Path) -> None:
    client = open_clickhouse(str(chdb_dir))  # this test process now holds the directory, like `netwarden up`
    client.query("SELECT 1")
    proc = subprocess.run(
        [sys.executable, "-m", "netwarden", "ingest", "--data-dir", str(chdb_dir), "--cluster", "locked",
         str(CAPTURES[0])],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("netwarden:")]
    assert len(lines) == 1 and "in use by another process" in lines[0] and "--data-dir" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (chdb_dir / "broker.log").exists() or "locked" not in (chdb_dir / "broker.log").read_text()

"""`netwarden bench live` runs the whole embedded path in its own process and prints one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_bench_live_prints_latency_figures() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netwarden",
            "bench",
            "live",
            "--flows",
            "600",
            "--rate",
            "300",
            "--clients",
            "2",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["flows"] == 600 and result["clients"] == 2 and result["received"] == 1200
    assert result["missed"] == result["lost"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    # The target is p99 <= 1000 ms; a loaded test machine gets slack, a stalled pipeline does not.
    assert result["p99_ms"] < 5000, result


def test_bench_live_rejects_bad_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "netwarden", "bench", "live", "--flows", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--flows: must be >= 1" in proc.stderr

"""The demo world of issue 8's acceptance, built once for the package in a process of its own (see
tests/reports/demo_world.py why): the validation reports and the policy-traffic scenario's results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package")
def demo_outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("demo-world")
    done = subprocess.run(
        [sys.executable, "-m", "tests.reports.demo_world", str(data), "2000"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])

"""`netwarden up` serves flows of both demo clusters soon after start, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from netwarden.broker import free_port
from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_up_serves_both_demo_clusters_within_60s(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "netwarden", "up", "--data-dir", str(tmp_path), "--port", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    started = time.monotonic()
    clusters: set[str] = set()
    try:
        while time.monotonic() - started < 60 and clusters != {"demo-east", "demo-west"}:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                for cluster in ("demo-east", "demo-west"):
                    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/flows", params={"cluster": cluster, "limit": 5},
                                  headers=_auth(tmp_path), timeout=5)
                    if r.status_code == 200 and r.json()["flows"]:
                        clusters.add(cluster)
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert clusters == {"demo-east", "demo-west"}, f"after {time.monotonic() - started:.0f}s: {clusters}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "api        http://" in out


def _auth(data_dir: Path) -> dict[str, str]:
    """The org-admin demo token, once `netwarden up` seeds users (role-filtered visibility)."""
    import json

    tokens = data_dir / "demo-tokens.json"
    if not tokens.exists():
        return {}
    for user in json.loads(tokens.read_text())["users"]:
        if user["role"] == "org-admin":
            return {"Authorization": f"Bearer {user['token']}"}
    return {}

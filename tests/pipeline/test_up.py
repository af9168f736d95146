"""`netwarden up` serves flows of both demo clusters soon after start, restarts a child that dies, and stops
cleanly (and quickly) on Ctrl-C to its process group."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from netwarden.broker import free_port
from tests.conftest import REPO_ROOT


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process whose parent chain leads to `pid`."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    out = {}
    for child, parent in parents.items():
        p = parent
        while p > 1 and p != pid:
            p = parents.get(p, 0)
        if p == pid:
            out[child] = cmdlines.get(child, "")
    return out


def _newest(port: int, data_dir: Path, cluster: str) -> datetime | None:
    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/flows", params={"cluster": cluster, "limit": 1},
                  headers=_auth(data_dir), timeout=5)
    flows = r.json()["flows"] if r.status_code == 200 else []
    return datetime.fromisoformat(flows[0]["flow"]["time"][:26].rstrip("Z")) if flows else None


@pytest.mark.slow
def test_up_serves_both_demo_clusters_within_60s(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "netwarden", "up", "--data-dir", str(tmp_path), "--port", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, as in a terminal
    )
    stopped_in = None
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

        # Each demo cluster's kube API (served by `up`, registered as its apiServer) answers `netwarden sync`
        # as a real cluster's does: the planted drift and the pods that predate Cilium (demo/FAULTS.md).
        _wait_for_planted_drift(tmp_path, "demo-east")
        sync = subprocess.run([sys.executable, "-m", "netwarden", "sync", "--cluster", "demo-east",
                               "--data-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert "drift: CiliumNetworkPolicy shop/checkout-egress: changed" in sync.stdout, sync.stdout
        assert "Pod data/redis-0 of StatefulSet redis" in sync.stdout, sync.stdout

        # Demo servers, collectors and the broker are child processes; a collector that dies is restarted
        # and the flows of its cluster keep arriving.
        children = _descendants(proc.pid)
        assert sum("collectors.child" in c for c in children.values()) == 2, children
        assert sum("hubble-serve" in c for c in children.values()) == 2, children
        (victim,) = [pid for pid, c in children.items() if "collectors.child" in c and "demo-east" in c]
        os.kill(victim, signal.SIGKILL)
        killed_at = datetime.utcnow()
        deadline = time.monotonic() + 60
        while (newest := _newest(port, tmp_path, "demo-east")) is None or newest <= killed_at:
            assert time.monotonic() < deadline, f"no demo-east flow after the collector was killed (newest {newest})"
            assert proc.poll() is None
            time.sleep(1)
        assert victim not in _descendants(proc.pid)
        children = _descendants(proc.pid)

        # Ctrl-C reaches the whole process group: `up` stops everything in order, within 10 s.
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "api        http://" in out
    assert stopped_in is not None and stopped_in < 10, stopped_in
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "children outlived `up`"
    # Every flow a collector shipped and Kafka acknowledged is stored: what the journals still call
    # unconfirmed (the worker's word did not arrive before the stop) is in the flows table all the same.
    unconfirmed = _unconfirmed_uuids(tmp_path)
    assert _stored_count(tmp_path, unconfirmed) == len(unconfirmed)


def _unconfirmed_uuids(data_dir: Path) -> list[str]:
    from collectors.hubble_client import Checkpoint

    return sorted({u for path in data_dir.glob("checkpoint-*.json")
                   for _, uuids in Checkpoint(path).pending.values() for u in uuids})


_COUNT = """
import json, sys
from query_api.store import open_clickhouse
uuids = json.loads(sys.stdin.read())
rows = open_clickhouse(sys.argv[1]).query(
    "SELECT uniqExact(uuid) FROM flows WHERE toString(uuid) IN {u:Array(String)}", parameters={"u": uuids})
print(rows.result_rows[0][0])
"""


def _stored_count(data_dir: Path, uuids: list[str]) -> int:
    """Read by a child process: chDB holds one data directory per process."""
    if not uuids:
        return 0
    out = subprocess.run([sys.executable, "-c", _COUNT, str(data_dir)], input=json.dumps(uuids),
                         capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return int(out.stdout.strip().splitlines()[-1])


def _wait_for_planted_drift(data_dir: Path, cluster: str, timeout_s: float = 60) -> None:
    """`up` syncs a fresh demo cluster in the background, then edits checkout-egress by hand: wait for that."""
    from policy_engine.store import ControlPlaneStore

    store = ControlPlaneStore.open(data_dir)
    try:
        registered = store.get_cluster(cluster)
    finally:
        store.close()
    assert registered is not None and registered.api_server, registered
    url = f"{registered.api_server}/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies/checkout-egress"
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(url, timeout=5)
        managers = {m["manager"] for m in r.json().get("metadata", {}).get("managedFields", [])}
        if r.status_code == 200 and "kubectl-edit" in managers:
            return
        assert time.monotonic() < deadline, f"no hand edit of checkout-egress on {cluster}: {r.text[:300]}"
        time.sleep(0.2)


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


async def test_supervised_child_is_restarted_then_given_up_and_stopped_for_good() -> None:
    from netwarden.supervise import Child

    lines: list[str] = []
    # Prints, then dies: restarted with backoff until it died more than max_restarts times in the window.
    child = Child("flaky", [sys.executable, "-c", "print('up', flush=True); raise SystemExit(3)"],
                  on_line=lines.append, max_restarts=2, backoff_s=0.05)
    await child.start()
    await asyncio.wait_for(child.failed.wait(), 30)
    assert child.restarts == 2 and lines == ["up"] * 3
    await child.stop()

    steady = Child("steady", [sys.executable, "-c", "import time; time.sleep(60)"], backoff_s=0.05)
    await steady.start()
    pid = steady.pid
    assert pid is not None and Path(f"/proc/{pid}").exists()
    await asyncio.wait_for(steady.stop(timeout=5), 10)
    assert steady.process is not None and steady.process.returncode is not None and steady.restarts == 0


_SLOW_STOP = """
import asyncio, sys
from netwarden.supervise import stop_on_signals

async def main():
    stop = asyncio.Event()
    stop_on_signals(stop)
    print("ready", flush=True)
    await stop.wait()
    print("stopping", flush=True)
    await asyncio.sleep(60)  # a clean stop that takes long (flushing, committing)

asyncio.run(main())
"""


def test_a_second_signal_exits_at_once() -> None:
    """The first SIGINT starts a clean stop; a second one (an impatient Ctrl-C) exits at once with 130."""
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STOP], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "stopping"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

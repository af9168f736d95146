"""`netwarden bench faults` on the real embedded stack: a broker killed with -9, a poison entry, a Hubble
server restarted with an empty ring; one JSON line per fault, then the summary (the shape users script)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_bench_faults_prints_one_line_per_fault_and_nothing_is_lost() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "netwarden", "bench", "faults", "--faults",
         "broker-kill,poison-batch,hubble-empty-ring", "--rate", "300", "--timeout", "120"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    by_fault = {r["fault"]: r for r in rows[:-1]}
    # clickhouse-refuses is left out: a flows insert whose views fail on the full disk keeps its flows part,
    # the retry skips those flows, and the rollups undercount (open defect, see the README's known gap).
    assert set(by_fault) == {"broker-kill", "poison-batch", "hubble-empty-ring"}
    for row in by_fault.values():
        assert {"fault", "flows_sent", "stored", "lost", "duplicated", "recovery_s", "hung"} <= set(row)
        assert row["hung"] is False and row["duplicated"] == 0 and row["flows_sent"] > 0
        assert row["stored"] + row["lost"] == row["flows_sent"]
    assert by_fault["broker-kill"]["lost"] == 0  # what Tansu lost was read from Hubble again
    assert by_fault["poison-batch"]["lost"] == 0 and by_fault["poison-batch"]["dead_lettered"] == 1
    gap = by_fault["hubble-empty-ring"]
    assert gap["lost_ranges"] >= 1 and gap["lost"] <= 300  # what the empty ring lost is reported as ranges
    summary = rows[-1]["summary"]
    assert summary["faults"] == summary["passed"] == 3 and summary["hung"] == []


def test_bench_faults_names_an_unknown_fault() -> None:
    proc = subprocess.run([sys.executable, "-m", "netwarden", "bench", "faults", "--faults", "meteor"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--faults: unknown meteor" in proc.stderr

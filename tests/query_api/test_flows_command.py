"""`netwarden flows`: in process on the fixture's data dir, and as a separate process hitting the chDB lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netwarden.cli import main
from query_api.store import FlowStore
from tests.query_api.conftest import CAPTURES, REPO, capture_cluster, capture_lines, flow_uuid
from tests.query_api.test_flow_render import canonical, expected


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["flows", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_jsonpb_prints_newest_n_oldest_first(
    flow_store: FlowStore, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "--data-dir", str(data_dir), "--cluster", "qa-c1", "--last", "3", "-o", "jsonpb"
    )
    assert code == 0
    lines = out.splitlines()
    assert [json.loads(x)["flow"]["uuid"] for x in lines] == [flow_uuid(2), flow_uuid(6), flow_uuid(7)]
    assert all(x.startswith('{"flow":{') for x in lines)


def test_json_is_an_alias_of_jsonpb(
    flow_store: FlowStore, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, jsonpb, _ = run(capsys, "--data-dir", str(data_dir), "--cluster", "qa-c2", "-o", "jsonpb")
    _, as_json, _ = run(capsys, "--data-dir", str(data_dir), "--cluster", "qa-c2", "-o", "json")
    assert jsonpb == as_json and len(jsonpb.splitlines()) == 3


def test_all_returns_a_whole_capture(
    flow_store: FlowStore, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = max(CAPTURES, key=lambda p: p.stat().st_size)
    code, out, _ = run(
        capsys, "--data-dir", str(data_dir), "--cluster", capture_cluster(path), "--all", "-o", "jsonpb"
    )
    assert code == 0
    got = [json.loads(x) for x in out.splitlines()]
    assert {canonical(g) for g in got} == {canonical(expected(r)) for r in capture_lines(path)}
    times = [g["time"] for g in got]
    assert times == sorted(times)  # oldest first (same-width RFC 3339 strings sort by time)


def test_filters_and_table(flow_store: FlowStore, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "--data-dir",
        str(data_dir),
        "--cluster",
        "qa-c1",
        "--namespace",
        "shop",
        "--protocol",
        "tcp",
        "--port",
        "8080",
        "--verdict",
        "forwarded",
        "-o",
        "table",
    )
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(rows) == 2
    assert rows[0].startswith("May  1 10:00:00.123")
    assert "shop/frontend-abc:43000" in rows[0] and "shop/backend-1:8080" in rows[0]
    assert "to-endpoint" in rows[0] and "FORWARDED" in rows[0] and rows[0].endswith("TCP Flags: SYN")
    assert rows[1].endswith("TCP Flags: SYN, ACK")
    code, out, _ = run(capsys, "--data-dir", str(data_dir), "--verdict", "DROPPED", "--cluster", "qa-c1", "-o", "table")
    assert "1.1.1.1:53 (world)" in out and "Policy denied" in out and "DROPPED" in out


def test_user_errors(
    flow_store: FlowStore, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--data-dir", str(data_dir), "--verdict", "BOGUS")
    assert code == 2 and "--verdict: unknown verdict 'BOGUS'" in err
    code, _, err = run(capsys, "--data-dir", str(data_dir), "--since", "soon")
    assert code == 2 and "--since: invalid time 'soon'" in err
    code, _, err = run(capsys, "--data-dir", str(data_dir), "--last", "x")
    assert code == 2 and "--last" in err
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no flow history there" in err
    assert not (tmp_path / "nothing").exists()  # a wrong --data-dir is not created
    with pytest.raises(SystemExit):
        main(["flows", "--data-dir", str(data_dir), "--last", "3", "--all"])


def test_locked_data_dir_points_to_the_api(flow_store: FlowStore, data_dir: Path) -> None:
    """This test process holds the chDB engine, as `netwarden up` would: a second process must say so."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "netwarden", "flows", "--data-dir", str(data_dir), "--namespace", "shop"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "in use by a running `netwarden up`" in proc.stderr
    assert "'http://127.0.0.1:8080/api/v1/flows?namespace=shop&limit=20&format=jsonpb'" in proc.stderr
    assert "netwarden flows --server http://127.0.0.1:8080" in proc.stderr


def test_a_redacted_peer_shows_its_namespace_in_the_table(flow_store: FlowStore) -> None:
    from netwarden.commands.flows import table_rows
    from query_api.flow_query import FlowFilter
    from query_api.scope import ScopeFilter

    # qa-c2 flow 5: shop/backend-2 -> payments/api-1:443; a caller who sees only qa-c2/shop.
    scope = ScopeFilter(namespaces=frozenset({("qa-c2", "shop")}))
    rows = flow_store.query_flows(FlowFilter(cluster="qa-c2", namespace="payments", last=None), scope=scope)
    assert len(rows) == 1
    row = table_rows(rows)[1]  # [0] is the header
    assert "shop/backend-2:8080" in row and "payments/(redacted):443" in row
    assert not any("N/A" in cell for cell in row)

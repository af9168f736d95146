"""Acceptance: every reference capture goes through the whole path (gRPC -> Tansu -> Faust -> chDB) and
comes back from `netwarden flows -o jsonpb` with every stored field identical to the input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from netwarden.cli import main
from netwarden.commands.pipeline import ingest
from tests.conftest import CAPTURES

# What the record keeps of a flow (flow_record.py); everything else of the input is not compared.
FLOW_KEYS = {
    "time", "uuid", "verdict", "drop_reason", "drop_reason_desc", "Type", "node_name", "event_type",
    "traffic_direction", "trace_observation_point", "trace_reason", "is_reply", "reply", "source_service",
    "destination_service", "source_names", "destination_names", "ingress_allowed_by", "egress_allowed_by",
    "ingress_denied_by", "egress_denied_by",
}
ENDPOINT_KEYS = {"ID", "identity", "cluster_name", "namespace", "labels", "pod_name", "workloads"}
IP_KEYS = {"source", "destination", "ipVersion", "encrypted"}
L4_KEEP = {"TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6"}


def stored_view(doc: dict) -> dict:
    flow = doc["flow"]
    out = {k: v for k, v in flow.items() if k in FLOW_KEYS}
    for side in ("source", "destination"):
        if side in flow:
            out[side] = {k: v for k, v in flow[side].items() if k in ENDPOINT_KEYS}
    if "IP" in flow:
        out["IP"] = {k: v for k, v in flow["IP"].items() if k in IP_KEYS}
    if "l4" in flow:
        out["l4"] = {k: v for k, v in flow["l4"].items() if k in L4_KEEP}
    if "l7" in flow and "type" in flow["l7"]:
        out["l7"] = {"type": flow["l7"]["type"]}
    return {"flow": out, "node_name": doc.get("node_name", flow.get("node_name")), "time": doc.get("time", flow["time"])}


def canonical(docs: list[dict]) -> list[str]:
    return sorted(json.dumps(stored_view(d), sort_keys=True) for d in docs)


@pytest.mark.slow
@pytest.mark.parametrize("capture", CAPTURES, ids=[c.stem for c in CAPTURES])
def test_capture_round_trips_through_the_whole_pipeline(
    capture: Path, chdb_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [ln for ln in capture.read_text().splitlines() if ln.strip()]
    cluster = f"ref-{capture.stem[-24:]}"
    summary = asyncio.run(ingest(chdb_dir, cluster, [str(capture)], timeout=240))
    assert summary == {"read": len(lines), "stored": len(lines), "dead_lettered": 0}

    capsys.readouterr()
    assert main(["flows", "--data-dir", str(chdb_dir), "--cluster", cluster, "--all", "-o", "jsonpb"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(out) == len(lines)
    assert canonical(out) == canonical([json.loads(ln) for ln in lines])

"""Bad input gets a clear reason and lands in flows.dlq; nothing else from the file or batch is lost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from netwarden.commands.pipeline import ingest
from netwarden.embedded import PipelineStack, StackConfig
from schemas.dead_letter import DeadLetter
from schemas.topics import FLOWS_DLQ
from tests.conftest import CAPTURES


async def read_dead_letters(bootstrap: str, expect: int, timeout: float = 20.0) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(FLOWS_DLQ, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(letters) < expect and asyncio.get_running_loop().time() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            for records in got.values():
                letters += [DeadLetter.from_json(r.value) for r in records]
    finally:
        await consumer.stop()
    return letters


def broken_capture(path: Path) -> tuple[Path, int]:
    good = (CAPTURES[0].parent / "hubble-otel__basic-sample-10-flows.jsonl").read_text().splitlines()
    wrong_type = json.loads(good[2])
    wrong_type["flow"]["l4"]["TCP"]["destination_port"] = "http"
    unknown_enum = json.loads(good[3])
    unknown_enum["flow"]["verdict"] = "SOMETIMES"
    lines = [
        good[0],
        "this is not json",  # line 2: garbage
        good[1][: len(good[1]) // 2],  # line 3: truncated
        json.dumps(wrong_type),  # line 4
        json.dumps(unknown_enum),  # line 5
        *good[4:],
    ]
    path.write_text("\n".join(lines) + "\n")
    return path, 1 + len(good[4:])  # good lines kept: 0 and 4..9


@pytest.mark.slow
def test_malformed_lines_are_reported_dead_lettered_and_the_rest_stored(
    tmp_path: Path, tansu: object, chdb_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capture, good = broken_capture(tmp_path / "broken.jsonl")
    summary = asyncio.run(
        ingest(tmp_path / "data", "dlq-c1", [str(capture)], kafka=tansu.bootstrap, timeout=120, clickhouse_dsn=chdb_dsn)
    )
    assert summary == {"read": good + 4, "stored": good, "dead_lettered": 4}

    err = capsys.readouterr().err
    assert f"{capture}:2: invalid JSON" in err
    assert f"{capture}:3: invalid JSON" in err
    assert f"{capture}:4: not a valid GetFlowsResponse" in err and "destination_port" in err
    assert f"{capture}:5: not a valid GetFlowsResponse" in err and "SOMETIMES" in err

    letters = asyncio.run(read_dead_letters(tansu.bootstrap, 4))
    assert sorted(x.origin for x in letters) == [f"{capture}:{n}" for n in (2, 3, 4, 5)]
    assert all(x.cluster == "dlq-c1" and x.reason and x.payload for x in letters)
    assert any(x.payload == b"this is not json" for x in letters)


@pytest.mark.slow
def test_an_undecodable_entry_is_dead_lettered_and_its_batch_still_stored(
    tmp_path: Path, tansu: object, chdb_dsn: str
) -> None:
    from collectors.jsonl import read_capture

    good = [ln.response.SerializeToString() for ln in read_capture(CAPTURES[0]) if ln.response][:5]

    async def run() -> tuple[int, list[DeadLetter]]:
        stack = PipelineStack(StackConfig(data_dir=tmp_path, kafka=tansu.bootstrap, clickhouse_dsn=chdb_dsn))
        await stack.start()
        try:
            shipper = stack.shipper("dlq-c2")
            await shipper.ship("node-1", [good[0], b"\xff\xfe not protobuf", *good[1:]])
            assert stack.pipeline is not None
            for _ in range(200):
                if stack.pipeline.totals.stored + stack.pipeline.totals.dead_lettered >= 6:
                    break
                await asyncio.sleep(0.1)
            count = stack.clickhouse.query("SELECT count() FROM flows FINAL WHERE cluster = 'dlq-c2'").result_rows[0][0]
        finally:
            await stack.stop()
        return count, await read_dead_letters(tansu.bootstrap, 1)

    stored, letters = asyncio.run(run())
    assert stored == 5
    assert len(letters) == 1
    assert letters[0].payload == b"\xff\xfe not protobuf"
    assert letters[0].origin.startswith("flows.raw[") and letters[0].origin.endswith("#1")
    assert "not a GetFlowsResponse" in letters[0].reason

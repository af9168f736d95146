"""`netwarden flows --follow` (flows_follow.follow) against a real API process-local server: jsonpb and table
output, filters sent to the server, missed counts on stderr, refusals as one-line errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from collectors.traffic import DemoTraffic
from policy_engine.roles import Principal
from query_api.live import LiveHub, live_router, table_rows
from query_api.scope import ScopeFilter
from schemas.flow_render import row_to_jsonpb
from streams.decode import FlowDecoder
from tests.conftest import REPO_ROOT
from tests.live.test_hub import wait_drained
from tests.query_api.conftest import bearer_principals

TOKEN = "follow-token"


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, LiveHub]]:
    hub = LiveHub()
    app = FastAPI()
    principal = bearer_principals({TOKEN: Principal.with_role("org-admin")})
    app.include_router(live_router(hub, principal, lambda _: ScopeFilter(everything=True)))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", hub
    finally:
        hub.close()
        server.should_exit = True
        await task


async def run_follow(**args: Any) -> asyncio.subprocess.Process:
    code = (
        "import argparse, sys\n"
        "from netwarden.cli import CommandError\n"
        "from netwarden.commands.flows_follow import follow\n"
        f"args = argparse.Namespace(**{args!r})\n"
        "try:\n    sys.exit(follow(args))\n"
        "except CommandError as exc:\n    print(f'netwarden: {exc}', file=sys.stderr); sys.exit(2)\n"
    )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def demo_rows(n: int) -> list[dict[str, Any]]:
    entries = DemoTraffic("follow", seed=4).serialized(n)
    return table_rows(FlowDecoder().decode("follow", [d for _, _, d in entries]).table)


async def until_subscribed(hub: LiveHub, proc: asyncio.subprocess.Process) -> None:
    for _ in range(200):
        if hub.subscriber_count:
            return
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError("the follow client never subscribed")


async def test_jsonpb_output_filters_and_missed_counts(api: tuple[str, LiveHub]) -> None:
    server, hub = api
    rows = demo_rows(300)
    want = [row_to_jsonpb(r) for r in rows if "shop" in (r["src_namespace"], r["dst_namespace"])]
    proc = await run_follow(server=server, token=TOKEN, namespace="shop", output="jsonpb")
    await until_subscribed(hub, proc)
    hub.publish_rows(rows)
    await wait_drained(hub)
    for sub in hub._subs:  # a gap after the rows, as when this client falls behind
        sub.add_gap(7)
    await wait_drained(hub)
    hub.close()  # the server ends the stream normally (after the queue): the command exits 0
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    got = [json.loads(line) for line in out.decode().splitlines()]
    assert 0 < len(got) < len(rows)
    assert got == want
    assert "missed 7 flows" in err.decode()


async def test_table_output(api: tuple[str, LiveHub]) -> None:
    server, hub = api
    rows = demo_rows(20)
    proc = await run_follow(server=server, token=TOKEN, output="table")
    await until_subscribed(hub, proc)
    hub.publish_rows(rows)
    await wait_drained(hub)  # every row queued for the client: a closed stream still delivers its queue
    hub.close()
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].split()[:2] == ["TIMESTAMP", "SOURCE"] and len(lines) == 21
    assert any("shop/" in line for line in lines[1:])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"token": "wrong"}, "refused the stream (HTTP 401): missing or bad bearer token"),
        ({"token": TOKEN, "verdict": "MAYBE"}, "--verdict: verdict: unknown verdict 'MAYBE'"),
    ],
)
async def test_refusals_are_one_line_errors(
    api: tuple[str, LiveHub], args: dict[str, Any], fragment: str
) -> None:
    server, _ = api
    proc = await run_follow(server=server, output="jsonpb", **args)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and out == b""
    assert fragment in err.decode(), err.decode()

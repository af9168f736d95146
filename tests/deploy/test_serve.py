"""`netwarden serve` as scale mode runs it: separate processes on a real Kafka-protocol broker (Tansu).

chDB allows one process per data directory, so the replicas cannot share the worker's ClickHouse as they
would share a ClickHouse server. Here: a worker process stores a flow shipped to Kafka in its chDB directory
and publishes it to flows.enriched; two serve replicas (each with its own chDB directory) both stream it
live; then the worker stops and a third serve opens the worker's directory and answers the flow from
history. All share one control-plane store (`--control-plane sqlite:///...`), whose token they accept.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from netwarden.broker import free_port
from netwarden.commands.serve import control_plane_file
from tests.conftest import REPO_ROOT

CLUSTER = "deploy-serve"
START_TIMEOUT_S = 60.0


class Process:
    """A `netwarden` command in its own process, its output collected line by line."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.args = args
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "netwarden", *self.args, cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(self, prefix: str) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any(line.startswith(prefix) for line in self.lines):
            assert self.proc.returncode is None, f"{self.name} exited {self.proc.returncode}:\n{self.output}"
            assert time.monotonic() < deadline, f"{self.name}: no {prefix!r} within {START_TIMEOUT_S:.0f}s:\n{self.output}"
            await asyncio.sleep(0.05)

    async def stop(self, sig: int) -> tuple[int, float]:
        """Send `sig`; (exit status, seconds it took)."""
        assert self.proc is not None and self._reader is not None
        began = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 20)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        await self._reader
        return code, time.monotonic() - began

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def serve(name: str, data_dir: Path, kafka: str, store: Path) -> tuple[Process, int]:
    port = free_port()
    return Process(name, "serve", "--port", str(port), "--host", "127.0.0.1", "--kafka", kafka,
                   "--data-dir", str(data_dir), "--control-plane", f"sqlite://{store}"), port


def org_admin_token(store: Path) -> str:
    from policy_engine.store import ControlPlaneStore
    from policy_engine.tenancy import Tenancy

    tenancy = Tenancy(ControlPlaneStore.on_sqlite(store))
    try:
        tenancy.create_user("ops")
        tenancy.add_binding("ops", "org-admin")
        return tenancy.create_token("ops")[1]
    finally:
        tenancy.close()


async def live_uuids(client: httpx.AsyncClient, url: str, token: str, found: asyncio.Queue[str],
                     subscribed: asyncio.Event) -> None:
    """Follows the SSE stream, putting every flow's uuid on `found`."""
    async with client.stream("GET", url, params={"cluster": CLUSTER},
                             headers={"Authorization": f"Bearer {token}"}, timeout=None) as response:
        assert response.status_code == 200, await response.aread()
        subscribed.set()  # the route subscribes before it sends its first byte
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                await found.put(json.loads(line[6:])["flow"]["uuid"])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_flow_reaches_every_replica_live_and_history_through_the_worker(tmp_path: Path, tansu: Any) -> None:
    from collectors.kafka_out import FlowBatchProducer, new_producer
    from collectors.traffic import DemoTraffic
    from schemas.hubble.observer import observer_pb2

    store = tmp_path / "control-plane.sqlite"
    token = org_admin_token(store)
    kafka = tansu.bootstrap
    (_, node, flow), = DemoTraffic(CLUSTER, seed=9).serialized(1)
    uuid = observer_pb2.GetFlowsResponse.FromString(flow).flow.uuid

    async def run() -> None:
        worker = Process("worker", "worker", "--kafka", kafka, "--data-dir", str(tmp_path / "worker"))
        replica_a, port_a = serve("serve-a", tmp_path / "serve-a", kafka, store)
        replica_b, port_b = serve("serve-b", tmp_path / "serve-b", kafka, store)
        history: Process | None = None
        readers: list[asyncio.Task[None]] = []
        try:
            await asyncio.gather(worker.start(), replica_a.start(), replica_b.start())
            await asyncio.gather(worker.wait_for_line("worker consuming"),
                                 replica_a.wait_for_line("netwarden serve: "),
                                 replica_b.wait_for_line("netwarden serve: "))
            async with httpx.AsyncClient() as client:
                # The control plane's token, and nothing else, opens the API.
                refused = await client.get(f"http://127.0.0.1:{port_a}/api/v1/flows")
                assert refused.status_code == 401, refused.text
                queues: list[asyncio.Queue[str]] = []
                for port in (port_a, port_b):
                    queue: asyncio.Queue[str] = asyncio.Queue()
                    subscribed = asyncio.Event()
                    url = f"http://127.0.0.1:{port}/api/v1/flows/stream"
                    readers.append(asyncio.create_task(live_uuids(client, url, token, queue, subscribed)))
                    await asyncio.wait_for(subscribed.wait(), 10)
                    queues.append(queue)

                producer = new_producer(kafka)
                await producer.start()
                try:
                    await FlowBatchProducer(producer, CLUSTER).ship(node, [flow])
                finally:
                    await producer.stop()
                got = await asyncio.wait_for(asyncio.gather(*(q.get() for q in queues)), 30)
                assert got == [uuid, uuid], "both replicas stream the flow live"

                # Stopped with clients still streaming: each replica ends its streams and exits promptly.
                for process, sig, reader in ((replica_a, signal.SIGTERM, readers[0]),
                                             (replica_b, signal.SIGINT, readers[1])):
                    code, seconds = await process.stop(sig)
                    assert code == 0 and seconds < 10, f"{process.name}: exit {code} after {seconds:.1f}s\n{process.output}"
                    await asyncio.wait_for(reader, 5)  # the stream ended (an error would be raised here)
            code, seconds = await worker.stop(signal.SIGTERM)
            assert code == 0 and seconds < 10, f"worker: exit {code} after {seconds:.1f}s\n{worker.output}"

            # The worker stored it (a clean stop stores what it held); a replica on its directory reads it back.
            history, port_h = serve("serve-history", tmp_path / "worker", kafka, store)
            await history.start()
            await history.wait_for_line("netwarden serve: ")
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{port_h}/api/v1/flows", params={"cluster": CLUSTER},
                                     headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert [f["flow"]["uuid"] for f in r.json()["flows"]] == [uuid]
            code, seconds = await history.stop(signal.SIGTERM)
            assert code == 0 and seconds < 10, f"exit {code} after {seconds:.1f}s\n{history.output}"
        finally:
            for task in readers:
                task.cancel()
            for process in (worker, replica_a, replica_b, history):
                if process is not None:
                    await process.kill()

    asyncio.run(run())


def test_control_plane_names_the_sqlite_store(tmp_path: Path) -> None:
    store = tmp_path / "cp.sqlite"
    assert control_plane_file(str(store), "unused") == store
    assert control_plane_file(f"sqlite://{store}", "unused") == store
    assert control_plane_file(str(tmp_path), "unused") == tmp_path / "control-plane.sqlite"
    assert control_plane_file(None, str(tmp_path)) == tmp_path / "control-plane.sqlite"


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://nw@db/netwarden", "unsupported scheme 'postgresql'"),
        ("sqlite://host/cp.sqlite", "names no file"),
        ("/no/such/dir/cp.sqlite", "directory '/no/such/dir' does not exist"),
    ],
)
def test_control_plane_refuses_what_it_cannot_open(dsn: str, message: str) -> None:
    with pytest.raises(ValueError, match="--control-plane: .*") as caught:
        control_plane_file(dsn, "unused")
    assert message in str(caught.value)

"""`netwarden bench live`: latency from a flow entering the collector to its arrival at a WebSocket client.

The embedded path in the processes `up` uses: a Hubble-compatible gRPC server fed at `--rate` in its own
process, the real collector in its own process (gRPC follow -> Kafka), the embedded Tansu broker, the stream
worker storing into chDB, the live hub and the API under uvicorn with the live router in this process, and
real WebSocket clients in a process of their own (a client's parsing is not the server's CPU). A flow's clock
(CLOCK_MONOTONIC, shared by the processes) starts when it is appended to the Hubble server's ring (the
moment the collector can read it) and stops when its jsonpb message has been received and parsed; flows are
matched by Hubble uuid.

Prints one JSON line: {"flows", "p50_ms", "p99_ms", "max_ms", "missed", ...}; `stored_*` is the part up to
the ClickHouse insert (collector linger, Kafka, worker window, insert), `delivery_*` the rest (hub, API,
WebSocket, client).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from collectors.hubble_server import HubbleServer
    from netwarden.embedded import PipelineStack
    from query_api.live import LiveHub

BENCH_CLUSTER = "bench-live"
WARMUP_TIMEOUT_S = 60.0  # the first flow waits for the Faust consumer group to form
DRAIN_TIMEOUT_S = 10.0  # after the last flow: anything later counts as lost


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = groups["bench"].add_parser(
        "live",
        help="latency of collector -> Kafka -> Faust -> ClickHouse -> live WebSocket client",
        description="Feeds generated flows at a steady rate through the embedded stack and measures, per "
        "flow, the time from entering the collector to arriving at a WebSocket client of "
        "/api/v1/flows/stream. Target: p99 <= 1000 ms.",
    )
    p.add_argument("--flows", type=int, default=5000, help="flows to measure (default 5000)")
    p.add_argument("--rate", type=float, default=500.0, help="flows per second (default 500)")
    p.add_argument("--clients", type=int, default=1, help="WebSocket clients, each receiving every flow")
    p.add_argument("--deflate", action="store_true",
                   help="clients offer permessage-deflate, as browsers do (the server then compresses every "
                   "message for every client: ~30 us of its CPU per flow here)")
    p.add_argument("--kafka", help="external Kafka bootstrap (default: embedded Tansu)")
    p.add_argument("--data-dir", help="data directory (default: a temporary one)")
    p.set_defaults(handler=cmd_bench_live)


def cmd_bench_live(args: argparse.Namespace) -> int:
    from netwarden.cli import CommandError

    if args.flows < 1:
        raise CommandError(f"--flows: must be >= 1, got {args.flows}")
    if args.clients < 1:
        raise CommandError(f"--clients: must be >= 1, got {args.clients}")
    if args.rate <= 0:
        raise CommandError(f"--rate: must be > 0, got {args.rate}")
    with tempfile.TemporaryDirectory(prefix="netwarden-bench-live-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        result = asyncio.run(
            bench_live(data_dir, args.flows, args.rate, clients=args.clients, kafka=args.kafka, deflate=args.deflate)
        )
    print(json.dumps(result), flush=True)
    return 0


@dataclass(frozen=True)
class EveryFlow:
    """Scope of the benchmark client: sees every flow, unredacted (the org-admin case). Equal to itself on
    every re-check (query_api.stream_access), so the stream is never ended as narrowed."""

    def side_in_scope(self, row: Mapping[str, Any], side: str) -> bool:
        return True

    def visible(self, row: Mapping[str, Any]) -> bool:
        return True

    def redact(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        return row


def _anonymous() -> None:
    return None


class LiveRig:
    """Embedded pipeline + one Hubble-compatible server (cluster `cluster`) + the API on a free port.

    `build_app(hub)` makes the FastAPI app; the default serves the live router to everyone (benchmark).
    Tests pass their own app with real authentication and scopes.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        cluster: str = BENCH_CLUSTER,
        kafka: str | None = None,
        clickhouse_dsn: str | None = None,
        build_app: Callable[[LiveHub], FastAPI] | None = None,
        ring_capacity: int = 200_000,
        hubble_target: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.cluster = cluster
        self.kafka = kafka
        self.clickhouse_dsn = clickhouse_dsn
        self.build_app = build_app or _open_app
        self.ring_capacity = ring_capacity
        self.hubble_target = hubble_target  # a Hubble server elsewhere (host:port); None: one in this process
        self.stack: PipelineStack | None = None
        self.server: HubbleServer | None = None
        self._api: Any = None
        self._api_task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def hub(self) -> LiveHub:
        assert self.stack is not None
        return self.stack.live_hub

    async def start(self) -> None:
        import uvicorn

        from collectors.hubble_server import HubbleServer
        from netwarden.embedded import PipelineStack, StackConfig

        self.stack = PipelineStack(
            StackConfig(data_dir=self.data_dir, kafka=self.kafka, clickhouse_dsn=self.clickhouse_dsn)
        )
        await self.stack.start()
        target = self.hubble_target
        if target is None:
            self.server = HubbleServer(ring_capacity=self.ring_capacity)
            target = f"127.0.0.1:{await self.server.start('127.0.0.1', 0)}"
        # The collector in its own process, as in `up`.
        await self.stack.spawn_collector(self.cluster, target, checkpoint=False)
        app = self.build_app(self.stack.live_hub)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._api = uvicorn.Server(config)
        self._api_task = asyncio.create_task(self._api.serve())
        while not self._api.started:
            if self._api_task.done():
                self._api_task.result()
                raise RuntimeError("the API server stopped during startup")
            await asyncio.sleep(0.02)
        self.port = self._api.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._api is not None:
            self._api.should_exit = True
        if self.stack is not None:
            self.stack.live_hub.close()  # ends open streams, so uvicorn can finish them
        if self._api_task is not None:
            try:
                await asyncio.wait_for(self._api_task, 10)
            except TimeoutError:
                self._api_task.cancel()
        if self.stack is not None:
            await self.stack.stop()
        if self.server is not None:
            await self.server.stop()

    async def __aenter__(self) -> LiveRig:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _open_app(hub: LiveHub) -> FastAPI:
    from fastapi import FastAPI

    from query_api.live import live_router

    app = FastAPI(title="netwarden bench live")
    app.include_router(live_router(hub, _anonymous, lambda _: EveryFlow()))
    return app


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]  # nearest rank


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text}", end="", file=sys.stderr, flush=True)


class _ChildProcess:
    """A helper process of the bench (`python -m netwarden.commands.bench_live <role>`): JSON lines both ways."""

    def __init__(self, role: str, *args: str) -> None:
        self.argv = [sys.executable, "-m", "netwarden.commands.bench_live", role, *args]
        self.proc: asyncio.subprocess.Process | None = None
        self.last: dict[str, Any] = {}  # the latest status line
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            message = json.loads(line)
            if "status" in message:
                self.last = message["status"]
            else:
                self._replies.put_nowait(message)
        self._replies.put_nowait({"exited": self.proc.returncode})

    async def ask(self, command: str, timeout: float = WARMUP_TIMEOUT_S) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        if command:
            self.proc.stdin.write(command.encode() + b"\n")
            await self.proc.stdin.drain()
        reply = await asyncio.wait_for(self._replies.get(), timeout)
        if "exited" in reply:
            raise RuntimeError(f"bench helper {self.argv[3]} exited")
        return reply

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


async def bench_live(
    data_dir: Path,
    n: int,
    rate: float,
    *,
    clients: int = 1,
    kafka: str | None = None,
    clickhouse_dsn: str | None = None,
    deflate: bool = False,
) -> dict[str, Any]:
    from query_api.live import STREAM_PATH

    stored: dict[bytes, int] = {}  # uuid bytes -> ns when the pipeline had stored it (stage split)

    def on_stored(table: Any) -> None:
        now = time.monotonic_ns()
        for u in table.column("uuid").to_pylist():
            stored[u] = now

    feeder = _ChildProcess("feeder", "--cluster", BENCH_CLUSTER)
    receivers = None
    try:
        await feeder.start()
        hubble_port = (await feeder.ask(""))["port"]
        rig = LiveRig(data_dir, kafka=kafka, clickhouse_dsn=clickhouse_dsn, hubble_target=f"127.0.0.1:{hubble_port}")
        async with rig:
            assert rig.stack is not None and rig.stack.pipeline is not None
            rig.stack.pipeline.stored_listeners.insert(0, on_stored)
            receivers = _ChildProcess(
                "client", "--url", rig.ws_url + STREAM_PATH, "--clients", str(clients), *(["--deflate"] if deflate else [])
            )
            await receivers.start()
            await receivers.ask("")  # connected
            # Warm-up: the first flows wait for the consumer group to form; they are not measured.
            await feeder.ask("feed 10")
            deadline = time.monotonic() + WARMUP_TIMEOUT_S
            while receivers.last.get("complete", 0) < 10 * clients:
                if time.monotonic() > deadline:
                    raise RuntimeError("warm-up flows never reached the WebSocket clients")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            await receivers.ask("reset")
            stored.clear()
            with tempfile.TemporaryDirectory(prefix="netwarden-bench-live-") as tmp:
                entered_path, arrived_path = Path(tmp) / "entered.json", Path(tmp) / "arrived.json"
                run = asyncio.ensure_future(feeder.ask(f"run {n} {rate!r} {entered_path}", n / rate + 60))
                while not run.done():
                    _progress(f"bench live: {receivers.last.get('complete', 0)}/{n * clients} arrived")
                    await asyncio.sleep(0.1)
                run.result()
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                while receivers.last.get("complete", 0) < n * clients and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await receivers.ask(f"dump {arrived_path}")
                entered: dict[str, int] = json.loads(entered_path.read_text())
                got = json.loads(arrived_path.read_text())
    finally:
        if receivers is not None:
            await receivers.stop()
        await feeder.stop()
    _progress("")
    arrived: list[dict[str, int]] = got["arrived"]
    missed: list[int] = got["missed"]
    return {**_figures(n, rate, clients, entered, arrived, missed, stored), "deflate": deflate}


def _figures(
    n: int,
    rate: float,
    clients: int,
    entered: dict[str, int],
    arrived: list[dict[str, int]],
    missed: list[int],
    stored: dict[bytes, int],
) -> dict[str, Any]:
    latencies = sorted((a[u] - t) / 1e6 for a in arrived for u, t in entered.items() if u in a)
    # Where the time goes: collector + Kafka + worker + ClickHouse, then hub + API + client.
    to_stored, to_client = [], []
    for u, t in entered.items():
        s_ns = stored.get(uuidlib.UUID(u).bytes)
        if s_ns is None:
            continue
        to_stored.append((s_ns - t) / 1e6)
        to_client += [(a[u] - s_ns) / 1e6 for a in arrived if u in a]
    to_stored.sort()
    to_client.sort()
    return {
        "flows": n,
        "rate": rate,
        "clients": clients,
        "received": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.50), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "missed": sum(missed),
        "lost": n * clients - len(latencies) - sum(missed),
        "stored_p50_ms": round(_percentile(to_stored, 0.50), 1),
        "stored_p99_ms": round(_percentile(to_stored, 0.99), 1),
        "delivery_p50_ms": round(_percentile(to_client, 0.50), 1),
        "delivery_p99_ms": round(_percentile(to_client, 0.99), 1),
    }


# ---- the helper processes -------------------------------------------------------------------------------


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _feeder(cluster: str) -> None:
    """A Hubble server fed with demo traffic on command: `feed N` now, `run N RATE PATH` at RATE flows/s,
    then the append time of every flow (uuid -> CLOCK_MONOTONIC ns) into PATH."""
    from collectors.hubble_server import HubbleServer
    from collectors.traffic import DemoTraffic
    from schemas.hubble.observer import observer_pb2

    parse = observer_pb2.GetFlowsResponse.FromString
    traffic = DemoTraffic(cluster, seed=3)
    server = HubbleServer(ring_capacity=200_000)
    _say({"port": await server.start("127.0.0.1", 0)})
    entered: dict[str, int] = {}

    def feed(count: int) -> None:
        entries = traffic.serialized(count)
        uuids = [parse(data).flow.uuid for _, _, data in entries]  # before the clock starts
        now = time.monotonic_ns()
        for u in uuids:
            entered[u] = now
        server.add_serialized(entries)

    lines = await _stdin_lines()
    loop = asyncio.get_running_loop()
    try:
        while line := (await lines.readline()).decode().split():
            if line[0] == "feed":
                feed(int(line[1]))
                _say({"fed": int(line[1])})
            elif line[0] == "run":
                n, rate, path = int(line[1]), float(line[2]), line[3]
                entered.clear()
                started, sent = loop.time(), 0
                while sent < n:
                    due = min(n, int((loop.time() - started) * rate) + 1) - sent
                    if due > 0:
                        feed(due)
                        sent += due
                    await asyncio.sleep(0.005)
                Path(path).write_text(json.dumps(entered))
                _say({"fed": n})
    finally:
        await server.stop()


async def _clients(url: str, count: int, deflate: bool) -> None:
    """`count` WebSocket clients of the live stream; a status line every 100 ms; `reset` forgets what
    arrived, `dump PATH` writes {"arrived": [{uuid: ns}, ...], "missed": [...]} per client into PATH."""
    import websockets

    arrived: list[dict[str, int]] = [{} for _ in range(count)]
    missed = [0] * count

    async def receive(ws: Any, i: int) -> None:
        async for text in ws:
            now = time.monotonic_ns()
            message = json.loads(text)
            if "missed" in message:
                missed[i] += int(message["missed"])
            else:
                arrived[i].setdefault(message["flow"].get("uuid", ""), now)

    async def status() -> None:
        while True:
            _say({"status": {"complete": sum(map(len, arrived)) + sum(missed)}})
            await asyncio.sleep(0.1)

    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(
                websockets.connect(url, max_size=None, max_queue=None, compression="deflate" if deflate else None)
            )
            for _ in range(count)
        ]
        tasks = [asyncio.create_task(receive(ws, i)) for i, ws in enumerate(sockets)]
        tasks.append(asyncio.create_task(status()))
        _say({"connected": count})
        lines = await _stdin_lines()
        while line := (await lines.readline()).decode().split():
            if line[0] == "reset":
                for a in arrived:
                    a.clear()
                missed[:] = [0] * count
                _say({"reset": True})
            elif line[0] == "dump":
                Path(line[1]).write_text(json.dumps({"arrived": arrived, "missed": missed}))
                _say({"dumped": True})
        for t in tasks:
            t.cancel()


if __name__ == "__main__":
    _helper = argparse.ArgumentParser(prog="netwarden.commands.bench_live")
    _roles = _helper.add_subparsers(dest="role", required=True)
    _roles.add_parser("feeder").add_argument("--cluster", required=True)
    _client = _roles.add_parser("client")
    _client.add_argument("--url", required=True)
    _client.add_argument("--clients", type=int, default=1)
    _client.add_argument("--deflate", action="store_true")
    _args = _helper.parse_args()
    if _args.role == "feeder":
        asyncio.run(_feeder(_args.cluster))
    else:
        asyncio.run(_clients(_args.url, _args.clients, _args.deflate))

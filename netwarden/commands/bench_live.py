"""`netwarden bench live`: latency from a flow entering the collector to its arrival at a WebSocket client.

The whole embedded path runs in this process: a Hubble-compatible gRPC server fed at `--rate`, the real
collector (gRPC follow -> Kafka), the embedded Tansu broker, the Faust worker storing into chDB, the live
hub, and the API under uvicorn with the live router; the client is a real WebSocket client. A flow's
clock starts when it is appended to the Hubble server's ring (the moment the collector can read it) and
stops when its jsonpb message has been received and parsed; flows are matched by Hubble uuid.

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
            bench_live(data_dir, args.flows, args.rate, clients=args.clients, kafka=args.kafka)
        )
    print(json.dumps(result), flush=True)
    return 0


class EveryFlow:
    """Scope of the benchmark client: sees every flow, unredacted (the org-admin case)."""

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
    ) -> None:
        self.data_dir = data_dir
        self.cluster = cluster
        self.kafka = kafka
        self.clickhouse_dsn = clickhouse_dsn
        self.build_app = build_app or _open_app
        self.ring_capacity = ring_capacity
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
        self.server = HubbleServer(ring_capacity=self.ring_capacity)
        hubble_port = await self.server.start("127.0.0.1", 0)
        # The collector in its own process, as in `up`: this one serves Hubble, the worker and the API.
        await self.stack.spawn_collector(self.cluster, f"127.0.0.1:{hubble_port}", checkpoint=False)
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


async def bench_live(
    data_dir: Path,
    n: int,
    rate: float,
    *,
    clients: int = 1,
    kafka: str | None = None,
    clickhouse_dsn: str | None = None,
) -> dict[str, Any]:
    import websockets

    from collectors.traffic import DemoTraffic
    from query_api.live import STREAM_PATH
    from schemas.hubble.observer import observer_pb2

    parse = observer_pb2.GetFlowsResponse.FromString
    traffic = DemoTraffic(BENCH_CLUSTER, seed=3)
    entered: dict[str, int] = {}  # uuid -> ns when appended to the Hubble server
    arrived: list[dict[str, int]] = [{} for _ in range(clients)]  # per client: uuid -> ns received
    missed = [0] * clients
    stored: dict[bytes, int] = {}  # uuid bytes -> ns when the pipeline had stored it (stage split)

    def on_stored(table: Any) -> None:
        now = time.perf_counter_ns()
        for u in table.column("uuid").to_pylist():
            stored[u] = now

    def feed(count: int) -> None:
        assert rig.server is not None
        entries = traffic.serialized(count)
        uuids = [parse(data).flow.uuid for _, _, data in entries]  # before the clock starts
        now = time.perf_counter_ns()
        for uuid in uuids:
            entered[uuid] = now
        rig.server.add_serialized(entries)

    def complete() -> int:
        return sum(len(a) for a in arrived) + sum(missed)

    async def receive(ws: Any, i: int) -> None:
        async for text in ws:
            now = time.perf_counter_ns()
            message = json.loads(text)
            if "missed" in message:
                missed[i] += int(message["missed"])
            else:
                arrived[i].setdefault(message["flow"].get("uuid", ""), now)

    rig = LiveRig(data_dir, kafka=kafka, clickhouse_dsn=clickhouse_dsn)
    async with rig, contextlib.AsyncExitStack() as connections:
        assert rig.stack is not None and rig.stack.pipeline is not None
        rig.stack.pipeline.stored_listeners.insert(0, on_stored)
        sockets = [
            await connections.enter_async_context(
                websockets.connect(rig.ws_url + STREAM_PATH, max_size=None, max_queue=None)
            )
            for _ in range(clients)
        ]
        receivers = [asyncio.create_task(receive(ws, i)) for i, ws in enumerate(sockets)]
        try:
            # Warm-up: the first flows wait for the consumer group to form; they are not measured.
            feed(10)
            warm = set(entered)
            deadline = time.monotonic() + WARMUP_TIMEOUT_S
            while not all(warm <= a.keys() for a in arrived):
                if time.monotonic() > deadline or any(r.done() for r in receivers):
                    raise RuntimeError("warm-up flows never reached the WebSocket clients")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            entered.clear()
            stored.clear()
            for a in arrived:
                a.clear()
            missed[:] = [0] * clients

            loop = asyncio.get_running_loop()
            started = loop.time()
            sent = 0
            while sent < n:
                due = min(n, int((loop.time() - started) * rate) + 1) - sent
                if due > 0:
                    feed(due)
                    sent += due
                    _progress(f"bench live: {sent}/{n} flows fed, {len(arrived[0])} arrived")
                await asyncio.sleep(0.005)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while complete() < n * clients and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            for r in receivers:
                r.cancel()
    _progress("")
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

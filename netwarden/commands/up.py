"""`netwarden up`: the whole embedded stack on one machine until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from netwarden.commands.pipeline import add_data_dir, run_stack

DEMO_CLUSTERS = ("demo-east", "demo-west")


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = sub.add_parser("up", help="run the embedded stack: broker, demo Hubble servers, collectors, worker, API")
    add_data_dir(p)
    p.add_argument("--port", type=int, default=8080, help="API port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    p.add_argument("--rate", type=float, default=50.0, help="demo flows per second per cluster (default 50)")
    p.add_argument(
        "--rotate-seconds", type=float, default=300.0,
        help="retire the broker's flows.raw generation this often, bounding its memory (default 300)",
    )
    p.set_defaults(handler=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_stack(up(Path(args.data_dir), args.host, args.port, args.rate, args.rotate_seconds))
    return 0


async def up(data_dir: Path, host: str, port: int, rate: float, rotate_seconds: float) -> None:
    import uvicorn
    from prometheus_client import REGISTRY

    from collectors.hubble_server import HubbleServer
    from collectors.traffic import DemoTraffic
    from netwarden.demo_seed import format_demo_tokens, seed_demo
    from netwarden.embedded import PipelineStack, StackConfig
    from policy_engine.store import ControlPlaneStore
    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator, OIDCConfig

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    stack = PipelineStack(StackConfig(data_dir=data_dir, rotate_seconds=rotate_seconds))
    await stack.start()
    servers: list[Any] = []
    feeders: list[asyncio.Task[None]] = []
    api: uvicorn.Server | None = None
    try:
        lines = [f"netwarden up: data in {data_dir.resolve()}", f"  broker     Tansu at {stack.bootstrap}"]
        for cluster in DEMO_CLUSTERS:
            server = HubbleServer()
            hubble_port = await server.start("127.0.0.1", 0)
            servers.append(server)
            feeders.append(asyncio.create_task(DemoTraffic(cluster).run(server, rate, stop)))
            await stack.add_collector(cluster, f"127.0.0.1:{hubble_port}")
            lines.append(f"  hubble     {cluster}: Hubble-compatible server at 127.0.0.1:{hubble_port} ({rate:g} flows/s)")
        control_plane = ControlPlaneStore.open(data_dir)
        demo_users = seed_demo(control_plane, data_dir)
        tenancy = Tenancy(control_plane)
        assert stack.flow_store is not None
        store = stack.flow_store
        app = create_app(
            store,
            registry=REGISTRY,  # one /metrics for API, pipeline and broker
            authenticator=Authenticator(tenancy, OIDCConfig.from_env()),
            ownership=tenancy.ownership,
            live_hub=stack.live_hub,  # GET /api/v1/flows/stream, fed in-process by the pipeline (query_api.live)
        )
        api = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        api_task = asyncio.create_task(api.serve())
        lines += [
            f"  clickhouse chDB under {(data_dir / 'clickhouse').resolve()}",
            f"  api        http://{host}:{port}/api/v1/flows  (/healthz, /metrics)",
            f"demo users (tokens also in {(data_dir / 'demo-tokens.json').resolve()}):",
            *(f"  {line}" for line in format_demo_tokens(demo_users)),
            "Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({api_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        if api is not None:
            api.should_exit = True
        for task in feeders:
            task.cancel()
        await stack.stop()
        for server in servers:
            await server.stop()

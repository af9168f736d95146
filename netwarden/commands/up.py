"""`netwarden up`: the whole embedded stack on one machine until Ctrl-C.

The demo Hubble servers and the collectors are supervised child processes; the broker is a child too;
the worker and the API share this process with chDB. Ctrl-C or SIGTERM stops everything in order.

Each demo cluster also gets its kube API here (netwarden.demo.world: a stand-in on 127.0.0.1, registered as
the cluster's apiServer) and its policy (netwarden.demo_seed.seed_demo_policies). A cluster built fresh is
synced like `netwarden sync` does and then gets the demo's faults (netwarden/demo/FAULTS.md); a cluster
restored from the data dir is left as it was. The demo Hubble servers judge their flows by the policies on
these APIs (netwarden.demo.enforcement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from netwarden.commands.pipeline import add_data_dir, run_stack
from netwarden.supervise import api_server, stop_on_signals

DEMO_CLUSTERS = ("demo-east", "demo-west")
log = logging.getLogger("netwarden.up")


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
    p.add_argument(
        "--broker-memory-mib", type=int, default=128,
        help="retire it sooner once the broker's resident memory passes this many MiB (default 128)",
    )
    p.add_argument(
        "--retention-days", default=os.environ.get("NETWARDEN_RETENTION_DAYS"),
        help="keep flows this many days after ingestion (env NETWARDEN_RETENTION_DAYS; default: as stored, 7 new)",
    )
    p.add_argument(
        "--rollup-retention-days", default=os.environ.get("NETWARDEN_ROLLUP_RETENTION_DAYS"),
        help="keep rollups this many days (env NETWARDEN_ROLLUP_RETENTION_DAYS; default: as stored, 90 new)",
    )
    p.set_defaults(handler=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    from netwarden.cli import CommandError
    from schemas.clickhouse import retention_days_from

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        retention = (
            retention_days_from(args.retention_days, "--retention-days"),
            retention_days_from(args.rollup_retention_days, "--rollup-retention-days"),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not run_stack(up(Path(args.data_dir), args.host, args.port, args.rate, args.rotate_seconds,
                        args.broker_memory_mib << 20, retention)):
        raise CommandError("stopped: a part of the stack kept failing (see the log above)")
    return 0


async def up(data_dir: Path, host: str, port: int, rate: float, rotate_seconds: float,
             broker_memory_bytes: int = 128 << 20,
             retention: tuple[int | None, int | None] = (None, None)) -> bool:
    """Run until a signal (True) or until a part of the stack gives up (False)."""
    import uvicorn
    from prometheus_client import REGISTRY

    from netwarden.demo.faults import UNMANAGED
    from netwarden.demo.world import DemoCluster
    from netwarden.demo_seed import format_demo_tokens, seed_demo, seed_demo_policies
    from netwarden.embedded import PipelineStack, StackConfig
    from policy_engine.store import ControlPlaneStore
    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator, OIDCConfig

    stop = asyncio.Event()
    stop_on_signals(stop)

    stack = PipelineStack(StackConfig(data_dir=data_dir, rotate_seconds=rotate_seconds,
                                      broker_memory_bytes=broker_memory_bytes,
                                      retention_days=retention[0], rollup_retention_days=retention[1]))
    api: uvicorn.Server | None = None
    api_task: asyncio.Task[None] | None = None
    clusters: dict[str, DemoCluster] = {}
    saver: asyncio.Task[None] | None = None
    # A ring per node holds >= 1 s of the cluster's traffic (~3 s of its node's): with the collector's own
    # buffer, a collector paused while the broker rotates loses nothing.
    ring = max(4095, int(rate))
    try:
        await stack.start()
        lines = [f"netwarden up: data in {data_dir.resolve()}", f"  broker     Tansu at {stack.bootstrap}"]
        control_plane = ControlPlaneStore.open(data_dir)
        demo_users = seed_demo(control_plane, data_dir)
        for cluster in DEMO_CLUSTERS:
            clusters[cluster] = DemoCluster.open(data_dir, cluster, unmanaged=UNMANAGED.get(cluster, ()))
        seed_demo_policies(control_plane, {name: c.url for name, c in clusters.items()})
        # Fresh clusters are synced before their traffic starts: a sync applies objects one by one, and
        # traffic judged halfway (default deny in, allows not yet) would show drops no fault explains.
        planted = dict(await asyncio.gather(*(_first_sync(c, data_dir) for c in clusters.values() if c.fresh)))
        for name, demo in clusters.items():
            state = "as left last time"
            if demo.fresh:
                state = "new: synced" + (f"; then {planted[name]}" if planted.get(name) else "")
            lines.append(f"  kube API   {name}: {demo.url} ({state})")
        saver = asyncio.create_task(_save_clusters(list(clusters.values()), stop))
        for cluster in DEMO_CLUSTERS:
            target = await stack.spawn_demo_server(cluster, rate=rate, ring=ring, kube_api=clusters[cluster].url)
            collector = await stack.spawn_collector(cluster, target)
            lines.append(f"  hubble     {cluster}: Hubble-compatible server at {target} ({rate:g} flows/s), "
                         f"collector pid {collector.pid}")
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
        api = api_server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        api_task = asyncio.create_task(api.serve())
        lines += [
            f"  clickhouse chDB under {(data_dir / 'clickhouse').resolve()}",
            f"  api        http://{host}:{port}/api/v1/flows  (/healthz, /metrics)",
            f"demo users (tokens also in {(data_dir / 'demo-tokens.json').resolve()}):",
            *(f"  {line}" for line in format_demo_tokens(demo_users)),
            "demo faults to find: netwarden/demo/FAULTS.md (netwarden sync / diff --data-dir reach the kube APIs)",
            "Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)
        stopper = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(stack.failed.wait())
        await asyncio.wait({api_task, stopper, failed}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        failed.cancel()
        return not stack.failed.is_set()
    finally:
        stop.set()
        if api is not None:
            api.should_exit = True
        if api_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(api_task, 3.0)
        await stack.stop()
        if saver is not None:
            saver.cancel()
        for demo in clusters.values():
            demo.close()


async def _first_sync(demo: Any, data_dir: Path) -> tuple[str, str | None]:
    """`netwarden sync` of a fresh demo cluster, then its planted faults (netwarden/demo/FAULTS.md);
    returns (cluster, what was planted)."""
    from netwarden.demo.faults import plant_drift, sync_cluster

    ok, output = await sync_cluster(data_dir, demo.name)
    if not ok:
        log.warning("first sync of %s failed:\n%s", demo.name, output)
    return demo.name, plant_drift(demo)


async def _save_clusters(clusters: list[Any], stop: asyncio.Event) -> None:
    """Keep the demo clusters' state in the data dir while they change (and `up` saves at exit too)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        for demo in clusters:
            try:
                demo.save()
            except OSError as exc:
                log.warning("cannot save demo cluster %s: %s", demo.name, exc)

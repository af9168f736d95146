"""`netwarden serve`: the API of scale mode, one replica of many behind a Service.

History and summaries are read from a ClickHouse server (`--clickhouse`, written by `netwarden worker`); the
live stream is fed from `flows.enriched` (`--kafka`), where the workers publish every stored batch. Each
replica reads every partition of that topic itself, without a consumer group (query_api.live.EnrichedTopicFeed),
so every replica sees every flow and serves its own clients. Users, tokens, policies and tenancy come from the
control-plane store (`--control-plane`).

`--control-plane` is the control-plane store's SQLite database (policy_engine.store.ControlPlaneStore), the
one `netwarden admin`/`apply` write: a file path, `sqlite:///ABSOLUTE/PATH`, or a directory holding
`control-plane.sqlite` (what `--data-dir` holds). Replicas share the file (a volume every replica mounts); it is
opened per request, so what `netwarden admin` changes is seen at once. Other schemes are refused: there is no
PostgreSQL store yet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from netwarden.cli import CommandError
from netwarden.commands.pipeline import add_data_dir, run_stack
from netwarden.supervise import api_server, stop_on_signals

log = logging.getLogger("netwarden.serve")

CONTROL_PLANE_ENV = "NETWARDEN_CONTROL_PLANE"
SHUTDOWN_GRACE_S = 3.0  # open requests get this long after a signal; live streams end at once


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = sub.add_parser("serve", help="run the API against a ClickHouse server and Kafka (scale mode replica)")
    add_data_dir(p)
    p.add_argument("--port", type=int, default=8080, help="API port (default 8080)")
    p.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0: a pod's replica)")
    p.add_argument(
        "--kafka", default=os.environ.get("NETWARDEN_KAFKA"), required=not os.environ.get("NETWARDEN_KAFKA"),
        help="Kafka bootstrap servers host:port,... (env NETWARDEN_KAFKA): the live stream reads flows.enriched",
    )
    p.add_argument(
        "--clickhouse", default=os.environ.get("NETWARDEN_CLICKHOUSE"),
        help="ClickHouse DSN, e.g. https://user:pass@host:8443/db (env NETWARDEN_CLICKHOUSE; default: chDB "
        "under --data-dir, which no other process may hold)",
    )
    p.add_argument(
        "--control-plane", default=os.environ.get(CONTROL_PLANE_ENV),
        help="control-plane store: SQLite file, sqlite:///PATH or a directory holding control-plane.sqlite "
        "(env NETWARDEN_CONTROL_PLANE; default: DATA_DIR/control-plane.sqlite)",
    )
    p.set_defaults(handler=cmd_serve)


def control_plane_file(dsn: str | None, data_dir: str) -> Path:
    """The SQLite file `--control-plane` names (see the module notes). Raises ValueError naming the flag."""
    from policy_engine.store import STORE_FILE

    if not dsn:
        return Path(data_dir) / STORE_FILE
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.scheme != "sqlite":
            raise ValueError(
                f"--control-plane: unsupported scheme {parts.scheme!r} in {dsn!r}; "
                "give a SQLite file path or sqlite:///PATH (there is no PostgreSQL store yet)"
            )
        if parts.netloc or not parts.path:
            raise ValueError(f"--control-plane: {dsn!r} names no file; write sqlite:///ABSOLUTE/PATH")
        path = Path(unquote(parts.path))
    else:
        path = Path(dsn)
    if path.is_dir():
        path = path / STORE_FILE
    if not path.parent.is_dir():
        raise ValueError(f"--control-plane: directory {str(path.parent)!r} does not exist (from {dsn!r})")
    return path


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        store_file = control_plane_file(args.control_plane, args.data_dir)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not run_stack(serve(args.host, args.port, args.kafka, args.clickhouse, store_file, args.data_dir)):
        raise CommandError("stopped: the flows.enriched feed failed (see the log above)")
    return 0


async def serve(host: str, port: int, kafka: str, clickhouse_dsn: str | None, control_plane: Path,
                data_dir: str) -> bool:
    """Serve until SIGINT/SIGTERM (True) or until the live feed fails (False)."""
    from prometheus_client import REGISTRY

    from netwarden.broker import ensure_topics
    from netwarden.embedded import StackConfig
    from policy_engine.store import ControlPlaneStore
    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator, OIDCConfig
    from query_api.live import EnrichedTopicFeed, LiveHub
    from query_api.store import FlowStore, open_clickhouse
    from schemas.topics import FLOWS_ENRICHED, pipeline_topics

    stop = asyncio.Event()
    stop_on_signals(stop)
    store = FlowStore(open_clickhouse(data_dir, clickhouse_dsn))
    if not clickhouse_dsn:
        # A chDB directory is this process's alone: nobody else would create the tables. On a server the
        # workers own the schema (the API may run as a read-only ClickHouse user).
        store.ensure_schema()
    # The workers create it too (same partitions); a replica that starts first must not fail on a missing topic.
    topics = pipeline_topics(StackConfig.partitions)
    await ensure_topics(kafka, [t for t in topics if t.name == FLOWS_ENRICHED])
    # A new store has no users: every request is refused until `netwarden admin` adds some (say so).
    fresh = not control_plane.exists()
    tenancy = Tenancy(ControlPlaneStore.on_sqlite(control_plane))
    hub = LiveHub()
    feed = EnrichedTopicFeed(kafka, hub)
    app = create_app(
        store,
        registry=REGISTRY,  # one /metrics: the API's and the live stream's (default registry)
        authenticator=Authenticator(tenancy, OIDCConfig.from_env()),
        ownership=tenancy.ownership,
        live_hub=hub,
    )
    api = _uvicorn_server(app, host, port)
    feeding = asyncio.create_task(feed.run(stop))
    stopping = asyncio.create_task(stop.wait())
    api_task: asyncio.Task[None] | None = None
    try:
        # Ready only once the feed reads flows.enriched: "live from now on" starts here.
        assigned = asyncio.create_task(feed.assigned.wait())
        await asyncio.wait({assigned, feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
        assigned.cancel()
        if stop.is_set():
            return True
        if feeding.done():
            return _feed_failed(feeding)
        api_task = asyncio.create_task(api.serve())
        while not api.started and not api_task.done() and not stop.is_set():
            await asyncio.sleep(0.05)
        if api.started:
            print(
                f"netwarden serve: http://{host}:{port}/api/v1/flows (/healthz, /metrics); history from "
                f"{'the ClickHouse server' if clickhouse_dsn else 'chDB under ' + data_dir}, live from "
                f"{FLOWS_ENRICHED} at {kafka}, control plane {control_plane}"
                + (f" (new: no users yet; netwarden admin ... --data-dir {control_plane.parent})" if fresh else ""),
                flush=True,
            )
        await asyncio.wait({api_task, feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if feeding.done() and not stop.is_set():
            return _feed_failed(feeding)
        if api_task.done() and not stop.is_set():
            api_task.result()  # the server could not start (e.g. the port is taken): raise its error
        return True
    finally:
        stop.set()
        stopping.cancel()
        hub.close()  # live clients see their stream end, so the server does not wait for them
        api.should_exit = True
        for task in (api_task, feeding):
            if task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, SHUTDOWN_GRACE_S + 2)
        tenancy.close()
        store.close()


def _feed_failed(feeding: asyncio.Task[None]) -> bool:
    exc = feeding.exception() if not feeding.cancelled() else None
    log.error("the flows.enriched feed stopped: %s", exc or "ended")
    return False


def _uvicorn_server(app: Any, host: str, port: int) -> Any:
    """The API server; signals are stop_on_signals' (the feed and live streams stop with `stop`)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    return api_server(config)



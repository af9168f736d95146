"""Pipeline commands: ingest, collect, worker (and `up` / `bench` in their own modules)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from netwarden.cli import CommandError
from netwarden.supervise import stop_on_signals

T = TypeVar("T")

# Heavy modules (Faust, gRPC, chDB) are imported inside the commands: every CLI call pays for imports
# at module level, and a collector restarted after a crash should be streaming within a second.
if TYPE_CHECKING:
    from collectors.hubble_client import ClientTLS
    from netwarden.embedded import PipelineStack


def default_data_dir() -> str:
    return os.environ.get("NETWARDEN_DATA_DIR", "./netwarden-data")


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=default_data_dir(), help="data directory (env NETWARDEN_DATA_DIR)")


def add_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--tls-ca-cert", help="CA bundle that signed the server certificate")
    p.add_argument("--tls-client-cert", help="client certificate (mTLS)")
    p.add_argument("--tls-client-key", help="client key (mTLS)")
    p.add_argument("--tls-server-name", help="expected server name, e.g. ui.hubble-relay.cilium.io")


def tls_from_args(args: argparse.Namespace) -> ClientTLS | None:
    from collectors.hubble_client import ClientTLS

    if not (args.tls or args.tls_ca_cert or args.tls_client_cert or args.tls_server_name):
        return None
    try:
        return ClientTLS.from_files(args.tls_ca_cert, args.tls_client_cert, args.tls_client_key, args.tls_server_name)
    except OSError as exc:
        raise CommandError(f"cannot read TLS file: {exc}") from None


def add_metrics_port(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (scale mode; default off)")


def serve_metrics(port: int | None) -> None:
    if port is not None:
        from prometheus_client import start_http_server

        start_http_server(port)


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = sub.add_parser("ingest", help="send Hubble captures through the whole pipeline into ClickHouse")
    add_data_dir(p)
    p.add_argument("--cluster", required=True, help="cluster name to store the flows under")
    p.add_argument("--kafka", default=os.environ.get("NETWARDEN_KAFKA"), help="external Kafka (default: embedded)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every flow to be stored")
    p.add_argument("files", nargs="+", metavar="FILE", help="`hubble observe -o jsonpb` capture files")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("collect", help="follow one cluster's Hubble Relay and ship flows to Kafka")
    add_data_dir(p)
    p.add_argument("--cluster", required=True)
    p.add_argument("--hubble", required=True, metavar="HOST:PORT", help="Hubble Relay address")
    p.add_argument("--kafka", default=os.environ.get("NETWARDEN_KAFKA"), required=not os.environ.get("NETWARDEN_KAFKA"))
    add_tls(p)
    add_metrics_port(p)
    p.set_defaults(handler=cmd_collect)

    p = sub.add_parser("worker", help="run the stream worker: flows.raw -> ClickHouse (scale mode)")
    add_data_dir(p)
    p.add_argument("--kafka", default=os.environ.get("NETWARDEN_KAFKA"), required=not os.environ.get("NETWARDEN_KAFKA"))
    p.add_argument("--clickhouse", default=os.environ.get("NETWARDEN_CLICKHOUSE"), help="ClickHouse DSN (default chDB)")
    add_metrics_port(p)
    p.set_defaults(handler=cmd_worker)


def run_stack(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run for commands that open the data directory: a directory another process holds
    (chDB allows one process per data directory) is one clear line, not a traceback."""
    from query_api.store import DataDirLockedError

    try:
        return asyncio.run(main)
    except DataDirLockedError as exc:
        raise CommandError(f"{exc}: stop the other netwarden process or choose another --data-dir") from None


# --- ingest -------------------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    for f in args.files:
        if not Path(f).is_file():
            raise CommandError(f"no such capture file: {f}")
    summary = run_stack(ingest(Path(args.data_dir), args.cluster, args.files, args.kafka, args.timeout))
    print(json.dumps(summary))
    return 0


async def ingest(
    data_dir: Path,
    cluster: str,
    files: list[str],
    kafka: str | None = None,
    timeout: float = 600.0,
    clickhouse_dsn: str | None = None,
) -> dict[str, int]:
    """Capture files -> Hubble-compatible server on loopback -> gRPC collector -> broker -> Faust -> ClickHouse."""
    from collectors.hubble_server import HubbleServer
    from collectors.jsonl import read_capture
    from netwarden.embedded import PipelineStack, StackConfig
    from schemas.dead_letter import DeadLetter

    responses = []
    bad = []
    read = 0
    for path in files:
        for line in read_capture(path):
            read += 1
            if line.response is None:
                print(f"netwarden: {line.error}", file=sys.stderr)
                bad.append(line)
            else:
                responses.append(line.response)
    expected = sum(1 for r in responses if r.WhichOneof("response_types") == "flow")

    stack = PipelineStack(StackConfig(data_dir=data_dir, kafka=kafka, clickhouse_dsn=clickhouse_dsn))
    await stack.start()
    server = HubbleServer(ring_capacity=max(4095, len(responses) + 1))
    try:
        before = _stored_count(stack, cluster)
        shipper = stack.shipper(cluster)
        for line in bad:
            assert line.error is not None
            await shipper.dead_letter(DeadLetter(line.error, line.origin, cluster, line.raw))
        server.add_flows(responses)
        port = await server.start("127.0.0.1", 0)
        # A fresh collector identity per ingest: each run sends its files whole (the store de-duplicates).
        await stack.add_collector(cluster, f"127.0.0.1:{port}", checkpoint=False)
        assert stack.pipeline is not None
        deadline = time.monotonic() + timeout
        while stack.pipeline.totals.by_cluster.get(cluster, 0) + _rejected(stack) < expected:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"timed out after {timeout:.0f}s: {stack.pipeline.totals.by_cluster.get(cluster, 0)} "
                    f"of {expected} flows stored"
                )
            stack.stored_event.clear()
            try:
                await asyncio.wait_for(stack.stored_event.wait(), timeout=0.5)
            except TimeoutError:
                pass
        stored = _stored_count(stack, cluster) - before
        return {"read": read, "stored": stored, "dead_lettered": len(bad) + _rejected(stack)}
    finally:
        await stack.stop()
        await server.stop()


def _rejected(stack: PipelineStack) -> int:
    return stack.pipeline.totals.dead_lettered if stack.pipeline else 0


def _stored_count(stack: PipelineStack, cluster: str) -> int:
    rows = stack.clickhouse.query(
        "SELECT count() FROM flows FINAL WHERE cluster = {c:String}", parameters={"c": cluster}
    ).result_rows
    return int(rows[0][0])


# --- collect / worker (scale mode: one process each) --------------------------------------------------


def cmd_collect(args: argparse.Namespace) -> int:
    serve_metrics(args.metrics_port)
    asyncio.run(collect(Path(args.data_dir), args.cluster, args.hubble, args.kafka, tls_from_args(args)))
    return 0


async def collect(data_dir: Path, cluster: str, target: str, kafka: str, tls: ClientTLS | None) -> None:
    from collectors.hubble_client import Checkpoint, HubbleCollector
    from collectors.kafka_out import FlowBatchProducer, new_producer
    from collectors.stored_acks import StoredAcks

    data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    stop_on_signals(stop)
    producer = new_producer(kafka)
    await producer.start()
    try:
        shipper = FlowBatchProducer(producer, cluster)
        # The checkpoint moves only over batches the worker reports stored (flows.stored).
        acks = StoredAcks(kafka, shipper.collector_id)
        try:
            checkpoint = Checkpoint(data_dir / f"checkpoint-{cluster}.json")
            collector = HubbleCollector(cluster, target, shipper.ship, checkpoint=checkpoint, tls=tls, acks=acks,
                                ship_lost=shipper.ship_lost_ranges)
            print(f"collecting cluster {cluster} from {target} into {kafka}", flush=True)
            await collector.run(stop)
        finally:
            await acks.stop()
    finally:
        await producer.stop()


def cmd_worker(args: argparse.Namespace) -> int:
    from netwarden.embedded import PipelineStack, StackConfig

    serve_metrics(args.metrics_port)

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        stack = PipelineStack(StackConfig(Path(args.data_dir), kafka=args.kafka, clickhouse_dsn=args.clickhouse))
        await stack.start()
        print(f"worker consuming {args.kafka}", flush=True)
        try:
            await stop.wait()
        finally:
            await stack.stop()

    run_stack(run())
    return 0

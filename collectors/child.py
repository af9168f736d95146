"""A collector as a child process of the embedded stack: `python -m collectors.child ...`.

The same HubbleCollector as `netwarden collect`, plus a line protocol on stdin/stdout so the parent
can retire a broker generation safely (netwarden.embedded rotates flows.raw):

  stdin "pause"   -> stop shipping, wait for batches in flight, reply {"paused": <messages shipped>}
  stdin "resume"  -> ship again and count from zero, reply {"resumed": true}
  stdin "stats"   -> reply {"stats": {...}} (with "shipped": messages since the last resume)
  stdin closed    -> the parent is gone: stop (like SIGTERM)

Replies are JSON lines on stdout; logs go to stderr. SIGTERM/SIGINT stop cleanly: what was read is
shipped and the checkpoint saved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

from collectors.hubble_client import Checkpoint, ClientTLS, HubbleCollector
from collectors.kafka_out import FlowBatchProducer, new_producer
from collectors.stored_acks import StoredAcks
from netwarden.supervise import stop_on_signals


class _Gate:
    """Pauses shipping between batches; counts Kafka messages acknowledged since the last resume."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.in_flight = 0
        self.shipped = 0
        self.idle = asyncio.Event()
        self.idle.set()


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_on_signals(stop)
    tls = None
    if args.tls or args.tls_ca_cert or args.tls_client_cert or args.tls_server_name:
        tls = ClientTLS.from_files(args.tls_ca_cert, args.tls_client_cert, args.tls_client_key, args.tls_server_name)
    producer = new_producer(args.kafka)
    await producer.start()
    gate = _Gate()
    shipper = FlowBatchProducer(producer, args.cluster)

    acks = StoredAcks(args.kafka, shipper.collector_id)

    async def ship(node: str, responses: list[bytes]) -> int:
        if not gate.open.is_set():
            # Paused (the broker is rotating): wait, unless we are told to stop meanwhile; then this batch
            # is not shipped and the checkpoint does not move: the next run reads it again.
            opened = asyncio.create_task(gate.open.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({opened, stopping}, return_when=asyncio.FIRST_COMPLETED)
            opened.cancel()
            stopping.cancel()
            if not gate.open.is_set():
                raise RuntimeError("stopped while paused: batch left for the next run")
        gate.in_flight += 1
        gate.idle.clear()
        try:
            sequence = await shipper.ship(node, responses)
            gate.shipped += 1
            return sequence
        finally:
            gate.in_flight -= 1
            if not gate.in_flight:
                gate.idle.set()

    checkpoint = None
    if args.data_dir:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        checkpoint = Checkpoint(Path(args.data_dir) / f"checkpoint-{args.cluster}.json")
    collector = HubbleCollector(args.cluster, args.hubble, ship, checkpoint=checkpoint, tls=tls, acks=acks,
                                ship_lost=shipper.ship_lost_ranges)

    def reply(doc: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    async def control() -> None:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if not line and reader.at_eof():
                stop.set()
                return
            if line == "pause":
                gate.open.clear()
                await gate.idle.wait()
                reply({"paused": gate.shipped})
            elif line == "resume":
                gate.shipped = 0
                gate.open.set()
                reply({"resumed": True})
            elif line == "stats":
                s = collector.stats
                reply({"stats": {"flows": s.flows, "lost_events": s.lost_events, "duplicates": s.duplicates,
                                 "connections": s.connections, "batches": s.batches, "last_error": s.last_error,
                                 "shipped": gate.shipped, "rewinds": s.rewinds, "gaps": len(s.gaps)}})

    controller = asyncio.create_task(control()) if args.control else None
    try:
        await collector.run(stop)
    finally:
        if controller is not None:
            controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controller
        await acks.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m collectors.child", description=__doc__.splitlines()[0])
    p.add_argument("--cluster", required=True)
    p.add_argument("--hubble", required=True, metavar="HOST:PORT")
    p.add_argument("--kafka", required=True)
    p.add_argument("--data-dir", help="where the checkpoint lives (none: no checkpoint)")
    p.add_argument("--control", action="store_true", help="read pause/resume/stats commands on stdin")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--tls-ca-cert")
    p.add_argument("--tls-client-cert")
    p.add_argument("--tls-client-key")
    p.add_argument("--tls-server-name")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

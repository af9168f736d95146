"""`netwarden hubble-serve`: a Hubble-compatible Observer server for recorded or generated flows."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from netwarden.cli import CommandError
from netwarden.supervise import stop_on_signals

if TYPE_CHECKING:
    from collectors.hubble_server import ServerTLS
    from netwarden.demo.enforcement import StandInJudge


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    serve = sub.add_parser(
        "hubble-serve",
        help="serve capture files or generated demo traffic over Hubble's gRPC Observer API",
        description=(
            "Serve `hubble observe -o jsonpb` captures and/or generated traffic of a demo cluster "
            "(demo-east, demo-west) over the Hubble Observer gRPC API, like Hubble Relay: one ring "
            "buffer per node, since/until/number/first/follow, filters, lost events for slow followers."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=4245, help="port (default 4245, Relay's; 0 = any free port)")
    serve.add_argument("--capture", action="extend", nargs="+", default=[], metavar="FILE",
                       help="capture file(s), one GetFlowsResponse JSON object per line")
    serve.add_argument("--generate", action="append", default=[], metavar="CLUSTER",
                       help="generate traffic of this demo cluster (repeatable)")
    serve.add_argument("--rate", type=float, default=200.0, help="generated flows per second per cluster (default 200)")
    serve.add_argument("--seed", type=int, default=0, help="topology seed of generated clusters (default 0)")
    serve.add_argument("--preload", type=int, default=0, metavar="N",
                       help="generate N flows per --generate cluster up front and serve only those (benchmarks); "
                            "rings grow to hold them")
    serve.add_argument("--ring", type=int, default=4095, help="ring buffer capacity per node (default 4095)")
    serve.add_argument("--kube-api", metavar="URL",
                       help="the generated cluster's kube API: verdicts follow the policies on it, as Cilium "
                            "enforces them (pods without a CiliumEndpoint unenforced); re-read when it changes")
    serve.add_argument("--kube-poll-seconds", type=float, default=2.0, metavar="S",
                       help="how often to check the kube API for changes (default 2)")
    serve.add_argument("--tls-cert", metavar="FILE", help="server certificate chain (PEM); enables TLS")
    serve.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates signed by this CA (mTLS)")
    serve.set_defaults(handler=run_serve)


def _tls(args: argparse.Namespace) -> ServerTLS | None:
    from collectors.hubble_server import ServerTLS

    if not args.tls_cert and not args.tls_key:
        if args.tls_client_ca:
            raise CommandError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (args.tls_cert and args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together")
    try:
        return ServerTLS.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
    except OSError as exc:
        raise CommandError(f"{exc.filename}: cannot read: {exc.strerror}") from None


def run_serve(args: argparse.Namespace) -> int:
    if not args.capture and not args.generate:
        raise CommandError("nothing to serve: give --capture FILE and/or --generate CLUSTER")
    if args.ring < 1:
        raise CommandError(f"--ring: must be >= 1, got {args.ring}")
    if args.preload < 0:
        raise CommandError(f"--preload: must be >= 0, got {args.preload}")
    if args.preload and not args.generate:
        raise CommandError("--preload needs --generate CLUSTER")
    if args.kube_api and len(args.generate) != 1:
        raise CommandError("--kube-api needs exactly one --generate CLUSTER (the cluster it is the API of)")
    if args.kube_poll_seconds <= 0:
        raise CommandError(f"--kube-poll-seconds: must be > 0, got {args.kube_poll_seconds:g}")
    if args.generate and args.rate <= 0:
        raise CommandError(f"--rate: must be > 0, got {args.rate:g}")
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port: must be 0..65535, got {args.port}")
    for path in args.capture:
        if not Path(path).is_file():
            raise CommandError(f"--capture: no such file: {path}")
    tls = _tls(args)
    try:
        asyncio.run(serve(args, tls))
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    return 0


async def serve(args: argparse.Namespace, tls: ServerTLS | None) -> None:
    from collectors.hubble_server import HubbleServer
    from collectors.jsonl import read_capture
    from collectors.traffic import DemoTraffic

    judge = _judge(args.kube_api) if args.kube_api else None
    generators = [DemoTraffic(cluster, seed=args.seed, judge=judge) for cluster in args.generate]
    ring = max(args.ring, args.preload + 1)
    server = HubbleServer(node_names=[n for g in generators for n in g.node_names] or None, ring_capacity=ring)
    for g in generators:
        remaining = args.preload
        while remaining:  # in slices: a 1M-flow preload never holds two copies
            n = min(remaining, 100_000)
            server.add_serialized(g.serialized(n))
            remaining -= n
    loaded, skipped = 0, 0
    per_node: Counter[str] = Counter()
    for path in args.capture:
        responses = []
        for line in read_capture(path):
            if line.response is None:
                print(f"netwarden: skipped {line.error}", file=sys.stderr)
                skipped += 1
                continue
            responses.append(line.response)
            per_node[line.response.node_name or line.response.flow.node_name] += 1
        loaded += server.add_flows(responses)
    overflow = [node for node, n in per_node.items() if n > args.ring]
    if overflow:
        print(f"netwarden: {', '.join(sorted(overflow))}: more flows than --ring {args.ring}; "
              "only the newest are served", file=sys.stderr)

    port = await server.start(args.host, args.port, tls)
    stop = asyncio.Event()
    stop_on_signals(stop)
    feeders = [] if args.preload else [asyncio.create_task(g.run(server, args.rate, stop)) for g in generators]
    if judge is not None:
        feeders.append(asyncio.create_task(_follow_kube(judge, args.kube_poll_seconds, stop)))
    lines = [f"netwarden hubble-serve: Observer API at {args.host}:{port} ({'TLS' if tls else 'plaintext'}"
             f"{', mTLS' if tls and tls.client_ca else ''}), ring {ring} per node"]
    if args.capture:
        lines.append(f"  captures   {loaded} responses from {len(args.capture)} file(s), {skipped} bad line(s) skipped")
    for g in generators:
        what = f"{args.preload} flows preloaded" if args.preload else f"generating at {args.rate:g} flows/s"
        if judge is not None:
            what += f", verdicts by the policies on {args.kube_api}"
        lines.append(f"  {g.cluster}: {what} on {', '.join(g.node_names)}")
    lines.append("Ctrl-C to stop.")
    print("\n".join(lines), flush=True)
    try:
        await stop.wait()
    finally:
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
        await server.stop(grace=1.0)


def _judge(url: str) -> StandInJudge:
    from netwarden.demo.enforcement import StandInJudge

    judge = StandInJudge(url)
    try:
        judge.refresh()
    except OSError as exc:  # the first poll tries again; until then nothing is enforced
        print(f"netwarden: kube API {url} not reachable yet: {exc}", file=sys.stderr)
    return judge


async def _follow_kube(judge: StandInJudge, every_s: float, stop: asyncio.Event) -> None:
    """Re-read the cluster's policies when they change: the next conversations follow them."""
    failing = False
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
        try:
            await asyncio.to_thread(judge.refresh)
            failing = False
        except (OSError, ValueError) as exc:
            if not failing:  # once per outage; the last state stays in force
                print(f"netwarden: kube API {judge.url}: {exc}", file=sys.stderr, flush=True)
            failing = True

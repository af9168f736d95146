"""`netwarden bench faults`: each fault run for real on the embedded stack, with what it cost.

One JSON line per fault on stdout, then a summary line; progress on stderr. Each fault gets its own
cluster: a Hubble server in this process fed a generated stream (every flow a fresh uuid), a supervised
collector process (the one `netwarden up` runs), the embedded Tansu broker and the worker writing chDB.

  flows_sent   flows the Hubble server held for the collector
  stored       of those, distinct uuids in `flows`
  lost         sent - stored (the gap fault: flows the restarted server no longer held, reported as
               `lost_ranges` by the collector)
  duplicated   flows the summaries count more than once (`flows_verdicts_1m` minus distinct uuids): history
               queries never show twins (readers drop them by key), summaries would
  recovery_s   from the end of the fault until every flow is stored (or, for sigint, until `up` exited)
  hung         the stack did not recover within --timeout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FAULTS = (
    "sigint",
    "broker-kill",
    "collector-kill",
    "kafka-unreachable",
    "hubble-empty-ring",
    "poison-batch",
    "year-old-capture",
    "clickhouse-refuses",
    "worker-kill",
)


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = groups["bench"].add_parser(
        "faults",
        help="run each fault on the embedded stack; flows sent, stored, lost, duplicated, recovery time",
        description="Runs each fault on the real embedded stack (Tansu, collector process, worker, chDB) "
        "with a generated stream and prints one JSON line per fault: "
        '{"fault", "flows_sent", "stored", "lost", "duplicated", "recovery_s", "hung"}, then a summary.',
    )
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of: {', '.join(FAULTS)}")
    p.add_argument("--outage-s", type=float, default=30.0,
                   help="how long Kafka stays unreachable in kafka-unreachable (default 30)")
    p.add_argument("--rate", type=int, default=1000, help="flows per second each fault's stream carries")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds before a fault counts as hung")
    p.add_argument("--data-dir", help="data directory (default: a temporary one)")
    p.set_defaults(handler=cmd_bench_faults)


def cmd_bench_faults(args: argparse.Namespace) -> int:
    from netwarden.cli import CommandError

    chosen = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown or not chosen:
        raise CommandError(f"--faults: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FAULTS)}")
    if args.outage_s <= 0 or args.rate < 10 or args.timeout <= 0:
        raise CommandError("--outage-s and --timeout must be > 0, --rate >= 10")
    with tempfile.TemporaryDirectory(prefix="netwarden-bench-faults-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        results = asyncio.run(bench_faults(data_dir, chosen, args.rate, args.outage_s, args.timeout))
    for r in results:
        print(json.dumps(r.row()), flush=True)
    print(json.dumps(summary(results)), flush=True)
    return 0 if all(r.ok for r in results) else 1


@dataclass
class FaultResult:
    fault: str
    flows_sent: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: float | None = None
    hung: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    allowed_lost: int = 0  # the gap fault: flows the restarted server no longer held (at most)

    @property
    def ok(self) -> bool:
        return not self.hung and self.duplicated == 0 and 0 <= self.lost <= self.allowed_lost

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out.pop("allowed_lost")
        return {**out, **self.extra}


def summary(results: list[FaultResult]) -> dict[str, Any]:
    return {
        "summary": {
            "faults": len(results),
            "passed": sum(r.ok for r in results),
            "flows_sent": sum(r.flows_sent for r in results),
            "lost": sum(r.lost for r in results),
            "duplicated": sum(r.duplicated for r in results),
            "hung": [r.fault for r in results if r.hung],
            "max_recovery_s": max((r.recovery_s or 0.0 for r in results), default=0.0),
        }
    }


def _progress(text: str) -> None:
    print(f"bench faults: {text}", file=sys.stderr, flush=True)


class Stream:
    """One fault's cluster: a Hubble server in this process and a collector child of the stack."""

    def __init__(self, stack: Any, cluster: str, rate: int):
        from collectors.traffic import DemoTraffic

        self.stack, self.cluster, self.rate = stack, cluster, rate
        self.traffic = DemoTraffic(cluster, seed=hash(cluster) % 1000)
        self.sent = 0
        self.server: Any = None
        self.port = 0

    async def start(self) -> None:
        from collectors.hubble_server import HubbleServer

        self.server = HubbleServer(ring_capacity=200_000)
        self.port = await self.server.start("127.0.0.1", 0)
        await self.stack.spawn_collector(self.cluster, f"127.0.0.1:{self.port}")

    async def feed(self, seconds: float, now_ns: Callable[[], int] = time.time_ns) -> None:
        per_step = max(1, self.rate // 10)
        for _ in range(max(1, int(seconds * 10))):
            self.server.add_serialized(self.traffic.serialized(per_step, now_ns=now_ns()))
            self.sent += per_step
            await asyncio.sleep(0.1)

    def counts(self) -> tuple[int, int]:
        """(distinct uuids stored, flows the per-minute verdict rollup counts)."""
        unique, rolled = self.stack.clickhouse.query(
            "SELECT (SELECT uniqExact(uuid) FROM flows WHERE cluster = {c:String}), "
            "(SELECT sum(flows) FROM flows_verdicts_1m WHERE cluster = {c:String})",
            parameters={"c": self.cluster},
        ).result_rows[0]
        return int(unique), int(rolled or 0)

    async def settle(self, want: int, timeout: float) -> float | None:
        """Seconds until `want` distinct flows are stored (and the rollups caught up); None if never."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            unique, rolled = self.counts()
            if unique >= want and rolled >= unique:
                return time.monotonic() - began
            await asyncio.sleep(0.2)
        return None

    def result(self, fault: str, recovery: float | None, allowed_lost: int = 0) -> FaultResult:
        unique, rolled = self.counts()
        return FaultResult(
            fault, self.sent, unique, self.sent - unique, max(0, rolled - unique),
            None if recovery is None else round(recovery, 2), recovery is None, allowed_lost=allowed_lost,
        )

    async def stop(self) -> None:
        child = self.stack.collector_children.pop(self.cluster, None)
        if child is not None:
            await child.stop(timeout=5.0)
        if self.server is not None:
            await self.server.stop()


async def bench_faults(data_dir: Path, faults: list[str], rate: int, outage_s: float, timeout: float) -> list[FaultResult]:
    from netwarden.embedded import PipelineStack, StackConfig

    results: list[FaultResult] = []
    if "sigint" in faults:
        _progress("sigint: `netwarden up`, then SIGINT to its process group")
        results.append(await _sigint(data_dir / "up", timeout))
    if "worker-kill" in faults:
        _progress("worker-kill: scale mode (`netwarden collect` and `netwarden worker` processes), worker -9")
        results.append(await _worker_kill(data_dir / "scale", rate, timeout))
    rest = [f for f in faults if f not in ("sigint", "worker-kill")]
    if not rest:
        return results
    stack_dir = data_dir / "stack"
    stack_dir.mkdir(parents=True, exist_ok=True)
    # ClickHouse refusing writes for real: the stack's data on a small filesystem of its own, filled up.
    mounted = "clickhouse-refuses" in rest and _mount_small_fs(stack_dir)
    stack = PipelineStack(StackConfig(data_dir=stack_dir))
    await stack.start()
    try:
        for fault in rest:
            _progress(fault)
            if fault == "clickhouse-refuses" and not mounted:
                results.append(FaultResult(fault, extra={"skipped": "mounting a small filesystem needs root"}))
                continue
            stream = Stream(stack, f"fault-{fault}", rate)
            await stream.start()
            try:
                results.append(await RUNS[fault](stack, stream, outage_s, timeout))
            finally:
                await stream.stop()
            _progress(json.dumps(results[-1].row()))
    finally:
        await stack.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(stack_dir)], check=False)
    return results


def _mount_small_fs(path: Path) -> bool:
    """A 1 GiB tmpfs at `path` (root only): the clickhouse-refuses fault fills it."""
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


async def _warm(stream: Stream, timeout: float) -> None:
    """Flows flowing end to end before the fault."""
    await stream.feed(2.0)
    if await stream.settle(1, timeout) is None:
        raise RuntimeError(f"{stream.cluster}: nothing was stored before the fault")


async def _broker_kill(stack: Any, stream: Stream, outage_s: float, timeout: float) -> FaultResult:
    await _warm(stream, timeout)
    feeding = asyncio.create_task(stream.feed(2.0))
    os.kill(stack.broker.process.pid, signal.SIGKILL)  # Tansu: everything it held is gone
    await feeding
    recovery = await stream.settle(stream.sent, timeout)
    return stream.result("broker-kill", recovery)


async def _collector_kill(stack: Any, stream: Stream, outage_s: float, timeout: float) -> FaultResult:
    await _warm(stream, timeout)
    child = stack.collector_children[stream.cluster]
    feeding = asyncio.create_task(stream.feed(2.0))
    os.kill(child.pid, signal.SIGKILL)  # the supervisor restarts it; its journal says what was shipped
    await feeding
    recovery = await stream.settle(stream.sent, timeout)
    result = stream.result("collector-kill", recovery)
    result.extra["restarts"] = child.restarts
    return result


async def _kafka_unreachable(stack: Any, stream: Stream, outage_s: float, timeout: float) -> FaultResult:
    await _warm(stream, timeout)
    pid = stack.broker.process.pid
    os.kill(pid, signal.SIGSTOP)  # connections stay open and nothing answers, as with a network partition
    try:
        await stream.feed(outage_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    recovery = await stream.settle(stream.sent, timeout)
    result = stream.result("kafka-unreachable", recovery)
    result.extra["outage_s"] = outage_s
    return result


async def _hubble_empty_ring(stack: Any, stream: Stream, outage_s: float, timeout: float) -> FaultResult:
    from collectors.hubble_server import HubbleServer

    await _warm(stream, timeout)
    await stream.settle(stream.sent, timeout)
    child = stack.collector_children[stream.cluster]
    os.kill(child.pid, signal.SIGSTOP)  # the collector falls behind ...
    try:
        await stream.feed(1.0)  # ... these reach the ring but not the collector ...
        unread = stream.rate // 10 * 10
        await stream.server.stop()  # ... and the server restarts with an empty ring
        stream.server = HubbleServer(ring_capacity=200_000)
        await stream.server.start("127.0.0.1", stream.port)
    finally:
        os.kill(child.pid, signal.SIGCONT)
    gaps_before = int((await child.stats()).get("gaps", 0))
    await stream.feed(2.0)
    recovery = await stream.settle(stream.sent - unread, timeout)
    # Some of the unread flows may still sit in the collector's socket buffer and arrive after all.
    result = stream.result("hubble-empty-ring", recovery, allowed_lost=unread)
    stats = await child.stats()
    result.extra["lost_ranges"] = int(stats.get("gaps", 0)) - gaps_before  # type: ignore[call-overload]
    if result.extra["lost_ranges"] < 1:
        result.allowed_lost = -1  # the gap went unreported: the fault fails
    return result


async def _poison_batch(stack: Any, stream: Stream, outage_s: float, timeout: float) -> FaultResult:
    await _warm(stream, timeout)
    dead_before = stack.pipeline.totals.dead_lettered
    now = time.time_ns()
    stream.server.add_serialized([(now, "node-poison", b"\xff\xfe not a GetFlowsResponse")])
    await stream.feed(1.0)
    recovery = await stream.settle(stream.sent, timeout)
    result = stream.result("poison-batch", recovery)
    deadline = time.monotonic() + 10
    while stack.pipeline.totals.dead_lettered == dead_before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    result.extra["dead_lettered"] = stack.pipeline.totals.dead_lettered - dead_before
    if result.extra["dead_lettered"] != 1:
        result.hung = True  # the poison entry went missing
    return result


async def _year_old_capture(stack: Any, stream: Stream, outage_s: float, timeout: float) -> FaultResult:
    year_ago = int((dt.datetime.now(dt.UTC) - dt.timedelta(days=365)).timestamp() * 1e9)
    step = [0]

    def then() -> int:  # a year ago, spread over many daily partitions
        step[0] += 1
        return year_ago + step[0] * 86_400 * 10**9 // 8

    await stream.feed(3.0, now_ns=then)
    recovery = await stream.settle(stream.sent, timeout)
    return stream.result("year-old-capture", recovery)


async def _clickhouse_refuses(stack: Any, stream: Stream, outage_s: float, timeout: float) -> FaultResult:
    await _warm(stream, timeout)
    dead_before = stack.pipeline.totals.dead_lettered
    ballast = stack.data_dir / "ballast"
    try:
        with open(ballast, "wb") as fh:  # the filesystem is full: every part ClickHouse writes is refused
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * (1 << 20))
        await stream.feed(outage_s)
    finally:
        ballast.unlink(missing_ok=True)
    recovery = await stream.settle(stream.sent, timeout)
    result = stream.result("clickhouse-refuses", recovery)
    result.extra["outage_s"] = outage_s
    result.extra["dead_lettered"] = stack.pipeline.totals.dead_lettered - dead_before  # a full disk is no reason
    return result


RUNS: dict[str, Callable[[Any, Stream, float, float], Awaitable[FaultResult]]] = {
    "broker-kill": _broker_kill,
    "collector-kill": _collector_kill,
    "kafka-unreachable": _kafka_unreachable,
    "hubble-empty-ring": _hubble_empty_ring,
    "poison-batch": _poison_batch,
    "year-old-capture": _year_old_capture,
    "clickhouse-refuses": _clickhouse_refuses,
}


async def _sigint(data_dir: Path, timeout: float) -> FaultResult:
    """`netwarden up` in its own process group, SIGINT to the group as a terminal sends it: it must exit 0
    within 10 s with every flow its collectors shipped stored (their journals hold what was not)."""
    from netwarden.broker import free_port

    proc = subprocess.Popen(
        [sys.executable, "-m", "netwarden", "up", "--data-dir", str(data_dir), "--port", str(free_port()),
         "--rate", "500"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    result = FaultResult("sigint")
    try:
        began = time.monotonic()
        while not list(data_dir.glob("checkpoint-*.json")) and time.monotonic() - began < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"`up` exited early: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(5.0)  # streaming
        os.killpg(proc.pid, signal.SIGINT)
        sent_at = time.monotonic()
        try:
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            result.recovery_s = round(time.monotonic() - sent_at, 2)
            result.hung = code != 0 or result.recovery_s > 10
            result.extra["exit_code"] = code
        except subprocess.TimeoutExpired:
            result.hung = True
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    unstored = _unconfirmed(data_dir)
    stored, rolled = _stored_in(data_dir)
    result.stored, result.lost = stored, unstored
    result.flows_sent = stored + unstored
    result.duplicated = max(0, rolled - stored)
    return result


async def _worker_kill(data_dir: Path, rate: int, timeout: float) -> FaultResult:
    """Scale mode: a Tansu broker, `netwarden collect` and `netwarden worker` processes; the worker is killed
    with -9 mid-stream and started again. Stored flows are counted from the worker's data dir afterwards."""
    from collectors.hubble_client import Checkpoint
    from collectors.hubble_server import HubbleServer
    from collectors.traffic import DemoTraffic
    from netwarden.broker import TansuBroker, ensure_topics
    from schemas.topics import pipeline_topics

    cluster = "fault-worker-kill"
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = TansuBroker(log_path=data_dir / "tansu.log")
    broker.start()
    server = HubbleServer(ring_capacity=200_000)
    port = await server.start("127.0.0.1", 0)
    traffic = DemoTraffic(cluster, seed=31)
    checkpoint = data_dir / "collector" / f"checkpoint-{cluster}.json"
    sent, newest = 0, 0
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, *argv: str) -> None:
        with open(data_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
            procs[name] = subprocess.Popen([sys.executable, "-m", "netwarden", name, *argv], stdout=log,
                                           stderr=log, start_new_session=True)

    async def feed(seconds: float) -> None:
        nonlocal sent, newest
        for _ in range(int(seconds * 10)):
            entries = traffic.serialized(max(1, rate // 10))
            server.add_serialized(entries)
            sent += len(entries)
            newest = max(newest, *(t for t, _, _ in entries))
            await asyncio.sleep(0.1)

    def caught_up() -> bool:
        cp = Checkpoint(checkpoint)
        return not cp.pending and max(cp.nodes.values(), default=0) >= newest

    async def wait_for(condition: Callable[[], bool]) -> float | None:
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if condition():
                return time.monotonic() - began
            await asyncio.sleep(0.2)
        return None

    worker = ("worker", "--kafka", broker.bootstrap, "--data-dir", str(data_dir / "worker"))
    result = FaultResult("worker-kill")
    try:
        await ensure_topics(broker.bootstrap, pipeline_topics(2))
        spawn(*worker)
        spawn("collect", "--cluster", cluster, "--hubble", f"127.0.0.1:{port}", "--kafka", broker.bootstrap,
              "--data-dir", str(data_dir / "collector"))
        await feed(2.0)
        if await wait_for(lambda: bool(Checkpoint(checkpoint).nodes)) is None:
            raise RuntimeError("worker-kill: nothing was stored before the fault")
        procs["worker"].kill()  # -9: whatever it held or had not committed is handed to the next one
        procs["worker"].wait()
        await feed(2.0)
        spawn(*worker)
        recovery = await wait_for(caught_up)
        result.recovery_s = None if recovery is None else round(recovery, 2)
        result.hung = recovery is None
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await server.stop()
        broker.stop()
    stored, rolled = _stored_in(data_dir / "worker")
    result.flows_sent, result.stored = sent, stored
    result.lost, result.duplicated = sent - stored, max(0, rolled - stored)
    return result


def _unconfirmed(data_dir: Path) -> int:
    """Flows the collectors shipped that the worker never reported stored (collectors' journals)."""
    from collectors.hubble_client import Checkpoint

    return sum(len(uuids) for path in data_dir.glob("checkpoint-*.json")
               for _, uuids in Checkpoint(path).pending.values())


_COUNT_STORED = """
import json, sys
from query_api.store import open_clickhouse
row = open_clickhouse(sys.argv[1]).query(
    "SELECT (SELECT uniqExact(uuid) FROM flows), (SELECT sum(flows) FROM flows_verdicts_1m)").result_rows[0]
print(json.dumps([int(row[0]), int(row[1] or 0)]))
"""


def _stored_in(data_dir: Path) -> tuple[int, int]:
    """(distinct flows, rollup count) of `up`'s data dir, read by a child: chDB holds one data dir a process."""
    out = subprocess.run([sys.executable, "-c", _COUNT_STORED, str(data_dir)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    unique, rolled = json.loads(out.stdout.strip().splitlines()[-1])
    return int(unique), int(rolled)

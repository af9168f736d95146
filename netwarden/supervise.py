"""Child processes of the embedded stack: started, watched, restarted with backoff, stopped in order.

Children run in their own session, so a Ctrl-C (SIGINT to the terminal's process group) reaches only
the parent, which then stops them in dependency order (collectors, servers, worker, broker) instead
of every process dying at once; and each child gets SIGTERM if the parent dies (PR_SET_PDEATHSIG), so
nothing outlives a killed parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import Counter

log = logging.getLogger("netwarden.supervise")

RESTARTS = Counter("netwarden_child_restarts_total", "Child processes restarted after they died", ["child"])

_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def python_argv(*args: str) -> list[str]:
    """Run a module of this installation with the same interpreter."""
    return [sys.executable, *args]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc/<pid>/stat (0.0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ChildFailed(RuntimeError):
    """A supervised child kept dying: the stack stops rather than run without it."""


class Child:
    """One supervised child process.

    A child that exits while the stack runs is restarted after a backoff (`backoff_s` doubling to 30 s),
    and logged with its exit code and last stderr lines; after `max_restarts` deaths within
    `window_s` the child is given up and `failed` is set, for the owner to stop the whole stack.
    stdout lines go to `on_line` (e.g. replies of a control protocol), stderr to the log.
    """

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, on_line: Callable[[str], None] | None = None,
                 stdin: bool = False, max_restarts: int = 5, window_s: float = 120.0, backoff_s: float = 0.5):
        self.name = name
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env
        self.on_line = on_line
        self.stdin = stdin
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.failed = asyncio.Event()
        self.started = asyncio.Event()  # set on every (re)start; owners wait for readiness themselves
        self._stopping = False
        self._deaths: deque[float] = deque()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._watch: asyncio.Task[None] | None = None
        self._cpu_of_dead = 0.0  # CPU of earlier incarnations, so totals survive restarts

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def cpu_seconds(self) -> float:
        return self._cpu_of_dead + (cpu_seconds(self.process.pid) if self.process else 0.0)

    def rss_bytes(self) -> int:
        return rss_bytes(self.process.pid) if self.process else 0

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, env=self.env,
            stdin=asyncio.subprocess.PIPE if self.stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        self.started.set()

    async def send(self, line: str) -> None:
        """A line on the child's stdin (its control channel)."""
        proc = self.process
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise ChildFailed(f"{self.name}: not running")
        proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()

    async def _pump(self, stream: asyncio.StreamReader | None, is_stdout: bool) -> None:
        if stream is None:
            return
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            if is_stdout and self.on_line is not None:
                try:
                    self.on_line(line)
                except Exception:
                    log.exception("%s: handling output line %r", self.name, line)
            elif not is_stdout:
                self._stderr_tail.append(line)
                log.debug("%s: %s", self.name, line)

    async def _supervise(self) -> None:
        backoff = self.backoff_s
        while True:
            proc = self.process
            assert proc is not None
            pumps = [asyncio.create_task(self._pump(proc.stdout, True)),
                     asyncio.create_task(self._pump(proc.stderr, False))]
            alive_since = time.monotonic()
            cpu = 0.0
            while proc.returncode is None:
                cpu = cpu_seconds(proc.pid) or cpu  # last reading before it is reaped
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 1.0)
            await asyncio.gather(*pumps, return_exceptions=True)
            self._cpu_of_dead += cpu
            if self._stopping:
                return
            now = time.monotonic()
            if now - alive_since > 60:
                backoff = self.backoff_s  # it ran fine for a while: this death is a fresh one
            self._deaths.append(now)
            while self._deaths and self._deaths[0] < now - self.window_s:
                self._deaths.popleft()
            tail = " | ".join(list(self._stderr_tail)[-5:])
            if len(self._deaths) > self.max_restarts:
                log.error("%s died %d times within %.0f s (exit %s); giving up. Last stderr: %s",
                          self.name, len(self._deaths), self.window_s, proc.returncode, tail)
                self.failed.set()
                return
            log.warning("%s exited with %s; restarting in %.1f s. Last stderr: %s",
                        self.name, proc.returncode, backoff, tail)
            self.started.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            if self._stopping:
                return
            RESTARTS.labels(self.name).inc()
            self.restarts += 1
            await self._spawn()

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; never restarted afterwards."""
        self._stopping = True
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("%s did not stop within %.0f s: killed", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._watch is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._watch, 2.0)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM: the first sets `stop` (stop taking input, flush what is in flight, commit, exit 0);
    a second exits at once with status 130, as a second Ctrl-C should. Children die with us (die_with_parent)."""
    loop = asyncio.get_running_loop()
    received = [0]  # signals this handler saw (uvicorn captures one while it serves and raises it again after)

    def on_signal() -> None:
        received[0] += 1
        if received[0] > 1:
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


def api_server(config: Any) -> Any:
    """uvicorn's Server for `config`, leaving SIGINT and SIGTERM to stop_on_signals: uvicorn would take them
    over while it serves and raise them again when it stops, so one Ctrl-C would count as two."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)

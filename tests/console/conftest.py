"""The web console in headless Chromium (Debian's `chromium`, installed by scripts/setup, driven by Playwright's
Python API; `playwright install` is never run). The app is the real one on loopback uvicorn over the demo world
(tests/console/serve_demo.py, in a process of its own: chDB allows one data dir per process)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FLOWS_PER_CLUSTER = 300
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Demo:
    url: str
    users: dict[str, dict[str, Any]]  # role -> demo-tokens.json entry
    process: subprocess.Popen[str]

    def publish(self, count: int) -> None:
        """The `count` newest stored flows through the live hub, as the pipeline sends what it stored."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"publish {count}\n")
        self.process.stdin.flush()
        assert json.loads(self.process.stdout.readline()) == {"published": count}


@pytest.fixture(scope="package")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data = tmp_path_factory.mktemp("console-demo")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.console.serve_demo", str(data), str(FLOWS_PER_CLUSTER)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(data / "server.log").open("w"), text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, (data / "server.log").read_text()[-3000:]
        info = json.loads(line)
        yield Demo(info["url"], info["users"], process)
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the server stops when its stdin closes
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is missing: run ./scripts/setup")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # --no-sandbox: containers without user namespaces; the pages are our own app on loopback.
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                                                         "--disable-extensions"])
        yield chromium
        chromium.close()


_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


@dataclass
class Console:
    """The page's console errors and uncaught exceptions. A failed request that the test provokes on purpose
    (a forged write's 403, a schema error's 422) is declared with `expect(status)`; anything else fails."""

    errors: list[str] = field(default_factory=list)
    expected: set[int] = field(default_factory=set)

    def on_message(self, message: Any) -> None:
        if message.type != "error":
            return
        failed = _FAILED_LOAD.search(message.text)
        if failed and int(failed.group(1)) in self.expected:
            return
        self.errors.append(message.text)

    @contextlib.contextmanager
    def expect(self, status: int) -> Iterator[None]:
        self.expected.add(status)
        try:
            yield
        finally:
            self.expected.discard(status)


@dataclass
class Session:
    page: Any
    console: Console
    shots: Path

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.jpeg"), quality=80)  # JPEG: quicker to encode


@contextlib.contextmanager
def signed_in(browser: Any, demo: Demo, role: str, shots: Path) -> Iterator[Session]:
    """A fresh browser context signed in as the demo user of `role`; no unexpected console error by the end."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    console = Console()
    page.on("console", console.on_message)
    page.on("pageerror", lambda exc: console.errors.append(f"uncaught: {exc}"))
    try:
        page.goto(demo.url + "/")
        page.fill("#token", demo.users[role]["token"])
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("#nav:not([hidden])")
        session = Session(page, console, shots)
        yield session
        assert console.errors == [], console.errors
    finally:
        context.close()

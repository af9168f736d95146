"""Run `netwarden policy check` in-process, the way a user runs it, and return its JSON answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netwarden import cli

CheckResult = tuple[int, dict[str, Any] | None, str]


@pytest.fixture
def run_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[Any], CheckResult]:
    # Only our verb is needed; other command modules are exercised by their own tests.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["netwarden.commands.policy_check"])

    def run(doc: Any) -> CheckResult:
        path = tmp_path / "check.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        capsys.readouterr()
        code = cli.main(["policy", "check", str(path)])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if code == 0 else None), err

    return run

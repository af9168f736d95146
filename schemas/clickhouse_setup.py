"""ClickHouse set-up beside its DDL (schemas.clickhouse): opening the store (chDB under DATA_DIR/clickhouse, or a
server) and applying the migrations not applied yet. Used by the API, the CLI and the embedded writer."""

from __future__ import annotations

import fcntl
import os
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from schemas.clickhouse import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_ROLLUP_RETENTION_DAYS,
    MIGRATIONS_TABLE_DDL,
    Retention,
    migrations,
    ttl_statements,
)

CLICKHOUSE_SUBDIR = "clickhouse"  # DATA_DIR/clickhouse holds chDB's files


class DataDirLockedError(RuntimeError):
    """Another process (e.g. a running `netwarden up`) has the chDB data directory open."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is in use by another process (chDB allows one process per data directory)")
        self.path = path


def clickhouse_path(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), CLICKHOUSE_SUBDIR)


def data_dir_locked(path: str) -> bool:
    """True when another process holds ClickHouse's `status` file lock in `path`.

    Checked before opening because chDB reports a held lock only as a generic initialization error (and
    prints the real cause to stderr). The status file names the holder's PID: our own process holding it
    (the engine already open here) is not a conflict, since chDB reuses an engine open on the same path.
    """
    status = os.path.join(path, "status")
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _status_pid(status) != os.getpid()
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _status_pid(status_file: str) -> int | None:
    try:
        with open(status_file, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("PID:"):
                    return int(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def open_clickhouse(data_dir: str | None, dsn: str | None = None) -> Client:
    """A clickhouse-connect client: the server at `dsn` (scale mode, e.g. NETWARDEN_CLICKHOUSE) when given,
    else chDB on disk under DATA_DIR/clickhouse. Raises DataDirLockedError when another process has it."""
    if dsn:
        return clickhouse_connect.get_client(dsn=dsn)
    if not data_dir:
        raise ValueError("data_dir: required when no ClickHouse DSN is given")
    path = clickhouse_path(data_dir)
    if data_dir_locked(path):
        raise DataDirLockedError(path)
    os.makedirs(path, exist_ok=True)
    try:
        return clickhouse_connect.get_client(dsn=f"chdb://{path}")
    except Exception as exc:  # clickhouse-connect wraps chDB's lock failure in a generic ProgrammingError
        if "Cannot lock file" in str(exc) or data_dir_locked(path):
            raise DataDirLockedError(path) from exc
        raise


def ensure_schema(
    client: Any, retention_days: int | None = None, rollup_retention_days: int | None = None
) -> list[int]:
    """Apply the migrations not yet recorded in schema_migrations (returns the versions applied). New
    tables get the given retentions (days; defaults 7 for flows, 90 for rollups); for existing ones a
    given retention replaces the stored TTL, None leaves it as it is (a reader such as `netwarden
    flows` must not undo what `netwarden up --retention-days` set). Not thread-safe: callers sharing the
    client serialize (query_api.store.FlowStore.ensure_schema holds its lock)."""
    retention = Retention(
        retention_days or DEFAULT_RETENTION_DAYS, rollup_retention_days or DEFAULT_ROLLUP_RETENTION_DAYS
    )
    applied: list[int] = []
    client.command(MIGRATIONS_TABLE_DDL)
    done = {int(r[0]) for r in client.query("SELECT version FROM schema_migrations").result_rows}
    for version, steps in migrations(retention.flows_days, retention.rollup_days):
        if version in done:
            continue
        for step in steps:
            if isinstance(step, str):
                client.command(step)
            else:
                step(client)
        client.command(
            "INSERT INTO schema_migrations (version) VALUES ({version:UInt32})",
            parameters={"version": version},
        )
        applied.append(version)
    if retention_days is not None or rollup_retention_days is not None:
        for statement in ttl_statements(
            client,
            retention,
            flows=retention_days is not None,
            rollups=rollup_retention_days is not None,
        ):
            client.command(statement)
    return applied

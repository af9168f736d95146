"""Flow history reads (and schema setup) through a clickhouse-connect client: chDB embedded or a server."""

from __future__ import annotations

import fcntl
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from query_api.flow_query import (
    KEY_COLUMNS,
    FlowFilter,
    build_count_query,
    build_flow_query,
    build_rows_query,
)
from query_api.scope import ScopeFilter
from schemas.clickhouse import DEFAULT_RETENTION_DAYS, MIGRATIONS_TABLE_DDL, migrations

CLICKHOUSE_SUBDIR = "clickhouse"
DEFAULT_ROW_CACHE = 10_000  # ~5 KB a row in Python  # DATA_DIR/clickhouse holds chDB's files


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


class FlowStore:
    """Flow history queries over one client. chDB's client is synchronous and not safe for concurrent
    queries from many threads, so calls are serialized; a server-backed client works the same way."""

    def __init__(self, client: Client, row_cache_size: int = DEFAULT_ROW_CACHE) -> None:
        self.client = client
        self._lock = threading.Lock()
        # Stored flows never change (a replayed duplicate has the same key and content), so full rows
        # are cached by key: a query then costs one narrow key query, the wide row read (ClickHouse
        # plans ~70 columns per read) only for rows not seen recently, e.g. a console polling a page.
        self._rows: OrderedDict[tuple[str, int, str], dict[str, Any]] = OrderedDict()
        self._row_cache_size = row_cache_size

    def query_flows(
        self,
        flt: FlowFilter,
        extra_where: Iterable[tuple[str, Mapping[str, Any]]] = (),
        scope: ScopeFilter | None = None,
    ) -> list[dict[str, Any]]:
        """Matching rows newest first, in the shape of query_api.flow_query.SELECT_COLUMNS; with a scope,
        only the flows it may see, out-of-scope peers redacted (query_api.scope)."""
        sql, params = build_flow_query(flt, extra_where, scope=scope, columns=KEY_COLUMNS)
        keys = self.run(sql, params)  # the scope and every filter are applied here, in SQL
        rows = self.rows_for(keys)
        return rows if scope is None or scope.everything else [scope.redact(r) for r in rows]

    def rows_for(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Full rows (SELECT_COLUMNS shape) of the flows named by KEY_COLUMNS rows, in the keys' order."""
        wanted = [(str(k["cluster"]), int(k["time_ns"]), str(k["uuid"])) for k in keys]
        with self._lock:
            found = {key: self._rows[key] for key in wanted if key in self._rows}
            for key in found:
                self._rows.move_to_end(key)
        missing = [k for k, key in zip(keys, wanted, strict=True) if key not in found]
        if missing:
            sql, params = build_rows_query(missing)
            with self._lock:
                for row in self.client.query(sql, parameters=params).named_results():
                    key = (str(row["cluster"]), int(row["time_ns"]), str(row["uuid"]))
                    found[key] = row
                    self._rows[key] = row
                while len(self._rows) > self._row_cache_size:
                    self._rows.popitem(last=False)
        # Copies: callers (redaction, rendering) may change their rows without touching the cache.
        return [dict(found[key]) for key in wanted if key in found]

    def run(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One read query (SQL from our own builders, values bound) -> rows as dicts."""
        with self._lock:
            result = self.client.query(sql, parameters=dict(params))
        return list(result.named_results())

    def count(self, cluster: str | None = None) -> int:
        sql, params = build_count_query(cluster)
        with self._lock:
            return int(self.client.query(sql, parameters=params).result_rows[0][0])

    def ensure_schema(self, retention_days: int = DEFAULT_RETENTION_DAYS) -> list[int]:
        """Apply the migrations not yet recorded in schema_migrations; returns the versions applied."""
        applied: list[int] = []
        with self._lock:
            self.client.command(MIGRATIONS_TABLE_DDL)
            done = {int(r[0]) for r in self.client.query("SELECT version FROM schema_migrations").result_rows}
            for version, statement in migrations(retention_days):
                if version in done:
                    continue
                self.client.command(statement)
                self.client.command(
                    "INSERT INTO schema_migrations (version) VALUES ({version:UInt32})",
                    parameters={"version": version},
                )
                applied.append(version)
        return applied

    def close(self) -> None:
        with self._lock:
            self.client.close()

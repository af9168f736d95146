"""Flow history reads through a clickhouse-connect client: chDB embedded or a server (opening and schema set-up:
schemas.clickhouse_setup)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from query_api.flow_query import (
    KEY_COLUMNS,
    FlowFilter,
    build_count_query,
    build_flow_query,
    build_rows_query,
    filter_conditions,
    parse_last,
)
from query_api.scope import ScopeFilter
from schemas.clickhouse import CATALOG_TABLE
from schemas.clickhouse_setup import (
    DataDirLockedError,
    clickhouse_path,
    ensure_schema,
    open_clickhouse,
)

DEFAULT_ROW_CACHE = 10_000  # ~5 KB a row in Python
INITIAL_WINDOW_NS = 15 * 60 * 1_000_000_000
WINDOW_GROWTH = 8


@dataclass(frozen=True)
class CatalogEntry:
    cluster: str  # the collector's cluster that stored the flows
    namespace_cluster: str  # the endpoint's own cluster (differs for cluster-mesh peers)
    namespace: str  # '' for reserved identities (world, host, ...)
    first_ns: int
    last_ns: int


def _distinct_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows minus later copies of the same flow (a redelivered twin not merged yet), order kept."""
    seen: set[tuple[str, int, str]] = set()
    out = []
    for r in rows:
        key = (str(r["cluster"]), int(r["time_ns"]), str(r["uuid"]))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


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
        only the flows it may see, out-of-scope peers redacted (query_api.scope).

        The newest N are looked for in a time window ending at the newest stored flow of the scope (flow
        catalog), widened until N are found or the window holds everything: a window is a key range, so
        each try reads a small part of the table and sorts only what it read."""
        extra = list(extra_where)
        catalog = self.catalog()
        if scope is not None and not scope.everything:
            # Entries with a side in the scope: every visible flow has one (and is no newer than its
            # last_seen, no older than its first_seen).
            catalog = [c for c in catalog if scope.can_see_namespace(c.namespace_cluster, c.namespace)]
            condition, params = scope.prefilter(
                (c.cluster, c.namespace_cluster, c.namespace) for c in catalog
            )
            extra.append((condition, params))
        if flt.cluster is not None:
            catalog = [c for c in catalog if c.cluster == flt.cluster]
        if not catalog:
            return []
        keys = self._newest_keys(flt, extra, scope, catalog)
        rows = self.rows_for(keys)
        return rows if scope is None or scope.everything else [scope.redact(r) for r in rows]

    def _newest_keys(
        self,
        flt: FlowFilter,
        extra: list[tuple[str, Mapping[str, Any]]],
        scope: ScopeFilter | None,
        catalog: list[CatalogEntry],
    ) -> list[dict[str, Any]]:
        last = parse_last(flt.last)
        now = time.time_ns()
        _, bound = filter_conditions(flt, now)  # validates, and gives since/until/cursor in ns
        first = min(c.first_ns for c in catalog)
        upper = min(
            x
            for x in (max(c.last_ns for c in catalog), bound.get("until_ns"), bound.get("cursor_ns"))
            if x is not None
        )
        lower = max(first, bound.get("since_ns", first))
        window = INITIAL_WINDOW_NS
        limit = last
        while True:
            start = upper - window
            final = last is None or start <= lower
            where = list(extra)
            if not final:
                where.append(
                    ("time >= fromUnixTimestamp64Nano({window_ns:Int64}, 'UTC')", {"window_ns": start})
                )
            query = dataclasses.replace(flt, last=limit)
            sql, params = build_flow_query(query, where, now_ns=now, scope=scope, columns=KEY_COLUMNS)
            rows = self.run(sql, params)
            keys = _distinct_keys(rows)
            if last is None:
                return keys
            if len(keys) >= last:
                return keys[:last]
            if limit is not None and len(rows) >= limit:
                limit *= 2  # not-yet-merged twins filled the page: same window, more rows
                continue
            if final:
                return keys
            window *= WINDOW_GROWTH

    def catalog(self) -> list[CatalogEntry]:
        """Every (stored cluster, endpoint cluster, namespace) the flows table holds, with the time of its
        first and last flow (schemas.clickhouse.flow_catalog)."""
        sql = (
            "SELECT cluster, namespace_cluster, namespace, toUnixTimestamp64Nano(min(first_seen)) AS f, "
            f"toUnixTimestamp64Nano(max(last_seen)) AS l FROM {CATALOG_TABLE} "
            "GROUP BY cluster, namespace_cluster, namespace"
        )
        with self._lock:
            result = self.client.query(sql)
        return [
            CatalogEntry(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4])) for r in result.result_rows
        ]

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

    def ensure_schema(
        self, retention_days: int | None = None, rollup_retention_days: int | None = None
    ) -> list[int]:
        """schemas.clickhouse_setup.ensure_schema on this store's client (returns the versions applied)."""
        with self._lock:
            return ensure_schema(self.client, retention_days, rollup_retention_days)

    def close(self) -> None:
        with self._lock:
            self.client.close()


# Opening the store is schemas.clickhouse_setup's; callers keep importing it from here.
__all__ = [
    "CatalogEntry",
    "DataDirLockedError",
    "FlowStore",
    "clickhouse_path",
    "open_clickhouse",
]

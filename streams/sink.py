"""The ClickHouse sink: framed GetFlowsResponse bytes in, enriched rows in the flows table, refused entries out.

No per-flow Python: ClickHouse decodes the protobuf (streams.decode_sql), finds the batch's distinct
enrichment keys, and joins the enricher's answers back. Python touches an entry only to frame it, and not
at all when the producer framed the batch (FlowBatch.framed). A batch ClickHouse refuses is bisected until
the entries it refuses are isolated (each with ClickHouse's message).

Errors are classified for the consumer loop: `RetriableError` (ClickHouse unreachable, overloaded, or our
own schema/SQL not in place: nothing is wrong with the data, so back off and retry, never commit) versus a
refusal of the data (dead-letter and go on). Redelivered batches are not deduplicated on insert: the flows
table is a ReplacingMergeTree keyed on Hubble's uuid, so twins collapse at merge time and under FINAL.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import pyarrow as pa
from prometheus_client import Counter, Gauge, Histogram

from schemas.clickhouse import FLOWS_TABLE, LOST_RANGES_TABLE
from schemas.flow_record import ENRICHMENT_RESULT_SCHEMA, RECORD_ARROW_SCHEMA
from schemas.framing import frame, unframe
from streams import decode_sql
from streams.enrichment import KeyEnricher
from streams.jsonpb_sql import JSONPB_COLUMN
from streams.sink_errors import RefusedError, RetriableError, _one_line, classify

log = logging.getLogger("netwarden.streams.sink")

STAGE_SECONDS = Histogram(
    "netwarden_sink_stage_seconds",
    "Time per batch in each sink stage",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STAGE_FLOWS = Counter("netwarden_sink_stage_flows_total", "Flows through each sink stage", ["stage"])
ENRICH_KEYS = Counter("netwarden_sink_enrichment_keys_total", "Distinct enrichment keys evaluated")
ENRICH_FAILURES = Counter(
    "netwarden_sink_enrichment_failures_total", "Batches stored unenriched: the enricher raised"
)
HELD_FLOWS = Gauge("netwarden_sink_held_flows", "Decoded flows waiting in the held table for one insert into flows")
BISECTS = Counter(
    "netwarden_sink_bisect_inserts_total", "Inserts of batch halves while isolating refused entries"
)

@dataclass
class Part:
    """The entries of one flows.raw message: serialized GetFlowsResponses of one cluster, as a list
    (`payloads`) or already framed by the producer (`framed`: handed to ClickHouse untouched)."""

    cluster: str
    origin: str  # "flows.raw[p]@offset"
    payloads: Sequence[bytes] = ()
    origins: Sequence[str] = ()  # optional, parallel to the entries (capture file:line)
    framed: bytes = b""
    # The producer's name for this message ("collector#sequence"): the same after a Kafka redelivery, and
    # unlike the origin never reused by a recreated topic or a fresh broker.
    batch_id: str = ""
    _split: list[bytes] | None = field(default=None, repr=False)

    def entries(self) -> Sequence[bytes]:
        """Entry by entry. For a framed part this walks the frames in Python: only when bisecting."""
        if not self.framed:
            return self.payloads
        if self._split is None:
            self._split = unframe(self.framed)
        return self._split

    @property
    def empty(self) -> bool:
        return not self.framed and not len(self.payloads)

    def origin_of(self, index: int) -> str:
        return self.origins[index] if index < len(self.origins) else f"{self.origin}#{index}"


# A run of entries: (part, start, stop); stop None = the whole part from `start` (a framed part is then never
# split into entries). Bisection splits runs, never copies entries one by one.
Run = tuple[Part, int, int | None]


def run_length(run: Run) -> int:
    part, start, stop = run
    return (len(part.entries()) if stop is None else stop) - start


@dataclass
class StoreResult:
    stored_by_cluster: dict[str, int] = field(default_factory=dict)
    lost_events: dict[str, int] = field(default_factory=dict)
    refused: list[tuple[Part, int, str]] = field(
        default_factory=list
    )  # (part, entry index, ClickHouse's message)
    tables: list[pa.Table] = field(default_factory=list)  # stored rows (RECORD_ARROW_SCHEMA) when asked
    # The rows wait in the sink's held table (ClickHouseSink.flush_held writes them to flows); the counts
    # above are what the flush will store.
    held: bool = False

    @property
    def stored(self) -> int:
        return sum(self.stored_by_cluster.values())

    def merge(self, other: StoreResult) -> None:
        for k, v in other.stored_by_cluster.items():
            self.stored_by_cluster[k] = self.stored_by_cluster.get(k, 0) + v
        for k, v in other.lost_events.items():
            self.lost_events[k] = self.lost_events.get(k, 0) + v
        self.refused += other.refused
        self.tables += other.tables
        self.held = self.held or other.held

    def refused_entries(self) -> list[tuple[str, str, bytes, str]]:
        """(origin, cluster, payload, reason) of every refused entry."""
        return [(p.origin_of(i), p.cluster, bytes(p.entries()[i]), reason) for p, i, reason in self.refused]


def dedup_token(runs: list[Run]) -> str:
    """Names a batch (or a bisected half) by the producer's names of its messages: a redelivery after a crash
    is dropped whole, rollups included. Empty (no token) when a message has no such name."""
    if not all(part.batch_id for part, _, _ in runs):
        return ""
    text = "|".join(f"{part.batch_id}:{start}:{stop}" for part, start, stop in runs)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def frame_run(run: Run) -> bytes:
    part, start, stop = run
    if part.framed and start == 0 and stop is None:
        return part.framed
    return frame(part.entries()[start:stop])


def _halves(runs: list[Run], first: int) -> tuple[list[Run], list[Run]]:
    """Split runs after `first` entries."""
    left: list[Run] = []
    right: list[Run] = []
    need = first
    for run in runs:
        part, start, _ = run
        n = run_length(run)
        if need >= n:
            left.append(run)
            need -= n
        elif need > 0:
            left.append((part, start, start + need))
            right.append((part, start + need, start + n))
            need = 0
        else:
            right.append(run)
    return left, right


def _reason(message: str) -> str:
    """ClickHouse's message for one refused entry, named as the foundation names undecodable entries."""
    lowered = message.lower()
    if "protobuf" in lowered or "cannot read" in lowered or "unexpected end" in lowered:
        return f"not a GetFlowsResponse: {message}"
    return f"refused by ClickHouse: {message}"


def is_embedded(client: Any) -> bool:
    try:
        from clickhouse_connect.driver._chdbclient import ChdbClient
    except ImportError:  # pragma: no cover - clickhouse-connect without chDB support
        return False
    return isinstance(client, ChdbClient)


_SINK_NUMBERS = count(1)
# Small batches may be held (ClickHouseSink.store(hold=True)) and written to flows together: every insert into
# flows runs its 13 materialized views, whose fixed cost (~250 ms an insert on 2 loaded cores, measured) is
# what bounded how often a worker could store under a live load. A batch this large alone is written
# straight through: it pays for its views by itself.
HOLD_FLOWS = 50_000
MIN_BYTES_PER_FILE = 4 << 20  # below this a second parsing thread costs more than it saves
# From this many flows in a batch the live stream's jsonpb text is rendered by ClickHouse (fixed ~130-250 ms to
# analyse the SQL, then ~20 us a flow) rather than by Python (~170 us a flow), measured here on 2 loaded cores.
SQL_JSONPB_MIN_FLOWS = 1500


class ClickHouseSink:
    """One worker's writer: private scratch tables (stage, keys, probe) next to the flows table."""

    def __init__(
        self,
        client: Any,
        enricher: KeyEnricher | None = None,
        *,
        flows_table: str = FLOWS_TABLE,
        name: str | None = None,
    ):
        self.client = client
        self.enricher = enricher
        self.flows_table = flows_table
        self.embedded = is_embedded(client)
        # chDB: one process per data directory, so names that repeat across restarts (no scratch tables pile
        # up) and differ between the sinks of one process. A server is shared: each worker has its own.
        local = f"embedded{next(_SINK_NUMBERS)}"
        suffix = name or (local if self.embedded else f"{socket.gethostname()}_{os.getpid()}_{local}")
        suffix = "".join(ch if ch.isalnum() else "_" for ch in suffix)
        self.stage = f"_nw_stage_{suffix}"
        self.keys = f"_nw_keys_{suffix}"
        self.held_table = f"_nw_held_{suffix}"
        self.hold_flows = HOLD_FLOWS
        self._held_runs: list[list[Run]] = []  # per held batch, for a flush ClickHouse refuses
        self._held_by_cluster: dict[str, int] = {}
        self._held_since: float | None = None
        shm = "/dev/shm"
        # Per process: chDB may map the file while reading it, and another process's sink must never
        # rewrite it under that mapping.
        self._frames_path = os.path.join(
            shm if os.path.isdir(shm) else tempfile.gettempdir(), f"netwarden-sink-{os.getpid()}-{suffix}"
        )
        self._lock = threading.Lock()  # one batch at a time through the scratch tables
        self.parallel_files = max(1, os.cpu_count() or 1)
        self._ready = False

    def store_lost_ranges(self, ranges: Sequence[tuple[str, str, int, int]]) -> None:
        """(cluster, node, after_ns, before_ns) ranges a collector found Hubble no longer held."""
        rows = [(c, n, _utc(a), _utc(b)) for c, n, a, b in ranges]
        try:
            self.client.insert(LOST_RANGES_TABLE, rows, column_names=["cluster", "node", "after", "before"])
        except Exception as exc:
            raise classify(exc) from exc

    def insert(self, table: pa.Table) -> int:
        """Rows already decoded (e.g. streams.decode's Arrow tables in tests and tools) straight into flows."""
        if table.num_rows == 0:
            return 0
        with self._lock:
            self.client.insert_arrow(self.flows_table, table, settings={"max_partitions_per_insert_block": 0})
        return table.num_rows

    # -- scratch tables ------------------------------------------------------------------------------------

    def _ensure_tables(self) -> None:
        if self._ready:
            return
        try:
            # Dropped first: a scratch table of that name may be left by an earlier run (or version).
            for table, ddl in (
                (self.stage, decode_sql.stage_ddl),
                (self.keys, decode_sql.keys_ddl),
                (self.held_table, decode_sql.held_ddl),
            ):
                self.client.command(f"DROP TABLE IF EXISTS {table}")
                self.client.command(ddl(table))
        except Exception as exc:
            raise RetriableError(f"cannot create the sink's scratch tables: {_one_line(str(exc))}") from exc
        self._ready = True

    def close(self) -> None:
        with self._lock:
            self._forget_held()
            for table in (self.stage, self.keys, self.held_table):
                try:
                    self.client.command(f"DROP TABLE IF EXISTS {table}")
                except Exception as exc:  # best effort: scratch tables hold no history
                    log.debug("dropping %s failed: %s", table, exc)
            self._ready = False

    # -- the batch path -----------------------------------------------------------------------------------

    def store(self, parts: Sequence[Part], want_rows: bool = False, hold: bool = False) -> StoreResult:
        """Write every entry ClickHouse accepts; return the refused ones with ClickHouse's message.

        hold: the rows may wait in the held table (result.held) until `flush_held()` writes every held batch
        to flows in one insert; the caller commits a held batch only after that flush.
        Raises RetriableError when nothing can be decided about the data (the caller retries the batch)."""
        runs: list[Run] = [(p, 0, None) for p in parts if not p.empty]
        with self._lock:
            self._ensure_tables()
            try:
                result = self._store(runs, want_rows, hold)
            except RefusedError as exc:
                result = self._bisect(runs, str(exc), want_rows, hold)
            if result.held:
                self._held_runs.append(runs)
                for cluster, n in result.stored_by_cluster.items():
                    self._held_by_cluster[cluster] = self._held_by_cluster.get(cluster, 0) + n
                if self._held_since is None:
                    self._held_since = time.monotonic()
                HELD_FLOWS.set(self.held_flows)
            return result

    @property
    def held_flows(self) -> int:
        return sum(self._held_by_cluster.values())

    def held_for(self) -> float | None:
        """Seconds since the oldest held batch was decoded; None when nothing is held."""
        return None if self._held_since is None else time.monotonic() - self._held_since

    def flush_held(self) -> StoreResult:
        """Write every held batch to flows (one insert: the views run once) and return what was stored.
        Raises RetriableError with the held rows kept (a retry carries the same deduplication token, so rows
        of an insert that half happened are not stored twice)."""
        with self._lock:
            if not self._held_runs:
                return StoreResult()
            started = time.perf_counter()
            try:
                self._run(
                    decode_sql.held_flush(
                        self.flows_table, self.held_table, dedup_token([r for b in self._held_runs for r in b])
                    )
                )
                result = StoreResult(stored_by_cluster=dict(self._held_by_cluster))
            except RefusedError:
                # The flows table refuses what the held table took: store batch by batch, isolating entries.
                self._run(f"TRUNCATE TABLE {self.held_table}")
                result = StoreResult()
                for runs in self._held_runs:
                    try:
                        result.merge(self._store(runs, False, False))
                    except RefusedError as exc:
                        result.merge(self._bisect(runs, str(exc), False, False))
            self._run(f"TRUNCATE TABLE {self.held_table}")
            self._forget_held()
            STAGE_SECONDS.labels("flush").observe(time.perf_counter() - started)
            STAGE_FLOWS.labels("write").inc(result.stored)
            return result

    def discard_held(self) -> None:
        """Drop the held rows unstored (their batches were not committed: Kafka hands them out again)."""
        with self._lock:
            if self._held_runs:
                self._run(f"TRUNCATE TABLE {self.held_table}")
            self._forget_held()

    def _forget_held(self) -> None:
        self._held_runs = []
        self._held_by_cluster = {}
        self._held_since = None
        HELD_FLOWS.set(0)

    def _bisect(self, runs: list[Run], message: str, want_rows: bool, hold: bool) -> StoreResult:
        total = sum(run_length(run) for run in runs)
        if total == 1:
            part, start, _ = runs[0]
            return StoreResult(refused=[(part, start, _reason(message))])
        result = StoreResult()
        for half in _halves(runs, total // 2):
            BISECTS.inc()
            try:
                result.merge(self._store(half, want_rows, hold))
            except RefusedError as exc:
                result.merge(self._bisect(half, str(exc), want_rows, hold))
        return result

    def _store(self, runs: list[Run], want_rows: bool, hold: bool) -> StoreResult:
        result = StoreResult()
        if not runs:
            return result
        self._run(f"TRUNCATE TABLE {self.stage}")
        by_cluster: dict[str, list[Run]] = {}
        for run in runs:
            by_cluster.setdefault(run[0].cluster, []).append(run)
        started = time.perf_counter()
        framing = 0.0
        for cluster, cluster_runs in by_cluster.items():
            t0 = time.perf_counter()
            framed = self.frames(cluster_runs)
            framing += time.perf_counter() - t0
            self._decode_into_stage(cluster, framed)
        # Framing is the only per-entry Python (none for batches the producer framed); part of decode.
        STAGE_SECONDS.labels("frame").observe(framing)
        STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
        for cluster, flows, lost, entries in self._query(decode_sql.stage_counts(self.stage)):
            STAGE_FLOWS.labels("decode").inc(int(entries))
            if flows:
                result.stored_by_cluster[str(cluster)] = int(flows)
            if lost:
                result.lost_events[str(cluster)] = int(lost)

        started = time.perf_counter()
        keys_table = self._enrich()
        STAGE_SECONDS.labels("enrich").observe(time.perf_counter() - started)

        started = time.perf_counter()
        result.held = hold and (bool(self._held_runs) or result.stored < self.hold_flows)
        if result.held:
            self._run(decode_sql.flows_insert(self.held_table, self.stage, keys_table, only_new=False))
        else:
            self._run(decode_sql.flows_insert(self.flows_table, self.stage, keys_table, dedup_token(runs)))
        if want_rows:
            t0 = time.perf_counter()
            result.tables.append(self._stored_rows(keys_table, result.stored >= SQL_JSONPB_MIN_FLOWS))
            STAGE_SECONDS.labels("live_rows").observe(time.perf_counter() - t0)
        STAGE_SECONDS.labels("hold" if result.held else "write").observe(time.perf_counter() - started)
        if not result.held:
            STAGE_FLOWS.labels("write").inc(result.stored)
        self._run(f"TRUNCATE TABLE {self.stage}")
        return result

    def frames(self, runs: list[Run]) -> list[bytes]:
        """The runs' framed bytes in up to `parallel_files` pieces of similar size that ClickHouse parses in
        parallel (one Protobuf stream is parsed by one thread). Runs are never cut here."""
        framed = [frame_run(run) for run in runs]
        size = sum(map(len, framed))
        pieces = max(1, min(self.parallel_files, len(framed), size // MIN_BYTES_PER_FILE))
        if pieces == 1:
            return [b"".join(framed)]
        bins: list[list[bytes]] = [[] for _ in range(pieces)]
        filled = [0] * pieces
        for chunk in sorted(framed, key=len, reverse=True):  # largest first into the emptiest file
            k = filled.index(min(filled))
            bins[k].append(chunk)
            filled[k] += len(chunk)
        return [b"".join(b) for b in bins]

    def _decode_into_stage(self, cluster: str, framed: list[bytes]) -> None:
        with_ekey = self.enricher is not None
        self._send_frames(
            lambda source: decode_sql.stage_insert(self.stage, source, with_ekey), {}, cluster, framed
        )

    def insert_framed(self, table: str, cluster: str, framed: list[bytes]) -> None:
        """Framed bytes straight into a flows-like table, no stage and no enrichment (the bench's ceiling)."""
        with self._lock:
            self._send_frames(
                lambda source: decode_sql.direct_insert(table, source),
                decode_sql.INSERT_SETTINGS,
                cluster,
                framed,
            )

    def _send_frames(
        self, sql: Callable[[str], str], settings: dict[str, str | int], cluster: str, framed: list[bytes]
    ) -> None:
        params = {"cluster": cluster}
        settings = {**decode_sql.SCHEMA_SETTINGS, **settings}
        if self.embedded:
            # chDB runs in this process: ClickHouse reads the frames from files in RAM, one thread a file.
            paths = [f"{self._frames_path}-{i}" for i in range(len(framed))]
            try:
                for path, data in zip(paths, framed, strict=True):
                    with open(path, "wb") as fh:
                        fh.write(data)
                pattern = paths[0] if len(paths) == 1 else f"{self._frames_path}-{{0..{len(paths) - 1}}}"
                query = sql(decode_sql.file_source(pattern))
                self._run(
                    f"{query}\n{decode_sql.settings_clause({**settings, **decode_sql.FILE_SETTINGS})}", params
                )
            finally:
                for path in paths:  # RAM: do not keep a batch's bytes between batches
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        else:
            # A server reads them from the request body through input(); settings go as request parameters.
            query = f"{sql(decode_sql.input_source())}\nFORMAT Protobuf"
            self._run(query, params, b"".join(framed), settings)

    def _enrich(self) -> str | None:
        if self.enricher is None:
            return None
        self._run(f"TRUNCATE TABLE {self.keys}")
        keys = self._arrow(decode_sql.keys_select(self.stage))
        if keys.num_rows == 0:
            return self.keys
        ENRICH_KEYS.inc(keys.num_rows)
        try:
            answers = self.enricher.enrich_keys(keys)
            answers = answers.select(ENRICHMENT_RESULT_SCHEMA.names).cast(ENRICHMENT_RESULT_SCHEMA)
        except Exception:
            # An enricher bug must not stall storage: these flows keep "not evaluated" (0) columns.
            ENRICH_FAILURES.inc()
            log.exception("enricher failed on %d keys; storing the batch unenriched", keys.num_rows)
            return None
        try:
            self.client.insert_arrow(self.keys, answers)
        except Exception as exc:
            raise classify(exc) from exc
        return self.keys

    def _stored_rows(self, keys_table: str | None, with_text: bool) -> pa.Table:
        """The stored rows (RECORD_ARROW_SCHEMA), with their jsonpb text (column `jsonpb`, '' where Python must
        render it) when `with_text`: ClickHouse renders it in its own threads at ~20 us a flow instead of
        Python's ~170, but analysing that SQL costs ~130-250 ms a query, so small batches go without."""
        table = self._arrow(decode_sql.stored_select(self.stage, keys_table, with_text))
        records = to_record_schema(table)
        if not with_text:
            return records
        return records.append_column(JSONPB_COLUMN, table.column(JSONPB_COLUMN).cast(pa.string()))

    # -- client calls with error classification ---------------------------------------------------------

    def _run(
        self,
        sql: str,
        params: dict[str, Any] | None = None,
        data: bytes | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        try:
            self.client.command(sql, parameters=params, data=data, settings=settings)
        except Exception as exc:
            raise classify(exc) from exc

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self.client.query(sql).result_rows]
        except Exception as exc:
            raise classify(exc) from exc

    def _arrow(self, sql: str) -> pa.Table:
        try:
            return self.client.query_arrow(sql)
        except Exception as exc:
            raise classify(exc) from exc


def _utc(ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.UTC) + datetime.timedelta(
        microseconds=ns % 1_000_000_000 // 1000
    )


def to_record_schema(table: pa.Table) -> pa.Table:
    """ClickHouse's Arrow output as RECORD_ARROW_SCHEMA (uuid extension arrays become their 16 bytes)."""
    arrays = []
    for fld in RECORD_ARROW_SCHEMA:
        col = table.column(fld.name)
        if isinstance(col.type, pa.ExtensionType):
            col = pa.chunked_array([c.storage for c in col.chunks], type=col.type.storage_type)
        arrays.append(col.cast(fld.type))
    return pa.Table.from_arrays(arrays, schema=RECORD_ARROW_SCHEMA)

"""`netwarden bench query`: the demo users' calls through the HTTP API over N stored demo flows.

Loading: the demo traffic generator (collectors/traffic.py) produces a few thousand flows per demo
cluster, decoded once into template rows; ClickHouse then writes N flows over 24 h ending now as
`INSERT ... SELECT` from numbers() joined to those templates (no flow goes through Python): each flow is
the next template row of its cluster (so conversations keep their shape and mix), with a fresh random
uuid, its own time, and a fresh ephemeral port per conversation. The enrichment columns get the demo
organization's ownership (netwarden.demo_seed) and a desired verdict equal to Hubble's, attributed to the
policy Hubble names.

Timing: `netwarden up`'s API (query_api.app with the real token authenticator) under uvicorn on
loopback; per role (one demo user each) the list of the last 100 flows, a filtered 1 h history
(namespace + verdict), the 1 h and 24 h summaries and /api/v1/namespaces, each called `--calls` times
after one warm-up call. Prints one JSON line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SPAN_NS = 24 * 3600 * 1_000_000_000
TEMPLATE_FLOWS = 20_000  # per cluster: ~1,500 conversations of the generator's mix
CHUNK = 2_000_000
SLICES = 24  # one generated hour, 23 shifted copies
STAGING_TABLE = "bench_query_staging"
TEMPLATES_TABLE = "bench_query_templates"
EPHEMERAL_FIRST, EPHEMERAL_COUNT = 32768, 61000 - 32768


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = groups["bench"].add_parser(
        "query", help="API latency of the demo users' history and summary calls over N stored flows"
    )
    p.add_argument("--flows", type=int, default=30_000_000, help="demo flows to store (default 30000000)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory to use (kept; flows already there for the demo clusters are replaced); "
        "default: a temporary one",
    )
    p.add_argument("--calls", type=int, default=20, help="timed calls per (role, query) (default 20)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="time the calls over the flows already in --data-dir (no load; --flows is then only reported)",
    )
    p.set_defaults(handler=cmd_bench_query)


def _progress(text: str) -> None:
    print(f"bench query: {text}", file=sys.stderr, flush=True)


def cmd_bench_query(args: argparse.Namespace) -> int:
    from netwarden.cli import CommandError

    if args.flows < 1 or args.calls < 1:
        raise CommandError("--flows and --calls must be positive")
    if args.reuse and not args.data_dir:
        raise CommandError("--reuse needs --data-dir")
    if args.data_dir:
        result = bench_query(Path(args.data_dir), args.flows, args.calls, reuse=args.reuse)
    else:
        with tempfile.TemporaryDirectory(prefix="netwarden-bench-query-") as tmp:
            result = bench_query(Path(tmp), args.flows, args.calls)
    print(json.dumps(result))
    return 0


# ---- loading -----------------------------------------------------------------------------------------


def _template_table(cluster: str, seed: int) -> Any:
    """TEMPLATE_FLOWS decoded demo flows of one cluster, with their position `k`, conversation number
    `conv` and which side holds the ephemeral port (`eph`: 0 none, 1 source, 2 destination)."""
    import pyarrow as pa

    from collectors.traffic import DemoTraffic
    from streams.decode import FlowDecoder

    entries = DemoTraffic(cluster, seed=seed).serialized(TEMPLATE_FLOWS, now_ns=0 + 10**18, spacing_ns=1)
    table = FlowDecoder().decode(cluster, [raw for _, _, raw in entries]).table
    src_ports = table.column("src_port").to_pylist()
    dst_ports = table.column("dst_port").to_pylist()
    eph, conv = [], []
    current, last_port = 0, None
    for sp, dp in zip(src_ports, dst_ports, strict=True):
        side = 1 if sp >= EPHEMERAL_FIRST else 2 if dp >= EPHEMERAL_FIRST else 0
        port = sp if side == 1 else dp if side == 2 else None
        if port is not None and port != last_port:
            current += 1
            last_port = port
        eph.append(side)
        conv.append(current)
    return (
        table.append_column("k", pa.array(range(table.num_rows), pa.uint32()))
        .append_column("conv", pa.array(conv, pa.uint32()))
        .append_column("eph", pa.array(eph, pa.uint8()))
    )


def _ownership_sql() -> dict[str, str]:
    """Enrichment expressions over a template row `t`: the demo organization's ownership, and a desired
    verdict that agrees with Hubble's, attributed to the policy Hubble names."""
    from netwarden.demo_seed import PROJECTS, WORKSPACES

    clusters = [c for p in PROJECTS for c in p.clusters]
    projects = [p.name for p in PROJECTS for _ in p.clusters]
    places = [f"{r.cluster}/{r.namespace}" for w in WORKSPACES for r in w.namespaces]
    workspaces = [w.name for w in WORKSPACES for _ in w.namespaces]
    out: dict[str, str] = {}
    for side in ("src", "dst"):
        cl = f"if(t.{side}_cluster_name != '', t.{side}_cluster_name, t.cluster)"
        out[f"{side}_project"] = (
            f"if(t.{side}_namespace != '', transform({cl}, {clusters!r}, {projects!r}, ''), '')"
        )
        out[f"{side}_workspace"] = (
            f"transform(concat({cl}, '/', t.{side}_namespace), {places!r}, {workspaces!r}, '')"
        )
    out["desired_revision"] = "toUInt64(1)"
    out["desired_verdict"] = "if(t.verdict = 2, 2, 1)"
    out["desired_drop_reason"] = "if(t.verdict = 2, t.drop_reason_desc, 0)"
    for direction in ("egress", "ingress"):
        denied, allowed = f"t.{direction}_denied_by", f"t.{direction}_allowed_by"
        pick = f"if(notEmpty({denied}), {denied}[1], {allowed}[1])"
        named = f"notEmpty({denied}) OR notEmpty({allowed})"
        out[f"desired_{direction}_verdict"] = f"if(notEmpty({denied}), 2, if({named}, 1, 0))"
        out[f"desired_{direction}_policy"] = (
            f"if({named}, concat(tupleElement({pick}, 'kind'), '/', tupleElement({pick}, 'namespace'), '/', "
            f"tupleElement({pick}, 'name')), '')"
        )
        out[f"desired_{direction}_rule"] = (
            f"if(notEmpty({denied}), '{direction}Deny[0]', if(notEmpty({allowed}), '{direction}[0]', ''))"
        )
        out[f"desired_{direction}_version"] = f"toUInt32(if({named}, 1, 0))"
    return out


def load_demo_flows(client: Any, n: int, end_ns: int, span_ns: int = SPAN_NS) -> int:
    """N demo flows over [end - span, end], split evenly between the demo clusters, written by
    ClickHouse itself. Returns the number written.

    The first of SLICES time slices is generated from the templates (a join per row: the slow part);
    the others are copies of it shifted in time, with fresh uuids and ephemeral ports. Everything goes
    to a staging table first, whose partitions are then attached to `flows` and counted into the
    rollups and the catalog once, as the views would have (views work per insert block: slower)."""
    import pyarrow as pa

    from collectors.traffic import DEMO_CLUSTERS
    from schemas.clickhouse import (
        CATALOG_TABLE,
        CONVERSATIONS_1H,
        FLOWS_TABLE,
        ROLLUPS,
        catalog_select,
        conversations_select,
        flows_table_ddl,
    )
    from schemas.flow_record import RECORD_COLUMNS

    _progress(f"building templates ({TEMPLATE_FLOWS} flows per cluster)")
    templates = pa.concat_tables(
        [_template_table(cluster, seed=i) for i, cluster in enumerate(DEMO_CLUSTERS)],
        promote_options="default",
    )
    client.command(f"DROP TABLE IF EXISTS {TEMPLATES_TABLE}")
    flow_cols = ", ".join(f"`{f.name}` {_ch_type(f.name)}" for f in templates.schema)
    client.command(f"CREATE TABLE {TEMPLATES_TABLE} ({flow_cols}) ENGINE = Memory")
    client.insert_arrow(TEMPLATES_TABLE, templates)
    client.command(f"DROP TABLE IF EXISTS {STAGING_TABLE}")
    client.command(flows_table_ddl(table=STAGING_TABLE))

    enrichment = _ownership_sql()
    exprs = []
    for c in RECORD_COLUMNS:
        if c.name == "time":
            expr = (
                "fromUnixTimestamp64Nano(toInt64({start:Int64} + toInt64(n.number * {step:Float64}) "
                "+ toInt64(cityHash64(n.number, {seed:UInt64}) % {jitter:UInt64})), 'UTC')"
            )
        elif c.name == "uuid":
            expr = "generateUUIDv4(n.number)"
        elif c.name in ("src_port", "dst_port"):
            side = 1 if c.name == "src_port" else 2
            expr = (
                f"if(t.eph = {side}, toUInt16({EPHEMERAL_FIRST} + cityHash64(intDiv(n.number, {TEMPLATE_FLOWS}), "
                f"t.conv, {{seed:UInt64}}) % {EPHEMERAL_COUNT}), t.{c.name})"
            )
        elif c.name in enrichment:
            expr = enrichment[c.name]
        elif c.name in templates.schema.names:
            expr = f"t.`{c.name}`"
        else:
            expr = None  # the table's default
        if expr is not None:
            exprs.append((c.name, expr))
    cols = ", ".join(f"`{name}`" for name, _ in exprs)
    select = ", ".join(f"{expr} AS `{name}`" for name, expr in exprs)
    # Copies: same rows, later time, new uuid; an ephemeral port maps to another one per copy (a
    # conversation keeps one port).
    shifted = {
        "time": "s.time + toIntervalNanosecond({shift_ns:Int64})",
        "uuid": "generateUUIDv4(cityHash64(s.uuid, {copy:UInt64}))",
    }
    for port in ("src_port", "dst_port"):
        shifted[port] = (
            f"if(s.{port} >= {EPHEMERAL_FIRST}, toUInt16({EPHEMERAL_FIRST} + "
            f"cityHash64(s.{port}, {{copy:UInt64}}) % {EPHEMERAL_COUNT}), s.{port})"
        )
    all_cols = ", ".join(f"`{c.name}`" for c in RECORD_COLUMNS)
    copy_select = ", ".join(f"{shifted.get(c.name, f's.`{c.name}`')} AS `{c.name}`" for c in RECORD_COLUMNS)
    settings = "SETTINGS max_partitions_per_insert_block = 0, insert_deduplicate = 0, max_insert_threads = 2"

    per_cluster = [
        n // len(DEMO_CLUSTERS) + (1 if i < n % len(DEMO_CLUSTERS) else 0) for i in range(len(DEMO_CLUSTERS))
    ]
    written = 0
    started = time.perf_counter()
    slice_ns = span_ns // SLICES
    start_ns = end_ns - span_ns

    def progress() -> None:
        rate = written / max(1e-9, time.perf_counter() - started)
        _progress(f"{written}/{n} flows written ({rate:,.0f}/s)")

    for seed, (cluster, count) in enumerate(zip(DEMO_CLUSTERS, per_cluster, strict=True)):
        slice_count = -(-count // SLICES)
        if count == 0:
            continue
        step = slice_ns / slice_count
        for first in range(0, slice_count, CHUNK):
            size = min(CHUNK, slice_count - first)
            client.command(
                f"INSERT INTO {STAGING_TABLE} ({cols})\n"
                f"SELECT {select}\n"
                f"FROM (SELECT number, number % {TEMPLATE_FLOWS} AS k FROM numbers_mt({{first:UInt64}}, {{size:UInt64}})) AS n\n"
                f"INNER JOIN (SELECT * FROM {TEMPLATES_TABLE} WHERE cluster = {{cluster:String}}) AS t ON t.k = n.k\n"
                + settings,
                parameters={
                    "start": start_ns,
                    "step": step,
                    "jitter": max(1, int(step)),
                    "seed": seed + 1,
                    "first": first,
                    "size": size,
                    "cluster": cluster,
                },
            )
            written += size
            progress()
        for copy in range(1, SLICES):
            remaining = count - copy * slice_count
            if remaining <= 0:
                break
            client.command(
                f"INSERT INTO {STAGING_TABLE} ({all_cols})\nSELECT {copy_select}\nFROM (SELECT * FROM {STAGING_TABLE}\n"
                "WHERE cluster = {cluster:String} AND time < fromUnixTimestamp64Nano({slice_end:Int64}, 'UTC')\n"
                "ORDER BY time LIMIT {limit:UInt64}) AS s\n" + settings,
                parameters={
                    "cluster": cluster,
                    "slice_end": start_ns + slice_ns,
                    "shift_ns": copy * slice_ns,
                    "copy": copy,
                    "limit": min(slice_count, remaining),
                },
            )
            written += min(slice_count, remaining)
            progress()
    client.command(f"DROP TABLE IF EXISTS {TEMPLATES_TABLE}")

    _progress("counting the rollups and the catalog")
    for rollup in ROLLUPS.values():
        client.command(f"INSERT INTO {rollup.table} {rollup.select(source=STAGING_TABLE)} {settings}")
    client.command(f"INSERT INTO {CATALOG_TABLE} {catalog_select(source=STAGING_TABLE)}")
    client.command(f"INSERT INTO {CONVERSATIONS_1H} {conversations_select(source=STAGING_TABLE)} {settings}")
    partitions = client.query(
        "SELECT DISTINCT partition_id FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table = {t:String}",
        parameters={"t": STAGING_TABLE},
    ).result_rows
    for (partition,) in partitions:
        client.command(f"ALTER TABLE {FLOWS_TABLE} ATTACH PARTITION ID '{partition}' FROM {STAGING_TABLE}")
    client.command(f"DROP TABLE {STAGING_TABLE}")
    return written


def _ch_type(name: str) -> str:
    from schemas.flow_record import RECORD_COLUMNS

    extra = {"k": "UInt32", "conv": "UInt32", "eph": "UInt8"}
    if name in extra:
        return extra[name]
    for c in RECORD_COLUMNS:
        if c.name == name:
            return c.clickhouse.split(" CODEC(")[0]
    raise KeyError(name)


# ---- timing ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _calls(users: list[dict[str, Any]]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, role, path, token) of every timed call: per role, its user's token."""
    out = []
    for user in users:
        role, token = user["role"], user["token"]
        ns = {"shop-team": "shop", "data-team": "data", "observability": "monitoring"}.get(
            user["scope"], "shop"
        )
        for name, path in (
            ("flows_last_100", "/api/v1/flows?limit=100"),
            (
                "flows_1h_namespace_verdict",
                f"/api/v1/flows?limit=100&since=1h&namespace={ns}&verdict=FORWARDED",
            ),
            ("summary_1h", "/api/v1/flows/summary?since=1h"),
            ("summary_24h", "/api/v1/flows/summary?since=24h"),
            ("namespaces", "/api/v1/namespaces"),
        ):
            out.append((name, role, path, {"Authorization": f"Bearer {token}"}))
    return out


def bench_query(data_dir: Path, n: int, calls: int, reuse: bool = False) -> dict[str, Any]:
    import httpx
    import uvicorn

    from collectors.traffic import DEMO_CLUSTERS
    from netwarden.demo_seed import seed_demo
    from policy_engine.store import ControlPlaneStore
    from policy_engine.tenancy import Tenancy
    from query_api.app import create_app
    from query_api.auth import Authenticator
    from query_api.store import FlowStore, open_clickhouse
    from schemas.clickhouse import FLOWS_TABLE

    data_dir.mkdir(parents=True, exist_ok=True)
    store = FlowStore(open_clickhouse(str(data_dir)))
    store.ensure_schema()
    load_s = 0.0
    if reuse:
        n = store.count()
    else:
        _progress(f"clearing the demo clusters' flows in {data_dir}")
        for table in _cluster_tables(store):
            store.client.command(
                f"DELETE FROM {table} WHERE cluster IN {{c:Array(String)}}",
                parameters={"c": list(DEMO_CLUSTERS)},
            )
        started = time.perf_counter()
        load_demo_flows(store.client, n, time.time_ns())
        load_s = time.perf_counter() - started
        _progress(f"loaded in {load_s:.1f}s")
    stored = store.client.query(
        f"SELECT sum(rows), sum(data_compressed_bytes) FROM system.parts WHERE active AND table = '{FLOWS_TABLE}'"
        " AND database = currentDatabase()"
    ).result_rows[0]

    control = ControlPlaneStore.open(data_dir)
    users = seed_demo(control, data_dir)
    tenancy = Tenancy(control)
    app = create_app(store, authenticator=Authenticator(tenancy), ownership=tenancy.ownership)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    results = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            for name, role, path, headers in _calls(users):
                first = http.get(path, headers=headers)  # warm-up (and a correctness check)
                if first.status_code != 200:
                    raise RuntimeError(f"{role} {path}: HTTP {first.status_code}: {first.text[:200]}")
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    r = http.get(path, headers=headers)
                    times.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                times.sort()
                entry = {
                    "name": name,
                    "role": role,
                    "path": path,
                    "p50_ms": round(statistics.median(times), 1),
                    "p95_ms": round(times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))], 1),
                }
                _progress(
                    f"{role:22s} {name:28s} p50 {entry['p50_ms']:8.1f} ms  p95 {entry['p95_ms']:8.1f} ms"
                )
                results.append(entry)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()
    return {
        "flows": n,
        "load_s": round(load_s, 1),
        "bytes_per_flow": round(int(stored[1]) / max(1, int(stored[0])), 1),
        "calls": results,
    }


def _cluster_tables(store: Any) -> list[str]:
    from schemas.clickhouse import CATALOG_TABLE, CONVERSATIONS_1H, FLOWS_TABLE, ROLLUP_TABLES

    return [FLOWS_TABLE, *ROLLUP_TABLES, CATALOG_TABLE, CONVERSATIONS_1H]

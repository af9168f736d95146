"""The live stream's Python filter twin agrees with the SQL filter of /api/v1/flows on the same rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import random
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from collectors.traffic import DemoTraffic
from query_api.flow_query import FilterValueError, FlowFilter, build_flow_query
from query_api.live import flow_predicate, live_flow_filter, table_rows
from query_api.store import FlowStore, open_clickhouse
from streams.decode import FlowDecoder
from streams.sink import ClickHouseSink

CLUSTERS = ("live-p1", "live-p2")
FIELDS = {f.name for f in dataclasses.fields(FlowFilter)}
ONLY_OURS = ("cluster IN {live_clusters:Array(String)}", {"live_clusters": list(CLUSTERS)})


@pytest.fixture(scope="module")
def dataset(chdb_dsn: str) -> Iterator[tuple[FlowStore, list[dict[str, Any]]]]:
    store = FlowStore(open_clickhouse(None, chdb_dsn))
    store.ensure_schema()
    decoder = FlowDecoder()
    tables = []
    for i, cluster in enumerate(CLUSTERS):
        entries = DemoTraffic(cluster, seed=11 + i).serialized(600, spacing_ns=1_000_003)
        decoded = decoder.decode(cluster, [data for _, _, data in entries])
        assert not decoded.rejected
        tables.append(decoded.table)
    table = pa.concat_tables(tables)
    ClickHouseSink(store.client).insert(table)
    yield store, table_rows(table)


def uuids(rows: list[dict[str, Any]]) -> set[bytes]:
    return {r["uuid"].bytes if hasattr(r["uuid"], "bytes") else bytes(r["uuid"]) for r in rows}


def sql_rows(store: FlowStore, flt: FlowFilter) -> list[dict[str, Any]]:
    sql, params = build_flow_query(dataclasses.replace(flt, last=None), [ONLY_OURS])
    return store.run(sql, params)


def candidate_filters(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Random filter combinations drawn from values present in the data (plus some absent ones)."""
    rng = random.Random(5)
    pick = lambda values: rng.choice(sorted(v for v in values if v))  # noqa: E731
    namespaces = {r[f"{s}_namespace"] for r in rows for s in ("src", "dst")}
    pods = {(r[f"{s}_namespace"], r[f"{s}_pod"]) for r in rows for s in ("src", "dst") if r[f"{s}_pod"]}
    ports = {r[f"{s}_port"] for r in rows for s in ("src", "dst") if r[f"{s}_port"] < 32768}
    labels = {lb for r in rows for s in ("src", "dst") for lb in r[f"{s}_labels"]}
    workloads = {
        (k, n)
        for r in rows
        for s in ("src", "dst")
        for n, k in zip(r[f"{s}_workload_names"], r[f"{s}_workload_kinds"], strict=False)
    }
    ips = {
        str(a.ipv4_mapped or a)
        for r in rows
        for s in ("src", "dst")
        if int(a := ipaddress.IPv6Address(bytes(r[f"ip_{s}"])))
    }
    times = sorted(r["time_ns"] for r in rows)
    choices: dict[str, Any] = {
        "cluster": lambda: rng.choice([*CLUSTERS, "elsewhere"]),
        "namespace": lambda: rng.choice([pick(namespaces), "nope"]),
        "pod": lambda: (lambda ns, pod: rng.choice([f"{ns}/{pod[: rng.randint(1, len(pod))]}", f"{ns}/"]))(
            *pick(pods)
        ),
        "verdict": lambda: rng.choice(["forwarded", "DROPPED", "ERROR"]),
        "protocol": lambda: rng.choice(["tcp", "udp", "icmp", "icmpv4", "icmpv6", "sctp"]),
        "port": lambda: rng.choice([pick(ports), 53, 9999]),
        "since": lambda: str(rng.choice(times)),
        "until": lambda: str(rng.choice(times)),
        "labels": lambda: (rng.choice([pick(labels), pick(labels).split(":", 1)[-1], "app=nope"]),),
        "workload": lambda: (lambda kind, name: rng.choice([name, f"{kind.lower()}/{name}", f"Job/{name}"]))(
            *pick(workloads)
        ),
        "ip": lambda: rng.choice([pick(ips), pick(ips), "10.0.0.0/8", "0.0.0.0/0", "::/0", "192.168.1.1"]),
        "drop_reason": lambda: rng.choice(["POLICY_DENIED", "133", "181"]),
        "direction": lambda: rng.choice(["ingress", "EGRESS"]),
        "l7_type": lambda: rng.choice(["REQUEST", "response"]),
    }
    usable = [k for k in choices if k in FIELDS]
    out = []
    for _ in range(n):
        keys = rng.sample(usable, rng.randint(1, 3))
        out.append({k: choices[k]() for k in keys})
    return out


def as_filter(kw: dict[str, Any]) -> FlowFilter:
    kw = dict(kw)
    for k in ("since", "until"):  # stored ns -> RFC 3339 with all nine digits
        if k in kw:
            s, ns = divmod(int(kw[k]), 1_000_000_000)
            kw[k] = dt.datetime.fromtimestamp(s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"
    return FlowFilter(**kw, last=None)


def test_python_filter_agrees_with_sql(dataset: tuple[FlowStore, list[dict[str, Any]]]) -> None:
    store, rows = dataset
    checked = nonempty = 0
    everything = sql_rows(store, FlowFilter(last=None))
    assert len(everything) == len(rows)
    for kw in candidate_filters(rows, 400):
        flt = as_filter(kw)
        try:
            want = sql_rows(store, flt)
        except FilterValueError:
            with pytest.raises(FilterValueError):
                flow_predicate(flt)
            continue
        match = flow_predicate(flt)
        got_arrow = uuids([r for r in rows if match(r)])
        assert got_arrow == uuids(want), f"Arrow rows disagree with SQL for {kw}"
        # The same predicate on SQL-shaped rows (clickhouse-connect types) selects the same flows.
        assert uuids([r for r in everything if match(r)]) == uuids(want), f"SQL rows disagree for {kw}"
        checked += 1
        nonempty += bool(want)
    assert checked >= 300 and nonempty >= 100, (checked, nonempty)


def test_unsupported_filters_are_refused_not_ignored() -> None:
    if "cursor" in FIELDS:
        with pytest.raises(FilterValueError) as err:
            flow_predicate(
                FlowFilter(cursor="eyJ0IjoxLCJ1IjoiMDAwMDAwMDAtMDAwMC00MDAwLTgwMDAtMDAwMDAwMDAwMDAwIn0")
            )
        assert err.value.parameter == "cursor"
    with pytest.raises(FilterValueError) as err:
        live_flow_filter({"no_such_filter": "x"})
    assert err.value.parameter == "no_such_filter"


@pytest.mark.parametrize(
    ("kw", "parameter"),
    [({"verdict": "MAYBE"}, "verdict"), ({"protocol": "http"}, "protocol"), ({"pod": "a/b/c"}, "pod")],
)
def test_bad_values_name_the_parameter(kw: dict[str, Any], parameter: str) -> None:
    with pytest.raises(FilterValueError) as err:
        flow_predicate(FlowFilter(**kw))
    assert err.value.parameter == parameter

"""`netwarden bench traffic`: the validation report, what-if and recommend over N demo flows of 7 days.

Loading reuses `bench query`'s loader (netwarden.commands.bench_query.load_demo_flows: ClickHouse writes the
flows itself from decoded demo templates, and the rollups and hourly conversation table from them) with a 7-day
span. The control plane gets the
demo organization and the demo's policy documents (netwarden.demo_seed), as `netwarden up` has them.

Timing, in this process through the same gathering functions the API routes and the CLI's local mode call (no
HTTP: the figure is the work, not the transport), after one warm-up call each, `--calls` times:
- `report`: query_api.report_data.validation_report over 7 days for the org admin (without the kube API calls);
- `what_if_deny_dns`: a cluster-wide policy denying egress to port 53 added to the demo blueprint (the issue's
  example), over 7 days, both demo clusters affected;
- `what_if_workspace`: a workspace admin's namespace policy (its own namespace locked to itself);
- `recommend_namespace`: recommendation for the demo's `shop` namespace on demo-east.
Prints one JSON line `{"flows", "days", "load_s", "conversations", "calls": [{"name", "p50_ms", "p95_ms"}]}`;
progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DAYS = 7
DAY_NS = 24 * 3600 * 1_000_000_000


def register(sub: Any, groups: dict[str, Any]) -> None:
    p = groups["bench"].add_parser(
        "traffic", help="validation report, what-if and recommend over N demo flows of 7 days (p50/p95 ms)"
    )
    p.add_argument("--flows", type=int, default=30_000_000, help="demo flows to store (default 30000000)")
    p.add_argument("--data-dir", metavar="DIR", help="data directory to use (kept); default: a temporary one")
    p.add_argument("--calls", type=int, default=10, help="timed calls per entry (default 10)")
    p.add_argument("--reuse", action="store_true", help="time over the flows already in --data-dir (no load)")
    p.set_defaults(handler=cmd_bench_traffic)


def _progress(text: str) -> None:
    print(f"bench traffic: {text}", file=sys.stderr, flush=True)


def cmd_bench_traffic(args: argparse.Namespace) -> int:
    from netwarden.cli import CommandError

    if args.flows < 1 or args.calls < 1:
        raise CommandError("--flows and --calls must be positive")
    if args.reuse and not args.data_dir:
        raise CommandError("--reuse needs --data-dir")
    if args.data_dir:
        result = bench_traffic(Path(args.data_dir), args.flows, args.calls, reuse=args.reuse)
    else:
        with tempfile.TemporaryDirectory(prefix="netwarden-bench-traffic-") as tmp:
            result = bench_traffic(Path(tmp), args.flows, args.calls)
    print(json.dumps(result))
    return 0


def _demo_documents(control: Any) -> list[dict[str, Any]]:
    """The issue's example change: the demo blueprint (as the store has it) plus a cluster-wide policy denying
    egress to port 53."""
    from netwarden.demo_seed import DEMO_BLUEPRINT
    from policy_engine.gitops import blueprint_document

    deny = {
        "apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "bench-deny-dns"},
        "spec": {"scope": "cluster", "rules": [{"name": "deny-dns", "cilium": {
            "endpointSelector": {}, "enableDefaultDeny": {"egress": False},
            "egressDeny": [{"toEntities": ["all"], "toPorts": [{"ports": [
                {"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}]}]}]}}]},
    }
    blueprint = blueprint_document(control.get_blueprint(DEMO_BLUEPRINT))
    blueprint["spec"]["clusterPolicies"].append("bench-deny-dns")
    return [deny, blueprint]


def _workspace_lock() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "netwarden.io/v1", "kind": "Policy", "metadata": {"name": "bench-shop-lock"},
         "spec": {"scope": "namespace", "rules": [{"name": "lock", "cilium": {
             "endpointSelector": {},
             "egress": [{"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "shop"}}]}]}}]}},
        {"apiVersion": "netwarden.io/v1", "kind": "Assignment", "metadata": {"name": "bench-shop-lock"},
         "spec": {"policy": "bench-shop-lock", "targets": [{"workspace": "shop-team"}]}},
    ]


def _timed(name: str, calls: int, fn: Callable[[], Any]) -> dict[str, Any]:
    fn()  # warm-up (and a correctness check: errors surface here)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    entry = {
        "name": name,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))], 1),
    }
    _progress(f"{name:24s} p50 {entry['p50_ms']:8.1f} ms  p95 {entry['p95_ms']:8.1f} ms")
    return entry


def bench_traffic(data_dir: Path, n: int, calls: int, reuse: bool = False) -> dict[str, Any]:
    from collectors.traffic import DEMO_CLUSTERS
    from netwarden.commands.bench_query import _cluster_tables, load_demo_flows
    from netwarden.demo_seed import seed_demo, seed_demo_policies
    from policy_engine.roles import Principal
    from policy_engine.store import ControlPlaneStore
    from policy_engine.whatif import parse_documents
    from query_api.conversations import read_conversations
    from query_api.policy_traffic_routes import parse_window, recommendation, scratch_copy, what_if
    from query_api.report_data import ReportParams, validation_report
    from query_api.store import FlowStore, open_clickhouse
    from schemas.clickhouse import CONVERSATIONS_1H

    data_dir.mkdir(parents=True, exist_ok=True)
    store = FlowStore(open_clickhouse(str(data_dir)))
    store.ensure_schema()
    clusters = list(DEMO_CLUSTERS)
    load_s = 0.0
    if reuse:
        n = store.count()
    else:
        _progress(f"clearing the demo clusters' history in {data_dir}")
        for table in {*_cluster_tables(store), CONVERSATIONS_1H}:
            store.client.command(f"DELETE FROM {table} WHERE cluster IN {{c:Array(String)}}", parameters={"c": clusters})
        started = time.perf_counter()
        load_demo_flows(store.client, n, time.time_ns(), span_ns=DAYS * DAY_NS)  # fills the hourly conversations too
        load_s = time.perf_counter() - started
        _progress(f"loaded in {load_s:.1f}s")

    control = ControlPlaneStore.open(data_dir)
    seed_demo(control, data_dir)
    seed_demo_policies(control, {})
    org = Principal.with_role("org-admin", name="bench")
    wendy = Principal.with_role("workspace-admin", "shop-team", name="bench-wendy")
    since = f"{DAYS}d"
    window = parse_window(since, None)
    conversations = len(read_conversations(store.client, since=window.since, until=window.until, clusters=clusters))
    _progress(f"{conversations} conversations in {DAYS} days")
    deny_dns = parse_documents(_demo_documents(control), "bench")
    lock = parse_documents(_workspace_lock(), "bench")

    def run_what_if(principal: Principal, docs: Any) -> Any:
        with scratch_copy(control) as scratch:
            return what_if(store.client, scratch, principal, docs, parse_window(since, None))

    results = []
    try:
        params = ReportParams(since=since, live=False)
        results.append(_timed("report", calls, lambda: validation_report(store, control, org, params)))
        denied = what_if(store.client, control, org, deny_dns, window)
        _progress(f"what-if deny DNS: {sum(len(c.newly_denied) for c in denied.clusters)} newly denied group(s) in "
                  f"{', '.join(c.cluster for c in denied.clusters)}")
        results.append(_timed("what_if_deny_dns", calls, lambda: run_what_if(org, deny_dns)))
        results.append(_timed("what_if_workspace", calls, lambda: run_what_if(wendy, lock)))
        results.append(_timed("recommend_namespace", calls, lambda: recommendation(
            store.client, control, org, parse_window(since, None), cluster=clusters[0], namespace="shop")))
    finally:
        control.close()
        store.close()
    return {"flows": n, "days": DAYS, "load_s": round(load_s, 1), "conversations": conversations, "calls": results}

"""`netwarden report validate`: does the traffic match the desired policy? (query_api.report_data)

Sources, as `netwarden flows`: `--server URL --token T` (or NETWARDEN_SERVER / NETWARDEN_TOKEN) asks a running
API (GET /api/v1/reports/validation), which applies the token's scope; `--data-dir DIR` reads the flow store
and the control-plane store directly, acting as `--as-role/--scope` (default org-admin, like the policy
commands). Output: `-o table` (default, for a terminal), `-o json` (the report document), `-o html` (one
self-contained page: `> report.html`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from netwarden.commands.gitops import (
    answer_locally,
    api_request,
    api_server,
    printable,
    source_parser,
    table_lines,
    write_stdout,
)

FORMATS = ("table", "json", "html")


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    report = sub.add_parser("report", help="reports on policy and traffic")
    verbs = report.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    p = verbs.add_parser(
        "validate", parents=[source_parser()],
        help="validation report: coverage, policy not in effect, unexpected drops, unused rules, staged policies",
        description="Per cluster and namespace: zero-trust coverage, conversations Hubble forwarded that the "
        "desired policy set denies (with the likely cause), conversations it dropped that the set allows, "
        "drops by reason and policy, rules that decided no flow, and what staged policies would change.",
    )
    p.add_argument("--cluster", metavar="C", help="only this cluster")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--namespace", metavar="NS", help="only this namespace")
    which.add_argument("--workspace", metavar="W", help="only this workspace's namespaces")
    p.add_argument("--since", metavar="T", default="24h", help="RFC 3339 time or a duration ago (default 24h)")
    p.add_argument("--until", metavar="T", help="RFC 3339 time or a duration ago (default now)")
    p.add_argument("-o", "--output", choices=FORMATS, default="table")
    p.add_argument("--no-live", action="store_true", help="do not contact the clusters' kube APIs (pods, drift)")
    p.set_defaults(handler=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    server = api_server(args)
    body = _from_api(server, args) if server else _local(args)
    if args.output == "json":
        write_stdout(json.dumps(body, indent=2) + "\n")
    elif args.output == "html":
        write_stdout(body if isinstance(body, str) else _html(body))
    else:
        write_stdout(render_table(body))
    return 0


def _html(report: Mapping[str, Any]) -> str:
    from query_api.report_html import render_html

    return render_html(report)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params = {k: getattr(args, k) for k in ("cluster", "namespace", "workspace", "since", "until")}
    return {k: v for k, v in params.items() if v is not None}


def _from_api(server: str, args: argparse.Namespace) -> Any:
    """The report from GET /api/v1/reports/validation (HTML as text when -o html)."""
    query = {**_params(args), "format": "html" if args.output == "html" else "json"}
    if args.no_live:
        query["live"] = "false"
    response = api_request(args, server, "GET", "/api/v1/reports/validation", params=query)
    return response.text if args.output == "html" else response.json()


def _local(args: argparse.Namespace) -> dict[str, Any]:
    from query_api.report_data import ReportParams, validation_report

    params = ReportParams(args.cluster, args.namespace, args.workspace, args.since, args.until, live=not args.no_live)
    return answer_locally(args, lambda flows, control, principal: validation_report(flows, control, principal, params))


# ---- table output -------------------------------------------------------------------------------------


def _endpoint(side: Mapping[str, Any]) -> str:
    if side.get("namespace"):
        return f"{side['namespace']}/{side.get('workload') or '*'}"
    reserved, ip = side.get("reserved") or "", side.get("ip") or ""
    return f"{reserved} ({ip})" if reserved and ip else reserved or ip or "unknown"


def _object(key: str) -> str:
    """"Kind/namespace/name" as kubectl names it: "Kind namespace/name" ("Kind name" when cluster-wide)."""
    kind, _, rest = key.partition("/")
    namespace, _, name = rest.partition("/")
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}" if name else key


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.0f}%"


def _conv(c: Mapping[str, Any]) -> str:
    return f"{_endpoint(c['source'])} -> {_endpoint(c['destination'])} {c['port']}/{c['protocol']}"


def render_table(report: Mapping[str, Any]) -> str:
    window = report.get("window") or {}
    out = [f"validation report {window.get('since')} .. {window.get('until')}"]
    fleet = report.get("drops") or {}
    total = sum(sum((b.get("verdicts") or {}).values()) for b in fleet.get("buckets") or [])
    reasons = ", ".join(f"{r['reason']} {r['flows']}" for r in fleet.get("by_reason") or []) or "none"
    out.append(f"all clusters: {total} flow(s); drops by reason: {reasons}")
    for c in report.get("clusters") or []:
        desired = c.get("desired_set") or {}
        kube = c.get("kube")
        kube_text = "not asked" if kube is None else "reachable" if kube.get("reachable") else f"unreachable: {kube.get('error')}"
        out += ["", f"cluster {c['cluster']}: {c.get('conversations', 0)} conversation(s), {c.get('flows', 0)} flow(s); "
                f"desired set revision {desired.get('revision', '-')} (blueprint {desired.get('blueprint') or '-'}); "
                f"kube API {kube_text}"]
        if not c.get("desired_set"):
            out.append("  no desired policy set is recorded for this cluster: nothing to validate against")
        elif desired.get("error"):
            out.append(f"  the desired policy set cannot be rendered: {desired['error']}")
        out.append("ZERO-TRUST COVERAGE")
        rows: list[list[Any]] = [["NAMESPACE", "WORKSPACE", "DENY-IN", "DENY-EG", "WORKLOADS-IN", "WORKLOADS-EG",
                                  "FLOWS-IN", "FLOWS-EG"]]
        for ns in c["namespaces"]:
            cov, dd = ns["coverage"], ns["default_deny"]
            rows.append([
                ns["namespace"], ns.get("workspace") or "-",
                "on" if dd["ingress"] else "off", "on" if dd["egress"] else "off",
                f"{_pct(cov['ingress']['workloads'])} ({cov['ingress']['workloads_selected']}/{cov['ingress']['workloads_total']})",
                f"{_pct(cov['egress']['workloads'])} ({cov['egress']['workloads_selected']}/{cov['egress']['workloads_total']})",
                _pct(cov["ingress"]["flows"]), _pct(cov["egress"]["flows"]),
            ])
        out += table_lines(rows, "  ") if len(rows) > 1 else ["  none"]
        out.append("NOT IN EFFECT (Hubble forwarded, the desired set denies)")
        for g in c["not_in_effect"]:
            out.append(f"  {g['namespace']}/{g['workload']} {g['direction']}: {g['flows']} flow(s) in "
                       f"{g['conversation_count']} conversation(s), denied by {g['policy']} v{g['version']} {g['rule']}"
                       f"; last {g.get('last_seen')}")
            for conv in g["conversations"][:3]:
                out.append(f"    {_conv(conv)} ({conv['flows']})")
            for cause in g["causes"]:
                out.append(f"    cause {cause['cause']}: {cause['detail']}")
                for pod in cause.get("pods") or []:
                    out.append(f"      pod {pod['namespace']}/{pod['name']}: {pod.get('reason', '')}")
                if cause.get("fix"):
                    out.append(f"      fix: {cause['fix']}")
        if not c["not_in_effect"]:
            out.append("  none")
        out.append("UNEXPECTED DROPS (Hubble dropped, the desired set allows)")
        rows = [["CONVERSATION", "FLOWS", "REASON", "CAUSE"]]
        rows += [[_conv(d), d["flows"], d.get("drop_reason") or "-", f"{d['cause']}: {d['causes'][0]['detail']}"]
                 for d in c["unexpected_drops"]]
        out += table_lines(rows, "  ") if len(rows) > 1 else ["  none"]
        drops = c.get("drops") or {}
        out.append("DROPS BY REASON")
        rows = [["REASON", "FLOWS"]] + [[r["reason"], r["flows"]] for r in drops.get("by_reason") or []]
        out += table_lines(rows, "  ") if len(rows) > 1 else ["  none"]
        out.append("DROPS BY POLICY")
        rows = [["POLICY", "FLOWS"]] + [[_object(f"{r['kind']}/{r.get('namespace', '')}/{r['name']}"), r["flows"]]
                                        for r in drops.get("by_policy") or []]
        out += table_lines(rows, "  ") if len(rows) > 1 else ["  none"]
        out.append("TOP DROPPED CONVERSATIONS")
        rows = [["CONVERSATION", "FLOWS", "REASON", "DESIRED"]]
        rows += [[_conv(t), t["flows"], t.get("drop_reason") or "-", t.get("desired")]
                 for t in drops.get("top_conversations") or []]
        out += table_lines(rows, "  ") if len(rows) > 1 else ["  none"]
        out.append("UNUSED RULES (decided no flow in the window)")
        rows = [["POLICY", "VERSION", "OBJECT", "RULE"]]
        rows += [[r["policy"], r["version"], _object(r["object"]), r["rule"]] for r in c["unused_rules"]]
        out += table_lines(rows, "  ") if len(rows) > 1 else ["  none"]
        used = [r for r in c.get("rules") or [] if r["flows"]]
        if used:
            out.append("RULES THAT DECIDED FLOWS")
            rows = [["POLICY", "VERSION", "OBJECT", "RULE", "FLOWS", "LAST MATCHED"]]
            rows += [[r["policy"], r["version"], _object(r["object"]), r["rule"], r["flows"], r["last_matched"]]
                     for r in used]
            out += table_lines(rows, "  ")
        out.append("STAGED POLICIES")
        for s in c["staged"]:
            out.append(f"  {s['policy']} v{s['version']}: would newly deny {s['newly_denied_flows']} flow(s), "
                       f"newly allow {s['newly_allowed_flows']} flow(s)")
            out += [f"    deny  {_conv(x)} ({x['flows']})" for x in s["newly_denied"][:5]]
            out += [f"    allow {_conv(x)} ({x['flows']})" for x in s["newly_allowed"][:5]]
        if not c["staged"]:
            out.append("  none")
        lost = (c.get("health") or {}).get("lost_ranges") or []
        out.append(f"HEALTH: {len(lost)} lost range(s)")
    return "\n".join(printable(line) for line in out) + "\n"

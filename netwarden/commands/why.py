"""`netwarden why`: why is (or would be) this traffic allowed or dropped, and what would allow it.

Sources, as `netwarden flows` and `report validate`: `--server URL --token T` (or NETWARDEN_SERVER /
NETWARDEN_TOKEN) asks a running API (GET /api/v1/why), which applies the token's scope; `--data-dir DIR` reads
the flow store and the control-plane store directly, acting as `--as-role/--scope` (default org-admin).
Output: `-o table` (default) or `-o json` (the why document, policy_engine.why).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from netwarden.cli import CommandError
from netwarden.commands.gitops import (
    answer_locally,
    api_request,
    api_server,
    printable,
    source_parser,
    table_lines,
    write_stdout,
)

FORMATS = ("table", "json")
# policy_engine.why.PEER_FORMS, kept here: the CLI imports every command module at start, so they stay light.
PEER_FORMS = "NAMESPACE/WORKLOAD, NAMESPACE/POD, an IP or an entity (kube-apiserver, host, world, ...)"


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    p = sub.add_parser(
        "why", parents=[source_parser()],
        help="why a pair's traffic is allowed or dropped: what Hubble saw, what the policies decide, the fix",
        description="For one pair (client -> server) and port: what Hubble saw recently (verdicts, drop reasons, "
        "attribution, counts), what the desired and staged policy sets decide per direction (policy and rule), "
        "and, when denied, the smallest netwarden Policy that would allow it (checked against the schemas and "
        "the policy set) with the roles that may apply it.",
    )
    p.add_argument("--cluster", metavar="C", required=True, help="the cluster the pair lives in")
    p.add_argument("--from", dest="source", metavar="NS/NAME|IP", required=True,
                   help=f"client: {PEER_FORMS}")
    p.add_argument("--to", dest="destination", metavar="NS/NAME|IP", required=True,
                   help=f"server: {PEER_FORMS}")
    p.add_argument("--port", type=int, metavar="P", help="server port; for ICMP the type (default echo request)")
    p.add_argument("--protocol", default="TCP", help="TCP (default), UDP, SCTP, ICMP or ICMPv6")
    p.add_argument("--since", metavar="T", help="RFC 3339 time or a duration ago (default 24h)")
    p.add_argument("--until", metavar="T", help="RFC 3339 time or a duration ago (default now)")
    p.add_argument("-o", "--output", choices=FORMATS, default="table")
    p.set_defaults(handler=cmd_why)


def cmd_why(args: argparse.Namespace) -> int:
    server = api_server(args)
    body = _from_api(server, args) if server else _local(args)
    write_stdout(json.dumps(body, indent=2) + "\n" if args.output == "json" else render_table(body))
    return 0


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params = {"cluster": args.cluster, "from": args.source, "to": args.destination, "port": args.port,
              "protocol": args.protocol, "since": args.since, "until": args.until}
    return {k: v for k, v in params.items() if v is not None}


def _from_api(server: str, args: argparse.Namespace) -> Any:
    return api_request(args, server, "GET", "/api/v1/why", params=_params(args)).json()


def _local(args: argparse.Namespace) -> dict[str, Any]:
    from policy_engine.why import WhyInputError, parse_query
    from query_api.why_routes import WhyParams, why_report

    try:  # a malformed question is refused before any store is opened
        parse_query(args.cluster, args.source, args.destination, args.port, args.protocol)
    except WhyInputError as exc:
        raise CommandError(f"--{exc.parameter}: {exc.reason}") from None
    params = WhyParams(args.cluster, args.source, args.destination, args.port, args.protocol, args.since, args.until)
    return answer_locally(args, lambda flows, control, principal: why_report(flows, control, principal, params))


# ---- table output -------------------------------------------------------------------------------------


def _side(side: Mapping[str, Any]) -> str:
    if side.get("namespace"):
        name = side.get("workload") or "*"
        kind = f" ({side['workload_kind']})" if side.get("workload_kind") else ""
        hidden = "" if side.get("in_scope", True) else " (outside your scope)"
        return f"{side['namespace']}/{name}{kind}{hidden}"
    return f"{side.get('ip') or ''} {side.get('reserved') or 'world'}".strip()


def _direction(d: Mapping[str, Any]) -> str:
    if not d.get("policy") and not d.get("rule"):
        return f"{d['verdict']} (no policy selects it)"
    origin = ""
    if d.get("netwarden_policy"):
        rule = f" rule {d['netwarden_rule']}" if d.get("netwarden_rule") else ""
        origin = f" (netwarden policy {d['netwarden_policy']} v{d['version']}{rule})"
    return f"{d['verdict']} by {d['policy'] or '-'} {d['rule']}{origin}"


def render_table(doc: Mapping[str, Any]) -> str:
    q, window = doc["query"], doc["window"]
    out = [f"why {q['from']} -> {q['to']} {q['protocol']}/{q['port']} in cluster {q['cluster']}",
           f"  from  {_side(doc['source'])}", f"  to    {_side(doc['destination'])}", "",
           f"HUBBLE SAW ({window['since']} .. {window['until']}): {doc['observed']['flows']} flow(s)"]
    rows: list[list[Any]] = [["VERDICT", "REASON", "AT", "FLOWS", "LAST SEEN", "HUBBLE POLICY", "DESIRED THEN"]]
    for r in doc["observed"]["by_verdict"]:
        hubble = ", ".join(r["hubble_denied_by"] + r["hubble_allowed_by"]) or "-"
        then = r["desired_then"]
        rows.append([r["verdict"], r["drop_reason"] or "-", r["observed_at"] or "-", r["flows"], r["last_seen"],
                     hubble, f"{then['verdict']} {then['drop_reason']}".strip()])
    out += table_lines(rows, "  ") if len(rows) > 1 else ["  nothing"]
    out += ["", "NETWARDEN DECIDES NOW"]
    for name in ("desired", "staged"):
        d = doc.get(name)
        if d is None:
            out.append(f"  {name}: no policy set")
            continue
        if name == "staged" and not d.get("staged_versions"):
            out.append(f"  staged: nothing staged on {q['cluster']} (same as desired)")
            continue
        extra = " (differs from desired)" if d.get("differs") else ""
        out.append(f"  {name} set revision {d['revision']}: {d['verdict']} {d['drop_reason']}{extra}".rstrip())
        out.append(f"    egress   {_direction(d['egress'])}")
        out.append(f"    ingress  {_direction(d['ingress'])}")
    fix = doc.get("fix")
    if fix is not None:
        verified = {True: "verified: with these documents the desired set allows it",
                    False: "partial: see below", None: "nothing to apply"}[fix["verified"]]
        out += ["", f"FIX ({verified})"]
        for d in fix["directions"]:
            out.append(f"  {d['direction']} at {d['at']}: {d.get('action', '')}")
            if d.get("writers"):
                out.append(f"    may write it: {', '.join(d['writers'])}")
        out += [f"  note: {n}" for n in fix["notes"]]
        if fix["yaml"]:
            out += ["  apply with `netwarden apply -f FILE` (or `netwarden policy stage -f FILE` to audit first):",
                    "---"]
            out += fix["yaml"].rstrip("\n").splitlines()
    if doc.get("notes"):
        out += ["", "NOTES"] + [f"  {n}" for n in doc["notes"]]
    return "\n".join(printable(line) for line in out) + "\n"

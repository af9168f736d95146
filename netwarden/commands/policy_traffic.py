"""`netwarden policy what-if` and `netwarden policy recommend`: policies checked against, and learned from, history.

Sources, like `netwarden flows`: `--server URL --token T` (or NETWARDEN_SERVER / NETWARDEN_TOKEN) asks a running
API, which applies the token's role and scope; otherwise the data directory (`--data-dir`, NETWARDEN_DATA_DIR:
the control-plane store and the chDB flow store; NETWARDEN_CLICKHOUSE for a ClickHouse server) as the principal of
`--as-role/--scope` (default org-admin).

`what-if` exits 3 when an observed conversation would become denied (for CI pipelines), 0 otherwise.
`refuse_if_denies_observed` is the same check for `netwarden apply/sync --check-history`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from netwarden.cli import CommandError

EXIT_DENIES_OBSERVED = 3
WHAT_IF_PATH = "/api/v1/policies/what-if"
RECOMMEND_PATH = "/api/v1/policies/recommendation"
SHOWN_IN_REFUSAL = 20


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    from netwarden.commands.gitops import source_parser

    common = argparse.ArgumentParser(add_help=False, parents=[source_parser()])
    common.add_argument("--since", metavar="T", default="7d", help="history from (RFC 3339 or a duration ago; default 7d)")
    common.add_argument("--until", metavar="T", help="history until (default now)")

    p = groups["policy"].add_parser(
        "what-if", parents=[common],
        help="which observed conversations the documents would newly deny or allow (exit 3 if any denied)",
        description=(
            "Applies the netwarden.io/v1 documents to a scratch copy of the control plane, resolves every "
            "affected cluster's desired policy set before and after, and replays the window's history (each "
            "distinct conversation once). Exit status 3 when something observed would become denied."
        ),
    )
    p.add_argument("-f", "--filename", required=True, metavar="DIR|FILE", help="YAML file or directory of documents")
    p.add_argument("--cluster", metavar="C", help="only this cluster")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(handler=cmd_what_if)

    p = groups["policy"].add_parser(
        "recommend", parents=[common],
        help="least-privilege Policy documents from the observed traffic of a namespace or workspace",
        description="Prints netwarden.io/v1 Policy and Assignment documents (YAML) ready for `apply` or `policy stage`.",
    )
    p.add_argument("--cluster", required=True, metavar="C")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--namespace", metavar="NS")
    which.add_argument("--workspace", metavar="W")
    p.add_argument("--engine", choices=("auto", "cilium", "kubernetes"), default="auto",
                   help="policy form: the cluster's enforcement engine (auto), or forced")
    p.set_defaults(handler=cmd_recommend)


def _progress(text: str) -> None:
    print(f"netwarden: {text}", file=sys.stderr, flush=True)


# -- sources ------------------------------------------------------------------------------------------------


def _server(args: argparse.Namespace) -> str | None:
    """The API to ask, if any. apply/sync --check-history follow NETWARDEN_SERVER too (a running `netwarden up`
    holds the flow store), but their --data-dir and --as-role are the control plane's."""
    from netwarden.commands.gitops import SERVER_ENV, api_server

    if hasattr(args, "check_history"):  # apply/sync --check-history
        return api_server(args, role_from_token=False) if hasattr(args, "server") else os.environ.get(SERVER_ENV)
    return api_server(args)


@contextmanager
def flow_client(args: argparse.Namespace) -> Iterator[Any | None]:
    """The flow store's client for local mode; None when the data directory has no history yet."""
    from netwarden.commands.gitops import local_flow_store

    store = local_flow_store(args, missing_ok=True)
    if store is None:
        yield None
        return
    try:
        yield store.client
    finally:
        store.close()


def _window(args: argparse.Namespace) -> Any:
    from query_api.policy_traffic_routes import TrafficParamError, parse_window

    try:
        return parse_window(args.since, args.until)
    except TrafficParamError as exc:
        raise CommandError(f"--{exc.parameter}: {exc.reason}") from None


def _api(args: argparse.Namespace, server: str, method: str, path: str, **kwargs: Any) -> Any:
    from netwarden.commands.gitops import api_request

    return api_request(args, server, method, path, **kwargs).json()


# -- documents ----------------------------------------------------------------------------------------------


def wire_documents(path: str) -> list[dict[str, Any]]:
    """The documents of a file or directory as sent to the API: as written, but `fromFile` rules inlined (the
    server never reads files). Bad documents are refused here with the same lines `apply` prints."""
    from policy_engine.gitops import GitOpsErrors, load_documents
    from policy_engine.model import PolicySpec

    try:
        parsed = {(d.kind, d.name): d for d in load_documents(path)}
    except GitOpsErrors as exc:
        raise CommandError("\nnetwarden: ".join(str(e) for e in exc.errors)) from None
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml")) if root.is_dir() else [root]
    out: list[dict[str, Any]] = []
    for file in files:
        for raw in yaml.safe_load_all(file.read_text(encoding="utf-8")):
            if not isinstance(raw, Mapping) or raw.get("apiVersion") != "netwarden.io/v1":
                continue
            key = (str(raw.get("kind")), str((raw.get("metadata") or {}).get("name")))
            doc = parsed.get(key)
            if doc is None:
                continue  # a manifest some Policy reads with fromFile
            raw = dict(raw)
            if isinstance(doc.model, PolicySpec):
                raw["spec"] = {**raw["spec"], "rules": [{"name": r.name, r.kind: r.spec} for r in doc.model.rules]}
            out.append(raw)
    return out


# -- what-if ------------------------------------------------------------------------------------------------


def run_what_if(
    args: argparse.Namespace,
    documents: Sequence[Any] | None,
    *,
    clusters: Sequence[str] | None = None,
    baseline: str = "desired",
) -> dict[str, Any]:
    """The what-if report as JSON data, from the API (--server) or the data directory. `documents`: parsed
    gitops Documents or raw mappings (None: the current desired set against what Hubble observed)."""
    from policy_engine.gitops import Document

    window = _window(args)
    server = _server(args)
    if server:
        raw = _wire(args, documents)
        params: dict[str, Any] = {"since": args.since, "baseline": "observed" if documents is None else baseline}
        if args.until:
            params["until"] = args.until
        if clusters:
            params["cluster"] = list(clusters)
        return dict(_api(args, server, "POST", WHAT_IF_PATH, params=params, json=raw))
    from netwarden.commands.gitops import control_plane
    from policy_engine.whatif import parse_documents
    from query_api.policy_traffic_routes import TrafficParamError, what_if

    docs: list[Document] | None = None
    if documents is not None:
        if all(isinstance(d, Document) for d in documents):
            docs = list(documents)
        else:
            base = Path(args.filename) if getattr(args, "filename", None) else Path(".")
            with _document_errors():
                docs = parse_documents(list(documents), str(base), base if base.is_dir() else base.parent)
    with flow_client(args) as client, control_plane(args) as cp:
        if client is None:
            _progress("no flow history in the data directory: nothing observed")
            return {"clusters": []}
        try:
            report = what_if(client, cp.store, cp.principal, docs, window, clusters=clusters, baseline=baseline)
        except TrafficParamError as exc:
            raise CommandError(f"--{exc.parameter}: {exc.reason}") from None
    return report.to_dict()


def _wire(args: argparse.Namespace, documents: Sequence[Any] | None) -> list[Any]:
    """Documents as the API takes them: mappings as they are; parsed Documents re-read from their files."""
    from policy_engine.gitops import Document

    if not documents:
        return []
    if any(isinstance(d, Document) for d in documents):
        if not getattr(args, "filename", None):
            raise CommandError("--server: the documents' files are unknown (no -f)")
        return wire_documents(args.filename)
    return [dict(d) for d in documents]


@contextmanager
def _document_errors() -> Iterator[None]:
    from policy_engine.gitops import GitOpsErrors

    try:
        yield
    except GitOpsErrors as exc:
        raise CommandError("\nnetwarden: ".join(str(e) for e in exc.errors)) from None


def cmd_what_if(args: argparse.Namespace) -> int:
    _window(args)  # a bad --since/--until is refused before anything is read
    clusters = [args.cluster] if args.cluster else None
    if _server(args):
        documents: Sequence[Any] = wire_documents(args.filename)
    else:
        from policy_engine.gitops import load_documents

        with _document_errors():
            documents = load_documents(args.filename)
    _progress(f"what-if of {len(documents)} document(s) over {args.since} of history")
    data = run_what_if(args, documents, clusters=clusters)
    if args.output == "json":
        import json

        print(json.dumps(data, indent=2))
    else:
        _print_table(data)
    denied = sum(len(c["newly_denied"]) for c in data["clusters"])
    allowed = sum(len(c["newly_allowed"]) for c in data["clusters"])
    clusters_text = ", ".join(c["cluster"] for c in data["clusters"]) or "none"
    _progress(f"affected cluster(s): {clusters_text}; {denied} newly denied, {allowed} newly allowed conversation group(s)")
    return EXIT_DENIES_OBSERVED if denied else 0


def _describe(place: Mapping[str, str]) -> str:
    ns, workload = place.get("namespace", ""), place.get("workload", "")
    if ns:
        return f"{ns}/{workload}" if workload else ns
    return workload or "unknown"


def _group_rows(data: Mapping[str, Any], changes: Sequence[str] = ("newly_denied", "newly_allowed")) -> list[list[str]]:
    rows = [["CLUSTER", "CHANGE", "SOURCE", "DESTINATION", "PORT", "FLOWS", "FIRST-SEEN", "LAST-SEEN"]]
    for c in data["clusters"]:
        for change in changes:
            for g in c[change]:
                rows.append([
                    c["cluster"], "DENIED" if change == "newly_denied" else "ALLOWED", _describe(g["source"]),
                    _describe(g["destination"]), f"{g['port']}/{g['protocol']}", str(g["flows"]),
                    g["first_seen"], g["last_seen"],
                ])
    return rows


def _print_table(data: Mapping[str, Any]) -> None:
    from netwarden.commands.gitops import _print_table as print_rows

    rows = _group_rows(data)
    if len(rows) == 1:
        print("no observed conversation changes verdict")
        return
    print_rows(rows)


def refuse_if_denies_observed(
    args: argparse.Namespace,
    documents: Sequence[Mapping[str, Any]] | Sequence[Any] | None,
    clusters: Sequence[str] | None = None,
) -> None:
    """`apply/sync --check-history DURATION`: raise CommandError listing the observed conversations the change
    would deny, unless `args.force` (then only warn on stderr).

    `documents`: what `apply` writes (raw mappings as loaded from YAML, or gitops Documents); their what-if
    against the current desired sets over the last `args.check_history`. None (`sync`): the store keeps no
    record of what each cluster was last synced to, so the current desired set is compared with what Hubble
    observed (FORWARDED traffic the set denies would be dropped once synced)."""
    since = getattr(args, "check_history", None) or "7d"
    window_args = argparse.Namespace(**{**vars(args), "since": since, "until": None})
    data = run_what_if(window_args, documents, clusters=clusters, baseline="desired" if documents is not None else "observed")
    rows = _group_rows(data, ("newly_denied",))[1:]
    if not rows:
        return
    lines = [f"{r[0]}: {r[2]} -> {r[3]} {r[4]} ({r[5]} flow(s), last {r[7]})" for r in rows[:SHOWN_IN_REFUSAL]]
    if len(rows) > SHOWN_IN_REFUSAL:
        lines.append(f"... and {len(rows) - SHOWN_IN_REFUSAL} more (netwarden policy what-if lists them all)")
    head = f"the change would deny {len(rows)} conversation group(s) observed in the last {since}:"
    if getattr(args, "force", False):
        print("netwarden: warning: " + head + "".join(f"\n  {line}" for line in lines) + "\n(--force: going ahead)",
              file=sys.stderr)
        return
    raise CommandError(head + "".join(f"\n  {line}" for line in lines) + "\nuse --force to go ahead anyway")


# -- recommend ----------------------------------------------------------------------------------------------


def cmd_recommend(args: argparse.Namespace) -> int:
    _window(args)
    what = f"{args.cluster}/{args.namespace}" if args.namespace else f"workspace {args.workspace} on {args.cluster}"
    _progress(f"recommending from {args.since} of observed traffic of {what}")
    server = _server(args)
    if server:
        params = {"cluster": args.cluster, "since": args.since, "engine": args.engine}
        params.update({k: getattr(args, k) for k in ("namespace", "workspace", "until") if getattr(args, k)})
        data = _api(args, server, "GET", RECOMMEND_PATH, params=params)
        documents, notes, conversations = data["documents"], data["notes"], data["conversations"]
    else:
        documents, notes, conversations = _recommend_locally(args)
    for note in notes:
        _progress(f"note: {note}")
    _progress(f"{len(documents)} document(s) from {conversations} observed conversation(s)")
    if documents:
        print(yaml.safe_dump_all(documents, sort_keys=False), end="")
    return 0


def _recommend_locally(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str], int]:
    from netwarden.commands.gitops import control_plane
    from query_api.policy_traffic_routes import TrafficParamError, recommendation

    window = _window(args)
    with flow_client(args) as client, control_plane(args) as cp:
        if client is None:
            raise CommandError("no flow history in the data directory: nothing to recommend from")
        try:
            result = recommendation(
                client, cp.store, cp.principal, window, cluster=args.cluster, namespace=args.namespace,
                workspace=args.workspace, engine=args.engine,
            )
        except TrafficParamError as exc:
            raise CommandError(f"--{exc.parameter}: {exc.reason}") from None
    return list(result.documents), list(result.notes), result.conversations

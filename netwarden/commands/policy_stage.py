"""`netwarden policy stage -f FILE`, `policy promote NAME`, `policy unstage NAME`: staged policies.

A staged policy version is evaluated on every flow (the `staged_*` verdict columns) and in reports, and never
rendered to clusters; promoting makes it the enforced version (as a new version), unstaging stops evaluating it.
Role rules are those of writing the policy. Locally (`--data-dir`, `--as-role/--scope`, like `apply`) or against
a running API with `--server URL --token T` (NETWARDEN_SERVER / NETWARDEN_TOKEN), which takes the role from the
token.
"""

from __future__ import annotations

import argparse

from netwarden.api_client import ApiClient, wire_documents
from netwarden.cli import CommandError
from netwarden.commands.gitops import control_plane, source_parser
from policy_engine.gitops import Change, GitOpsErrors, load_documents, stage_documents


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    common = source_parser()
    policy = groups["policy"]

    p = policy.add_parser(
        "stage", parents=[common], help="stage Policy documents: evaluated on flows and in reports, never synced",
        description="Stages every Policy document of FILE (spec.mode staged or not given). Other documents (e.g. "
        "the Assignment that places a new policy) are applied too, unless they would change what a cluster "
        "enforces.",
    )
    p.add_argument("-f", "--filename", required=True, metavar="DIR|FILE", help="YAML file or directory of documents")
    p.set_defaults(handler=cmd_stage)

    p = policy.add_parser("promote", parents=[common], help="make a policy's staged version the enforced one")
    p.add_argument("name")
    p.set_defaults(handler=cmd_promote)

    p = policy.add_parser("unstage", parents=[common], help="stop evaluating a policy's staged version")
    p.add_argument("name")
    p.set_defaults(handler=cmd_unstage)


def _print_changes(changes: list[Change], documents: int) -> None:
    for change in changes:
        print(change)
    staged = sorted({c.name for c in changes if c.kind == "Policy" and c.action == "stage"})
    print(f"{documents} document(s), {sum(1 for c in changes if c.action != 'unchanged')} change(s)")
    if staged:
        print(f"staged: evaluated on every flow (staged_* verdicts) and in reports; never synced. "
              f"`netwarden policy promote {staged[0]}` enforces it")


def cmd_stage(args: argparse.Namespace) -> int:
    try:
        docs = load_documents(args.filename)
    except GitOpsErrors as exc:
        raise CommandError("\nnetwarden: ".join(str(e) for e in exc.errors)) from None
    if (client := ApiClient.from_args(args)) is not None:
        body, client.sources = wire_documents(docs)
        result = client.call("POST", "/api/v1/policies/stage", json=body)
        changes = [Change(c["kind"], c["name"], c["action"], c["detail"]) for c in result["changes"]]
    else:
        with control_plane(args) as cp:
            changes = stage_documents(cp, docs)
    _print_changes(changes, len(docs))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    if (client := ApiClient.from_args(args)) is not None:
        result = client.call("POST", f"/api/v1/policies/{args.name}/promote")
        version, staged = result["version"], result["promoted_from"]
    else:
        with control_plane(args) as cp:
            with cp.store.transaction():
                staged_pv = cp.store.get_staged_policy(args.name)
                version = cp.promote_policy(args.name).version
            staged = staged_pv.version if staged_pv else 0
    print(f"policy {args.name}: staged version {staged} promoted: enforced as version {version} "
          "(rendered to its clusters at the next sync)")
    return 0


def cmd_unstage(args: argparse.Namespace) -> int:
    if (client := ApiClient.from_args(args)) is not None:
        version = client.call("DELETE", f"/api/v1/policies/{args.name}/staged")["unstaged_version"]
    else:
        with control_plane(args) as cp:
            with cp.store.transaction():
                version = cp.unstage_policy(args.name).version
    print(f"policy {args.name}: staged version {version} unstaged (no longer evaluated)")
    return 0

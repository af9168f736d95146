"""The `netwarden` command line: one parser, sub-commands registered by modules in netwarden/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

# Each module defines `register(subparsers, groups)`; `groups` holds shared sub-command groups
# (e.g. `policy`) so several modules can add verbs to one group without editing each other.
COMMAND_MODULES = [
    "netwarden.commands.pipeline",
    "netwarden.commands.up",
    "netwarden.commands.bench_ingest",
    "netwarden.commands.bench_live",
    "netwarden.commands.bench_faults",
    "netwarden.commands.bench_query",
    "netwarden.commands.policy_check",
    "netwarden.commands.flows",
    "netwarden.commands.gitops",
    "netwarden.commands.admin",
    "netwarden.commands.hubble",
    "netwarden.commands.policy_stage",
    "netwarden.commands.report",
    "netwarden.commands.policy_traffic",
    "netwarden.commands.bench_traffic",
    "netwarden.commands.why",
    "netwarden.commands.grafana",
    "netwarden.commands.serve",
]


class CommandError(Exception):
    """A user-facing failure: printed as one line on stderr, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netwarden",
        description="Zero-trust network policy and L4 flow visibility for Kubernetes fleets.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    policy = sub.add_parser("policy", help="policy checks, history and rollback")
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    groups = {
        "policy": policy.add_subparsers(dest="policy_command", metavar="VERB", required=True),
        "bench": bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True),
    }
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return int(handler(args) or 0)
    except CommandError as exc:
        print(f"netwarden: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`netwarden grafana dashboards | access`: the dashboards' JSON, and a workspace's read-only ClickHouse user.

    netwarden grafana dashboards [--out deploy/grafana/dashboards]
    netwarden grafana access --workspace W [--user NAME] [--password P] [--database DB]
                             [--clickhouse DSN | --print-sql | --users-xml] [--data-dir DIR]

`access` reads tenancy from the control-plane store (--data-dir) and, on the ClickHouse server of
`--clickhouse` (default NETWARDEN_CLICKHOUSE), creates (or replaces) the user, its SELECT grants and its row
policies (netwarden/grafana/access.py). Grafana cannot reach the embedded chDB, so without a server it only
prints: `--print-sql` the statements, `--users-xml` a users.d file for servers configured by XML.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from typing import Any

from netwarden.cli import CommandError

CLICKHOUSE_ENV = "NETWARDEN_CLICKHOUSE"


def register(sub: Any, groups: dict[str, Any]) -> None:
    grafana = sub.add_parser("grafana", help="Grafana dashboards and a workspace's read-only ClickHouse user")
    verbs = grafana.add_subparsers(dest="grafana_command", metavar="VERB", required=True)

    p = verbs.add_parser("dashboards", help="write the dashboards' JSON (deploy/grafana/dashboards)")
    p.add_argument("--out", default="deploy/grafana/dashboards", metavar="DIR")
    p.set_defaults(handler=cmd_dashboards)

    p = verbs.add_parser("access", help="a read-only ClickHouse user that sees only one workspace's flows",
                         description="Creates (or replaces) a ClickHouse user for one workspace's Grafana: "
                         "readonly, SELECT on the flow tables, and row policies from tenancy (rows whose source "
                         "or destination lies in the workspace, the API's visibility rule). Prints how to point "
                         "Grafana's ClickHouse datasource at it.")
    p.add_argument("--workspace", required=True, metavar="W")
    p.add_argument("--user", metavar="NAME", help="ClickHouse user name (default grafana_<workspace>)")
    p.add_argument("--password", help="its password (default: generated, printed once)")
    p.add_argument("--database", help="database of the flow tables (default: the server's current one, or default)")
    p.add_argument("--data-dir", help="control-plane data directory (env NETWARDEN_DATA_DIR, default ./netwarden-data)")
    p.add_argument("--clickhouse", default=os.environ.get(CLICKHOUSE_ENV),
                   help=f"ClickHouse server DSN, e.g. https://admin:pw@host:8443/default (env {CLICKHOUSE_ENV})")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--print-sql", action="store_true", help="print the statements instead of running them")
    out.add_argument("--users-xml", action="store_true", help="print the user as a users.d XML file instead")
    p.set_defaults(handler=cmd_access)


def cmd_dashboards(args: argparse.Namespace) -> int:
    from netwarden.grafana.dashboards import write_dashboards

    for path in write_dashboards(args.out):
        print(path)
    return 0


def cmd_access(args: argparse.Namespace) -> int:
    from netwarden.grafana.access import AccessError, grafana_user
    from policy_engine.store import StoreError, resolve_data_dir
    from policy_engine.tenancy import Tenancy

    printing = args.print_sql or args.users_xml
    if not printing and not args.clickhouse:
        raise CommandError(
            "grafana access: needs a ClickHouse server (--clickhouse DSN or NETWARDEN_CLICKHOUSE); Grafana cannot "
            "reach the embedded chDB. --print-sql or --users-xml prints the user for a server instead")
    try:
        tenancy = Tenancy.open(resolve_data_dir(args.data_dir))
    except StoreError as exc:
        raise CommandError(f"grafana access: {exc}") from exc
    try:
        ownership = tenancy.ownership()
    finally:
        tenancy.close()

    client = None if printing else _connect(args.clickhouse)
    database = args.database or (client.query("SELECT currentDatabase()").result_rows[0][0] if client else "default")
    try:
        user = grafana_user(ownership, args.workspace, database, args.user)
    except AccessError as exc:
        raise CommandError(str(exc)) from exc
    password = args.password or secrets.token_urlsafe(18)
    if args.users_xml:
        sys.stdout.write(user.users_xml(password))
        return 0
    statements = user.statements(password)
    if args.print_sql:
        sys.stdout.write("".join(s + ";\n" for s in statements))
    else:
        assert client is not None
        for statement in statements:
            try:
                client.command(statement)
            except Exception as exc:
                what = re.split(r" IDENTIFIED | AS PERMISSIVE | TO ", statement)[0]  # no hash, no condition
                raise CommandError(f"grafana access: the server refused {what}: "
                                   f"{' '.join(str(exc).split())[:400]}") from exc
        print(f"created ClickHouse user {user.name}: readonly, row policies on {len(user.conditions)} tables "
              f"(flows touching workspace {user.workspace})")
    print(_instructions(user.name, password, database, generated=not args.password),
          file=sys.stderr if args.print_sql else sys.stdout)
    return 0


def _connect(dsn: str) -> Any:
    import clickhouse_connect

    try:
        return clickhouse_connect.get_client(dsn=dsn)
    except Exception as exc:
        raise CommandError(f"grafana access: cannot connect to ClickHouse at --clickhouse: {exc}") from exc


def _instructions(user: str, password: str, database: str, generated: bool) -> str:
    from netwarden.grafana.dashboards import CLICKHOUSE_UID

    shown = f"{password}   (generated; shown once)" if generated else "(as given)"
    return f"""
Grafana: a datasource of type grafana-clickhouse-datasource with
  username {user}
  password {shown}
  default database {database}
Give each workspace its own Grafana organization (or datasource permissions) with such a datasource under uid
{CLICKHOUSE_UID}, so the netwarden dashboards (deploy/grafana/dashboards) work unchanged, e.g. provision
deploy/grafana/provisioning/datasources/netwarden.yaml with
  NETWARDEN_CLICKHOUSE_USER={user} NETWARDEN_CLICKHOUSE_PASSWORD=... NETWARDEN_CLICKHOUSE_DATABASE={database}
Row policies filter rows, they do not redact: a visible flow's peer outside the workspace keeps its pod,
workload and IP here (the API shows only its namespace)."""

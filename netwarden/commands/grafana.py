"""`netwarden grafana dashboards | access`: the dashboards' JSON, and a workspace's read-only ClickHouse user.

    netwarden grafana dashboards [--out deploy/grafana/dashboards]
    netwarden grafana access --workspace W [--user NAME] [--password P] [--database DB] [--views-database DB]
                             [--clickhouse DSN | --print-sql] [--data-dir DIR]

`access` reads tenancy from the control-plane store (--data-dir) and, on the ClickHouse server of
`--clickhouse` (default NETWARDEN_CLICKHOUSE), creates (or replaces) the user, the workspace's redacting
views, the user's grant on them and its row policies (netwarden/grafana/access.py). Grafana cannot reach the
embedded chDB, so without a server it only prints the statements (`--print-sql`).
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
                         "readonly, reading views of the flow tables that redact the peer outside the workspace, "
                         "under row policies from tenancy (rows whose source or destination lies in the "
                         "workspace): the API's visibility rule. Prints how to point Grafana's ClickHouse "
                         "datasource at it.")
    p.add_argument("--workspace", required=True, metavar="W")
    p.add_argument("--user", metavar="NAME", help="ClickHouse user name (default grafana_<workspace>)")
    p.add_argument("--password", help="its password (default: generated, printed once)")
    p.add_argument("--database", help="database of the flow tables (default: the server's current one, or default)")
    p.add_argument("--data-dir", help="control-plane data directory (env NETWARDEN_DATA_DIR, default ./netwarden-data)")
    p.add_argument("--clickhouse", default=os.environ.get(CLICKHOUSE_ENV),
                   help=f"ClickHouse server DSN, e.g. https://admin:pw@host:8443/default (env {CLICKHOUSE_ENV})")
    p.add_argument("--views-database", metavar="DB",
                   help="database of the workspace's redacting views (default netwarden_grafana_<workspace>)")
    p.add_argument("--print-sql", action="store_true", help="print the statements instead of running them")
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

    printing = args.print_sql
    if not printing and not args.clickhouse:
        raise CommandError(
            "grafana access: needs a ClickHouse server (--clickhouse DSN or NETWARDEN_CLICKHOUSE); Grafana cannot "
            "reach the embedded chDB. --print-sql prints the statements for a server instead")
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
        user = grafana_user(ownership, args.workspace, database, args.user, args.views_database)
    except AccessError as exc:
        raise CommandError(str(exc)) from exc
    password = args.password or secrets.token_urlsafe(18)
    statements = user.statements(password)
    if args.print_sql:
        sys.stdout.write("".join(s + ";\n" for s in statements))
    else:
        assert client is not None
        for statement in statements:
            try:
                client.command(statement)
            except Exception as exc:
                what = re.split(r" IDENTIFIED | DEFINER = | AS PERMISSIVE | TO ", statement)[0]  # no hash, no SQL body
                raise CommandError(f"grafana access: the server refused {what}: "
                                   f"{' '.join(str(exc).split())[:400]}") from exc
        print(f"created ClickHouse user {user.name}: readonly, reading {len(user.conditions)} views in "
              f"{user.views_database} (peers outside workspace {user.workspace} redacted) under row policies "
              "(only flows touching the workspace)")
    print(_instructions(user.name, password, user.views_database, generated=not args.password),
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
The user reads views of the flow tables in {database} (its default database, so the dashboards' SQL runs
unchanged): rows touching the workspace, the peer outside it shown as the API shows it."""

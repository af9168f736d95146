"""A read-only ClickHouse user for one workspace's Grafana: the API's visibility rule, enforced by ClickHouse.

Both halves of the rule (query_api.scope.ScopeFilter, for a workspace-read-only principal of the workspace):
- Rows: a row policy per table, TO the user. A flow, rollup or conversation row is readable when its source
  or destination place (cluster, namespace) lies in the workspace; a catalog row when its place does.
- Redaction: the user reads views, not the tables. A per-workspace database holds one view per flow table,
  same name and columns (so the dashboards' SQL runs unchanged against the user's default database), in
  which the endpoint outside the workspace is redacted as the API redacts it: flows by ScopeFilter.column_sql,
  rollups show its reserved label instead of its workload (query_api.summary), conversations keep its place
  and reserved identity only (query_api.conversations.redact_side). The views run with their definer's rights
  (SQL SECURITY DEFINER, ClickHouse 24.4+); the user is granted SELECT on the views' database only, and the
  row policies sit on the views.

Parameters of the rule are inlined as literals (neither a view nor a row policy takes query parameters).
Pure: statements, and the user as users.xml.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from policy_engine.roles import Ownership, Principal
from query_api.scope import MAX_RESERVED_IDENTITY, RESERVED_LABEL_PREFIX, TABLE_ALIAS, ScopeFilter
from schemas.clickhouse import (
    CATALOG_TABLE,
    CONVERSATIONS_1H,
    FLOWS_TABLE,
    HOURLY_SUFFIX,
    ROLLUP_TABLES,
    ROLLUPS,
    side_cluster,
)
from schemas.flow_record import RECORD_COLUMNS

# Settings the grafana-clickhouse-datasource client changes on every query (its docs: "Required SETTINGS").
CHANGEABLE_IN_READONLY = ("max_execution_time",)


class AccessError(ValueError):
    """The workspace cannot be given a Grafana user (unknown, or it owns no namespace)."""


def workspace_scope(ownership: Ownership, workspace: str) -> ScopeFilter:
    """What a read-only member of `workspace` sees, by the API's own rule."""
    if workspace not in ownership.workspace_namespaces and workspace not in ownership.workspace_project:
        known = ", ".join(sorted(set(ownership.workspace_project) | set(ownership.workspace_namespaces))) or "none"
        raise AccessError(f"--workspace: no workspace {workspace!r} (known: {known})")
    scope = ScopeFilter.for_principal(Principal.with_role("workspace-read-only", workspace, "grafana"), ownership)
    if scope.empty:
        raise AccessError(f"--workspace: workspace {workspace!r} owns no namespace; its user would see nothing")
    return scope


def literal(value: Any) -> str:
    """A ClickHouse literal for a bound parameter's value (strings escaped for ClickHouse's quoting)."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ")"
    if isinstance(value, bool | int):
        return str(int(value))
    raise TypeError(f"no literal for {value!r}")


_PARAM = re.compile(r"\{(\w+):[^{}]*(?:\([^{}]*\))?[^{}]*\}")


def inline(sql: str, params: Mapping[str, Any]) -> str:
    """`sql` with each `{name:Type}` placeholder replaced by the literal of params[name]."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in params:
            raise KeyError(f"no value for parameter {m.group(1)!r} in {sql!r}")
        return literal(params[m.group(1)])

    return _PARAM.sub(sub, sql)


def row_conditions(scope: ScopeFilter) -> dict[str, str]:
    """table -> the condition a row of it must meet to be readable under `scope`."""
    params = scope.params()

    def touching(src_cluster: str, dst_cluster: str) -> str:
        return inline(f"({scope.place_in_scope_sql(src_cluster, 'src_namespace')} OR "
                      f"{scope.place_in_scope_sql(dst_cluster, 'dst_namespace')})", params)

    conditions = {FLOWS_TABLE: touching(side_cluster("src"), side_cluster("dst"))}
    # Rollups and conversations store each side's cluster (the client/server sides for conversations).
    for table in (*ROLLUP_TABLES, CONVERSATIONS_1H):
        conditions[table] = touching("src_cluster", "dst_cluster")
    conditions[CATALOG_TABLE] = inline(scope.place_in_scope_sql("namespace_cluster", "namespace"), params)
    return conditions


def redactions(scope: ScopeFilter) -> dict[str, dict[str, str]]:
    """table -> {column: SQL showing it as `scope` may see it}, for the columns redaction changes."""
    params = scope.params()
    inside = {side: inline(scope.place_in_scope_sql(f"{side}_cluster", f"{side}_namespace"), params)
              for side in ("src", "dst")}
    out: dict[str, dict[str, str]] = {}
    flows = {}
    for column in RECORD_COLUMNS:  # the API's own column rule
        expr = scope.column_sql(column.name)
        if expr != f"{TABLE_ALIAS}.`{column.name}`":
            flows[column.name] = inline(expr, params)
    out[FLOWS_TABLE] = flows
    for table in ROLLUP_TABLES:  # an outside endpoint shows its reserved label as workload (query_api.summary)
        dims = {name for name, _, _ in ROLLUPS[table.removesuffix(HOURLY_SUFFIX)].dims}
        out[table] = {f"{side}_workload": f"if({inside[side]}, {side}_workload, {side}_reserved)"
                      for side in ("src", "dst") if f"{side}_workload" in dims}
    conversation: dict[str, str] = {}
    for side in ("src", "dst"):  # as query_api.conversations.redact_side: place and reserved identity only
        keep = inside[side]
        conversation |= {
            f"{side}_workload": f"if({keep}, {side}_workload, '')",
            f"{side}_workload_kind": f"if({keep}, {side}_workload_kind, '')",
            f"{side}_labels": f"if({keep}, {side}_labels, "
                              f"arrayFilter(l -> startsWith(l, '{RESERVED_LABEL_PREFIX}'), {side}_labels))",
            f"{side}_identity": f"if({keep} OR {side}_identity <= {MAX_RESERVED_IDENTITY}, {side}_identity, toUInt32(0))",
            f"{side}_ip": f"if({keep}, {side}_ip, toIPv6('::'))",
        }
    out[CONVERSATIONS_1H] = conversation
    out[CATALOG_TABLE] = {}  # its rows are the workspace's own places
    return out


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def default_user_name(workspace: str) -> str:
    return "grafana_" + re.sub(r"[^A-Za-z0-9_]", "_", workspace)


@dataclass(frozen=True)
class GrafanaUser:
    """A workspace's read-only ClickHouse user and the redacting views it reads."""

    name: str
    workspace: str
    database: str  # where the flow tables are
    views_database: str  # the workspace's views, the user's default database
    conditions: Mapping[str, str]  # table -> row condition
    redactions: Mapping[str, Mapping[str, str]]  # table -> {column: redacted SQL}

    @property
    def policy_name(self) -> str:
        return "netwarden_" + self.name

    def view_statements(self, definer: str = "CURRENT_USER") -> list[str]:
        """The views, owned by `definer` (the admin running them by default), which must read the tables."""
        db, views = _ident(self.database), _ident(self.views_database)
        owner = definer if definer == "CURRENT_USER" else _ident(definer)
        out = [f"CREATE DATABASE IF NOT EXISTS {views}"]
        for table in self.conditions:
            changed = self.redactions.get(table, {})
            replace = f" REPLACE ({', '.join(f'{e} AS {_ident(c)}' for c, e in changed.items())})" if changed else ""
            out.append(f"CREATE OR REPLACE VIEW {views}.{_ident(table)} DEFINER = {owner} SQL SECURITY DEFINER "
                       f"AS SELECT *{replace} FROM {db}.{_ident(table)} AS {TABLE_ALIAS}")
        return out

    def statements(self, password: str, definer: str = "CURRENT_USER") -> list[str]:
        """Idempotent: re-running replaces the user (new password), its views, grant and row policies.
        The user comes first: a server that refuses it (no access management) has been changed in nothing."""
        user, views = _ident(self.name), _ident(self.views_database)
        digest = hashlib.sha256(password.encode()).hexdigest()  # the server's query log never sees the password
        constraints = "".join(f", {s} CHANGEABLE_IN_READONLY" for s in CHANGEABLE_IN_READONLY)
        out = [f"CREATE USER OR REPLACE {user} IDENTIFIED WITH sha256_hash BY '{digest}' "
               f"SETTINGS readonly = 1{constraints}"]
        out += self.view_statements(definer)
        out += [f"ALTER USER {user} DEFAULT DATABASE {views}", f"GRANT SELECT ON {views}.* TO {user}"]
        for table, condition in self.conditions.items():
            out.append(f"CREATE ROW POLICY OR REPLACE {_ident(self.policy_name)} ON {views}.{_ident(table)} "
                       f"AS PERMISSIVE FOR SELECT USING {condition} TO {user}")
        return out

    def users_xml(self, password: str, changeable_in_readonly: Sequence[str] = CHANGEABLE_IN_READONLY) -> str:
        """The user for a server configured by XML (users.d/): profile, grant and row filters (the views still
        come from view_statements()). ClickHouse accepts `changeable_in_readonly` constraints only with the
        server's access_control_improvements.settings_constraints_replace_previous on (the SQL form likewise)."""
        digest = hashlib.sha256(password.encode()).hexdigest()
        tables = "\n".join(
            f"          <{table}><filter>{escape(condition)}</filter></{table}>"
            for table, condition in self.conditions.items())
        constraints = "\n".join(f"        <{s}><changeable_in_readonly/></{s}>" for s in changeable_in_readonly)
        return f"""<clickhouse>
  <profiles>
    <{self.name}>
      <readonly>1</readonly>
      <constraints>
{constraints}
      </constraints>
    </{self.name}>
  </profiles>
  <users>
    <{self.name}>
      <password_sha256_hex>{digest}</password_sha256_hex>
      <profile>{self.name}</profile>
      <quota>default</quota>
      <networks><ip>::/0</ip></networks>
      <default_database>{self.views_database}</default_database>
      <grants>
        <query>GRANT SELECT ON {_ident(self.views_database)}.*</query>
      </grants>
      <databases>
        <{self.views_database}>
{tables}
        </{self.views_database}>
      </databases>
    </{self.name}>
  </users>
</clickhouse>
"""


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def grafana_user(ownership: Ownership, workspace: str, database: str = "default", name: str | None = None,
                 views_database: str | None = None) -> GrafanaUser:
    user = name or default_user_name(workspace)
    views = views_database or "netwarden_" + default_user_name(workspace)
    for flag, value in (("--user", user), ("--database", database), ("--views-database", views)):
        if not _PLAIN.fullmatch(value):
            raise AccessError(f"{flag}: {value!r} is not a plain identifier (letters, digits, _)")
    if views == database:
        raise AccessError(f"--views-database: {views!r} is the flow tables' database; the views need their own")
    scope = workspace_scope(ownership, workspace)
    return GrafanaUser(user, workspace, database, views, row_conditions(scope), redactions(scope))

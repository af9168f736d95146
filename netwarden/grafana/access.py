"""A read-only ClickHouse user for one workspace's Grafana: what it may read, as row policies.

The rows come from the one visibility rule (query_api.scope.ScopeFilter, for a workspace-read-only principal
of the workspace): a flow, rollup or conversation row is readable when its source or destination place
(cluster, namespace) lies in the workspace; a catalog row when its place does. Parameters of the rule are
inlined as literals (a row policy has no query parameters). Pure: statements and a users.xml rendering.

What row policies cannot do: redact a visible row's out-of-scope peer. The API shows that peer as its
cluster, namespace and reserved identity only; through this user, a visible row keeps the peer's pod,
workload, labels and IP (flows) or workload (rollups). Grant it to people who may see their peers' names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from policy_engine.roles import Ownership, Principal
from query_api.scope import ScopeFilter
from schemas.clickhouse import CATALOG_TABLE, CONVERSATIONS_1H, FLOWS_TABLE, ROLLUP_TABLES, side_cluster

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


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def default_user_name(workspace: str) -> str:
    return "grafana_" + re.sub(r"[^A-Za-z0-9_]", "_", workspace)


@dataclass(frozen=True)
class GrafanaUser:
    """A workspace's read-only ClickHouse user."""

    name: str
    workspace: str
    database: str
    conditions: Mapping[str, str]

    @property
    def policy_name(self) -> str:
        return "netwarden_" + self.name

    def statements(self, password: str) -> list[str]:
        """Idempotent: re-running replaces the user (new password), its grants and its policies."""
        user, db = _ident(self.name), _ident(self.database)
        digest = hashlib.sha256(password.encode()).hexdigest()  # the server's query log never sees the password
        constraints = "".join(f", {s} CHANGEABLE_IN_READONLY" for s in CHANGEABLE_IN_READONLY)
        out = [f"CREATE USER OR REPLACE {user} IDENTIFIED WITH sha256_hash BY '{digest}' "
               f"DEFAULT DATABASE {db} SETTINGS readonly = 1{constraints}"]
        for table, condition in self.conditions.items():
            out.append(f"GRANT SELECT ON {db}.{_ident(table)} TO {user}")
            out.append(f"CREATE ROW POLICY OR REPLACE {_ident(self.policy_name)} ON {db}.{_ident(table)} "
                       f"AS PERMISSIVE FOR SELECT USING {condition} TO {user}")
        return out

    def users_xml(self, password: str, changeable_in_readonly: Sequence[str] = CHANGEABLE_IN_READONLY) -> str:
        """The same user for a server configured by XML (users.d/): profile, grants and row filters.
        ClickHouse accepts `changeable_in_readonly` constraints only with the server's
        access_control_improvements.settings_constraints_replace_previous on (the SQL form likewise)."""
        digest = hashlib.sha256(password.encode()).hexdigest()
        tables = "\n".join(
            f"          <{table}><filter>{escape(condition)}</filter></{table}>"
            for table, condition in self.conditions.items())
        grants = "\n".join(f"        <query>GRANT SELECT ON {_ident(self.database)}.{_ident(t)}</query>"
                           for t in self.conditions)
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
      <default_database>{escape(self.database)}</default_database>
      <grants>
{grants}
      </grants>
      <databases>
        <{self.database}>
{tables}
        </{self.database}>
      </databases>
    </{self.name}>
  </users>
</clickhouse>
"""


def grafana_user(ownership: Ownership, workspace: str, database: str = "default", name: str | None = None) -> GrafanaUser:
    user = name or default_user_name(workspace)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", user):
        raise AccessError(f"--user: {user!r} is not a plain identifier (letters, digits, _)")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise AccessError(f"--database: {database!r} is not a plain identifier (letters, digits, _)")
    return GrafanaUser(user, workspace, database, row_conditions(workspace_scope(ownership, workspace)))

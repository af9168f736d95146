"""Which flows a principal may see, and how much of the peer outside its scope: one rule, twice.

Pure: no I/O. The rule exists as SQL (`sql_where`, `redacted_select`, for history queries, where the
scope is part of the query itself) and as Python (`visible`, `redact`, for the live stream, which filters
flows in flight). Both twins must agree exactly; tests/query_api check them against each other.

Rule (issue 3, "Visibility rule"):
- Scope: org roles see everything; infra-admin and project roles see the clusters of their project (plus
  the namespaces of the project's workspaces, should one lie outside those clusters); workspace roles
  see the (cluster, namespace) pairs of their workspace. Several bindings: the union.
- An endpoint's place is (cluster, namespace). Its cluster is the endpoint's own `cluster_name` when
  Hubble reports one (cluster mesh: the peer of a cross-cluster flow lives in the other cluster), else
  the cluster whose collector stored the flow. Reserved identities (world, host) have no namespace: they
  are (cluster, ""), inside a project's clusters but inside no workspace.
- A flow is visible when its source or its destination lies in the scope.
- The endpoint outside the scope keeps its cluster, namespace (and the namespace's project/workspace),
  its reserved identity (labels starting with `reserved:`, identity numbers below 256) and the service's
  namespace; it loses its pod name, endpoint id, other labels and identity, workloads, IP (-> `::`),
  DNS names and service name (a service name is as telling as a DNS name). Ports, verdicts and policy
  attribution stay: they are the flow, and the answer to "why was my traffic dropped?".
- Enrichment (issue 7): the peer's project and workspace are shown like its namespace (they name where
  it lives, no more than the namespace does, and "which team do I talk to" is the question a scoped
  user asks); netwarden's desired/staged verdicts and their attribution are the flow's, like Hubble's
  verdict and policies, and stay. Nothing else of the peer is derived into them.

Key use (issue 7): the exact rule reads each side's cluster through `if(cluster_name != '', ...)`, which
hides the table's sort key from ClickHouse. `prefilter()` adds an implied condition on plain key columns
(`cluster`, `src_namespace`, `dst_namespace`), computed from the flow catalog (which stored cluster has
seen which (cluster, namespace) places, schemas.clickhouse): every visible flow satisfies it, so ANDing
it with the exact rule changes no result and lets the engine skip everything else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy_engine.roles import Ownership, Principal, Role
from schemas.flow_record import RECORD_COLUMNS

TABLE_ALIAS = "f"  # redacted_select() and sql_where() read the flows table under this alias
RESERVED_LABEL_PREFIX = "reserved:"
MAX_RESERVED_IDENTITY = 255  # cilium: identities 1..255 are reserved (host, world, health, ...)
SIDES = ("src", "dst")
IN_SCOPE = {"src": "_src_in_scope", "dst": "_dst_in_scope"}  # aliases defined by with_clause()

ORG_ROLES = (Role.ORG_ADMIN, Role.ORG_READ_ONLY)
PROJECT_ROLES = (Role.INFRA_ADMIN, Role.PROJECT_ADMIN, Role.PROJECT_READ_ONLY)
WORKSPACE_ROLES = (Role.WORKSPACE_ADMIN, Role.WORKSPACE_READ_ONLY)

# Column -> value of a redacted endpoint, per side; columns not named here are kept.
_REDACTED_SQL: dict[str, str] = {
    "id": "toUInt32(0)",
    "pod": "''",
    "workload_names": "[]",
    "workload_kinds": "[]",
    "service": "''",
    "names": "[]",
}
_IP_COLUMN = {"src": "ip_src", "dst": "ip_dst"}


@dataclass(frozen=True)
class ScopeFilter:
    """What one principal sees: everything, whole clusters, or (cluster, namespace) pairs."""

    everything: bool = False
    clusters: frozenset[str] = frozenset()
    namespaces: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def for_principal(cls, principal: Principal, ownership: Ownership) -> ScopeFilter:
        if principal.roles(*ORG_ROLES):
            return cls(everything=True)
        clusters: set[str] = set()
        namespaces: set[tuple[str, str]] = set()
        for binding in principal.roles(*PROJECT_ROLES):
            clusters |= ownership.project_clusters.get(binding.scope_name, frozenset())
            for workspace, project in ownership.workspace_project.items():
                if project == binding.scope_name:
                    refs = ownership.workspace_namespaces.get(workspace, frozenset())
                    namespaces |= {(r.cluster, r.namespace) for r in refs}
        for binding in principal.roles(*WORKSPACE_ROLES):
            refs = ownership.workspace_namespaces.get(binding.scope_name, frozenset())
            namespaces |= {(r.cluster, r.namespace) for r in refs}
        # A namespace of a wholly visible cluster adds nothing; dropping it keeps parameters small.
        namespaces = {ns for ns in namespaces if ns[0] not in clusters}
        return cls(False, frozenset(clusters), frozenset(namespaces))

    @property
    def empty(self) -> bool:
        return not (self.everything or self.clusters or self.namespaces)

    def covers(self, other: ScopeFilter) -> bool:
        """Everything `other` sees, this scope sees too (a live stream keeps going when its caller's scope
        changes this way, and ends when it narrows)."""
        if self.everything:
            return True
        if other.everything:
            return False
        return other.clusters <= self.clusters and all(
            c in self.clusters or (c, n) in self.namespaces for c, n in other.namespaces
        )

    def can_see_cluster(self, cluster: str) -> bool:
        return self.everything or cluster in self.clusters or any(c == cluster for c, _ in self.namespaces)

    def can_see_namespace(self, cluster: str, namespace: str) -> bool:
        return self.everything or cluster in self.clusters or (cluster, namespace) in self.namespaces

    # -- SQL ------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        if self.everything:
            return {}
        return {
            "scope_clusters": sorted(self.clusters),
            "scope_namespace_names": sorted({ns for _, ns in self.namespaces}),
            "scope_namespaces": sorted(self.namespaces),
        }

    def side_in_scope_sql(self, side: str) -> str:
        """SQL: the endpoint `side` ('src'/'dst') of the row lies in the scope (parameters: params())."""
        a = TABLE_ALIAS
        cluster = f"if({a}.{side}_cluster_name != '', {a}.{side}_cluster_name, {a}.cluster)"
        return self.place_in_scope_sql(cluster, f"{a}.{side}_namespace")

    def place_in_scope_sql(self, cluster: str, namespace: str) -> str:
        """SQL: the place (cluster, namespace), given as two SQL expressions, lies in the scope
        (parameters: params()). Rollup tables store each side's cluster, so they use it directly.
        Set lookups (IN), and the namespace alone first: most rows fail there, before a tuple is built."""
        if self.everything:
            return "1"
        if self.empty:
            return "0"
        return (
            f"({cluster} IN {{scope_clusters:Array(String)}} OR ({namespace} IN {{scope_namespace_names:Array(String)}} "
            f"AND ({cluster}, {namespace}) IN {{scope_namespaces:Array(Tuple(String, String))}}))"
        )

    def prefilter(self, places: Iterable[tuple[str, str, str]]) -> tuple[str, dict[str, Any]]:
        """A condition on plain key columns implied by the scope: `places` are the flow catalog's
        (stored cluster, endpoint cluster, endpoint namespace) triples. A stored cluster with a side in a
        wholly visible cluster is read whole; otherwise only its rows with a visible namespace on either
        side. ('1', {}) for org scope; ('0', {}) when the scope meets no stored flow."""
        if self.everything:
            return "1", {}
        whole: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        for stored, cluster, namespace in places:
            if cluster in self.clusters:
                whole.add(stored)
            elif (cluster, namespace) in self.namespaces:
                pairs.add((stored, namespace))
        pairs = {p for p in pairs if p[0] not in whole}
        parts, params = [], {}
        if whole:
            parts.append("cluster IN {pf_clusters:Array(String)}")
            params["pf_clusters"] = sorted(whole)
        if pairs:
            parts.append(
                "(cluster, src_namespace) IN {pf_places:Array(Tuple(String, String))} OR "
                "(cluster, dst_namespace) IN {pf_places:Array(Tuple(String, String))}"
            )
            params["pf_places"] = sorted(pairs)
        return (f"({' OR '.join(parts)})" if parts else "0"), params

    def with_clause(self) -> str:
        """`WITH <src in scope> AS _src_in_scope, <dst in scope> AS _dst_in_scope` ('' for org scope):
        prefix of a query using `aliased=True` SQL. Each condition is then analyzed once, not once per
        use (ClickHouse's planning time grows with the size of the expressions)."""
        if self.everything:
            return ""
        return "WITH " + ", ".join(f"{self.side_in_scope_sql(side)} AS {IN_SCOPE[side]}" for side in SIDES)

    def _inside(self, side: str, aliased: bool) -> str:
        return IN_SCOPE[side] if aliased else self.side_in_scope_sql(side)

    def sql_where(self, aliased: bool = False) -> tuple[str, dict[str, Any]]:
        """The visibility condition over `flows AS f`, with its bound parameters (no user text in it).
        `aliased`: refer to the with_clause() aliases instead of repeating the conditions."""
        if self.everything:
            return "1", {}
        return f"({self._inside('src', aliased)} OR {self._inside('dst', aliased)})", self.params()

    def column_sql(self, name: str, aliased: bool = False) -> str:
        """SQL for a record column as this scope may see it (over `flows AS f`): the column itself, or
        for an endpoint column that redaction touches, `if(<side in scope>, column, redacted value)`.
        Parameters: params()."""
        a = TABLE_ALIAS
        raw = f"{a}.`{name}`"
        if self.everything:
            return raw
        side, _, field = name.partition("_")
        if name in ("ip_src", "ip_dst"):
            return f"if({self._inside(name[3:], aliased)}, {raw}, toIPv6('::'))"
        if side not in SIDES:
            return raw
        inside = self._inside(side, aliased)
        if field in _REDACTED_SQL:
            return f"if({inside}, {raw}, {_REDACTED_SQL[field]})"
        if field == "labels":
            return f"if({inside}, {raw}, arrayFilter(l -> startsWith(l, '{RESERVED_LABEL_PREFIX}'), {raw}))"
        if field == "identity":
            return f"if({inside} OR {raw} <= {MAX_RESERVED_IDENTITY}, {raw}, toUInt32(0))"
        return raw

    def redacted_select(self) -> list[str]:
        """`expr AS column` for every record column (schemas.flow_record order), out-of-scope peer redacted.

        For SQL that must itself see redacted values (aggregations, exports); over `flows AS f FINAL
        WHERE sql_where()`. History queries instead filter on column_sql() expressions and redact the
        fetched rows with redact(): the same result, planned much faster (tests check both agree).
        """
        return [f"{self.column_sql(c.name)} AS `{c.name}`" for c in RECORD_COLUMNS]

    # -- Python twins (the live stream) ---------------------------------------------------------
    def side_in_scope(self, row: Mapping[str, Any], side: str) -> bool:
        if self.everything:
            return True
        cluster = row.get(f"{side}_cluster_name") or row.get("cluster") or ""
        return cluster in self.clusters or (cluster, row.get(f"{side}_namespace") or "") in self.namespaces

    def visible(self, row: Mapping[str, Any]) -> bool:
        return self.side_in_scope(row, "src") or self.side_in_scope(row, "dst")

    def redact(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a visible row with its out-of-scope endpoint redacted exactly as redacted_select()."""
        out = dict(row)
        if self.everything:
            return out
        for side in SIDES:
            if self.side_in_scope(row, side):
                continue
            out[f"{side}_id"] = 0
            out[f"{side}_pod"] = ""
            out[f"{side}_workload_names"] = []
            out[f"{side}_workload_kinds"] = []
            out[f"{side}_service"] = ""
            out[f"{side}_names"] = []
            labels = row.get(f"{side}_labels") or ()
            out[f"{side}_labels"] = [lb for lb in labels if lb.startswith(RESERVED_LABEL_PREFIX)]
            if int(row.get(f"{side}_identity") or 0) > MAX_RESERVED_IDENTITY:
                out[f"{side}_identity"] = 0
            ip_column = _IP_COLUMN[side]
            out[ip_column] = _unspecified_like(row.get(ip_column))
        return out


def _unspecified_like(value: Any) -> Any:
    """`::` in the representation the row uses (Arrow rows: bytes; ClickHouse rows: IPv6Address)."""
    if isinstance(value, bytes | bytearray):
        return bytes(16)
    if isinstance(value, str):
        return "::"
    return ipaddress.IPv6Address(0)

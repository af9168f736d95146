"""The control-plane store: clusters, projects, workspaces, versioned policies and blueprints,
assignments. SQLite file `DATA_DIR/control-plane.sqlite` by default.

The SQL is deliberately plain (TEXT/INTEGER columns, explicit version numbers instead of
AUTOINCREMENT, `INSERT ... ON CONFLICT`) so the same statements run on PostgreSQL; only the
placeholder style differs and is rewritten per connection. No permission checks here: the engine
API (`policy_engine.control_plane`) checks roles and then calls the store.

Schema changes are `Migration`s recorded in `schema_migrations` by id. Ids carry a component
prefix so other parts of the product (users, role bindings and tokens for the query API) add
their own tables with their own migrations: `store.apply_migrations([Migration("tenancy/0001-users",
(...))])`. Namespace ownership lives in `namespace_ownership(cluster, namespace, workspace)`,
joined with `workspaces.project` (see `namespace_owner`, `list_namespace_ownership`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from policy_engine.model import (
    Assignment,
    AssignmentTarget,
    BlueprintSpec,
    BlueprintVersion,
    Cluster,
    NamespaceOwner,
    NamespaceRef,
    PolicySpec,
    PolicyState,
    PolicyVersion,
    Project,
    VersionInfo,
    Workspace,
)
from policy_engine.roles import Ownership

log = logging.getLogger("netwarden.store")

STORE_FILE = "control-plane.sqlite"
DEFAULT_DATA_DIR = "./netwarden-data"

PutResult = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Migration:
    id: str
    statements: tuple[str, ...]


STAGED_MIGRATION = "policy-engine/0003-staged-policy-versions"

CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "policy-engine/0001-initial",
        (
            """CREATE TABLE clusters (
                name TEXT PRIMARY KEY,
                cluster_type TEXT NOT NULL,
                primary_cni TEXT NOT NULL,
                kube_context TEXT,
                kubeconfig TEXT,
                api_server TEXT,
                namespaces TEXT NOT NULL DEFAULT '[]',
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL)""",
            """CREATE TABLE projects (
                name TEXT PRIMARY KEY,
                description TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL)""",
            """CREATE TABLE project_clusters (
                project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
                cluster TEXT NOT NULL REFERENCES clusters(name),
                PRIMARY KEY (project, cluster))""",
            """CREATE TABLE workspaces (
                name TEXT PRIMARY KEY,
                project TEXT NOT NULL REFERENCES projects(name),
                description TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL)""",
            # One owner per namespace: the flow pipeline and RBAC need an unambiguous answer.
            """CREATE TABLE namespace_ownership (
                cluster TEXT NOT NULL REFERENCES clusters(name),
                namespace TEXT NOT NULL,
                workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
                PRIMARY KEY (cluster, namespace))""",
            """CREATE TABLE policies (
                name TEXT PRIMARY KEY,
                scope TEXT NOT NULL,
                current_version INTEGER NOT NULL,
                builtin INTEGER NOT NULL DEFAULT 0,
                deleted_at TEXT,
                created_at TEXT NOT NULL)""",
            """CREATE TABLE policy_versions (
                policy TEXT NOT NULL REFERENCES policies(name),
                version INTEGER NOT NULL,
                content TEXT NOT NULL,
                content_hash TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                message TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (policy, version))""",
            """CREATE TABLE blueprints (
                name TEXT PRIMARY KEY,
                current_version INTEGER NOT NULL,
                builtin INTEGER NOT NULL DEFAULT 0,
                deleted_at TEXT,
                created_at TEXT NOT NULL)""",
            """CREATE TABLE blueprint_versions (
                blueprint TEXT NOT NULL REFERENCES blueprints(name),
                version INTEGER NOT NULL,
                content TEXT NOT NULL,
                content_hash TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                message TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (blueprint, version))""",
            """CREATE TABLE assignments (
                name TEXT PRIMARY KEY,
                blueprint TEXT REFERENCES blueprints(name),
                policy TEXT REFERENCES policies(name),
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                CHECK ((blueprint IS NULL AND policy IS NOT NULL) OR (blueprint IS NOT NULL AND policy IS NULL)))""",
            # Blueprint -> clusters. A cluster runs one install profile, hence one blueprint.
            """CREATE TABLE assignment_clusters (
                assignment TEXT NOT NULL REFERENCES assignments(name) ON DELETE CASCADE,
                cluster TEXT NOT NULL REFERENCES clusters(name),
                PRIMARY KEY (assignment, cluster),
                UNIQUE (cluster))""",
            # Namespace policy -> (cluster, namespace) or workspace; '' marks the unused columns.
            """CREATE TABLE assignment_targets (
                assignment TEXT NOT NULL REFERENCES assignments(name) ON DELETE CASCADE,
                cluster TEXT NOT NULL DEFAULT '',
                namespace TEXT NOT NULL DEFAULT '',
                workspace TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (assignment, cluster, namespace, workspace))""",
        ),
    ),
    # The outbox of the `inventory` topic (policy_engine.inventory): per cluster, the latest message and
    # whether it was published. Written in the same transaction as the write it follows from, so the
    # write never waits for Kafka and no committed change can miss the topic.
    Migration(
        "policy-engine/0002-inventory-outbox",
        (
            """CREATE TABLE inventory_outbox (
                cluster TEXT PRIMARY KEY,
                revision INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                policy_revision INTEGER NOT NULL,
                policy_hash TEXT NOT NULL,
                value TEXT,
                published_revision INTEGER NOT NULL DEFAULT 0,
                updated_at TEXT NOT NULL)""",
        ),
    ),
    # Staged policies: a version is enforced or staged; a policy has at most one current enforced version
    # (current_version, 0 while it was only ever staged) and one staged version. The outbox numbers the
    # staged set's revisions like the desired set's.
    Migration(
        STAGED_MIGRATION,
        (
            "ALTER TABLE policy_versions ADD COLUMN mode TEXT NOT NULL DEFAULT 'enforced'",
            "ALTER TABLE policies ADD COLUMN staged_version INTEGER",
            "ALTER TABLE inventory_outbox ADD COLUMN staged_revision INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE inventory_outbox ADD COLUMN staged_hash TEXT NOT NULL DEFAULT ''",
        ),
    ),
)

# Tables the inventory is derived from: a write to any of them re-records it (policy_engine.inventory).
INVENTORY_SOURCES = frozenset({
    "clusters", "projects", "project_clusters", "workspaces", "namespace_ownership", "policies",
    "policy_versions", "blueprints", "blueprint_versions", "assignments", "assignment_clusters",
    "assignment_targets", "namespace_workspace_labels",
})
_MUTATED_TABLE = re.compile(r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)", re.IGNORECASE)


def resolve_data_dir(flag: str | None = None) -> Path:
    """`--data-dir`, else NETWARDEN_DATA_DIR, else ./netwarden-data."""
    return Path(flag or os.environ.get("NETWARDEN_DATA_DIR") or DEFAULT_DATA_DIR)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StoreError(ValueError):
    """A store operation that cannot be done (unknown object, unknown version, conflict)."""


class ControlPlaneStore:
    def __init__(self, connection: Any, *, paramstyle: str = "qmark") -> None:
        # Any DB-API connection in autocommit mode; transactions are explicit (`transaction()`).
        self._conn = connection
        self._paramstyle = paramstyle
        self._depth = 0
        self._inventory_dirty = False
        self._recording = False
        applied = self.apply_migrations(CORE_MIGRATIONS)
        if STAGED_MIGRATION in applied and self.execute("SELECT cluster FROM inventory_outbox"):
            # Messages recorded before staging existed carry no staged set: record them again.
            self._record_inventory()

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str]) -> ControlPlaneStore:
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        return cls.on_sqlite(path / STORE_FILE)

    @classmethod
    def on_sqlite(cls, file: str | os.PathLike[str]) -> ControlPlaneStore:
        """A store on a SQLite file (":memory:": a private one). The API reads it from worker threads; callers
        that share one store serialize access (Tenancy holds a lock)."""
        conn = sqlite3.connect(file, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        return cls(conn)

    def sqlite_file(self) -> str:
        """The SQLite file the store is on; "" for an in-memory or another database."""
        if not isinstance(self._conn, sqlite3.Connection):
            return ""
        return next((str(r[2]) for r in self.execute("PRAGMA database_list") if r[1] == "main" and r[2]), "")

    def copy_in_memory(self) -> ControlPlaneStore:
        """A private in-memory copy (SQLite's online backup)."""
        copy = ControlPlaneStore.on_sqlite(":memory:")
        self._conn.backup(copy._conn)
        return copy

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ControlPlaneStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------
    def _sql(self, query: str) -> str:
        return query.replace("?", "%s") if self._paramstyle in ("format", "pyformat") else query

    def execute(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.cursor()
        try:
            cur.execute(self._sql(query), tuple(params))
            rows = list(cur.fetchall()) if cur.description else []
        finally:
            cur.close()
        mutated = _MUTATED_TABLE.match(query)
        if mutated and mutated.group(1).lower() in INVENTORY_SOURCES:
            self._inventory_dirty = True
            if not self._depth:  # autocommit: the change is committed already
                self._record_inventory()
        return rows

    def _record_inventory(self) -> None:
        """Bring the inventory outbox up to date after a write (policy_engine.inventory)."""
        if self._recording:
            return
        from policy_engine.inventory import record_inventory  # the inventory reads the whole store

        self._recording = True
        self._inventory_dirty = False
        try:
            with self.transaction():
                record_inventory(self)
        except Exception:  # a derived view must never fail the write it follows; the next write retries
            log.exception("recording the inventory failed")
        finally:
            self._recording = False

    @contextmanager
    def transaction(self, *, rollback: bool = False) -> Iterator[ControlPlaneStore]:
        """One atomic unit; `rollback=True` always discards it (dry runs: `netwarden diff`)."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        # SQLite: take the write lock up front. A deferred transaction that reads first cannot upgrade to
        # a writer while another connection (e.g. the inventory publisher) writes: SQLITE_BUSY at once,
        # busy timeout or not ("database is locked").
        self.execute("BEGIN IMMEDIATE" if isinstance(self._conn, sqlite3.Connection) else "BEGIN")
        self._depth = 1
        try:
            yield self
            if self._inventory_dirty and not rollback:
                self._record_inventory()  # inside the transaction: committed with the write, or not at all
        except BaseException:
            self.execute("ROLLBACK")
            raise
        else:
            self.execute("ROLLBACK" if rollback else "COMMIT")
        finally:
            self._depth = 0
            self._inventory_dirty = False

    def apply_migrations(self, migrations: Sequence[Migration]) -> list[str]:
        """Apply the migrations not yet recorded, in order; returns the ids applied."""
        self.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        applied: list[str] = []
        for migration in migrations:
            with self.transaction():
                if self.execute("SELECT id FROM schema_migrations WHERE id = ?", (migration.id,)):
                    continue
                for statement in migration.statements:
                    self.execute(statement)
                self.execute("INSERT INTO schema_migrations (id, applied_at) VALUES (?, ?)", (migration.id, _now()))
                applied.append(migration.id)
        return applied

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self.execute("SELECT id FROM schema_migrations ORDER BY id")]

    # -- clusters -------------------------------------------------------------------------------
    def put_cluster(self, cluster: Cluster) -> PutResult:
        old = self.get_cluster(cluster.name)
        if old == cluster:
            return "unchanged"
        now = _now()
        self.execute(
            """INSERT INTO clusters (name, cluster_type, primary_cni, kube_context, kubeconfig, api_server,
                   namespaces, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET cluster_type = excluded.cluster_type,
                   primary_cni = excluded.primary_cni, kube_context = excluded.kube_context,
                   kubeconfig = excluded.kubeconfig, api_server = excluded.api_server,
                   namespaces = excluded.namespaces, updated_at = excluded.updated_at""",
            (
                cluster.name, cluster.cluster_type, cluster.primary_cni, cluster.kube_context,
                cluster.kubeconfig, cluster.api_server, json.dumps(list(cluster.namespaces)), now, now,
            ),
        )
        return "created" if old is None else "updated"

    def get_cluster(self, name: str) -> Cluster | None:
        rows = self.execute(
            "SELECT name, cluster_type, primary_cni, kube_context, kubeconfig, api_server, namespaces "
            "FROM clusters WHERE name = ?",
            (name,),
        )
        return _cluster(rows[0]) if rows else None

    def list_clusters(self) -> list[Cluster]:
        rows = self.execute(
            "SELECT name, cluster_type, primary_cni, kube_context, kubeconfig, api_server, namespaces "
            "FROM clusters ORDER BY name"
        )
        return [_cluster(r) for r in rows]

    def delete_cluster(self, name: str) -> None:
        self.execute("DELETE FROM project_clusters WHERE cluster = ?", (name,))
        self.execute("DELETE FROM namespace_ownership WHERE cluster = ?", (name,))
        self.execute("DELETE FROM assignment_clusters WHERE cluster = ?", (name,))
        self.execute("DELETE FROM assignment_targets WHERE cluster = ?", (name,))
        self.execute("DELETE FROM clusters WHERE name = ?", (name,))

    # -- projects -------------------------------------------------------------------------------
    def put_project(self, project: Project) -> PutResult:
        old = self.get_project(project.name)
        if old is not None and old.to_content() == project.to_content():
            return "unchanged"
        now = _now()
        self.execute(
            """INSERT INTO projects (name, description, created_at, updated_at) VALUES (?, ?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET description = excluded.description,
                   updated_at = excluded.updated_at""",
            (project.name, project.description, now, now),
        )
        self.execute("DELETE FROM project_clusters WHERE project = ?", (project.name,))
        for cluster in sorted(set(project.clusters)):
            self.execute("INSERT INTO project_clusters (project, cluster) VALUES (?, ?)", (project.name, cluster))
        return "created" if old is None else "updated"

    def get_project(self, name: str) -> Project | None:
        rows = self.execute("SELECT name, description FROM projects WHERE name = ?", (name,))
        if not rows:
            return None
        clusters = self.execute("SELECT cluster FROM project_clusters WHERE project = ? ORDER BY cluster", (name,))
        return Project(rows[0][0], tuple(c[0] for c in clusters), rows[0][1])

    def list_projects(self) -> list[Project]:
        names = [r[0] for r in self.execute("SELECT name FROM projects ORDER BY name")]
        return [p for p in (self.get_project(n) for n in names) if p is not None]

    def delete_project(self, name: str) -> None:
        self.execute("DELETE FROM project_clusters WHERE project = ?", (name,))
        self.execute("DELETE FROM projects WHERE name = ?", (name,))

    # -- workspaces and namespace ownership -----------------------------------------------------
    def put_workspace(self, workspace: Workspace) -> PutResult:
        old = self.get_workspace(workspace.name)
        if old is not None and old.to_content() == workspace.to_content():
            return "unchanged"
        now = _now()
        self.execute(
            """INSERT INTO workspaces (name, project, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET project = excluded.project,
                   description = excluded.description, updated_at = excluded.updated_at""",
            (workspace.name, workspace.project, workspace.description, now, now),
        )
        self.execute("DELETE FROM namespace_ownership WHERE workspace = ?", (workspace.name,))
        for ref in sorted(set(workspace.namespaces)):
            owner = self.namespace_owner(ref.cluster, ref.namespace)
            if owner is not None:
                raise StoreError(f"namespace {ref} already belongs to workspace {owner.workspace}")
            self.execute(
                "INSERT INTO namespace_ownership (cluster, namespace, workspace) VALUES (?, ?, ?)",
                (ref.cluster, ref.namespace, workspace.name),
            )
        return "created" if old is None else "updated"

    def get_workspace(self, name: str) -> Workspace | None:
        rows = self.execute("SELECT name, project, description FROM workspaces WHERE name = ?", (name,))
        if not rows:
            return None
        refs = self.execute(
            "SELECT cluster, namespace FROM namespace_ownership WHERE workspace = ? ORDER BY cluster, namespace",
            (name,),
        )
        return Workspace(rows[0][0], rows[0][1], tuple(NamespaceRef(c, n) for c, n in refs), rows[0][2])

    def list_workspaces(self) -> list[Workspace]:
        names = [r[0] for r in self.execute("SELECT name FROM workspaces ORDER BY name")]
        return [w for w in (self.get_workspace(n) for n in names) if w is not None]

    def delete_workspace(self, name: str) -> None:
        self.execute("DELETE FROM namespace_ownership WHERE workspace = ?", (name,))
        self.execute("DELETE FROM workspaces WHERE name = ?", (name,))

    def namespace_owner(self, cluster: str, namespace: str) -> NamespaceOwner | None:
        rows = self.execute(
            """SELECT o.cluster, o.namespace, w.project, o.workspace FROM namespace_ownership o
               JOIN workspaces w ON w.name = o.workspace WHERE o.cluster = ? AND o.namespace = ?""",
            (cluster, namespace),
        )
        return NamespaceOwner(*rows[0]) if rows else None

    def list_namespace_ownership(self) -> list[NamespaceOwner]:
        rows = self.execute(
            """SELECT o.cluster, o.namespace, w.project, o.workspace FROM namespace_ownership o
               JOIN workspaces w ON w.name = o.workspace ORDER BY o.cluster, o.namespace"""
        )
        return [NamespaceOwner(*r) for r in rows]

    def ownership(self) -> Ownership:
        """The tenancy snapshot role checks run against."""
        projects: dict[str, set[str]] = {}
        for project, cluster in self.execute("SELECT project, cluster FROM project_clusters"):
            projects.setdefault(project, set()).add(cluster)
        for (project,) in self.execute("SELECT name FROM projects"):
            projects.setdefault(project, set())
        workspace_project = dict(self.execute("SELECT name, project FROM workspaces"))
        namespaces: dict[str, set[NamespaceRef]] = {w: set() for w in workspace_project}
        for cluster, namespace, workspace in self.execute("SELECT cluster, namespace, workspace FROM namespace_ownership"):
            namespaces.setdefault(workspace, set()).add(NamespaceRef(cluster, namespace))
        return Ownership(
            project_clusters={p: frozenset(c) for p, c in projects.items()},
            workspace_project=workspace_project,
            workspace_namespaces={w: frozenset(n) for w, n in namespaces.items()},
        )

    # -- policies -------------------------------------------------------------------------------
    def put_policy(
        self, spec: PolicySpec, *, author: str, source: str = "", message: str = "", builtin: bool = False
    ) -> tuple[PolicyVersion, PutResult]:
        """Store `spec` as the new enforced version unless it equals the current one (idempotent apply).
        A staged version, if any, stays staged."""
        row = self.execute("SELECT current_version, deleted_at, scope FROM policies WHERE name = ?", (spec.name,))
        if row:
            current = self.get_policy(spec.name, include_deleted=True)  # None while only ever staged
            deleted = row[0][1] is not None
            if current is not None and current.spec.hash() == spec.hash() and not deleted:
                return current, "unchanged"
            self._check_scope(spec, row[0][2])
            result: PutResult = "updated" if current is not None and not deleted else "created"
            if current is not None and current.spec.hash() == spec.hash():
                self.execute("UPDATE policies SET deleted_at = NULL WHERE name = ?", (spec.name,))
                return current, result
            version = self._next_version(spec.name)
            self.execute(
                "UPDATE policies SET current_version = ?, deleted_at = NULL WHERE name = ?", (version, spec.name)
            )
        else:
            result, version = "created", 1
            self._insert_policy(spec, current_version=1, builtin=builtin)
        info = self._insert_version(spec, version, author, source, message, "enforced")
        return PolicyVersion(spec, info, builtin), result

    def stage_policy(
        self, spec: PolicySpec, *, author: str, source: str = "", message: str = ""
    ) -> tuple[PolicyVersion, PutResult]:
        """Store `spec` as the policy's staged version (evaluated, never rendered) unless it equals the
        staged one; the enforced version, if any, stays in effect."""
        row = self.execute("SELECT current_version, deleted_at, scope FROM policies WHERE name = ?", (spec.name,))
        if row:
            self._check_scope(spec, row[0][2])
            deleted = row[0][1] is not None
            staged = None if deleted else self.get_staged_policy(spec.name)
            if staged is not None and staged.spec.hash() == spec.hash():
                return staged, "unchanged"
            version = self._next_version(spec.name)
            if deleted:  # a deleted policy comes back staged only: nothing of it is enforced
                self.execute(
                    "UPDATE policies SET current_version = 0, deleted_at = NULL WHERE name = ?", (spec.name,)
                )
            self.execute("UPDATE policies SET staged_version = ? WHERE name = ?", (version, spec.name))
            result: PutResult = "updated" if staged is not None else "created"
        else:
            result, version = "created", 1
            self._insert_policy(spec, current_version=0, staged_version=1)
        info = self._insert_version(spec, version, author, source, message, "staged")
        return PolicyVersion(spec, info), result

    def promote_policy(self, name: str, *, author: str) -> PolicyVersion:
        """The staged version becomes the enforced one, as a new version; nothing stays staged."""
        staged = self.get_staged_policy(name)
        if staged is None:
            raise StoreError(f"policy {name} has no staged version")
        version = self._next_version(name)
        self.execute(
            "UPDATE policies SET current_version = ?, staged_version = NULL WHERE name = ?", (version, name)
        )
        info = self._insert_version(
            staged.spec, version, author, staged.info.source, f"promoted staged version {staged.version}", "enforced"
        )
        return PolicyVersion(staged.spec, info, staged.builtin)

    def unstage_policy(self, name: str) -> PolicyVersion:
        """Stop evaluating the staged version (it stays in the history); returns it. A policy that was only
        staged is then deleted (soft: its versions stay)."""
        staged = self.get_staged_policy(name)
        if staged is None:
            raise StoreError(f"policy {name} has no staged version")
        self.execute("UPDATE policies SET staged_version = NULL WHERE name = ?", (name,))
        self.execute("UPDATE policies SET deleted_at = ? WHERE name = ? AND current_version = 0", (_now(), name))
        return staged

    def get_staged_policy(self, name: str) -> PolicyVersion | None:
        head = self.execute("SELECT staged_version, builtin, deleted_at FROM policies WHERE name = ?", (name,))
        if not head or head[0][0] is None or head[0][2] is not None:
            return None
        return self.get_policy(name, int(head[0][0]))

    def _check_scope(self, spec: PolicySpec, scope: str) -> None:
        if scope != spec.scope:
            # The scope decides CNP vs CCNP and who may write: changing it is a new policy.
            raise StoreError(
                f"policy {spec.name} has scope {scope}; a policy's scope cannot change (use a new name)"
            )

    def _next_version(self, name: str) -> int:
        # Enforced and staged versions share one sequence, so a version number names one content.
        return int(self.execute("SELECT MAX(version) FROM policy_versions WHERE policy = ?", (name,))[0][0] or 0) + 1

    def _insert_policy(
        self, spec: PolicySpec, *, current_version: int, staged_version: int | None = None, builtin: bool = False
    ) -> None:
        self.execute(
            "INSERT INTO policies (name, scope, current_version, staged_version, builtin, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (spec.name, spec.scope, current_version, staged_version, int(builtin), _now()),
        )

    def _insert_version(
        self, spec: PolicySpec, version: int, author: str, source: str, message: str, mode: str
    ) -> VersionInfo:
        now = _now()
        self.execute(
            """INSERT INTO policy_versions (policy, version, content, content_hash, created_at, created_by,
                   source, message, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (spec.name, version, json.dumps(spec.to_content(), sort_keys=True), spec.hash(), now, author, source,
             message, mode),
        )
        return VersionInfo(version, now, author, source, message, mode)

    def get_policy(self, name: str, version: int | None = None, *, include_deleted: bool = False) -> PolicyVersion | None:
        head = self.execute("SELECT current_version, builtin, deleted_at FROM policies WHERE name = ?", (name,))
        if not head or (head[0][2] is not None and not include_deleted and version is None):
            return None
        rows = self.execute(
            "SELECT version, content, created_at, created_by, source, message, mode FROM policy_versions "
            "WHERE policy = ? AND version = ?",
            (name, version if version is not None else head[0][0]),
        )
        return _policy_version(name, rows[0], bool(head[0][1])) if rows else None

    def policy_history(self, name: str) -> list[PolicyVersion]:
        head = self.execute("SELECT builtin FROM policies WHERE name = ?", (name,))
        if not head:
            raise StoreError(f"no policy named {name!r}")
        rows = self.execute(
            "SELECT version, content, created_at, created_by, source, message, mode FROM policy_versions "
            "WHERE policy = ? ORDER BY version",
            (name,),
        )
        return [_policy_version(name, r, bool(head[0][0])) for r in rows]

    def rollback_policy(self, name: str, to_version: int, *, author: str) -> PolicyVersion:
        """A new version whose content copies `to_version`; history is never rewritten."""
        old = self.get_policy(name, to_version)
        if old is None:
            known = ", ".join(str(v.version) for v in self.policy_history(name))
            raise StoreError(f"policy {name} has no version {to_version} (versions: {known})")
        version = self._next_version(name)
        message = f"rollback to version {to_version}"
        self.execute("UPDATE policies SET current_version = ?, deleted_at = NULL WHERE name = ?", (version, name))
        info = self._insert_version(old.spec, version, author, old.info.source, message, "enforced")
        return PolicyVersion(old.spec, info, old.builtin)

    def list_policies(self) -> list[PolicyVersion]:
        names = [r[0] for r in self.execute("SELECT name FROM policies WHERE deleted_at IS NULL ORDER BY name")]
        return [p for p in (self.get_policy(n) for n in names) if p is not None]

    def list_policy_states(self) -> list[PolicyState]:
        """Every policy not deleted, with its enforced and staged versions."""
        rows = self.execute("SELECT name, scope FROM policies WHERE deleted_at IS NULL ORDER BY name")
        return [PolicyState(n, scope, self.get_policy(n), self.get_staged_policy(n)) for n, scope in rows]

    def delete_policy(self, name: str) -> None:
        """Soft delete: the policy stops rendering and being evaluated; its versions stay for history and audit."""
        self.execute("UPDATE policies SET deleted_at = ?, staged_version = NULL WHERE name = ?", (_now(), name))

    # -- blueprints -----------------------------------------------------------------------------
    def put_blueprint(
        self, spec: BlueprintSpec, *, author: str, source: str = "", message: str = "", builtin: bool = False
    ) -> tuple[BlueprintVersion, PutResult]:
        row = self.execute("SELECT current_version, deleted_at FROM blueprints WHERE name = ?", (spec.name,))
        if row:
            current = self.get_blueprint(spec.name, include_deleted=True)
            assert current is not None
            if current.spec.hash() == spec.hash():
                if row[0][1] is None:
                    return current, "unchanged"
                self.execute("UPDATE blueprints SET deleted_at = NULL WHERE name = ?", (spec.name,))
                return current, "created"
            result: PutResult = "updated" if row[0][1] is None else "created"
            version = int(row[0][0]) + 1
            self.execute(
                "UPDATE blueprints SET current_version = ?, deleted_at = NULL WHERE name = ?", (version, spec.name)
            )
        else:
            result, version = "created", 1
        now = _now()
        if version == 1:
            self.execute(
                "INSERT INTO blueprints (name, current_version, builtin, created_at) VALUES (?, ?, ?, ?)",
                (spec.name, 1, int(builtin), now),
            )
        self.execute(
            """INSERT INTO blueprint_versions (blueprint, version, content, content_hash, created_at, created_by,
                   source, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (spec.name, version, json.dumps(spec.to_content(), sort_keys=True), spec.hash(), now, author, source,
             message),
        )
        return BlueprintVersion(spec, VersionInfo(version, now, author, source, message), builtin), result

    def get_blueprint(
        self, name: str, version: int | None = None, *, include_deleted: bool = False
    ) -> BlueprintVersion | None:
        head = self.execute("SELECT current_version, builtin, deleted_at FROM blueprints WHERE name = ?", (name,))
        if not head or (head[0][2] is not None and not include_deleted and version is None):
            return None
        rows = self.execute(
            "SELECT version, content, created_at, created_by, source, message FROM blueprint_versions "
            "WHERE blueprint = ? AND version = ?",
            (name, version if version is not None else head[0][0]),
        )
        if not rows:
            return None
        v, content, created_at, created_by, source, message = rows[0]
        return BlueprintVersion(
            BlueprintSpec.from_content(name, json.loads(content)),
            VersionInfo(int(v), created_at, created_by, source, message),
            bool(head[0][1]),
        )

    def blueprint_history(self, name: str) -> list[BlueprintVersion]:
        rows = self.execute("SELECT version FROM blueprint_versions WHERE blueprint = ? ORDER BY version", (name,))
        if not rows:
            raise StoreError(f"no blueprint named {name!r}")
        return [b for b in (self.get_blueprint(name, int(r[0])) for r in rows) if b is not None]

    def list_blueprints(self) -> list[BlueprintVersion]:
        names = [r[0] for r in self.execute("SELECT name FROM blueprints WHERE deleted_at IS NULL ORDER BY name")]
        return [b for b in (self.get_blueprint(n) for n in names) if b is not None]

    def delete_blueprint(self, name: str) -> None:
        self.execute("UPDATE blueprints SET deleted_at = ? WHERE name = ?", (_now(), name))

    # -- assignments ----------------------------------------------------------------------------
    def put_assignment(self, assignment: Assignment) -> PutResult:
        old = self.get_assignment(assignment.name)
        if old is not None and old.to_content() == assignment.to_content():
            return "unchanged"
        now = _now()
        self.execute(
            """INSERT INTO assignments (name, blueprint, policy, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET blueprint = excluded.blueprint, policy = excluded.policy,
                   updated_at = excluded.updated_at""",
            (assignment.name, assignment.blueprint, assignment.policy, now, now),
        )
        self.execute("DELETE FROM assignment_clusters WHERE assignment = ?", (assignment.name,))
        self.execute("DELETE FROM assignment_targets WHERE assignment = ?", (assignment.name,))
        for cluster in sorted(set(assignment.clusters)):
            taken = self.execute(
                "SELECT assignment FROM assignment_clusters WHERE cluster = ?", (cluster,)
            )
            if taken:
                raise StoreError(f"cluster {cluster} already has a blueprint (assignment {taken[0][0]})")
            self.execute(
                "INSERT INTO assignment_clusters (assignment, cluster) VALUES (?, ?)", (assignment.name, cluster)
            )
        for t in sorted(set(assignment.targets)):
            self.execute(
                "INSERT INTO assignment_targets (assignment, cluster, namespace, workspace) VALUES (?, ?, ?, ?)",
                (assignment.name, t.cluster, t.namespace, t.workspace),
            )
        return "created" if old is None else "updated"

    def get_assignment(self, name: str) -> Assignment | None:
        rows = self.execute("SELECT name, blueprint, policy FROM assignments WHERE name = ?", (name,))
        if not rows:
            return None
        clusters = self.execute(
            "SELECT cluster FROM assignment_clusters WHERE assignment = ? ORDER BY cluster", (name,)
        )
        targets = self.execute(
            "SELECT cluster, namespace, workspace FROM assignment_targets WHERE assignment = ? "
            "ORDER BY cluster, namespace, workspace",
            (name,),
        )
        return Assignment(
            name=rows[0][0],
            blueprint=rows[0][1],
            policy=rows[0][2],
            clusters=tuple(c[0] for c in clusters),
            targets=tuple(AssignmentTarget(*t) for t in targets),
        )

    def list_assignments(self) -> list[Assignment]:
        names = [r[0] for r in self.execute("SELECT name FROM assignments ORDER BY name")]
        return [a for a in (self.get_assignment(n) for n in names) if a is not None]

    def delete_assignment(self, name: str) -> None:
        self.execute("DELETE FROM assignment_clusters WHERE assignment = ?", (name,))
        self.execute("DELETE FROM assignment_targets WHERE assignment = ?", (name,))
        self.execute("DELETE FROM assignments WHERE name = ?", (name,))


def _cluster(row: Sequence[Any]) -> Cluster:
    name, cluster_type, cni, context, kubeconfig, api_server, namespaces = row
    return Cluster(name, cluster_type, cni, context, kubeconfig, api_server, tuple(json.loads(namespaces)))


def _policy_version(name: str, row: Sequence[Any], builtin: bool) -> PolicyVersion:
    version, content, created_at, created_by, source, message, mode = row
    return PolicyVersion(
        PolicySpec.from_content(name, json.loads(content)),
        VersionInfo(int(version), created_at, created_by, source, message, mode),
        builtin,
    )

"""Tenancy and identity on the control-plane store: users, role bindings, API tokens, and the
namespace ownership index the query API scopes flows with.

- Users are names (local accounts, or the identity an OIDC token maps to).
- A role binding is (user, role, scope): org roles bind to the organization, infra-admin and
  project roles to a project, workspace roles to a workspace; the project or workspace must exist.
  A binding outliving its scope (deleted, or deleted and re-created) is stale and grants nothing.
- API tokens are `nw_<id>_<secret>`: the id finds the row, the stored SHA-256 of the whole token
  is compared in constant time. The secret is random (256 bits), so a fast hash is enough: there
  is nothing to brute-force that a slow KDF would protect. The plain token is returned once.
- `OwnershipIndex` answers (cluster, namespace) -> (project, workspace) from the store's workspaces
  plus namespaces labelled `netwarden.io/workspace=<workspace>`; the store wins on conflict because
  it is the reviewed declaration, while a label can be set by anyone who can edit the namespace.
  Labels come from `record_namespace_labels` (`netwarden admin namespace sync` reads the clusters'
  API) or from the caller (flows carry them: `namespace_labels_from_endpoint`).

Tables come from the `tenancy/...` migrations, applied when `Tenancy` is constructed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from policy_engine.model import NamespaceRef
from policy_engine.roles import ROLE_SCOPE_KIND, Ownership, Principal, Role, RoleBinding, ScopeKind
from policy_engine.store import STORE_FILE, ControlPlaneStore, Migration, StoreError

if TYPE_CHECKING:
    from policy_engine.control_plane import ControlPlane

log = logging.getLogger("netwarden.tenancy")

WORKSPACE_LABEL = "netwarden.io/workspace"
TOKEN_PREFIX = "nw"
# Writing last_used on every request would turn each read into a write; a minute is precise enough.
LAST_USED_RESOLUTION = timedelta(seconds=60)

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,252}$")
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,}})$")

TENANCY_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "tenancy/0001-users",
        (
            """CREATE TABLE users (
                name TEXT PRIMARY KEY,
                created_at TEXT NOT NULL)""",
            # `user_name`, not `user`: USER is reserved in PostgreSQL.
            """CREATE TABLE role_bindings (
                user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
                role TEXT NOT NULL,
                scope_kind TEXT NOT NULL,
                scope_name TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL,
                PRIMARY KEY (user_name, role, scope_kind, scope_name))""",
            """CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY,
                user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
                token_sha256 TEXT NOT NULL,
                description TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL,
                expires_at TEXT,
                revoked_at TEXT,
                last_used_at TEXT)""",
        ),
    ),
    # The `netwarden.io/workspace` label of namespaces as last read from their cluster (or seen on
    # flows); only that one label matters, so only its value is kept.
    Migration(
        "tenancy/0002-namespace-labels",
        (
            """CREATE TABLE namespace_workspace_labels (
                cluster TEXT NOT NULL,
                namespace TEXT NOT NULL,
                workspace TEXT NOT NULL,
                observed_at TEXT NOT NULL,
                PRIMARY KEY (cluster, namespace))""",
        ),
    ),
)


class TenancyError(StoreError):
    """Bad tenancy input (unknown user, role, scope; bad name): the message names field and value."""


@dataclass(frozen=True)
class User:
    name: str
    created_at: str


@dataclass(frozen=True)
class UserBinding:
    user: str
    binding: RoleBinding
    # The project/workspace is gone or was re-created since: the binding grants nothing.
    stale: bool = False

    @property
    def scope(self) -> str:
        """The scope as the API and demo-tokens.json spell it: 'org' or the project/workspace name."""
        return "org" if self.binding.scope_kind is ScopeKind.ORG else self.binding.scope_name


TokenStatus = Literal["active", "expired", "revoked"]


@dataclass(frozen=True)
class ApiToken:
    """A token's metadata. Never holds the secret."""

    id: str
    user: str
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def status(self, now: datetime) -> TokenStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class TokenCheck:
    """Outcome of presenting a token: the principal, or why there is none (for the 401 detail)."""

    principal: Principal | None
    reason: str = ""


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def parse_binding(role: str, scope: str | None) -> RoleBinding:
    """A binding from CLI/API spelling: role id, and 'org' (or nothing) or a project/workspace name."""
    try:
        parsed = Role(role)
    except ValueError:
        raise TenancyError(f"role: unknown role {role!r}; one of {', '.join(r.value for r in Role)}") from None
    kind = ROLE_SCOPE_KIND[parsed]
    scope = (scope or "").strip()
    if kind is ScopeKind.ORG:
        if scope not in ("", "org"):
            raise TenancyError(f"scope: role {parsed} binds to the organization, not {scope!r} (use scope 'org')")
        return RoleBinding(parsed, kind, "")
    if not scope or scope == "org":
        raise TenancyError(f"scope: role {parsed} needs a {kind} name as scope, got {scope or 'nothing'!r}")
    return RoleBinding(parsed, kind, scope)


class Tenancy:
    """Users, role bindings and API tokens stored in the control-plane store.

    Safe to share between threads (the API's worker threads): every operation holds one lock,
    since the store's connection and transaction depth are not thread-safe.
    """

    def __init__(self, store: ControlPlaneStore, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.store = store
        self._clock = clock
        self._lock = threading.RLock()
        with self._lock:
            store.apply_migrations(TENANCY_MIGRATIONS)

    @classmethod
    def open(cls, data_dir: str | Path, *, clock: Callable[[], datetime] = _utcnow) -> Tenancy:
        """A Tenancy on its own SQLite connection usable from any thread (the API's threadpool)."""
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path / STORE_FILE, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        return cls(ControlPlaneStore(conn), clock=clock)

    def close(self) -> None:
        self.store.close()

    @contextmanager
    def control_plane(self, principal: Principal) -> Iterator[ControlPlane]:
        """The engine API (role checks, then the store) for `principal`, for one request of the API's policy
        routes: on its own connection to the store's file (a write never holds up authentication), or on the
        shared one under the lock for an in-memory store."""
        from policy_engine.control_plane import ControlPlane  # control_plane imports the store

        with self._lock:
            rows = self.store.execute("PRAGMA database_list")
        path = next((str(r[2]) for r in rows if r[1] == "main" and r[2]), "")
        if not path:
            with self._lock:
                yield ControlPlane(self.store, principal)
            return
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        store = ControlPlaneStore(conn)
        try:
            yield ControlPlane(store, principal)
        finally:
            store.close()

    # -- users ----------------------------------------------------------------------------------
    def create_user(self, name: str) -> Literal["created", "unchanged"]:
        if not _USER_NAME.match(name):
            raise TenancyError(
                f"user name {name!r} is not valid: letters, digits and . _ @ + -, starting with a letter or digit"
            )
        with self._lock:
            if self.get_user(name) is not None:
                return "unchanged"
            self.store.execute("INSERT INTO users (name, created_at) VALUES (?, ?)", (name, _iso(self._clock())))
            return "created"

    def get_user(self, name: str) -> User | None:
        with self._lock:
            rows = self.store.execute("SELECT name, created_at FROM users WHERE name = ?", (name,))
        return User(*rows[0]) if rows else None

    def list_users(self) -> list[User]:
        with self._lock:
            return [User(*r) for r in self.store.execute("SELECT name, created_at FROM users ORDER BY name")]

    def delete_user(self, name: str) -> None:
        """Deletes the user with its bindings and tokens (so its tokens stop working at once)."""
        with self._lock, self.store.transaction():
            self._require_user(name)
            self.store.execute("DELETE FROM api_tokens WHERE user_name = ?", (name,))
            self.store.execute("DELETE FROM role_bindings WHERE user_name = ?", (name,))
            self.store.execute("DELETE FROM users WHERE name = ?", (name,))

    def _require_user(self, name: str) -> None:
        if self.get_user(name) is None:
            raise TenancyError(f"user: no user named {name!r}")

    # -- role bindings --------------------------------------------------------------------------
    # A binding names its project or workspace; one whose scope was deleted (say by a GitOps prune)
    # and later re-created is *stale*: it grants nothing, or the new namesake would inherit the old
    # grants. Stale means: the scope is missing or was created after the binding.
    _BINDING_ROWS = """SELECT b.user_name, b.role, b.scope_kind, b.scope_name, b.created_at,
            CASE b.scope_kind WHEN 'project' THEN p.created_at WHEN 'workspace' THEN w.created_at END
        FROM role_bindings b
        LEFT JOIN projects p ON b.scope_kind = 'project' AND p.name = b.scope_name
        LEFT JOIN workspaces w ON b.scope_kind = 'workspace' AND w.name = b.scope_name"""

    def _binding_rows(self, user: str | None) -> list[UserBinding]:
        query, params = self._BINDING_ROWS, ()
        if user is not None:
            query, params = query + " WHERE b.user_name = ?", (user,)
        with self._lock:
            rows = self.store.execute(query + " ORDER BY b.user_name, b.role, b.scope_kind, b.scope_name", params)
        out = []
        for name, role, kind, scope_name, bound_at, scope_created in rows:
            binding = RoleBinding(Role(role), ScopeKind(kind), scope_name)
            scope_time, bound = _parse_time(scope_created), _parse_time(bound_at)
            stale = binding.scope_kind is not ScopeKind.ORG and (
                scope_time is None or (bound is not None and scope_time > bound)
            )
            out.append(UserBinding(name, binding, stale))
        return out

    def add_binding(self, user: str, role: str, scope: str | None = None) -> Literal["created", "unchanged"]:
        binding = parse_binding(role, scope)
        with self._lock, self.store.transaction():
            self._require_user(user)
            self._require_scope(binding)
            held = [b for b in self._binding_rows(user) if b.binding == binding]
            if held and not held[0].stale:
                return "unchanged"
            # A stale row of the same key is replaced: granting again is a fresh decision.
            self._delete_binding(user, binding)
            self.store.execute(
                "INSERT INTO role_bindings (user_name, role, scope_kind, scope_name, created_at) VALUES (?, ?, ?, ?, ?)",
                (user, binding.role.value, binding.scope_kind.value, binding.scope_name, _iso(self._clock())),
            )
            return "created"

    def _require_scope(self, binding: RoleBinding) -> None:
        if binding.scope_kind is ScopeKind.PROJECT and self.store.get_project(binding.scope_name) is None:
            raise TenancyError(f"scope: no project named {binding.scope_name!r} (role {binding.role} binds to a project)")
        if binding.scope_kind is ScopeKind.WORKSPACE and self.store.get_workspace(binding.scope_name) is None:
            raise TenancyError(
                f"scope: no workspace named {binding.scope_name!r} (role {binding.role} binds to a workspace)"
            )

    def _delete_binding(self, user: str, binding: RoleBinding) -> None:
        self.store.execute(
            "DELETE FROM role_bindings WHERE user_name = ? AND role = ? AND scope_kind = ? AND scope_name = ?",
            (user, binding.role.value, binding.scope_kind.value, binding.scope_name),
        )

    def remove_binding(self, user: str, role: str, scope: str | None = None) -> None:
        binding = parse_binding(role, scope)
        with self._lock:
            if not any(b.binding == binding for b in self._binding_rows(user)):
                raise TenancyError(f"binding: user {user!r} has no binding {binding}")
            self._delete_binding(user, binding)

    def remove_scope_bindings(self, scope_kind: ScopeKind, scope_name: str) -> int:
        """Drop bindings to a deleted project/workspace (tidier than leaving them stale)."""
        with self._lock:
            rows = self.store.execute(
                "SELECT user_name FROM role_bindings WHERE scope_kind = ? AND scope_name = ?",
                (scope_kind.value, scope_name),
            )
            self.store.execute(
                "DELETE FROM role_bindings WHERE scope_kind = ? AND scope_name = ?", (scope_kind.value, scope_name)
            )
            return len(rows)

    def bindings(self, user: str) -> tuple[RoleBinding, ...]:
        """The user's effective bindings (stale ones left out)."""
        return tuple(b.binding for b in self._binding_rows(user) if not b.stale)

    def list_bindings(self, user: str | None = None) -> list[UserBinding]:
        """Every stored binding, stale ones included (flagged) so operators can see and remove them."""
        return self._binding_rows(user)

    def principal_for_user(self, name: str) -> Principal:
        return Principal(name, self.bindings(name))

    # -- API tokens -----------------------------------------------------------------------------
    def create_token(
        self, user: str, expires_in: timedelta | None = None, *, description: str = ""
    ) -> tuple[str, str]:
        """(token id, token). The token is shown to the caller once; only its SHA-256 is stored."""
        if expires_in is not None and expires_in <= timedelta(0):
            raise TenancyError(f"expires: must be in the future, got {expires_in}")
        token_id = secrets.token_hex(6)
        secret = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
        now = self._clock()
        with self._lock:
            self._require_user(user)
            self.store.execute(
                """INSERT INTO api_tokens (id, user_name, token_sha256, description, created_at, expires_at)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (
                    token_id, user, _sha256(secret), description, _iso(now),
                    _iso(now + expires_in) if expires_in is not None else None,
                ),
            )
        return token_id, secret

    def list_tokens(self, user: str | None = None) -> list[ApiToken]:
        query = ("SELECT id, user_name, description, created_at, expires_at, revoked_at, last_used_at "
                 "FROM api_tokens")
        params: tuple[str, ...] = ()
        if user is not None:
            query, params = query + " WHERE user_name = ?", (user,)
        with self._lock:
            rows = self.store.execute(query + " ORDER BY user_name, created_at, id", params)
        return [_token(r) for r in rows]

    def get_token(self, token_id: str) -> ApiToken | None:
        with self._lock:
            rows = self.store.execute(
                "SELECT id, user_name, description, created_at, expires_at, revoked_at, last_used_at "
                "FROM api_tokens WHERE id = ?",
                (token_id,),
            )
        return _token(rows[0]) if rows else None

    def revoke_token(self, token_id: str) -> None:
        with self._lock:
            token = self.get_token(token_id)
            if token is None:
                raise TenancyError(f"token: no token with id {token_id!r}")
            if token.revoked_at is None:
                self.store.execute(
                    "UPDATE api_tokens SET revoked_at = ? WHERE id = ?", (_iso(self._clock()), token_id)
                )

    def check_token(self, secret: str) -> TokenCheck:
        match = _TOKEN.match(secret)
        if match is None:
            return TokenCheck(None, "not a netwarden API token")
        token_id = match.group(1)
        with self._lock:
            rows = self.store.execute(
                "SELECT user_name, token_sha256, expires_at, revoked_at, last_used_at FROM api_tokens WHERE id = ?",
                (token_id,),
            )
            # Hash even when the id is unknown, so timing does not tell which ids exist.
            presented = _sha256(secret)
            stored = rows[0][1] if rows else _sha256("")
            if not rows or not hmac.compare_digest(presented, stored):
                return TokenCheck(None, "unknown API token")
            user, _, expires_at, revoked_at, last_used_at = rows[0]
            now = self._clock()
            # Details only once the secret matched: the holder already knows the token existed.
            if revoked_at is not None:
                return TokenCheck(None, "API token revoked")
            expires = _parse_time(expires_at)
            if expires is not None and expires <= now:
                return TokenCheck(None, f"API token expired at {expires_at}")
            last_used = _parse_time(last_used_at)
            if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
                try:
                    self.store.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (_iso(now), token_id))
                except Exception:  # any driver's "database is locked": last-used is advisory
                    log.warning("could not record last use of API token %s", token_id, exc_info=True)
            return TokenCheck(self.principal_for_user(user))

    def principal_for_token(self, secret: str) -> Principal | None:
        """The token's user with its bindings; None when unknown, expired or revoked."""
        return self.check_token(secret).principal

    # -- ownership ------------------------------------------------------------------------------
    def record_namespace_labels(
        self, cluster: str, namespaces: Mapping[str, Mapping[str, str]], *, complete: bool = True
    ) -> None:
        """Remember the `netwarden.io/workspace` label of a cluster's namespaces (name -> labels).

        `complete`: `namespaces` is the cluster's whole namespace list, so label observations of
        namespaces missing from it (deleted) are dropped too; otherwise only the given ones change."""
        now = _iso(self._clock())
        with self._lock, self.store.transaction():
            if complete:
                self.store.execute("DELETE FROM namespace_workspace_labels WHERE cluster = ?", (cluster,))
            for namespace, labels in namespaces.items():
                workspace = (labels.get(WORKSPACE_LABEL) or "").strip()
                self.store.execute(
                    "DELETE FROM namespace_workspace_labels WHERE cluster = ? AND namespace = ?", (cluster, namespace)
                )
                if workspace:
                    self.store.execute(
                        "INSERT INTO namespace_workspace_labels (cluster, namespace, workspace, observed_at) "
                        "VALUES (?, ?, ?, ?)",
                        (cluster, namespace, workspace, now),
                    )

    def namespace_labels(self) -> dict[tuple[str, str], dict[str, str]]:
        """Recorded labels: (cluster, namespace) -> {netwarden.io/workspace: workspace}."""
        with self._lock:
            return _read_namespace_labels(self.store)

    def ownership_index(
        self, namespace_labels: Mapping[tuple[str, str], Mapping[str, str]] | None = None
    ) -> OwnershipIndex:
        """The store's ownership plus recorded labels, then `namespace_labels` (fresher, e.g. from the
        flow pipeline) on top."""
        with self._lock:
            return ownership_index_of(self.store, namespace_labels, recorded=_read_namespace_labels(self.store))

    def ownership(
        self, namespace_labels: Mapping[tuple[str, str], Mapping[str, str]] | None = None
    ) -> Ownership:
        """A fresh tenancy snapshot for role checks and scope filters (the query API calls this per
        request, from any thread), with label-declared namespaces merged in.

        `namespace_labels`: (cluster, namespace) -> that namespace's labels, as last seen."""
        return self.ownership_index(namespace_labels).merged_ownership()


def recorded_namespace_labels(store: ControlPlaneStore) -> dict[tuple[str, str], dict[str, str]]:
    """(cluster, namespace) -> {netwarden.io/workspace: workspace} as last recorded; {} before the
    tenancy tables exist (a store no Tenancy has opened yet)."""
    if "tenancy/0002-namespace-labels" not in store.applied_migrations():
        return {}
    return _read_namespace_labels(store)


def _read_namespace_labels(store: ControlPlaneStore) -> dict[tuple[str, str], dict[str, str]]:
    rows = store.execute("SELECT cluster, namespace, workspace FROM namespace_workspace_labels")
    return {(c, n): {WORKSPACE_LABEL: w} for c, n, w in rows}


def ownership_index_of(
    store: ControlPlaneStore,
    namespace_labels: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    *,
    recorded: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
) -> OwnershipIndex:
    """The one answer to "who owns (cluster, namespace)": the store's workspaces, then recorded labels
    (`recorded`, read from the store when not given), then `namespace_labels` on top. The query API's
    scopes and the inventory topic both use it."""
    index = OwnershipIndex.from_store(store)
    if recorded is None:
        recorded = recorded_namespace_labels(store)
    for (cluster, namespace), labels in {**recorded, **(namespace_labels or {})}.items():
        index.add_label_declared(cluster, namespace, labels)
    return index


# Cilium puts a pod's namespace labels on its endpoint, so flows carry them too.
CILIUM_NAMESPACE_LABEL_PREFIX = "k8s:io.cilium.k8s.namespace.labels."


def namespace_labels_from_endpoint(labels: Iterable[str]) -> dict[str, str]:
    """Namespace labels from a Hubble endpoint's Cilium labels (`k8s:io.cilium.k8s.namespace.labels.K=V`),
    so the flow pipeline can feed `OwnershipIndex.add_label_declared` without asking the kube API."""
    out: dict[str, str] = {}
    for label in labels:
        if label.startswith(CILIUM_NAMESPACE_LABEL_PREFIX):
            key, sep, value = label[len(CILIUM_NAMESPACE_LABEL_PREFIX):].partition("=")
            if sep and key:
                out[key] = value
    return out


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _token(row: Iterable[Any]) -> ApiToken:
    token_id, user, description, created, expires, revoked, last_used = row
    created_at = _parse_time(created)
    assert created_at is not None
    return ApiToken(
        token_id, user, description, created_at, _parse_time(expires), _parse_time(revoked), _parse_time(last_used)
    )


def parse_duration(text: str) -> timedelta | None:
    """'30d', '12h', '90m', '2w', '3600s'; 'never' -> None (no expiry)."""
    value = text.strip().lower()
    if value in ("never", "none", "0"):
        return None
    match = re.fullmatch(r"(\d+)\s*([smhdw])", value)
    if match is None or int(match.group(1)) == 0:
        raise TenancyError(f"expires: {text!r} is not a duration like 30d, 12h, 90m, 2w or 'never'")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


# -- namespace ownership ----------------------------------------------------------------------------

OwnershipSource = Literal["store", "label"]


@dataclass(frozen=True)
class OwnershipEntry:
    project: str
    workspace: str
    source: OwnershipSource


@dataclass
class OwnershipIndex:
    """(cluster, namespace) -> (project, workspace). Pure: built from an `Ownership` snapshot, then
    fed namespace labels (from the inventory topic or the kube API) by the caller."""

    ownership: Ownership
    _entries: dict[tuple[str, str], OwnershipEntry] = field(default_factory=dict, init=False)
    # Why a label was not used, per namespace (operators ask "why is my namespace unowned?").
    ignored_labels: dict[tuple[str, str], str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for workspace, refs in self.ownership.workspace_namespaces.items():
            project = self.ownership.workspace_project.get(workspace, "")
            for ref in refs:
                self._entries[(ref.cluster, ref.namespace)] = OwnershipEntry(project, workspace, "store")

    @classmethod
    def from_store(cls, store: ControlPlaneStore) -> OwnershipIndex:
        return cls(store.ownership())

    def add_label_declared(self, cluster: str, namespace: str, labels: Mapping[str, str]) -> OwnershipEntry | None:
        """Apply a namespace's current labels; returns the resulting owner (None: unowned).

        Called again when the labels change: removing the label removes a label-declared owner.
        """
        key = (cluster, namespace)
        current = self._entries.get(key)
        self.ignored_labels.pop(key, None)
        workspace = (labels.get(WORKSPACE_LABEL) or "").strip()
        if current is not None and current.source == "store":
            if workspace and workspace != current.workspace:
                self.ignored_labels[key] = (
                    f"label {WORKSPACE_LABEL}={workspace} ignored: the store assigns {cluster}/{namespace} "
                    f"to workspace {current.workspace}"
                )
            return current
        if not workspace:
            self._entries.pop(key, None)
            return None
        reason = ""
        project = self.ownership.workspace_project.get(workspace)
        if project is None:
            reason = f"label {WORKSPACE_LABEL}={workspace} ignored: no workspace named {workspace!r}"
        elif not self.ownership.cluster_in_project(cluster, project):
            # A workspace only spans clusters of its project (the store enforces the same).
            reason = (f"label {WORKSPACE_LABEL}={workspace} ignored: cluster {cluster} is not in project "
                      f"{project} of that workspace")
        if reason:
            self.ignored_labels[key] = reason
            self._entries.pop(key, None)
            return None
        entry = OwnershipEntry(project or "", workspace, "label")
        self._entries[key] = entry
        return entry

    def owner(self, cluster: str, namespace: str) -> tuple[str, str] | None:
        entry = self._entries.get((cluster, namespace))
        return (entry.project, entry.workspace) if entry is not None else None

    def entry(self, cluster: str, namespace: str) -> OwnershipEntry | None:
        return self._entries.get((cluster, namespace))

    def entries(self) -> dict[tuple[str, str], OwnershipEntry]:
        return dict(self._entries)

    def workspace_namespaces(self, workspace: str) -> frozenset[NamespaceRef]:
        return frozenset(NamespaceRef(c, n) for (c, n), e in self._entries.items() if e.workspace == workspace)

    def merged_ownership(self) -> Ownership:
        """The store snapshot with label-declared namespaces added to their workspaces, for `Authorizer`."""
        namespaces: dict[str, set[NamespaceRef]] = {w: set() for w in self.ownership.workspace_project}
        for (cluster, namespace), entry in self._entries.items():
            namespaces.setdefault(entry.workspace, set()).add(NamespaceRef(cluster, namespace))
        return Ownership(
            project_clusters=self.ownership.project_clusters,
            workspace_project=self.ownership.workspace_project,
            workspace_namespaces={w: frozenset(n) for w, n in namespaces.items()},
        )

    def visibility(self, principal: Principal) -> Visibility:
        return visibility_of(principal, self)


@dataclass(frozen=True)
class Visibility:
    """What a principal may see (issue 3 "Visibility rule"): everything (org roles), whole clusters
    (infra-admin and project roles: the project's clusters), or single namespaces (workspace roles).
    The query API turns this into its SQL WHERE clause."""

    everything: bool = False
    clusters: frozenset[str] = frozenset()
    namespaces: frozenset[NamespaceRef] = frozenset()

    def covers(self, cluster: str, namespace: str) -> bool:
        return self.everything or cluster in self.clusters or NamespaceRef(cluster, namespace) in self.namespaces

    def covers_cluster(self, cluster: str) -> bool:
        """Whether anything in the cluster is visible (the cluster appears in listings)."""
        return self.everything or cluster in self.clusters or any(r.cluster == cluster for r in self.namespaces)

    @property
    def nothing(self) -> bool:
        return not (self.everything or self.clusters or self.namespaces)


def visibility_of(principal: Principal, index: OwnershipIndex) -> Visibility:
    if principal.roles(Role.ORG_ADMIN, Role.ORG_READ_ONLY):
        return Visibility(everything=True)
    clusters: set[str] = set()
    namespaces: set[NamespaceRef] = set()
    for b in principal.roles(Role.INFRA_ADMIN, Role.PROJECT_ADMIN, Role.PROJECT_READ_ONLY):
        clusters |= index.ownership.project_clusters.get(b.scope_name, frozenset())
        # Same rule as query_api.scope.ScopeFilter: the project's workspaces count too, should one
        # hold a namespace outside the project's clusters.
        for workspace, project in index.ownership.workspace_project.items():
            if project == b.scope_name:
                namespaces |= index.workspace_namespaces(workspace)
    for b in principal.roles(Role.WORKSPACE_ADMIN, Role.WORKSPACE_READ_ONLY):
        namespaces |= index.workspace_namespaces(b.scope_name)
    # Namespaces inside an already visible cluster add nothing; dropping them keeps the SQL short.
    return Visibility(False, frozenset(clusters), frozenset(r for r in namespaces if r.cluster not in clusters))


def visible_clusters(principal: Principal, index: OwnershipIndex, known_clusters: Iterable[str]) -> list[str]:
    """Known clusters the principal sees anything of, sorted."""
    vis = visibility_of(principal, index)
    return sorted(c for c in set(known_clusters) if vis.covers_cluster(c))


def visible_namespaces(
    principal: Principal, index: OwnershipIndex, known_namespaces: Iterable[NamespaceRef] = ()
) -> list[NamespaceRef]:
    """Visible namespaces among the known ones (e.g. seen in flows or in clusters' inventories) plus
    every namespace owned by a workspace, sorted."""
    vis = visibility_of(principal, index)
    candidates = set(known_namespaces) | {NamespaceRef(c, n) for c, n in index.entries()}
    return sorted(r for r in candidates if vis.covers(r.cluster, r.namespace))

"""`netwarden admin RESOURCE VERB`: tenancy administration on the local control-plane store.

    netwarden admin cluster   create NAME [--type upstream] [--cni cilium] | list | delete NAME
    netwarden admin project   create NAME --cluster C [--cluster C2 ...] | list | delete NAME
    netwarden admin workspace create NAME --project P --namespace CLUSTER/NS [...] | list | delete NAME
    netwarden admin user      create NAME | list | delete NAME
    netwarden admin binding   create USER --role ROLE [--scope NAME] | list [--user U] | delete USER --role ROLE [--scope NAME]
    netwarden admin token     create USER [--expires 30d] [--description TEXT] | list [--user U] | delete ID
    netwarden admin namespace list [--cluster C] | sync [--cluster C]
    netwarden admin oidc      check [--config FILE] [--token JWT]
    netwarden admin inventory show [--cluster C] | publish [--kafka HOST:PORT] [--follow]

Whoever can open the store file already holds every power over it, so these commands act as
org-admin (projects and workspaces still go through the engine API's validation). `token create`
prints the token alone on stdout (scripts: `T=$(netwarden admin token create alice)`) and the rest
on stderr; the token is not stored and cannot be shown again.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from netwarden.cli import CommandError

if TYPE_CHECKING:
    from policy_engine.control_plane import ControlPlane
    from policy_engine.tenancy import Tenancy

STALE_NOTE = "stale: its scope was deleted or re-created since; grants nothing"
RESOURCES = ("cluster", "project", "workspace", "user", "binding", "token", "namespace", "oidc", "inventory")


def register(sub: Any, groups: dict[str, Any]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="control-plane data directory (env NETWARDEN_DATA_DIR, default ./netwarden-data)")
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")

    admin = sub.add_parser("admin", help="projects, workspaces, users, role bindings and API tokens")
    resources = admin.add_subparsers(dest="admin_resource", metavar="RESOURCE", required=True)

    def verbs(name: str, help_text: str) -> Any:
        return resources.add_parser(name, help=help_text).add_subparsers(
            dest="admin_verb", metavar="VERB", required=True)

    v = verbs("cluster", "clusters (projects are sets of clusters)")
    p = v.add_parser("create", parents=[common], help="register or update a cluster")
    p.add_argument("name")
    p.add_argument("--type", default="upstream", help="cluster type: EKS, AKS, upstream, bare-metal, ... (default upstream)")
    p.add_argument("--cni", default="cilium", help="primary CNI (default cilium)")
    p.add_argument("--kube-context", help="kubeconfig context to reach the cluster")
    p.add_argument("--namespace", action="append", default=[], metavar="NS", help="a namespace known to exist (repeatable)")
    p.set_defaults(handler=cmd_cluster_create)
    p = v.add_parser("list", parents=[common, listing], help="list clusters")
    p.set_defaults(handler=cmd_cluster_list)
    p = v.add_parser("delete", parents=[common], help="delete a cluster")
    p.add_argument("name")
    p.set_defaults(handler=cmd_cluster_delete)

    v = verbs("project", "projects: sets of clusters")
    p = v.add_parser("create", parents=[common], help="create or update a project")
    p.add_argument("name")
    p.add_argument("--cluster", action="append", default=[], metavar="CLUSTER",
                   help="a cluster of the project (repeatable, or comma-separated)")
    p.add_argument("--description", default="")
    p.set_defaults(handler=cmd_project_create)
    p = v.add_parser("list", parents=[common, listing], help="list projects")
    p.set_defaults(handler=cmd_project_list)
    p = v.add_parser("delete", parents=[common], help="delete a project (its workspaces first) and its role bindings")
    p.add_argument("name")
    p.set_defaults(handler=cmd_project_delete)

    v = verbs("workspace", "workspaces: sets of namespaces on clusters of one project")
    p = v.add_parser("create", parents=[common], help="create or update a workspace")
    p.add_argument("name")
    p.add_argument("--project", required=True)
    p.add_argument("--namespace", action="append", default=[], metavar="CLUSTER/NS",
                   help="a namespace of the workspace (repeatable, or comma-separated)")
    p.add_argument("--description", default="")
    p.set_defaults(handler=cmd_workspace_create)
    p = v.add_parser("list", parents=[common, listing], help="list workspaces")
    p.set_defaults(handler=cmd_workspace_list)
    p = v.add_parser("delete", parents=[common], help="delete a workspace and its role bindings")
    p.add_argument("name")
    p.set_defaults(handler=cmd_workspace_delete)

    v = verbs("user", "users")
    p = v.add_parser("create", parents=[common], help="create a user")
    p.add_argument("name")
    p.set_defaults(handler=cmd_user_create)
    p = v.add_parser("list", parents=[common, listing], help="list users with their roles")
    p.set_defaults(handler=cmd_user_list)
    p = v.add_parser("delete", parents=[common], help="delete a user, its role bindings and its tokens")
    p.add_argument("name")
    p.set_defaults(handler=cmd_user_delete)

    roles = ", ".join(_role_ids())
    v = verbs("binding", "role bindings: a role on the organization, a project or a workspace")
    for verb, handler, text in (("create", cmd_binding_create, "grant a role"),
                                ("delete", cmd_binding_delete, "remove a role")):
        p = v.add_parser(verb, parents=[common], help=text)
        p.add_argument("user")
        p.add_argument("--role", required=True, help=f"one of {roles}")
        p.add_argument("--scope", help="'org' for org roles (default), else the project or workspace name")
        p.set_defaults(handler=handler)
    p = v.add_parser("list", parents=[common, listing], help="list role bindings")
    p.add_argument("--user")
    p.set_defaults(handler=cmd_binding_list)

    v = verbs("token", "API tokens (Authorization: Bearer ...)")
    p = v.add_parser("create", parents=[common], help="create a token; it is printed once")
    p.add_argument("user")
    p.add_argument("--expires", default="never", metavar="DURATION", help="e.g. 30d, 12h, 2w, or never (default)")
    p.add_argument("--description", default="")
    p.set_defaults(handler=cmd_token_create)
    p = v.add_parser("list", parents=[common, listing], help="list tokens (never their secrets)")
    p.add_argument("--user")
    p.set_defaults(handler=cmd_token_list)
    p = v.add_parser("delete", parents=[common], help="revoke a token")
    p.add_argument("id")
    p.set_defaults(handler=cmd_token_delete)

    v = verbs("namespace", "namespace ownership: declared by workspaces or by the netwarden.io/workspace label")
    p = v.add_parser("list", parents=[common, listing], help="owned namespaces, with where the ownership comes from")
    p.add_argument("--cluster")
    p.set_defaults(handler=cmd_namespace_list)
    p = v.add_parser("sync", parents=[common],
                     help="read namespaces' netwarden.io/workspace labels from the clusters' Kubernetes API")
    p.add_argument("--cluster", help="only this cluster (default: every cluster with API access configured)")
    p.set_defaults(handler=cmd_namespace_sync)

    v = verbs("oidc", "OIDC sign-in")
    p = v.add_parser("check", parents=[common],
                     help="validate a JWT with the OIDC configuration and show the user and roles it maps to")
    p.add_argument("--config", metavar="FILE", help="OIDC configuration, JSON or YAML (default: env NETWARDEN_OIDC_CONFIG)")
    p.add_argument("--token", help="the JWT (default: read from stdin)")
    p.set_defaults(handler=cmd_oidc_check)

    v = verbs("inventory", "what the flow enricher knows of each cluster (the compacted `inventory` topic)")
    p = v.add_parser("show", parents=[common, listing], help="the recorded inventory: ownership and desired policy sets")
    p.add_argument("--cluster")
    p.set_defaults(handler=cmd_inventory_show)
    p = v.add_parser("publish", parents=[common],
                     help="send the whole inventory to Kafka; --follow keeps publishing every change (scale mode)")
    p.add_argument("--kafka", default=None, metavar="HOST:PORT[,...]", help="brokers (env NETWARDEN_KAFKA)")
    p.add_argument("--follow", action="store_true", help="run the publisher until interrupted")
    p.set_defaults(handler=cmd_inventory_publish)


def _role_ids() -> list[str]:
    from policy_engine.roles import Role

    return [r.value for r in Role]


# -- plumbing -------------------------------------------------------------------------------------


@dataclass
class AdminSession:
    cp: ControlPlane
    tenancy: Tenancy


@contextmanager
def admin_session(args: argparse.Namespace) -> Iterator[AdminSession]:
    from policy_engine.control_plane import ControlPlane
    from policy_engine.roles import PermissionDenied, Principal
    from policy_engine.store import ControlPlaneStore, StoreError, resolve_data_dir
    from policy_engine.tenancy import Tenancy

    try:
        store = ControlPlaneStore.open(resolve_data_dir(args.data_dir))
    except OSError as exc:
        raise CommandError(f"cannot open the control-plane store: {exc}") from None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "cli"
    try:
        with store.transaction():
            yield AdminSession(ControlPlane(store, Principal.with_role("org-admin", name=user)), Tenancy(store))
        publish_inventory(store)
    except (StoreError, PermissionDenied) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()


def publish_inventory(store: Any) -> None:
    """After a committed write: send the inventory updates it recorded (policy_engine.inventory) now when
    NETWARDEN_KAFKA names the brokers (scale mode). Best effort: the write is done either way, and what is
    not sent here stays in the outbox for the running publisher (`netwarden up` polls it)."""
    import os

    bootstrap = os.environ.get("NETWARDEN_KAFKA")
    if not bootstrap:
        return
    from netwarden.broker import ensure_topics
    from policy_engine.inventory import pending_messages
    from policy_engine.inventory_publisher import publish_pending_now
    from schemas.topics import INVENTORY, pipeline_topics

    async def ensure_topic(servers: str) -> None:
        await ensure_topics(servers, [t for t in pipeline_topics(1) if t.name == INVENTORY])

    try:
        publish_pending_now(store, bootstrap, ensure_topic=ensure_topic)
    except Exception as exc:  # Kafka down or slow: never fail the committed write
        pending = len(pending_messages(store))
        print(f"netwarden: inventory: not published to {bootstrap} ({exc or type(exc).__name__}); "
              f"{pending} update(s) stay queued for the running publisher", file=sys.stderr)


def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _emit(data: list[dict[str, Any]], output: str, header: list[str], rows: Callable[[], list[list[str]]]) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    table = [header, *rows()]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _time(t: datetime | None, never: str = "-") -> str:
    return t.isoformat(timespec="seconds") if t is not None else never


# -- clusters -------------------------------------------------------------------------------------


def cmd_cluster_create(args: argparse.Namespace) -> int:
    from policy_engine import install_profile
    from policy_engine.model import Cluster

    try:
        cluster_type = install_profile.normalize_cluster_type(args.type)
    except ValueError as exc:
        raise CommandError(f"--type: {exc}") from None
    cni = args.cni.strip().lower()
    if cni not in install_profile.PRIMARY_CNIS:
        raise CommandError(f"--cni: unknown primary CNI {args.cni!r}; one of {', '.join(install_profile.PRIMARY_CNIS)}")
    with admin_session(args) as s:
        old = s.cp.store.get_cluster(args.name)
        cluster = Cluster(args.name, cluster_type, cni, kube_context=args.kube_context or (old.kube_context if old else None),
                          kubeconfig=old.kubeconfig if old else None, api_server=old.api_server if old else None,
                          namespaces=tuple(sorted(set(_split(args.namespace)) or (old.namespaces if old else ()))))
        print(f"cluster {args.name} {s.cp.put_cluster(cluster)}")
    return 0


def cmd_cluster_list(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        clusters = s.cp.list_clusters()
    _emit([{"name": c.name, **c.to_content()} for c in clusters], args.output, ["NAME", "TYPE", "CNI", "NAMESPACES"],
          lambda: [[c.name, c.cluster_type, c.primary_cni, ",".join(c.namespaces) or "-"] for c in clusters])
    return 0


def cmd_cluster_delete(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        if s.cp.store.get_cluster(args.name) is None:
            raise CommandError(f"no cluster named {args.name!r}")
        s.cp.delete_cluster(args.name)
    print(f"cluster {args.name} deleted")
    return 0


# -- projects -------------------------------------------------------------------------------------


def cmd_project_create(args: argparse.Namespace) -> int:
    from policy_engine.model import Project

    with admin_session(args) as s:
        old = s.cp.store.get_project(args.name)
        clusters = tuple(sorted(set(_split(args.cluster)))) or (old.clusters if old else ())
        description = args.description or (old.description if old else "")
        print(f"project {args.name} {s.cp.put_project(Project(args.name, clusters, description))}")
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        projects = s.cp.list_projects()
        workspaces = s.cp.list_workspaces()
    per_project = {p.name: [w.name for w in workspaces if w.project == p.name] for p in projects}
    _emit([{"name": p.name, **p.to_content(), "workspaces": per_project[p.name]} for p in projects], args.output,
          ["NAME", "CLUSTERS", "WORKSPACES", "DESCRIPTION"],
          lambda: [[p.name, ",".join(p.clusters) or "-", ",".join(per_project[p.name]) or "-", p.description]
                   for p in projects])
    return 0


def cmd_project_delete(args: argparse.Namespace) -> int:
    from policy_engine.roles import ScopeKind

    with admin_session(args) as s:
        if s.cp.store.get_project(args.name) is None:
            raise CommandError(f"no project named {args.name!r}")
        s.cp.delete_project(args.name)
        # A later project of the same name must not inherit old grants.
        dropped = s.tenancy.remove_scope_bindings(ScopeKind.PROJECT, args.name)
    print(f"project {args.name} deleted" + (f", {dropped} role binding(s) removed" if dropped else ""))
    return 0


# -- workspaces -----------------------------------------------------------------------------------


def _namespace_ref(value: str) -> Any:
    from policy_engine.model import NamespaceRef

    cluster, sep, namespace = value.partition("/")
    if not sep or not cluster or not namespace or "/" in namespace:
        raise CommandError(f"--namespace: expected CLUSTER/NAMESPACE, got {value!r}")
    return NamespaceRef(cluster, namespace)


def cmd_workspace_create(args: argparse.Namespace) -> int:
    from policy_engine.model import Workspace

    refs = tuple(sorted({_namespace_ref(v) for v in _split(args.namespace)}))
    with admin_session(args) as s:
        old = s.cp.store.get_workspace(args.name)
        description = args.description or (old.description if old else "")
        namespaces = refs or (old.namespaces if old and old.project == args.project else ())
        print(f"workspace {args.name} {s.cp.put_workspace(Workspace(args.name, args.project, namespaces, description))}")
    return 0


def cmd_workspace_list(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        workspaces = s.cp.list_workspaces()
    _emit([{"name": w.name, "project": w.project,
            "namespaces": [{"cluster": r.cluster, "namespace": r.namespace} for r in w.namespaces],
            "description": w.description} for w in workspaces],
          args.output, ["NAME", "PROJECT", "NAMESPACES", "DESCRIPTION"],
          lambda: [[w.name, w.project, ",".join(str(r) for r in w.namespaces) or "-", w.description]
                   for w in workspaces])
    return 0


def cmd_workspace_delete(args: argparse.Namespace) -> int:
    from policy_engine.roles import ScopeKind

    with admin_session(args) as s:
        if s.cp.store.get_workspace(args.name) is None:
            raise CommandError(f"no workspace named {args.name!r}")
        s.cp.delete_workspace(args.name)
        dropped = s.tenancy.remove_scope_bindings(ScopeKind.WORKSPACE, args.name)
    print(f"workspace {args.name} deleted" + (f", {dropped} role binding(s) removed" if dropped else ""))
    return 0


# -- users ----------------------------------------------------------------------------------------


def cmd_user_create(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        result = s.tenancy.create_user(args.name)
    print(f"user {args.name} {'created' if result == 'created' else 'already exists'}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    from policy_engine.tenancy import UserBinding

    with admin_session(args) as s:
        users = s.tenancy.list_users()
        bindings = s.tenancy.list_bindings()
        tokens = s.tenancy.list_tokens()
    now = datetime.now(UTC)
    roles: dict[str, list[UserBinding]] = {}
    for b in bindings:
        roles.setdefault(b.user, []).append(b)
    active = {u.name: sum(1 for t in tokens if t.user == u.name and t.status(now) == "active") for u in users}
    _emit(
        [{"name": u.name, "created_at": u.created_at,
          "roles": [{"role": b.binding.role.value, "scope": b.scope, "stale": b.stale}
                    for b in roles.get(u.name, [])],
          "active_tokens": active[u.name]} for u in users],
        args.output, ["NAME", "ROLES", "ACTIVE TOKENS", "CREATED"],
        lambda: [[u.name, ", ".join(f"{b.binding.role.value}@{b.scope}" + (" (stale)" if b.stale else "")
                                    for b in roles.get(u.name, [])) or "-",
                  str(active[u.name]), u.created_at] for u in users],
    )
    return 0


def cmd_user_delete(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        s.tenancy.delete_user(args.name)
    print(f"user {args.name} deleted with its role bindings and tokens")
    return 0


# -- bindings -------------------------------------------------------------------------------------


def cmd_binding_create(args: argparse.Namespace) -> int:
    from policy_engine.tenancy import parse_binding

    with admin_session(args) as s:
        result = s.tenancy.add_binding(args.user, args.role, args.scope)
    binding = parse_binding(args.role, args.scope)
    print(f"user {args.user}: {binding} " + ("granted" if result == "created" else "already granted"))
    return 0


def cmd_binding_delete(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        s.tenancy.remove_binding(args.user, args.role, args.scope)
    print(f"user {args.user}: {args.role} on {args.scope or 'org'} removed")
    return 0


def cmd_binding_list(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        if args.user is not None and s.tenancy.get_user(args.user) is None:
            raise CommandError(f"no user named {args.user!r}")
        bindings = s.tenancy.list_bindings(args.user)
    _emit([{"user": b.user, "role": b.binding.role.value, "scope_kind": b.binding.scope_kind.value,
            "scope": b.scope, "stale": b.stale} for b in bindings],
          args.output, ["USER", "ROLE", "SCOPE", "NOTE"],
          lambda: [[b.user, b.binding.role.value, f"{b.binding.scope_kind.value} {b.binding.scope_name}".strip(),
                    STALE_NOTE if b.stale else ""] for b in bindings])
    return 0


# -- tokens ---------------------------------------------------------------------------------------


def cmd_token_create(args: argparse.Namespace) -> int:
    from policy_engine.tenancy import parse_duration

    with admin_session(args) as s:
        expires_in = parse_duration(args.expires)
        token_id, secret = s.tenancy.create_token(args.user, expires_in, description=args.description)
        token = s.tenancy.get_token(token_id)
        roles = ", ".join(str(b) for b in s.tenancy.bindings(args.user)) or "no roles yet"
    assert token is not None
    print(f"token {token_id} for user {args.user} ({roles}), expires {_time(token.expires_at, 'never')}; "
          "shown once, store it now:", file=sys.stderr)
    print(secret)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        if args.user is not None and s.tenancy.get_user(args.user) is None:
            raise CommandError(f"no user named {args.user!r}")
        tokens = s.tenancy.list_tokens(args.user)
    now = datetime.now(UTC)
    _emit(
        [{"id": t.id, "user": t.user, "status": t.status(now), "description": t.description,
          "created_at": _time(t.created_at), "expires_at": _time(t.expires_at, "") or None,
          "revoked_at": _time(t.revoked_at, "") or None, "last_used_at": _time(t.last_used_at, "") or None}
         for t in tokens],
        args.output, ["ID", "USER", "STATUS", "CREATED", "EXPIRES", "LAST USED", "DESCRIPTION"],
        lambda: [[t.id, t.user, t.status(now), _time(t.created_at), _time(t.expires_at, "never"),
                  _time(t.last_used_at, "never"), t.description] for t in tokens],
    )
    return 0


def cmd_token_delete(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        s.tenancy.revoke_token(args.id)
    print(f"token {args.id} revoked")
    return 0


# -- namespaces -----------------------------------------------------------------------------------


def cmd_namespace_list(args: argparse.Namespace) -> int:
    with admin_session(args) as s:
        index = s.tenancy.ownership_index()
    entries = sorted((k, e) for k, e in index.entries().items() if args.cluster in (None, k[0]))
    ignored = sorted((k, why) for k, why in index.ignored_labels.items() if args.cluster in (None, k[0]))
    _emit(
        [{"cluster": c, "namespace": n, "project": e.project, "workspace": e.workspace, "source": e.source}
         for (c, n), e in entries],
        args.output, ["CLUSTER", "NAMESPACE", "PROJECT", "WORKSPACE", "DECLARED BY"],
        lambda: [[c, n, e.project, e.workspace, e.source] for (c, n), e in entries],
    )
    if args.output == "table":
        for (c, n), why in ignored:
            print(f"note: {c}/{n}: {why}", file=sys.stderr)
    return 0


def cmd_namespace_sync(args: argparse.Namespace) -> int:
    from policy_engine.kube import KubeApiError
    from policy_engine.tenancy import WORKSPACE_LABEL

    failures = 0
    with admin_session(args) as s:
        clusters = s.cp.store.list_clusters()
        if args.cluster is not None:
            clusters = [c for c in clusters if c.name == args.cluster]
            if not clusters:
                raise CommandError(f"no cluster named {args.cluster!r}")
        reachable = [c for c in clusters if c.api_server or c.kube_context or c.kubeconfig]
        if not reachable:
            raise CommandError("no cluster has API access configured (apiServer, kubeContext or kubeconfig)")
        for cluster in reachable:
            try:
                labels = _namespace_labels(cluster)
            except KubeApiError as exc:
                # One unreachable cluster must not stop the others; its old observations stay.
                print(f"cluster {cluster.name}: cannot list namespaces: {exc}", file=sys.stderr)
                failures += 1
                continue
            s.tenancy.record_namespace_labels(cluster.name, labels)
            labelled = sorted(n for n, lab in labels.items() if lab.get(WORKSPACE_LABEL))
            print(f"cluster {cluster.name}: {len(labels)} namespace(s), {len(labelled)} labelled"
                  + (f" ({', '.join(labelled)})" if labelled else ""))
        index = s.tenancy.ownership_index()
    for (c, n), why in sorted(index.ignored_labels.items()):
        if any(c == cl.name for cl in reachable):
            print(f"note: {c}/{n}: {why}", file=sys.stderr)
    if failures:
        raise CommandError(f"{failures} cluster(s) could not be read")
    return 0


def _namespace_labels(cluster: Any) -> dict[str, dict[str, str]]:
    """name -> labels of every namespace, through the official client (as `netwarden sync` connects)."""
    import os

    from kubernetes import client as k8s_client

    from policy_engine.kube import KubeApiError, KubeCluster

    try:
        if cluster.api_server:
            kube = KubeCluster.from_url(cluster.api_server, token=os.environ.get("NETWARDEN_KUBE_TOKEN"))
        else:
            kube = KubeCluster.from_kubeconfig(cluster.kubeconfig, cluster.kube_context)
        response = k8s_client.CoreV1Api(kube.api).list_namespace(_preload_content=False, _request_timeout=30)
        items = json.loads(response.data).get("items") or []
    except k8s_client.ApiException as exc:
        raise KubeApiError(exc.status or 0, str(exc.reason), f"{cluster.name}: {exc.reason}") from None
    except Exception as exc:  # kubeconfig errors, urllib3 connection errors and the like
        raise KubeApiError(0, "Unreachable", f"{cluster.name}: {exc}") from None
    return {item["metadata"]["name"]: dict(item["metadata"].get("labels") or {}) for item in items}


# -- OIDC -----------------------------------------------------------------------------------------


def cmd_oidc_check(args: argparse.Namespace) -> int:
    """What the API would make of this JWT: the same Authenticator, against the local store."""
    import yaml

    from query_api.auth import Authenticator, AuthError, OIDCConfig, OIDCConfigError

    try:
        if args.config:
            with open(args.config) as f:
                config = OIDCConfig.from_mapping(yaml.safe_load(f) or {})
        else:
            maybe = OIDCConfig.from_env()
            if maybe is None:
                raise CommandError("no OIDC configuration: pass --config FILE or set NETWARDEN_OIDC_CONFIG")
            config = maybe
    except (OSError, ValueError, yaml.YAMLError) as exc:  # OIDCConfigError is a ValueError
        kind = "OIDC configuration" if isinstance(exc, OIDCConfigError) else "cannot read the OIDC configuration"
        raise CommandError(f"{kind}: {exc}") from None
    token = (args.token or sys.stdin.read()).strip()
    with admin_session(args) as s:
        try:
            principal = Authenticator(s.tenancy, config).authenticate(f"Bearer {token}")
        except AuthError as exc:
            raise CommandError(f"token refused ({exc.status}): {exc.detail}") from None
    print(f"user {principal.name}: " + ", ".join(str(b) for b in principal.bindings))
    return 0


# -- inventory ------------------------------------------------------------------------------------


def cmd_inventory_show(args: argparse.Namespace) -> int:
    from policy_engine.inventory import latest_inventory, published_revisions

    with admin_session(args) as s:
        inventory = latest_inventory(s.cp.store)
        published = published_revisions(s.cp.store)
    clusters = sorted(c for c in inventory if args.cluster in (None, c))
    if args.cluster is not None and not clusters:
        raise CommandError(f"no inventory for cluster {args.cluster!r}")

    def policy_text(c: str) -> tuple[str, str, str]:
        desired = inventory[c].desired
        if desired is None:
            return "-", "-", "-"
        if desired.error:
            return str(desired.revision), desired.engine, f"error: {desired.error}"
        return str(desired.revision), desired.engine, str(len(desired.policies))

    def staged_text(c: str) -> str:
        staged = inventory[c].staged
        if staged is None or staged.error:
            return f"error: {staged.error}" if staged else "-"
        return ",".join(f"{v.policy}@{v.version}" for v in staged.staged_versions) or "-"

    _emit([{**inventory[c].to_dict(), "publishedRevision": published.get(c, 0)} for c in clusters], args.output,
          ["CLUSTER", "REVISION", "PUBLISHED", "PROJECTS", "NAMESPACES OWNED", "POLICY REVISION", "ENGINE", "POLICIES",
           "STAGED"],
          lambda: [[c, str(inventory[c].revision), str(published.get(c, 0)), inventory[c].project or "-",
                    ",".join(f"{ns}={o.workspace}" for ns, o in sorted(inventory[c].namespaces.items())) or "-",
                    *policy_text(c), staged_text(c)] for c in clusters])
    return 0


def cmd_inventory_publish(args: argparse.Namespace) -> int:
    import asyncio
    import os
    import signal

    from netwarden.broker import ensure_topics
    from policy_engine.inventory import all_messages, mark_published, record_inventory
    from policy_engine.inventory_publisher import InventoryPublisher, new_inventory_producer, send_messages
    from policy_engine.store import ControlPlaneStore, resolve_data_dir
    from schemas.topics import INVENTORY, pipeline_topics

    bootstrap = args.kafka or os.environ.get("NETWARDEN_KAFKA")
    if not bootstrap:
        raise CommandError("--kafka: no brokers given (or set NETWARDEN_KAFKA)")
    data_dir = resolve_data_dir(args.data_dir)

    async def ensure_topic(servers: str) -> None:
        await ensure_topics(servers, [t for t in pipeline_topics(1) if t.name == INVENTORY])

    async def once() -> int:
        with ControlPlaneStore.open(data_dir) as store:
            with store.transaction():
                record_inventory(store)
            messages = all_messages(store)
            await ensure_topic(bootstrap)
            producer = new_inventory_producer(bootstrap)
            await producer.start()
            try:
                await send_messages(producer, messages)
            finally:
                await producer.stop()
            mark_published(store, messages)
        return len(messages)

    async def follow() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        publisher = InventoryPublisher(lambda: ControlPlaneStore.open(data_dir), bootstrap, ensure_topic=ensure_topic)
        print(f"publishing the inventory of {data_dir} to {bootstrap} (Ctrl-C to stop)", file=sys.stderr)
        await publisher.run(stop)

    try:
        if args.follow:
            asyncio.run(follow())
            return 0
        sent = asyncio.run(asyncio.wait_for(once(), 30))
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise CommandError(f"cannot publish the inventory to {bootstrap}: {exc or type(exc).__name__}") from None
    except Exception as exc:  # aiokafka's errors
        if type(exc).__module__.startswith("aiokafka"):
            raise CommandError(f"cannot publish the inventory to {bootstrap}: {exc}") from None
        raise
    print(f"{sent} inventory message(s) sent to {bootstrap}")
    return 0

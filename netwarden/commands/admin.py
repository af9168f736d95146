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
from datetime import datetime
from typing import TYPE_CHECKING, Any

from netwarden.cli import CommandError
from netwarden.supervise import stop_on_signals

if TYPE_CHECKING:
    from policy_engine.control_plane import ControlPlane
    from policy_engine.tenancy import Tenancy

STALE_NOTE = "stale: its scope was deleted or re-created since; grants nothing"
RESOURCES = ("cluster", "project", "workspace", "user", "binding", "token", "namespace", "oidc", "inventory")


def register(sub: Any, groups: dict[str, Any]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="control-plane data directory (env NETWARDEN_DATA_DIR, default ./netwarden-data)")
    # Verbs that also work against a running API, as the token's principal (netwarden.api_client).
    remote = argparse.ArgumentParser(add_help=False, parents=[common])
    remote.add_argument("--server", metavar="URL", help="ask a netwarden API instead (env NETWARDEN_SERVER)")
    remote.add_argument("--token", metavar="T", help="API token for --server (env NETWARDEN_TOKEN)")
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")

    admin = sub.add_parser("admin", help="projects, workspaces, users, role bindings and API tokens")
    resources = admin.add_subparsers(dest="admin_resource", metavar="RESOURCE", required=True)

    def verbs(name: str, help_text: str) -> Any:
        return resources.add_parser(name, help=help_text).add_subparsers(
            dest="admin_verb", metavar="VERB", required=True)

    v = verbs("cluster", "clusters (projects are sets of clusters)")
    p = v.add_parser("create", parents=[remote], help="register or update a cluster")
    p.add_argument("name")
    p.add_argument("--type", default="upstream", help="cluster type: EKS, AKS, upstream, bare-metal, ... (default upstream)")
    p.add_argument("--cni", default="cilium", help="primary CNI (default cilium)")
    p.add_argument("--kube-context", help="kubeconfig context to reach the cluster")
    p.add_argument("--namespace", action="append", default=[], metavar="NS", help="a namespace known to exist (repeatable)")
    p.set_defaults(handler=cmd_cluster_create)
    p = v.add_parser("list", parents=[remote, listing], help="list clusters")
    p.set_defaults(handler=cmd_cluster_list)
    p = v.add_parser("delete", parents=[remote], help="delete a cluster")
    p.add_argument("name")
    p.set_defaults(handler=cmd_cluster_delete)

    v = verbs("project", "projects: sets of clusters")
    p = v.add_parser("create", parents=[remote], help="create or update a project")
    p.add_argument("name")
    p.add_argument("--cluster", action="append", default=[], metavar="CLUSTER",
                   help="a cluster of the project (repeatable, or comma-separated)")
    p.add_argument("--description", default="")
    p.set_defaults(handler=cmd_project_create)
    p = v.add_parser("list", parents=[remote, listing], help="list projects")
    p.set_defaults(handler=cmd_project_list)
    p = v.add_parser("delete", parents=[remote], help="delete a project (its workspaces first) and its role bindings")
    p.add_argument("name")
    p.set_defaults(handler=cmd_project_delete)

    v = verbs("workspace", "workspaces: sets of namespaces on clusters of one project")
    p = v.add_parser("create", parents=[remote], help="create or update a workspace")
    p.add_argument("name")
    p.add_argument("--project", required=True)
    p.add_argument("--namespace", action="append", default=[], metavar="CLUSTER/NS",
                   help="a namespace of the workspace (repeatable, or comma-separated)")
    p.add_argument("--description", default="")
    p.set_defaults(handler=cmd_workspace_create)
    p = v.add_parser("list", parents=[remote, listing], help="list workspaces")
    p.set_defaults(handler=cmd_workspace_list)
    p = v.add_parser("delete", parents=[remote], help="delete a workspace and its role bindings")
    p.add_argument("name")
    p.set_defaults(handler=cmd_workspace_delete)

    v = verbs("user", "users")
    p = v.add_parser("create", parents=[remote], help="create a user")
    p.add_argument("name")
    p.set_defaults(handler=cmd_user_create)
    p = v.add_parser("list", parents=[remote, listing], help="list users with their roles")
    p.set_defaults(handler=cmd_user_list)
    p = v.add_parser("delete", parents=[remote], help="delete a user, its role bindings and its tokens")
    p.add_argument("name")
    p.set_defaults(handler=cmd_user_delete)

    roles = ", ".join(_role_ids())
    v = verbs("binding", "role bindings: a role on the organization, a project or a workspace")
    for verb, handler, text in (("create", cmd_binding_create, "grant a role"),
                                ("delete", cmd_binding_delete, "remove a role")):
        p = v.add_parser(verb, parents=[remote], help=text)
        p.add_argument("user")
        p.add_argument("--role", required=True, help=f"one of {roles}")
        p.add_argument("--scope", help="'org' for org roles (default), else the project or workspace name")
        p.set_defaults(handler=handler)
    p = v.add_parser("list", parents=[remote, listing], help="list role bindings")
    p.add_argument("--user")
    p.set_defaults(handler=cmd_binding_list)

    v = verbs("token", "API tokens (Authorization: Bearer ...)")
    p = v.add_parser("create", parents=[remote], help="create a token; it is printed once")
    p.add_argument("user")
    p.add_argument("--expires", default="never", metavar="DURATION", help="e.g. 30d, 12h, 2w, or never (default)")
    p.add_argument("--description", default="")
    p.set_defaults(handler=cmd_token_create)
    p = v.add_parser("list", parents=[remote, listing], help="list tokens (never their secrets)")
    p.add_argument("--user")
    p.set_defaults(handler=cmd_token_list)
    p = v.add_parser("delete", parents=[remote], help="revoke a token")
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


# -- over HTTP (--server/--token) -----------------------------------------------------------------


def _remote(args: argparse.Namespace) -> Any:
    """The API client when the command asks a server (--server, else NETWARDEN_SERVER without --data-dir)."""
    from netwarden.api_client import ApiClient, server_of

    return ApiClient.of(args) if server_of(args) else None


def _found(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((i for i in items if i["name"] == name), None)


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
    namespaces = tuple(sorted(set(_split(args.namespace))))
    if (client := _remote(args)) is not None:
        old = _found(_cluster_rows(client.call("GET", "/api/v1/documents/clusters")["documents"]), args.name) or {}
        spec = {"type": cluster_type, "primaryCNI": cni, "kubeContext": args.kube_context or old.get("kubeContext"),
                "kubeconfig": old.get("kubeconfig"), "apiServer": old.get("apiServer"),
                "namespaces": list(namespaces or old.get("namespaces", []))}
        doc = {"apiVersion": "netwarden.io/v1", "kind": "Cluster", "metadata": {"name": args.name},
               "spec": {k: v for k, v in spec.items() if v is not None}}
        result = client.call("PUT", f"/api/v1/clusters/{args.name}", json=doc)["result"]
    else:
        with admin_session(args) as s:
            prev = s.cp.store.get_cluster(args.name)
            cluster = Cluster(args.name, cluster_type, cni, kube_context=args.kube_context or (prev.kube_context if prev else None),
                              kubeconfig=prev.kubeconfig if prev else None, api_server=prev.api_server if prev else None,
                              namespaces=namespaces or (prev.namespaces if prev else ()))
            result = s.cp.put_cluster(cluster)
    print(f"cluster {args.name} {result}")
    return 0


def _cluster_rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`admin cluster list -o json`: name and the cluster's definition, from its documents."""
    keys = ("type", "primaryCNI", "kubeContext", "kubeconfig", "apiServer", "namespaces")
    return [{"name": d["metadata"]["name"], **{k: d["spec"].get(k, [] if k == "namespaces" else None) for k in keys}}
            for d in docs]


def cmd_cluster_list(args: argparse.Namespace) -> int:
    from query_api.policy_api import resource_documents

    if (client := _remote(args)) is not None:
        docs = client.call("GET", "/api/v1/documents/clusters")["documents"]
    else:
        with admin_session(args) as s:
            docs = resource_documents(s.cp, "clusters")
    clusters = _cluster_rows(docs)
    _emit(clusters, args.output, ["NAME", "TYPE", "CNI", "NAMESPACES"],
          lambda: [[c["name"], c["type"], c["primaryCNI"], ",".join(c["namespaces"]) or "-"] for c in clusters])
    return 0


def cmd_cluster_delete(args: argparse.Namespace) -> int:
    if (client := _remote(args)) is not None:
        if not client.call("DELETE", f"/api/v1/clusters/{args.name}")["deleted"]:
            raise CommandError(f"no cluster named {args.name!r}")
    else:
        with admin_session(args) as s:
            if s.cp.store.get_cluster(args.name) is None:
                raise CommandError(f"no cluster named {args.name!r}")
            s.cp.delete_cluster(args.name)
    print(f"cluster {args.name} deleted")
    return 0


# -- projects -------------------------------------------------------------------------------------


def cmd_project_create(args: argparse.Namespace) -> int:
    from policy_engine.model import Project

    clusters = tuple(sorted(set(_split(args.cluster))))
    if (client := _remote(args)) is not None:
        old = _found(client.call("GET", "/api/v1/admin/projects")["projects"], args.name) or {}
        body = {"clusters": list(clusters or old.get("clusters", [])),
                "description": args.description or old.get("description", "")}
        result = client.call("PUT", f"/api/v1/admin/projects/{args.name}", json=body)["result"]
    else:
        with admin_session(args) as s:
            prev = s.cp.store.get_project(args.name)
            description = args.description or (prev.description if prev else "")
            result = s.cp.put_project(Project(args.name, clusters or (prev.clusters if prev else ()), description))
    print(f"project {args.name} {result}")
    return 0


def cmd_project_list(args: argparse.Namespace) -> int:
    from query_api.admin_api import projects_view

    if (client := _remote(args)) is not None:
        projects = client.call("GET", "/api/v1/admin/projects")["projects"]
    else:
        with admin_session(args) as s:
            projects = projects_view(s.cp)
    _emit(projects, args.output, ["NAME", "CLUSTERS", "WORKSPACES", "DESCRIPTION"],
          lambda: [[p["name"], ",".join(p["clusters"]) or "-", ",".join(p["workspaces"]) or "-", p["description"]]
                   for p in projects])
    return 0


def cmd_project_delete(args: argparse.Namespace) -> int:
    from policy_engine.roles import ScopeKind

    dropped = 0
    if (client := _remote(args)) is not None:
        if not client.call("DELETE", f"/api/v1/admin/projects/{args.name}")["deleted"]:
            raise CommandError(f"no project named {args.name!r}")
    else:
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
    if (client := _remote(args)) is not None:
        old = _found(client.call("GET", "/api/v1/admin/workspaces")["workspaces"], args.name) or {}
        kept = [f"{r['cluster']}/{r['namespace']}" for r in old.get("namespaces", [])] \
            if old.get("project") == args.project else []
        body = {"project": args.project, "namespaces": [str(r) for r in refs] or kept,
                "description": args.description or old.get("description", "")}
        result = client.call("PUT", f"/api/v1/admin/workspaces/{args.name}", json=body)["result"]
    else:
        with admin_session(args) as s:
            prev = s.cp.store.get_workspace(args.name)
            description = args.description or (prev.description if prev else "")
            namespaces = refs or (prev.namespaces if prev and prev.project == args.project else ())
            result = s.cp.put_workspace(Workspace(args.name, args.project, namespaces, description))
    print(f"workspace {args.name} {result}")
    return 0


def cmd_workspace_list(args: argparse.Namespace) -> int:
    from query_api.admin_api import workspaces_view

    if (client := _remote(args)) is not None:
        workspaces = client.call("GET", "/api/v1/admin/workspaces")["workspaces"]
    else:
        with admin_session(args) as s:
            workspaces = workspaces_view(s.cp)
    _emit(workspaces, args.output, ["NAME", "PROJECT", "NAMESPACES", "DESCRIPTION"],
          lambda: [[w["name"], w["project"], ",".join(f"{r['cluster']}/{r['namespace']}" for r in w["namespaces"]) or "-",
                    w["description"]] for w in workspaces])
    return 0


def cmd_workspace_delete(args: argparse.Namespace) -> int:
    from policy_engine.roles import ScopeKind

    dropped = 0
    if (client := _remote(args)) is not None:
        if not client.call("DELETE", f"/api/v1/admin/workspaces/{args.name}")["deleted"]:
            raise CommandError(f"no workspace named {args.name!r}")
    else:
        with admin_session(args) as s:
            if s.cp.store.get_workspace(args.name) is None:
                raise CommandError(f"no workspace named {args.name!r}")
            s.cp.delete_workspace(args.name)
            dropped = s.tenancy.remove_scope_bindings(ScopeKind.WORKSPACE, args.name)
    print(f"workspace {args.name} deleted" + (f", {dropped} role binding(s) removed" if dropped else ""))
    return 0


# -- users ----------------------------------------------------------------------------------------


def cmd_user_create(args: argparse.Namespace) -> int:
    if (client := _remote(args)) is not None:
        result = client.call("PUT", f"/api/v1/admin/users/{args.name}")["result"]
    else:
        with admin_session(args) as s:
            result = s.tenancy.create_user(args.name)
    print(f"user {args.name} {'created' if result == 'created' else 'already exists'}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    from query_api.admin_api import users_view

    if (client := _remote(args)) is not None:
        users = client.call("GET", "/api/v1/admin/users")["users"]
    else:
        with admin_session(args) as s:
            users = users_view(s.tenancy)
    _emit(users, args.output, ["NAME", "ROLES", "ACTIVE TOKENS", "CREATED"],
          lambda: [[u["name"], ", ".join(f"{r['role']}@{r['scope']}" + (" (stale)" if r["stale"] else "")
                                         for r in u["roles"]) or "-", str(u["active_tokens"]), u["created_at"]]
                   for u in users])
    return 0


def cmd_user_delete(args: argparse.Namespace) -> int:
    if (client := _remote(args)) is not None:
        client.call("DELETE", f"/api/v1/admin/users/{args.name}")
    else:
        with admin_session(args) as s:
            s.tenancy.delete_user(args.name)
    print(f"user {args.name} deleted with its role bindings and tokens")
    return 0


# -- bindings -------------------------------------------------------------------------------------


def cmd_binding_create(args: argparse.Namespace) -> int:
    from policy_engine.tenancy import TenancyError, parse_binding

    try:
        binding = parse_binding(args.role, args.scope)
    except TenancyError as exc:
        raise CommandError(f"--{exc}") from None
    if (client := _remote(args)) is not None:
        body = {"user": args.user, "role": args.role, "scope": args.scope or "org"}
        result = client.call("POST", "/api/v1/admin/bindings", json=body)["result"]
    else:
        with admin_session(args) as s:
            result = s.tenancy.add_binding(args.user, args.role, args.scope)
    print(f"user {args.user}: {binding} " + ("granted" if result == "created" else "already granted"))
    return 0


def cmd_binding_delete(args: argparse.Namespace) -> int:
    if (client := _remote(args)) is not None:
        client.call("DELETE", "/api/v1/admin/bindings",
                    params={"user": args.user, "role": args.role, "scope": args.scope or "org"})
    else:
        with admin_session(args) as s:
            s.tenancy.remove_binding(args.user, args.role, args.scope)
    print(f"user {args.user}: {args.role} on {args.scope or 'org'} removed")
    return 0


def cmd_binding_list(args: argparse.Namespace) -> int:
    from query_api.admin_api import bindings_view

    if (client := _remote(args)) is not None:
        bindings = client.call("GET", "/api/v1/admin/bindings", params={"user": args.user} if args.user else {})["bindings"]
    else:
        with admin_session(args) as s:
            bindings = bindings_view(s.tenancy, args.user)
    _emit(bindings, args.output, ["USER", "ROLE", "SCOPE", "NOTE"],
          lambda: [[b["user"], b["role"], f"{b['scope_kind']} {b['scope'] if b['scope_kind'] != 'org' else ''}".strip(),
                    STALE_NOTE if b["stale"] else ""] for b in bindings])
    return 0


# -- tokens ---------------------------------------------------------------------------------------


def cmd_token_create(args: argparse.Namespace) -> int:
    from query_api.admin_api import create_token

    if (client := _remote(args)) is not None:
        body = {"user": args.user, "expires": args.expires, "description": args.description}
        created = client.call("POST", "/api/v1/admin/tokens", json=body)
    else:
        with admin_session(args) as s:
            created = create_token(s.tenancy, args.user, args.expires, args.description)
    roles = ", ".join(created["roles"]) or "no roles yet"
    print(f"token {created['id']} for user {args.user} ({roles}), expires {created['expires_at'] or 'never'}; "
          "shown once, store it now:", file=sys.stderr)
    print(created["token"])
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from query_api.admin_api import tokens_view

    if (client := _remote(args)) is not None:
        tokens = client.call("GET", "/api/v1/admin/tokens", params={"user": args.user} if args.user else {})["tokens"]
    else:
        with admin_session(args) as s:
            tokens = tokens_view(s.tenancy, args.user)
    _emit(tokens, args.output, ["ID", "USER", "STATUS", "CREATED", "EXPIRES", "LAST USED", "DESCRIPTION"],
          lambda: [[t["id"], t["user"], t["status"], t["created_at"], t["expires_at"] or "never",
                    t["last_used_at"] or "never", t["description"]] for t in tokens])
    return 0


def cmd_token_delete(args: argparse.Namespace) -> int:
    if (client := _remote(args)) is not None:
        client.call("DELETE", f"/api/v1/admin/tokens/{args.id}")
    else:
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
        stop_on_signals(stop)
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

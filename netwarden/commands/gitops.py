"""CLI for the policy control plane: apply/diff GitOps documents, list, history/rollback, render,
sync to clusters, and Cilium install profiles.

Two sources, one output: with `--server URL --token T` (or NETWARDEN_SERVER / NETWARDEN_TOKEN) every command
goes through the policy API (netwarden.api_client) and the token decides the role; locally (the data directory:
`--data-dir`, else NETWARDEN_DATA_DIR, else ./netwarden-data) the caller is the machine's operator, who can open
the store and so acts as org-admin; `--as-role ROLE --scope NAME` (or NETWARDEN_ROLE / NETWARDEN_SCOPE) only
narrows that, to rehearse what a role may see and do (`narrowed_principal`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import yaml

from netwarden.api_client import SERVER_ENV, TOKEN_ENV, ApiClient, server_of, wire_documents
from netwarden.cli import CommandError
from netwarden.commands.admin import publish_inventory
from policy_engine import cluster_sync
from policy_engine.control_plane import ControlPlane, PolicyInvalid
from policy_engine.gitops import Change, GitOpsErrors, apply_documents, load_documents
from policy_engine.model import AssignmentTarget, Cluster
from policy_engine.render import RenderError
from policy_engine.roles import Authorizer, PermissionDenied, Principal, Role, RoleBinding, ScopeKind
from policy_engine.store import ControlPlaneStore, StoreError, resolve_data_dir


def register(sub: Any, groups: dict[str, Any]) -> None:
    common = source_parser()

    p = sub.add_parser("apply", parents=[common], help="apply netwarden.io/v1 documents to the control plane")
    p.add_argument("-f", "--filename", required=True, metavar="DIR|FILE", help="YAML file or directory (e.g. a Git checkout)")
    p.add_argument("--prune", action="store_true", help="delete store objects that the files no longer contain")
    _history_flags(p)
    p.set_defaults(handler=cmd_apply)

    p = sub.add_parser("diff", parents=[common], help="what applying would change in the store and in each cluster")
    p.add_argument("-f", "--filename", required=True, metavar="DIR|FILE")
    p.add_argument("--prune", action="store_true")
    p.add_argument("--no-live", action="store_true", help="do not contact the clusters for their live state")
    p.set_defaults(handler=cmd_diff)

    p = sub.add_parser("get", parents=[common], help="list policies, blueprints, clusters or assignments")
    p.add_argument("resource", choices=["policies", "blueprints", "clusters", "assignments"])
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.set_defaults(handler=cmd_get)

    p = sub.add_parser("render", parents=[common], help="the objects a cluster should hold, as YAML")
    p.add_argument("--cluster", required=True)
    p.set_defaults(handler=cmd_render)

    p = sub.add_parser("sync", parents=[common], help="apply the rendered objects to the clusters (server-side apply, prune)")
    p.add_argument("--cluster", help="only this cluster (default: every cluster)")
    p.add_argument("--restart-unmanaged", action="store_true",
                   help="restart workloads whose pods predate Cilium (chaining) so policy applies to them")
    p.add_argument("--dry-run", action="store_true", help="only the sync status and drift: change nothing")
    _history_flags(p)
    p.set_defaults(handler=cmd_sync)

    p = sub.add_parser("install-profile", parents=[common], help="Cilium install (Helm values + CNI ConfigMap) for a cluster")
    p.add_argument("--cluster", required=True)
    p.add_argument("--engine", choices=["cilium-chaining", "cilium-primary", "primary-cni"],
                   help="override the engine of the cluster's blueprint")
    p.set_defaults(handler=cmd_install_profile)

    policy = groups["policy"]
    p = policy.add_parser("history", parents=[common], help="versions of a policy")
    p.add_argument("name")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.set_defaults(handler=cmd_history)

    p = policy.add_parser("rollback", parents=[common], help="make an old version current (as a new version)")
    p.add_argument("name")
    p.add_argument("--to", required=True, type=int, metavar="VERSION")
    p.set_defaults(handler=cmd_rollback)


def _history_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check-history", metavar="DURATION",
                   help="refuse if the change would deny traffic observed in this window (e.g. 7d): what-if first")
    p.add_argument("--force", action="store_true", help="with --check-history: warn and go ahead anyway")


def check_history(args: argparse.Namespace, documents: Sequence[Any] | None, clusters: Sequence[str] | None = None) -> None:
    """`--check-history`: refuse (CommandError listing the conversations) a change that would deny observed
    traffic, unless --force. `documents` None: sync, the current desired sets of `clusters` against history."""
    if not args.check_history:
        return
    try:  # imported here: the CLI loads without the what-if module's dependencies
        from netwarden.commands.policy_traffic import refuse_if_denies_observed
    except ImportError as exc:
        raise CommandError(f"--check-history is not available in this build ({exc})") from None
    refuse_if_denies_observed(args, documents, clusters)


# -- plumbing -------------------------------------------------------------------------------------


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def local_principal(args: argparse.Namespace, store: ControlPlaneStore) -> Principal:
    """Local mode's principal: the machine's operator (who can open the store, so holds every power over it) as
    org-admin, narrowed by --as-role/--scope (else NETWARDEN_ROLE/NETWARDEN_SCOPE) when given."""
    operator = Principal.with_role(Role.ORG_ADMIN, name=_os_user())
    role = getattr(args, "as_role", None) or os.environ.get("NETWARDEN_ROLE")
    scope = getattr(args, "scope", None) or os.environ.get("NETWARDEN_SCOPE") or ""
    if not role:
        if getattr(args, "scope", None):
            raise CommandError("--scope: needs --as-role (the role bound to that scope)")
        return operator
    return narrowed_principal(operator, role, scope, store)


def narrowed_principal(base: Principal, role: str, scope: str, store: ControlPlaneStore) -> Principal:
    """`base` acting as one binding (role, scope) it covers: a rehearsal may narrow, never widen. Covering is the
    engine's own rules (policy_engine.roles.Authorizer): `base` may write what the binding may write, and see
    what it sees. Raises CommandError naming the flag."""
    try:
        requested = Principal.with_role(role, scope, name=base.name)
    except ValueError as exc:
        raise CommandError(f"--as-role: {exc}") from None
    binding = requested.bindings[0]
    clusters: tuple[str, ...] = ()
    if binding.scope_kind is ScopeKind.PROJECT:
        project = store.get_project(scope)
        if project is None:
            raise CommandError(f"--scope: no project named {scope!r} (role {role} binds to a project)")
        clusters = project.clusters
    workspace = store.get_workspace(scope) if binding.scope_kind is ScopeKind.WORKSPACE else None
    if binding.scope_kind is ScopeKind.WORKSPACE and workspace is None:
        raise CommandError(f"--scope: no workspace named {scope!r} (role {role} binds to a workspace)")
    try:
        _require_covers(Authorizer(store.ownership()), base, binding, clusters, workspace)
    except PermissionDenied as exc:
        raise CommandError(f"--as-role: only narrows: {exc}") from None
    return requested


def _require_covers(auth: Authorizer, base: Principal, binding: RoleBinding, clusters: Sequence[str],
                    workspace: Any) -> None:
    action, role = f"acting as {binding}", binding.role
    if role is Role.ORG_ADMIN:
        auth.require_project_write(base, action)  # org-admin only
    elif role is Role.ORG_READ_ONLY and not base.roles(Role.ORG_ADMIN, Role.ORG_READ_ONLY):
        raise PermissionDenied(action, "role org-admin or org-read-only", base)
    elif role is Role.INFRA_ADMIN:
        auth.require_cluster_write(base, action, clusters)
    elif role is Role.PROJECT_ADMIN:
        auth.require_workspace_write(base, action, binding.scope_name)
    elif role is Role.PROJECT_READ_ONLY and not all(auth.can_see_cluster(base, c) for c in clusters):
        raise PermissionDenied(action, f"a role that sees every cluster of project {binding.scope_name}", base)
    elif role is Role.WORKSPACE_ADMIN:
        auth.require_workspace_policy_write(base, action, workspace.name, workspace.project)
    elif role is Role.WORKSPACE_READ_ONLY and not all(auth.can_see_namespace(base, r) for r in workspace.namespaces):
        raise PermissionDenied(action, f"a role that sees every namespace of workspace {binding.scope_name}", base)


@contextmanager
def control_plane(args: argparse.Namespace) -> Iterator[ControlPlane]:
    try:
        store = ControlPlaneStore.open(resolve_data_dir(args.data_dir))
    except OSError as exc:
        raise CommandError(f"cannot open the control-plane store: {exc}") from None
    try:
        yield ControlPlane(store, local_principal(args, store))
        publish_inventory(store)
    except GitOpsErrors as exc:
        raise CommandError("\nnetwarden: ".join(str(e) for e in exc.errors)) from None
    except (PermissionDenied, StoreError, PolicyInvalid, RenderError, cluster_sync.InstallUnsupported) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()


def _emit(data: Any, output: str, table: Callable[[], list[list[str]]]) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, sort_keys=False))
    elif output == "yaml":
        print(yaml.safe_dump_all(data, sort_keys=False) if isinstance(data, list) else yaml.safe_dump(data, sort_keys=False), end="")
    else:
        _print_table(table())


def printable(text: Any) -> str:
    """Text as a terminal shows it safely: names come from the clusters, never let one write control sequences."""
    s = "" if text is None else str(text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def table_lines(rows: Sequence[Sequence[Any]], indent: str = "") -> list[str]:
    """Rows (the first a header) as aligned columns."""
    cells = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def write_stdout(text: str) -> None:
    """The command's output; a reader that went away (`netwarden report validate | head`) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print_table(rows: list[list[str]]) -> None:
    print("\n".join(table_lines(rows)))


# -- sources: a running API (--server/--token) or the data directory ----------------------------------------

CLICKHOUSE_ENV = "NETWARDEN_CLICKHOUSE"


def source_parser() -> argparse.ArgumentParser:
    """--data-dir, --server, --token, --as-role, --scope: commands that ask a running API (which applies the
    token's role and scope) or read the data directory themselves (acting as --as-role/--scope)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR",
                        help="netwarden data directory (env NETWARDEN_DATA_DIR, default ./netwarden-data)")
    common.add_argument("--server", metavar="URL", help=f"ask a netwarden API instead (env {SERVER_ENV})")
    common.add_argument("--token", metavar="T", help=f"API token for --server (env {TOKEN_ENV})")
    common.add_argument("--as-role", help="local mode (the operator, org-admin): narrow to this role to rehearse it "
                                          "(env NETWARDEN_ROLE)")
    common.add_argument("--scope", help="local mode: project or workspace of --as-role (env NETWARDEN_SCOPE)")
    return common


def api_server(args: argparse.Namespace, *, role_from_token: bool = True) -> str | None:
    """--server, else NETWARDEN_SERVER unless --data-dir says local. With a server the token decides the role:
    --as-role/--scope are refused (`role_from_token=False`: they are the control plane's, e.g. `apply`)."""
    server = server_of(args)
    if server and role_from_token and (getattr(args, "as_role", None) or getattr(args, "scope", None)):
        raise CommandError("--as-role/--scope act locally; with --server the token decides the role")
    return server


def api_request(args: argparse.Namespace, server: str, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the API as the token (--token, else NETWARDEN_TOKEN): the 200 response, or the API's
    refusal as one CommandError (netwarden.api_client)."""
    return ApiClient.of(args, server).send(method, path, **kwargs)


def local_flow_store(args: argparse.Namespace, *, missing_ok: bool = False) -> Any:
    """The flow store of the data directory (--data-dir, else NETWARDEN_CLICKHOUSE for a ClickHouse server, else
    NETWARDEN_DATA_DIR / ./netwarden-data), migrated if it is older; None when the directory has no flow history
    and `missing_ok`. A data dir a running `netwarden up` holds is refused with the --server form."""
    from query_api.store import DataDirLockedError, FlowStore, clickhouse_path, open_clickhouse

    dsn = None if getattr(args, "data_dir", None) else os.environ.get(CLICKHOUSE_ENV)
    data_dir = str(resolve_data_dir(getattr(args, "data_dir", None)))
    if not dsn and not os.path.isdir(clickhouse_path(data_dir)):
        if missing_ok:
            return None
        raise CommandError(f"--data-dir {data_dir}: no flow history there (no {clickhouse_path(data_dir)})")
    try:
        store = FlowStore(open_clickhouse(data_dir, dsn))
    except DataDirLockedError:
        raise CommandError(
            f"--data-dir {data_dir}: the flow store is in use by a running `netwarden up` (chDB allows one process "
            f"per data directory); ask its API instead: --server http://127.0.0.1:8080 --token T (or set "
            f"{SERVER_ENV} and {TOKEN_ENV})"
        ) from None
    except Exception as exc:
        raise CommandError(f"cannot open the flow store: {exc}") from None
    if not dsn:
        store.ensure_schema()  # a data dir from before the conversation table: migrate (rows are kept)
    return store


def answer_locally(args: argparse.Namespace, work: Callable[[Any, ControlPlaneStore, Principal], Any]) -> Any:
    """`work(flow store, control-plane store, principal)` on the data directory as the local principal (the
    operator, narrowed by --as-role/--scope); its refusals as CommandErrors (a bad parameter named as its flag)."""
    from policy_engine.why import WhyInputError
    from query_api.conversations import ConversationQueryError, HistoryParamError

    flows = local_flow_store(args)
    try:
        with ControlPlaneStore.open(resolve_data_dir(args.data_dir)) as control:
            return work(flows, control, local_principal(args, control))
    except (HistoryParamError, WhyInputError) as exc:
        raise CommandError(f"--{exc.parameter}: {exc.reason}") from None
    except (PermissionDenied, StoreError, ConversationQueryError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        flows.close()


# -- commands -------------------------------------------------------------------------------------


def _documents(path: str) -> list[Any]:
    try:
        return load_documents(path)
    except GitOpsErrors as exc:
        raise CommandError("\nnetwarden: ".join(str(e) for e in exc.errors)) from None


def _client_with(docs: Sequence[Any], args: argparse.Namespace) -> tuple[ApiClient, dict[str, Any]] | None:
    """With a server: its client (naming each document by its file in refusals) and the wire documents."""
    client = ApiClient.from_args(args)
    if client is None:
        return None
    body, client.sources = wire_documents(docs)
    return client, body


def cmd_apply(args: argparse.Namespace) -> int:
    docs = _documents(args.filename)
    check_history(args, docs)  # before anything is written
    if (remote := _client_with(docs, args)) is not None:
        client, body = remote
        result = client.call("POST", "/api/v1/apply", json=body, params={"prune": args.prune})
        changes = [Change(c["kind"], c["name"], c["action"], c["detail"]) for c in result["changes"]]
    else:
        with control_plane(args) as cp:
            changes = apply_documents(cp, docs, prune=args.prune)
    for change in changes:
        print(change)
    changed = sum(1 for c in changes if c.action != "unchanged")
    print(f"{len(docs)} document(s), {changed} change(s)")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from query_api.policy_api import diff_body

    docs = _documents(args.filename)
    if (remote := _client_with(docs, args)) is not None:
        client, body = remote
        report = client.call("POST", "/api/v1/diff", json=body, params={"prune": args.prune, "live": not args.no_live})
    else:
        with control_plane(args) as cp:
            report = diff_body(cp, docs, prune=args.prune, live=not args.no_live)
    print("\n".join(diff_lines(report)))
    return 0


def diff_lines(report: Mapping[str, Any]) -> list[str]:
    """`netwarden diff`'s output from the diff as data (POST /api/v1/diff's answer)."""
    def objects(changes: list[dict[str, Any]]) -> list[str]:
        return [f"  {c['action']:6} {c['kind']} " + (f"{c['namespace']}/" if c["namespace"] else "") + c["name"]
                for c in changes] or ["  no changes"]

    store = [Change(c["kind"], c["name"], c["action"], c["detail"]) for c in report["store"]]
    lines = ["store:", *(f"  {c}" for c in store if c.action != "unchanged")] + (
        [] if any(c.action != "unchanged" for c in store) else ["  no changes"])
    for cluster in report["clusters"]:
        name = cluster["cluster"]
        lines += [f"cluster {name}: desired objects", *objects(cluster["desired"])]
        if cluster["staged"] is not None:
            lines += [f"cluster {name}: staged objects (evaluated on flows, never synced)", *objects(cluster["staged"])]
        if cluster["live"] is not None:
            lines += cluster_sync.live_diff_lines(name, cluster["live"])
    return lines


def cmd_get(args: argparse.Namespace) -> int:
    from query_api.policy_api import resource_documents

    if (client := ApiClient.from_args(args)) is not None:
        docs = client.call("GET", f"/api/v1/documents/{args.resource}")["documents"]
    else:
        with control_plane(args) as cp:
            docs = resource_documents(cp, args.resource)
    tables = {"policies": _policies_table, "blueprints": _blueprints_table, "clusters": _clusters_table,
              "assignments": _assignments_table}
    _emit(docs, args.output, lambda: tables[args.resource](docs))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from query_api.policy_api import policy_versions

    if (client := ApiClient.from_args(args)) is not None:
        data = client.call("GET", f"/api/v1/policies/{args.name}/versions")["versions"]
    else:
        with control_plane(args) as cp:
            data = policy_versions(cp, args.name)
    rows = [["VERSION", "MODE", "CREATED", "BY", "SOURCE", "MESSAGE"]] + [
        [str(v["version"]), v["mode"], v["createdAt"], v["createdBy"], v["source"], v["message"]] for v in data
    ]
    _emit(data, args.output, lambda: rows)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    if (client := ApiClient.from_args(args)) is not None:
        version = client.call("POST", f"/api/v1/policies/{args.name}/rollback", json={"to_version": args.to})["version"]
    else:
        with control_plane(args) as cp:
            with cp.store.transaction():
                version = cp.rollback_policy(args.name, args.to).version
    print(f"policy {args.name}: version {args.to} restored as version {version}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    if (client := ApiClient.from_args(args)) is not None:
        view = client.call("GET", f"/api/v1/clusters/{args.cluster}/render")
    else:
        with control_plane(args) as cp:
            view = cluster_sync.rendered_view(cp.render(args.cluster))
    print(cluster_sync.rendered_text(view), end="")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    results: list[cluster_sync.ClusterSync] = []
    if (client := ApiClient.from_args(args)) is not None:
        names = [args.cluster] if args.cluster else [
            d["metadata"]["name"] for d in client.call("GET", "/api/v1/documents/clusters")["documents"]]
        check_history(args, None, names)  # before anything reaches a cluster
        for name in names:
            answer = client.call("GET" if args.dry_run else "POST", f"/api/v1/clusters/{name}/sync",
                                 params={} if args.dry_run else {"restart_unmanaged": args.restart_unmanaged})
            results.append(cluster_sync.ClusterSync.from_dict(answer))
            print("\n".join(results[-1].lines()))
    else:
        with control_plane(args) as cp:
            clusters = [c for c in cp.store.list_clusters() if args.cluster in (None, c.name)]
            if args.cluster and not clusters:
                raise CommandError(f"unknown cluster {args.cluster!r}")
            for cluster in clusters:
                cp.require_sync(cluster.name)
            check_history(args, None, [c.name for c in clusters])  # before anything reaches a cluster
            for cluster in clusters:
                results.append(cluster_sync.sync_cluster(cp, cluster, apply=not args.dry_run,
                                                         restart_unmanaged=args.restart_unmanaged))
                print("\n".join(results[-1].lines()))
    failures = sum(1 for r in results if not r.ok)
    if failures:
        print(f"{failures} cluster(s) failed", file=sys.stderr)
    return 1 if failures else 0


def sync_cluster(cp: ControlPlane, cluster: Cluster, *, restart_unmanaged: bool = False) -> tuple[bool, list[str]]:
    """`netwarden sync` of one cluster (the caller checked `require_sync`): (ok, the lines to show)."""
    result = cluster_sync.sync_cluster(cp, cluster, restart_unmanaged=restart_unmanaged)
    return result.ok, result.lines()


def cmd_install_profile(args: argparse.Namespace) -> int:
    if (client := ApiClient.from_args(args)) is not None:
        view = client.call("GET", f"/api/v1/clusters/{args.cluster}/install-profile",
                           params={"engine": args.engine} if args.engine else {})
    else:
        with control_plane(args) as cp:
            view = cluster_sync.install_profile_view(cp, args.cluster, args.engine)
    print(cluster_sync.install_profile_text(view), end="")
    return 0


# -- presentation: tables from the documents `get -o json` prints (the same locally and over HTTP) ---------------


def _policies_table(docs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row per policy: MODE enforced, staged (only staged) or enforced+staged; VERSION the enforced one,
    STAGED the staged one; the rest describes the latest of the two."""
    rows = [["NAME", "SCOPE", "MODE", "VERSION", "STAGED", "RULES", "ENFORCERS", "UPDATED", "BY"]]
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for d in docs:
        by_name.setdefault(d["metadata"]["name"], []).append(d)
    for name, versions in by_name.items():
        latest = versions[-1]  # the staged document follows the enforced one
        status = latest["status"]
        enforced, staged = status["enforcedVersion"], status["stagedVersion"]
        mode = "+".join(m for m, v in (("enforced", enforced), ("staged", staged)) if v is not None)
        rows.append([name, latest["spec"]["scope"], mode, str(enforced or "-"), str(staged or "-"),
                     str(len(latest["spec"]["rules"])), ",".join(latest["spec"]["enforcers"]), status["updatedAt"],
                     status["updatedBy"]])
    return rows


def _blueprints_table(docs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = [["NAME", "VERSION", "ENGINE", "ENFORCEMENT", "AUDIT", "CLUSTER-POLICIES", "NAMESPACE-DEFAULTS", "BUILTIN"]]
    for d in docs:
        spec, prof = d["spec"], d["spec"]["installProfile"]
        rows.append([d["metadata"]["name"], str(d["status"]["version"]), prof.get("engine") or "auto",
                     prof["policyEnforcementMode"], str(prof["auditMode"]).lower(), str(len(spec["clusterPolicies"])),
                     str(len(spec["namespaceDefaults"]["policies"])), str(d["status"]["builtin"]).lower()])
    return rows


def _clusters_table(docs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = [["NAME", "TYPE", "PRIMARY-CNI", "ENGINE", "BLUEPRINT", "REACHED-VIA"]]
    for d in docs:
        spec, status = d["spec"], d["status"]
        via = spec.get("apiServer") or (f"context {spec['kubeContext']}" if spec.get("kubeContext") else
                                        spec.get("kubeconfig") or "-")
        blueprint = f"{status['blueprint']} v{status['blueprintVersion']}" if status["blueprint"] else "-"
        rows.append([d["metadata"]["name"], spec["type"], spec["primaryCNI"], status["engine"], blueprint, via])
    return rows


def _assignments_table(docs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = [["NAME", "KIND", "SUBJECT", "TARGETS"]]
    for d in docs:
        spec = d["spec"]
        if "blueprint" in spec:
            rows.append([d["metadata"]["name"], "blueprint", spec["blueprint"], ", ".join(spec["clusters"])])
        else:
            targets = ", ".join(str(AssignmentTarget(**t)) for t in spec["targets"])
            rows.append([d["metadata"]["name"], "policy", spec["policy"], targets])
    return rows

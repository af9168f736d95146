"""CLI for the policy control plane: apply/diff GitOps documents, list, history/rollback, render,
sync to clusters, and Cilium install profiles.

Every command acts as a principal: `--as-role ROLE --scope NAME`, else the environment variables
NETWARDEN_ROLE / NETWARDEN_SCOPE, else org-admin. The store lives in `--data-dir`, else
NETWARDEN_DATA_DIR, else ./netwarden-data.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from typing import Any

import yaml

from netwarden.cli import CommandError
from netwarden.commands.admin import publish_inventory
from policy_engine.blueprints import effective_engine
from policy_engine.control_plane import ControlPlane, PolicyInvalid
from policy_engine.gitops import (
    API_VERSION,
    GitOpsErrors,
    apply_documents,
    blueprint_document,
    diff_documents,
    load_documents,
    policy_document,
    policy_documents,
)
from policy_engine.model import Assignment, BlueprintVersion, Cluster, PolicyState
from policy_engine.render import RenderedCluster, RenderError
from policy_engine.roles import PermissionDenied, Principal
from policy_engine.store import ControlPlaneStore, StoreError, resolve_data_dir


def common_parser() -> argparse.ArgumentParser:
    """--data-dir, --as-role, --scope: what every control-plane command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="control-plane data directory (env NETWARDEN_DATA_DIR, default ./netwarden-data)")
    common.add_argument("--as-role", help="act with this role (env NETWARDEN_ROLE, default org-admin)")
    common.add_argument("--scope", help="project or workspace name the role is bound to (env NETWARDEN_SCOPE)")
    return common


def register(sub: Any, groups: dict[str, Any]) -> None:
    common = common_parser()

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
    p.add_argument("--server", metavar="URL",
                   help="with --check-history: read the history through this netwarden API (env NETWARDEN_SERVER; "
                        "needed while `netwarden up` holds the data dir's flow store)")
    p.add_argument("--token", metavar="T", help="API token for --server (env NETWARDEN_TOKEN)")


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


def principal_from(args: argparse.Namespace) -> Principal:
    role = args.as_role or os.environ.get("NETWARDEN_ROLE") or "org-admin"
    scope = args.scope or os.environ.get("NETWARDEN_SCOPE") or ""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "cli"
    try:
        return Principal.with_role(role, scope, name=user)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


@contextmanager
def control_plane(args: argparse.Namespace) -> Iterator[ControlPlane]:
    principal = principal_from(args)
    try:
        store = ControlPlaneStore.open(resolve_data_dir(args.data_dir))
    except OSError as exc:
        raise CommandError(f"cannot open the control-plane store: {exc}") from None
    try:
        yield ControlPlane(store, principal)
        publish_inventory(store)
    except GitOpsErrors as exc:
        raise CommandError("\nnetwarden: ".join(str(e) for e in exc.errors)) from None
    except (PermissionDenied, StoreError, PolicyInvalid, RenderError) as exc:
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

SERVER_ENV = "NETWARDEN_SERVER"
TOKEN_ENV = "NETWARDEN_TOKEN"
CLICKHOUSE_ENV = "NETWARDEN_CLICKHOUSE"
API_TIMEOUT_S = 120.0


def source_parser() -> argparse.ArgumentParser:
    """--data-dir, --server, --token, --as-role, --scope: commands that ask a running API (which applies the
    token's role and scope) or read the data directory themselves (acting as --as-role/--scope)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR",
                        help="netwarden data directory (env NETWARDEN_DATA_DIR, default ./netwarden-data)")
    common.add_argument("--server", metavar="URL", help=f"ask a netwarden API instead (env {SERVER_ENV})")
    common.add_argument("--token", metavar="T", help=f"API token for --server (env {TOKEN_ENV})")
    common.add_argument("--as-role", help="local mode: act with this role (env NETWARDEN_ROLE, default org-admin)")
    common.add_argument("--scope", help="local mode: project or workspace of --as-role (env NETWARDEN_SCOPE)")
    return common


def api_server(args: argparse.Namespace, *, role_from_token: bool = True) -> str | None:
    """--server, else NETWARDEN_SERVER unless --data-dir says local. With a server the token decides the role:
    --as-role/--scope are refused (`role_from_token=False`: they are the control plane's, e.g. `apply`)."""
    server = getattr(args, "server", None) or (None if getattr(args, "data_dir", None) else os.environ.get(SERVER_ENV))
    if server and role_from_token and (getattr(args, "as_role", None) or getattr(args, "scope", None)):
        raise CommandError("--as-role/--scope act locally; with --server the token decides the role")
    return server


def api_request(args: argparse.Namespace, server: str, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the API as the token (--token, else NETWARDEN_TOKEN); the 200 response, or the API's
    refusal as one CommandError (reads errors as `netwarden flows` does; document problems one per line)."""
    import httpx

    from netwarden.commands.flows import _api_error

    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV)
    headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    base = server if "://" in server else f"http://{server}"
    try:
        with httpx.Client(base_url=base.rstrip("/"), headers=headers, timeout=API_TIMEOUT_S) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CommandError(f"--server {server}: {exc}") from None
    if response.status_code == 200:
        return response
    if response.status_code == 422 and "json" in response.headers.get("content-type", ""):
        detail = response.json().get("detail")
        if isinstance(detail, str):
            raise CommandError(detail)
        if isinstance(detail, list) and detail and isinstance(detail[0], dict) and (detail[0].get("loc") or [""])[0] == "body":
            raise CommandError("\nnetwarden: ".join(str(d.get("msg", d)) for d in detail))
    raise _api_error(response)


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
    """`work(flow store, control-plane store, principal)` on the data directory as --as-role/--scope; its
    refusals as CommandErrors (a bad parameter named as its flag)."""
    from policy_engine.why import WhyInputError
    from query_api.conversations import ConversationQueryError, HistoryParamError

    principal = principal_from(args)
    flows = local_flow_store(args)
    try:
        with ControlPlaneStore.open(resolve_data_dir(args.data_dir)) as control:
            return work(flows, control, principal)
    except (HistoryParamError, WhyInputError) as exc:
        raise CommandError(f"--{exc.parameter}: {exc.reason}") from None
    except (PermissionDenied, StoreError, ConversationQueryError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        flows.close()


# -- commands -------------------------------------------------------------------------------------


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        docs = load_documents(args.filename)
    except GitOpsErrors as exc:
        raise CommandError("\nnetwarden: ".join(str(e) for e in exc.errors)) from None
    check_history(args, docs)  # before anything is written
    with control_plane(args) as cp:
        changes = apply_documents(cp, docs, prune=args.prune)
    for change in changes:
        print(change)
    changed = sum(1 for c in changes if c.action != "unchanged")
    print(f"{len(docs)} document(s), {changed} change(s)")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with control_plane(args) as cp:
        docs = load_documents(args.filename)
        report = diff_documents(cp, docs, prune=args.prune)
        print("store:")
        for change in [c for c in report.store if c.action != "unchanged"] or ["no changes"]:
            print(f"  {change}")
        for name, changes in report.clusters.items():
            print(f"cluster {name}: desired objects")
            for oc in changes or ["no changes"]:
                print(f"  {oc}")
            if name in report.staged:
                print(f"cluster {name}: staged objects (evaluated on flows, never synced)")
                for oc in report.staged[name] or ["no changes"]:
                    print(f"  {oc}")
            if not args.no_live and name in report.rendered:
                _print_live_diff(cp, docs, name, prune=args.prune)
    return 0


def _print_live_diff(cp: ControlPlane, docs: Any, name: str, *, prune: bool) -> None:
    """What a sync after this apply would change on the live cluster (nothing is written)."""
    from policy_engine.kube import KubeCluster, reachable

    try:
        with cp.store.transaction(rollback=True):
            apply_documents(cp, docs, prune=prune)
            cluster = cp.store.get_cluster(name)
            if cluster is None or not reachable(cluster):
                return
            kube = KubeCluster.of(cluster)
            rendered = _desired_live(cp, cluster, kube)
        drift = kube.drift(list(rendered.objects))
    except (GitOpsErrors, StoreError, RenderError, PermissionDenied):
        raise
    except Exception as exc:  # any transport error: report it, keep diffing the others
        print(f"  live state unavailable: {exc}")
        return
    print(f"cluster {name}: what sync would change on the live cluster")
    for note in (n for n in rendered.notes if "held back" in n):
        print(f"  note: {note}")
    for item in drift or ["nothing"]:
        print(f"  {item}")


def cmd_get(args: argparse.Namespace) -> int:
    with control_plane(args) as cp:
        if args.resource == "policies":
            states = cp.list_policy_states()
            _emit(policy_documents(states), args.output, lambda: _policies_table(states))
        elif args.resource == "blueprints":
            blueprints = cp.list_blueprints()
            _emit([blueprint_document(b) for b in blueprints], args.output, lambda: _blueprints_table(blueprints))
        elif args.resource == "clusters":
            clusters = cp.list_clusters()
            engines = {c.name: cp.policy_set(c.name) for c in clusters}
            _emit([_cluster_doc(c) for c in clusters], args.output, lambda: _clusters_table(clusters, engines))
        else:
            assignments = cp.list_assignments()
            _emit([_assignment_doc(a) for a in assignments], args.output, lambda: _assignments_table(assignments))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with control_plane(args) as cp:
        history = cp.policy_history(args.name)
    data = [
        {"version": v.version, "mode": v.info.mode, "createdAt": v.info.created_at, "createdBy": v.info.created_by,
         "source": v.info.source, "message": v.info.message, "hash": v.spec.hash()[:12],
         "spec": policy_document(v)["spec"]}
        for v in history
    ]
    rows = [["VERSION", "MODE", "CREATED", "BY", "SOURCE", "MESSAGE"]] + [
        [str(v.version), v.info.mode, v.info.created_at, v.info.created_by, v.info.source, v.info.message]
        for v in history
    ]
    _emit(data, args.output, lambda: rows)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with control_plane(args) as cp:
        with cp.store.transaction():
            pv = cp.rollback_policy(args.name, args.to)
    print(f"policy {args.name}: version {args.to} restored as version {pv.version}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    with control_plane(args) as cp:
        rendered = cp.render(args.cluster)
    print(_render_yaml(rendered), end="")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from policy_engine.kube import reachable

    failures = 0
    with control_plane(args) as cp:
        clusters = [c for c in cp.store.list_clusters() if args.cluster in (None, c.name)]
        if args.cluster and not clusters:
            raise CommandError(f"unknown cluster {args.cluster!r}")
        for cluster in clusters:
            cp.require_sync(cluster.name)
        check_history(args, None, [c.name for c in clusters])  # before anything reaches a cluster
        for cluster in clusters:
            if not reachable(cluster):
                print(f"cluster {cluster.name}: status: error: no kubeContext, kubeconfig or apiServer to reach it")
                failures += 1
                continue
            ok, lines = sync_cluster(cp, cluster, restart_unmanaged=args.restart_unmanaged)
            print("\n".join(lines))
            failures += not ok
    if failures:
        print(f"{failures} cluster(s) failed", file=sys.stderr)
    return 1 if failures else 0


def sync_cluster(cp: ControlPlane, cluster: Cluster, *, restart_unmanaged: bool = False) -> tuple[bool, list[str]]:
    """`netwarden sync` of one reachable cluster (the caller checked `require_sync`): (ok, the lines to show).
    An error of the cluster's API is one of the lines (one unreachable cluster must not stop the fleet); the
    control plane's own errors (store, render, permission) are raised."""
    from policy_engine.kube import KubeCluster

    lines = [f"cluster {cluster.name}:"]
    try:
        kube = KubeCluster.of(cluster)
        rendered = _desired_live(cp, cluster, kube)
        objects = list(rendered.objects)
        lines.append(f"  engine {rendered.engine}: {len(objects)} desired object(s)")
        lines += [f"  note: {note}" for note in rendered.notes]
        lines += [f"  drift: {item}" for item in kube.drift(objects)]
        report = kube.apply(objects, prune=True)
        lines.append(f"  sync: {report.summary()}")
        lines += [f"    created {ref}" for ref in report.created]
        lines += [f"    updated {ref}" for ref in report.updated]
        lines += [f"    pruned  {ref}" for ref in report.pruned]
        lines += [f"    error   {error}" for error in report.errors]
        if rendered.engine == "cilium-chaining":
            pods = kube.unmanaged_pods()
            if pods:
                lines.append(f"  {len(pods)} pod(s) started before Cilium are not enforced until restarted:")
                lines += [f"    {pod}" for pod in pods]
                if restart_unmanaged:
                    lines += [f"    restarted {workload}" for workload in kube.restart_workloads(pods)]
    except (StoreError, RenderError, PermissionDenied):
        raise
    except Exception as exc:  # the cluster's API: reported, the next cluster is synced
        return False, [*lines, f"  status: error: {exc}"]
    lines.append(f"  status: {'synced' if report.ok else 'errors'}")
    return report.ok, lines


def _desired_live(cp: ControlPlane, cluster: Cluster, kube: Any) -> RenderedCluster:
    """Rendered with the cluster's live namespaces; objects of namespaces it does not have are held back."""
    from policy_engine.kube import deliverable

    live = kube.namespaces()
    return deliverable(cp.render(cluster.name, live_namespaces=live), live)


def cmd_install_profile(args: argparse.Namespace) -> int:
    from policy_engine import install_profile

    with control_plane(args) as cp:
        policy_set = cp.policy_set(args.cluster)
    cluster = policy_set.cluster
    profile = policy_set.blueprint.spec.install_profile if policy_set.blueprint else None
    engine = args.engine or effective_engine(cluster, profile)
    try:
        plan = install_profile.render_install(
            cluster.name, cluster.cluster_type, cluster.primary_cni, engine=engine,
            policy_enforcement_mode=profile.policy_enforcement_mode if profile else "default",
            audit_mode=profile.audit_mode if profile else False,
        )
    except install_profile.UnsupportedCombination as exc:
        raise CommandError(f"cluster {cluster.name}: {exc}") from None
    header = [f"# cluster {cluster.name}: {cluster.cluster_type}, primary CNI {cluster.primary_cni}, engine {engine}"]
    header += [f"# note: {n}" for n in plan.notes]
    if plan.installs_nothing:
        print("\n".join([*header, "# nothing to install"]))
        return 0
    docs: list[Any] = [{"helmValues": plan.helm_values}, *plan.objects]
    print("\n".join(header))
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    return 0


# -- presentation ---------------------------------------------------------------------------------


def _render_yaml(rendered: RenderedCluster) -> str:
    header = f"# cluster {rendered.cluster}, engine {rendered.engine}: {len(rendered.objects)} object(s)\n"
    notes = "".join(f"# note: {n}\n" for n in rendered.notes)
    body = yaml.safe_dump_all(list(rendered.objects), sort_keys=False) if rendered.objects else ""
    return header + notes + body


def _cluster_doc(c: Cluster) -> dict[str, Any]:
    spec = {k: v for k, v in c.to_content().items() if v not in (None, [])}
    return {"apiVersion": API_VERSION, "kind": "Cluster", "metadata": {"name": c.name}, "spec": spec}


def _assignment_doc(a: Assignment) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Assignment", "metadata": {"name": a.name}, "spec": a.to_content()}


def _policies_table(states: Sequence[PolicyState]) -> list[list[str]]:
    """One row per policy: MODE enforced, staged (only staged) or enforced+staged; VERSION the enforced one,
    STAGED the staged one; the rest describes the latest of the two."""
    rows = [["NAME", "SCOPE", "MODE", "VERSION", "STAGED", "RULES", "ENFORCERS", "UPDATED", "BY"]]
    for s in states:
        latest = s.staged or s.enforced
        assert latest is not None
        mode = "+".join(m for m, v in (("enforced", s.enforced), ("staged", s.staged)) if v is not None)
        rows.append([s.name, s.scope, mode, str(s.enforced.version) if s.enforced else "-",
                     str(s.staged.version) if s.staged else "-", str(len(latest.spec.rules)),
                     ",".join(latest.spec.enforcers), latest.info.created_at, latest.info.created_by])
    return rows


def _blueprints_table(blueprints: Sequence[BlueprintVersion]) -> list[list[str]]:
    rows = [["NAME", "VERSION", "ENGINE", "ENFORCEMENT", "AUDIT", "CLUSTER-POLICIES", "NAMESPACE-DEFAULTS", "BUILTIN"]]
    for b in blueprints:
        prof = b.spec.install_profile
        rows.append([b.name, str(b.version), prof.engine or "auto", prof.policy_enforcement_mode,
                     str(prof.audit_mode).lower(), str(len(b.spec.cluster_policies)),
                     str(len(b.spec.namespace_policies)), str(b.builtin).lower()])
    return rows


def _clusters_table(clusters: Sequence[Cluster], sets: dict[str, Any]) -> list[list[str]]:
    rows = [["NAME", "TYPE", "PRIMARY-CNI", "ENGINE", "BLUEPRINT", "REACHED-VIA"]]
    for c in clusters:
        ps = sets[c.name]
        via = c.api_server or (f"context {c.kube_context}" if c.kube_context else c.kubeconfig or "-")
        rows.append([c.name, c.cluster_type, c.primary_cni, ps.engine,
                     f"{ps.blueprint.name} v{ps.blueprint.version}" if ps.blueprint else "-", via])
    return rows


def _assignments_table(assignments: Sequence[Assignment]) -> list[list[str]]:
    rows = [["NAME", "KIND", "SUBJECT", "TARGETS"]]
    for a in assignments:
        if a.blueprint is not None:
            rows.append([a.name, "blueprint", a.blueprint, ", ".join(a.clusters)])
        else:
            rows.append([a.name, "policy", a.policy or "", ", ".join(str(t) for t in a.targets)])
    return rows


def _describe(item: Any) -> str:
    """One line for a kube report, drift item or pod, whatever dataclass the kube module returns."""
    if isinstance(item, str):
        return item
    summary = getattr(item, "summary", None)
    if callable(summary):
        return str(summary())
    if is_dataclass(item) and not isinstance(item, type):
        parts = []
        for key, value in asdict(item).items():
            if isinstance(value, list | tuple):
                parts.append(f"{key}={len(value)}")
            elif value not in (None, "", {}):
                parts.append(f"{key}={value}")
        return " ".join(parts)
    return str(item)

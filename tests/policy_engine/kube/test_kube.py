"""KubeCluster against the local API stand-in: real HTTP through the official kubernetes client."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest

from policy_engine.install_profile import render_install
from policy_engine.kube import MANAGED_BY_LABEL, KubeCluster, ObjectRef, PodRef
from tests.kube_api_stub import KubeApiStub

MANAGED = {MANAGED_BY_LABEL: "netwarden"}


def ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def netpol(name: str, namespace: str, port: int = 80, **extra: object) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED, "netwarden.io/policy": name, "netwarden.io/version": "1"},
        },
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": [{"port": port}]}],
            **extra,
        },
    }


def cnp(name: str, namespace: str, port: str = "80") -> dict:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED)},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"toPorts": [{"ports": [{"port": port, "protocol": "TCP"}]}]}],
        },
    }


def ccnp(name: str) -> dict:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": name, "labels": dict(MANAGED)},
        "spec": {
            "endpointSelector": {},
            "egress": [
                {
                    "toEndpoints": [
                        {
                            "matchLabels": {
                                "k8s:io.kubernetes.pod.namespace": "kube-system",
                                "k8s-app": "kube-dns",
                            }
                        }
                    ],
                    "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}]}],
                }
            ],
        },
    }


@pytest.fixture
def stub() -> Iterator[KubeApiStub]:
    with KubeApiStub() as s:
        s.put(ns("shop"))
        s.put(ns("blog"))
        yield s


@pytest.fixture
def cluster(stub: KubeApiStub) -> KubeCluster:
    return KubeCluster(stub.api_client(), name="a")


def refs(*items: dict) -> list[ObjectRef]:
    return sorted(ObjectRef.of(i) for i in items)


def test_apply_creates_then_reapply_is_unchanged(stub: KubeApiStub, cluster: KubeCluster) -> None:
    desired = [netpol("allow-web", "shop"), cnp("allow-api", "blog"), ccnp("dns")]
    report = cluster.apply(desired)
    assert report.ok, report.errors
    assert report.created == refs(*desired) and not report.updated and not report.pruned
    live = stub.get("NetworkPolicy", "allow-web", "shop")
    assert live is not None and live["spec"]["ingress"] == [{"ports": [{"port": 80, "protocol": "TCP"}]}]
    assert live["metadata"]["labels"][MANAGED_BY_LABEL] == "netwarden"
    assert [m["manager"] for m in live["metadata"]["managedFields"]] == ["netwarden"]
    # Server-side apply went out as the issue asks: apply-patch+yaml, fieldManager=netwarden, force.
    patches = stub.requests_for("PATCH")
    assert {p.content_type for p in patches} == {"application/apply-patch+yaml"}
    assert all(p.query["fieldManager"] == ["netwarden"] and p.query["force"] == ["true"] for p in patches)
    assert stub.get("CiliumClusterwideNetworkPolicy", "dns") is not None

    rv = live["metadata"]["resourceVersion"]
    again = cluster.apply(copy.deepcopy(desired))
    assert again.ok and again.unchanged == refs(*desired) and not again.changed
    assert stub.get("NetworkPolicy", "allow-web", "shop")["metadata"]["resourceVersion"] == rv  # type: ignore[index]


def test_changed_desired_set_updates_and_prunes(stub: KubeApiStub, cluster: KubeCluster) -> None:
    cluster.apply([netpol("allow-web", "shop"), netpol("old", "blog"), cnp("allow-api", "blog"), ccnp("dns")])
    generation = stub.get("NetworkPolicy", "allow-web", "shop")["metadata"]["generation"]  # type: ignore[index]
    # Someone else's object with the same kinds is never touched by prune.
    stub.put(
        {
            **netpol("theirs", "shop"),
            "metadata": {"name": "theirs", "namespace": "shop", "labels": {"team": "x"}},
        }
    )

    changed = netpol("allow-web", "shop", port=8080)
    report = cluster.apply([changed, cnp("allow-api", "blog"), ccnp("dns")])
    assert report.ok, report.errors
    assert report.updated == refs(changed)
    assert report.unchanged == refs(cnp("allow-api", "blog"), ccnp("dns"))
    assert report.pruned == [ObjectRef("NetworkPolicy", "blog", "old")]
    live = stub.get("NetworkPolicy", "allow-web", "shop")
    assert live["spec"]["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]  # type: ignore[index]
    assert live["metadata"]["generation"] == generation + 1  # type: ignore[index]
    assert stub.get("NetworkPolicy", "old", "blog") is None
    assert stub.get("NetworkPolicy", "theirs", "shop") is not None
    # A field dropped from the desired object is removed from the live one (apply semantics).
    slim = netpol("allow-web", "shop", port=8080)
    slim["metadata"]["labels"].pop("netwarden.io/version")
    cluster.apply([slim, cnp("allow-api", "blog"), ccnp("dns")])
    assert "netwarden.io/version" not in stub.get("NetworkPolicy", "allow-web", "shop")["metadata"]["labels"]  # type: ignore[index]

    empty = cluster.apply([])
    assert sorted(empty.pruned) == refs(slim, cnp("allow-api", "blog"), ccnp("dns"))
    assert (
        stub.objects("NetworkPolicy", labels=MANAGED) == []
        and stub.objects("CiliumClusterwideNetworkPolicy") == []
    )


def test_prune_false_keeps_objects(stub: KubeApiStub, cluster: KubeCluster) -> None:
    cluster.apply([netpol("a", "shop")])
    report = cluster.apply([], prune=False)
    assert not report.pruned and stub.get("NetworkPolicy", "a", "shop") is not None


def test_hand_edits_and_deletes_show_as_drift_and_sync_repairs_them(
    stub: KubeApiStub, cluster: KubeCluster
) -> None:
    desired = [netpol("allow-web", "shop"), cnp("allow-api", "blog"), ccnp("dns"), netpol("keep", "blog")]
    cluster.apply(desired)
    assert cluster.drift(desired) == []

    stub.edit(
        "NetworkPolicy", "allow-web", "shop", lambda o: o["spec"]["ingress"][0]["ports"][0].update(port=9090)
    )
    stub.edit(
        "NetworkPolicy",
        "keep",
        "blog",
        lambda o: o["spec"].update(egress=[{}], policyTypes=["Ingress", "Egress"]),
    )
    stub.delete("CiliumNetworkPolicy", "allow-api", "blog")
    stub.put({**netpol("stray", "shop")})  # a managed-looking object nobody desires

    drift = {(str(d.ref), d.drift): d for d in cluster.drift(desired)}
    assert set(drift) == {
        ("NetworkPolicy shop/allow-web", "changed"),
        ("NetworkPolicy blog/keep", "changed"),
        ("CiliumNetworkPolicy blog/allow-api", "missing"),
        ("NetworkPolicy shop/stray", "extra"),
    }
    assert drift[("NetworkPolicy shop/allow-web", "changed")].details == [
        "spec.ingress[0].ports[0].port: want 80, found 9090"
    ]
    assert any(
        d.startswith("spec.egress: not desired")
        for d in drift[("NetworkPolicy blog/keep", "changed")].details
    )
    assert any("policyTypes" in d for d in drift[("NetworkPolicy blog/keep", "changed")].details)

    report = cluster.apply(desired)
    assert report.ok, report.errors
    assert report.updated == sorted(
        [ObjectRef("NetworkPolicy", "shop", "allow-web"), ObjectRef("NetworkPolicy", "blog", "keep")]
    )
    assert report.created == [ObjectRef("CiliumNetworkPolicy", "blog", "allow-api")]
    assert report.pruned == [ObjectRef("NetworkPolicy", "shop", "stray")]
    # The hand-added egress (owned by kubectl-edit, so kept by server-side apply) is gone too.
    assert "egress" not in stub.get("NetworkPolicy", "keep", "blog")["spec"]  # type: ignore[index]
    assert cluster.drift(desired) == []


def test_removed_managed_label_is_drift(stub: KubeApiStub, cluster: KubeCluster) -> None:
    desired = [netpol("a", "shop")]
    cluster.apply(desired)
    stub.edit("NetworkPolicy", "a", "shop", lambda o: o["metadata"]["labels"].pop(MANAGED_BY_LABEL))
    (item,) = cluster.drift(desired)
    assert item.drift == "changed" and item.details == [
        f'metadata.labels[{MANAGED_BY_LABEL}]: want "netwarden", found null'
    ]


def test_server_defaults_are_not_drift(stub: KubeApiStub, cluster: KubeCluster) -> None:
    # A real API server fills in protocol: TCP and policyTypes; that is not a change by hand.
    desired = [netpol("a", "shop")]
    cluster.apply(desired)
    stub.edit(
        "NetworkPolicy",
        "a",
        "shop",
        lambda o: (
            o["spec"]["ingress"][0]["ports"][0].update(protocol="TCP"),
            o["spec"].update(policyTypes=["Ingress"]),
        ),
    )
    assert cluster.drift(desired) == []
    assert cluster.apply(desired).unchanged == refs(*desired)


def test_two_stubs_are_two_clusters() -> None:
    with KubeApiStub() as east, KubeApiStub(cilium=False) as west:
        for s in (east, west):
            s.put(ns("shop"))
        a, b = KubeCluster(east.api_client(), name="east"), KubeCluster.from_url(west.url)
        ra = a.apply([cnp("allow-api", "shop"), ccnp("dns")])
        rb = b.apply([netpol("allow-api", "shop")])
        assert ra.ok and rb.ok, (ra.errors, rb.errors)
        assert ra.summary() == "east: 2 created, 0 updated, 0 unchanged, 0 pruned, 0 errors"
        assert (
            east.objects("NetworkPolicy") == []
            and west.objects("NetworkPolicy", namespace="shop")[0]["metadata"]["name"] == "allow-api"
        )
        # The cluster without Cilium refuses Cilium kinds with a clear error, and prune skips them.
        bad = b.apply([netpol("allow-api", "shop"), ccnp("dns")])
        assert [e.ref for e in bad.errors] == [ObjectRef("CiliumClusterwideNetworkPolicy", None, "dns")]
        assert "does not serve cilium.io/v2 (Cilium CRDs not installed?)" in bad.errors[0].message
        assert bad.unchanged == [ObjectRef("NetworkPolicy", "shop", "allow-api")]
        assert not b.drift([netpol("allow-api", "shop")]) and not a.drift(
            [cnp("allow-api", "shop"), ccnp("dns")]
        )


def test_errors_are_reported_per_object(stub: KubeApiStub, cluster: KubeCluster) -> None:
    invalid = cnp("bad", "shop")
    invalid["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["protocol"] = "tcp"
    stub.fail("PATCH", "NetworkPolicy", name="flaky", code=500, message="etcd timeout")
    report = cluster.apply(
        [invalid, netpol("flaky", "shop"), netpol("ok", "shop"), netpol("ghost", "nowhere")]
    )
    by_ref = {str(e.ref): e for e in report.errors}
    assert "spec.ingress[0].toPorts[0].ports[0].protocol" in by_ref["CiliumNetworkPolicy shop/bad"].message
    assert (
        by_ref["NetworkPolicy shop/flaky"].status == 500
        and "etcd timeout" in by_ref["NetworkPolicy shop/flaky"].message
    )
    assert (
        by_ref["NetworkPolicy nowhere/ghost"].status == 404
        and 'namespaces "nowhere" not found' in by_ref["NetworkPolicy nowhere/ghost"].message
    )
    assert report.created == [ObjectRef("NetworkPolicy", "shop", "ok")]
    # Nothing invalid was sent: the refusal happened before the request.
    assert not stub.requests_for("PATCH", "/ciliumnetworkpolicies/bad")


def test_stub_rejects_invalid_objects_with_422(stub: KubeApiStub) -> None:
    from kubernetes import client

    invalid = netpol("bad", "shop")
    invalid["spec"]["policyTypes"] = ["ingress"]
    api = client.NetworkingV1Api(stub.api_client())
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_network_policy("shop", invalid)
    assert info.value.status == 422 and "spec.policyTypes[0]" in info.value.body
    with pytest.raises(client.ApiException) as missing:
        api.read_namespaced_network_policy("nope", "shop")
    assert missing.value.status == 404
    api.create_namespaced_network_policy("shop", netpol("good", "shop"))
    with pytest.raises(client.ApiException) as exists:
        api.create_namespaced_network_policy("shop", netpol("good", "shop"))
    assert exists.value.status == 409 and "AlreadyExists" in exists.value.body


def test_typed_client_lists_with_label_selectors(stub: KubeApiStub) -> None:
    from kubernetes import client

    for name, tier in (("a", "web"), ("b", "db"), ("c", "cache")):
        stub.put(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "shop", "labels": {"tier": tier}},
                "data": {},
            }
        )
    core = client.CoreV1Api(stub.api_client())

    def names(selector: str) -> list[str]:
        return [
            c.metadata.name for c in core.list_namespaced_config_map("shop", label_selector=selector).items
        ]

    assert names("tier=web") == ["a"]
    assert names("tier in (web, db)") == ["a", "b"]
    assert names("tier notin (web),tier") == ["b", "c"]
    assert names("tier!=cache") == ["a", "b"]
    assert names("!tier") == []
    assert [n.metadata.name for n in core.list_namespace().items] == [
        "blog",
        "default",
        "kube-system",
        "shop",
    ]


def test_token_is_required_when_the_stub_has_one() -> None:
    with KubeApiStub(token="s3cret") as s:
        s.put(ns("shop"))
        assert KubeCluster.from_url(s.url, token="s3cret").apply([netpol("a", "shop")]).ok
        denied = KubeCluster.from_url(s.url, token="wrong").apply([netpol("b", "shop")])
        assert denied.errors and denied.errors[0].status == 401


def test_install_plan_configmap_applies(stub: KubeApiStub, cluster: KubeCluster) -> None:
    plan = render_install("a", "MKS", "calico")
    report = cluster.apply(plan.objects + [cnp("allow-api", "shop")])
    assert report.ok and ObjectRef("ConfigMap", "kube-system", "cni-configuration") in report.created
    assert cluster.apply(plan.objects + [cnp("allow-api", "shop")]).unchanged == sorted(
        [
            ObjectRef("ConfigMap", "kube-system", "cni-configuration"),
            ObjectRef("CiliumNetworkPolicy", "shop", "allow-api"),
        ]
    )


# ----------------------------------------------------------------------------- unmanaged pods


def _pod(
    name: str, namespace: str, node: str, started: str, owner: tuple[str, str] | None = None, **extra: object
) -> dict:
    meta: dict = {"name": name, "namespace": namespace, "labels": {}}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "controller": True, "uid": "x"}
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, **extra},
        "status": {"phase": "Running", "startTime": started},
    }


def _seed_workloads(stub: KubeApiStub) -> None:
    for node, started in (("n1", "2024-05-01T10:00:00Z"), ("n2", "2024-05-01T12:00:00Z")):
        agent = _pod(f"cilium-{node}", "kube-system", node, started, ("DaemonSet", "cilium"))
        agent["metadata"]["labels"] = {"k8s-app": "cilium"}
        stub.put(agent)
    stub.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}}}},
        }
    )
    stub.put(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web-5d8",
                "namespace": "shop",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "web",
                        "controller": True,
                        "uid": "y",
                    }
                ],
            },
            "spec": {},
        }
    )
    stub.put(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"template": {}},
        }
    )
    stub.put(
        _pod("web-5d8-a", "shop", "n1", "2024-05-01T09:00:00Z", ("ReplicaSet", "web-5d8"))
    )  # before agent n1
    stub.put(
        _pod("web-5d8-b", "shop", "n2", "2024-05-01T11:00:00Z", ("ReplicaSet", "web-5d8"))
    )  # before agent n2
    stub.put(_pod("db-0", "shop", "n1", "2024-05-01T09:30:00Z", ("StatefulSet", "db")))  # before
    stub.put(_pod("new-0", "shop", "n1", "2024-05-01T11:00:00Z", ("StatefulSet", "db")))  # after agent n1
    stub.put(_pod("bare", "blog", "n2", "2024-05-01T08:00:00Z"))  # before, but no controller
    stub.put(
        _pod("hostnet", "blog", "n1", "2024-05-01T08:00:00Z", hostNetwork=True)
    )  # Cilium never manages these


def test_unmanaged_pods_by_start_time_when_no_ciliumendpoints_api() -> None:
    with KubeApiStub(cilium=False) as stub:
        stub.put(ns("shop"))
        stub.put(ns("blog"))
        _seed_workloads(stub)
        cluster = KubeCluster(stub.api_client())
        pods = cluster.unmanaged_pods()
        assert [(p.namespace, p.name, p.owner_kind, p.owner_name) for p in pods] == [
            ("blog", "bare", None, None),
            ("shop", "db-0", "StatefulSet", "db"),
            ("shop", "web-5d8-a", "Deployment", "web"),
            ("shop", "web-5d8-b", "Deployment", "web"),
        ]
        assert "before the Cilium agent on n2 (2024-05-01T12:00:00Z)" in pods[-1].reason

        restarted = cluster.restart_workloads(pods)
        assert restarted == [
            "StatefulSet shop/db",
            "Deployment shop/web",
        ]  # once per workload; bare pod skipped
        deploy = stub.get("Deployment", "web", "shop")
        assert "kubectl.kubernetes.io/restartedAt" in deploy["spec"]["template"]["metadata"]["annotations"]  # type: ignore[index]
        assert deploy["spec"]["template"]["metadata"]["labels"] == {"app": "web"}  # type: ignore[index]  # merged, not replaced
        assert deploy["metadata"]["generation"] == 2  # type: ignore[index]
        assert {r.content_type for r in stub.requests_for("PATCH", "/apis/apps/v1")} == {
            "application/strategic-merge-patch+json"
        }


def test_unmanaged_pods_by_missing_ciliumendpoint(stub: KubeApiStub, cluster: KubeCluster) -> None:
    _seed_workloads(stub)
    for name in ("web-5d8-a", "new-0", "bare"):
        stub.put(
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumEndpoint",
                "metadata": {"name": name, "namespace": "blog" if name == "bare" else "shop"},
            }
        )
    pods = cluster.unmanaged_pods()
    assert [(p.namespace, p.name) for p in pods] == [("shop", "db-0"), ("shop", "web-5d8-b")]
    assert all("no CiliumEndpoint" in p.reason for p in pods)


def test_no_cilium_agents_means_nothing_to_restart(cluster: KubeCluster, stub: KubeApiStub) -> None:
    stub.put(_pod("x", "shop", "n1", "2024-05-01T09:00:00Z"))
    assert cluster.unmanaged_pods() == []
    assert cluster.restart_workloads([PodRef("shop", "x", "n1", None, None, None, "r")]) == []


def test_from_kubeconfig(tmp_path, stub: KubeApiStub) -> None:  # type: ignore[no-untyped-def]
    import yaml

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stub", "cluster": {"server": stub.url}}],
        "users": [{"name": "ops", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "east", "context": {"cluster": "stub", "user": "ops"}}],
        "current-context": "east",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    cluster = KubeCluster.from_kubeconfig(str(path), "east")
    assert cluster.name == "east"
    assert cluster.apply([netpol("a", "shop")]).ok
    assert stub.requests_for("PATCH")[-1].method == "PATCH"


def test_namespaces_and_objects_of_a_store_cluster(stub: KubeApiStub) -> None:
    from policy_engine.model import Cluster

    stub.put(ns("data", team="data"))
    kube = KubeCluster.of(Cluster("k", "upstream", "cilium", api_server=stub.url))
    namespaces = kube.namespaces()
    assert {"shop", "blog", "data"} <= namespaces.keys() and namespaces["data"]["team"] == "data"
    assert {o["metadata"]["name"] for o in kube.objects("v1", "Namespace")} == namespaces.keys()
    assert all(o["kind"] == "Namespace" for o in kube.objects("v1", "Namespace"))


def test_objects_of_namespaces_the_cluster_lacks_are_held_back() -> None:
    from policy_engine.kube import deliverable
    from policy_engine.render import RenderedCluster

    ccnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "all"}}
    rendered = RenderedCluster("k", "cilium", (ccnp, netpol("a", "shop"), netpol("b", "later"), netpol("c", "gone")))
    sent = deliverable(rendered, ["shop", "default"])
    assert [o["metadata"]["name"] for o in sent.objects] == ["all", "a"]
    assert sent.notes == ("namespace(s) gone, later do not exist on the cluster: their objects are held back",)
    assert deliverable(rendered, ["shop", "later", "gone"]).objects == rendered.objects


def test_without_retries_an_unreachable_cluster_is_asked_once() -> None:
    """A report asks every cluster's API: one that drops connections is reported after one attempt, not after
    urllib3's retries with backoff (KubeCluster.of(..., retries=False), through Configuration.retries)."""
    import socket
    import threading

    from policy_engine.kube import KubeApiError
    from policy_engine.model import Cluster

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[int] = []

    def drop_every_connection() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=drop_every_connection, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        for retries, attempts in ((False, 1), (True, 4)):  # urllib3's default: 3 retries
            accepted.clear()
            kube = KubeCluster.of(Cluster("k", "upstream", "cilium", api_server=url), timeout=5, retries=retries)
            with pytest.raises(KubeApiError):
                kube.namespaces()
            assert len(accepted) == attempts
    finally:
        listener.close()

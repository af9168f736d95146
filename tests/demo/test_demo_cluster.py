"""The demo cluster as `netwarden up` builds it: its kube API stand-in answers `sync`, `diff` (the planted drift),
`--restart-unmanaged` (the pods that predate Cilium), and the traffic generator's verdicts follow the policy
objects on it, with Hubble's drop reasons and attribution.

One cluster for the module (its first sync costs seconds); the tests run in order, each changing it as a user
would: look, sync, restart the unmanaged pods, apply a new policy, restart `up`.
"""

from __future__ import annotations

import contextlib
import io
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.traffic import DemoTraffic
from netwarden.cli import main
from netwarden.demo.enforcement import StandInJudge
from netwarden.demo.faults import UNMANAGED, plant_drift
from netwarden.demo.world import DemoCluster
from netwarden.demo_seed import DEMO_POLICIES, seed_demo, seed_demo_policies
from policy_engine.store import ControlPlaneStore
from schemas.hubble.flow import flow_pb2

CLUSTER = "demo-east"
CCNP, CNP = "CiliumClusterwideNetworkPolicy", "CiliumNetworkPolicy"


class Demo:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.store = ControlPlaneStore.open(data_dir)
        seed_demo(self.store, data_dir)
        self.open()
        seed_demo_policies(self.store, {CLUSTER: self.cluster.url})
        # What `up` does with a fresh cluster (it runs the same CLI in a process of its own).
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["sync", "--cluster", CLUSTER, "--data-dir", str(data_dir)]) == 0, out.getvalue()
        assert plant_drift(self.cluster)
        assert self.judge.refresh()  # the generator's Cilium sees what was synced and edited

    def open(self) -> None:
        self.cluster = DemoCluster.open(self.data_dir, CLUSTER, unmanaged=UNMANAGED[CLUSTER])
        self.judge = StandInJudge(self.cluster.url)
        self.judge.refresh()
        self.traffic = DemoTraffic(CLUSTER, judge=self.judge)
        self._sample: tuple[int, list[flow_pb2.Flow]] = (-1, [])

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
        capsys.readouterr()
        code = main([*argv, "--data-dir", str(self.data_dir)])
        out = capsys.readouterr().out
        assert code == 0, out
        return out

    def flows(self, client: str, server: str, port: int) -> list[flow_pb2.Flow]:
        """The generator's next flows of one connection: client "ns/workload", server "ns/workload" or an IP."""
        if self._sample[0] != self.judge.revision:  # one sample per policy revision: generating costs
            self.traffic.flows(200)  # the rest of a conversation begun under the previous revision
            self._sample = (self.judge.revision, [r.flow for r in self.traffic.flows(8_000)])
        out = []
        for f in self._sample[1]:
            if f.is_reply.value:
                continue
            src = f"{f.source.namespace}/{f.source.workloads[0].name}" if f.source.workloads else f.IP.source
            dst = f"{f.destination.namespace}/{f.destination.workloads[0].name}" if f.destination.workloads \
                else f.IP.destination
            dport = f.l4.TCP.destination_port or f.l4.UDP.destination_port
            if (src, dst, dport) == (client, server, port):
                out.append(f)
        assert out, f"no flows of {client} -> {server}:{port}"
        return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    demo = Demo(tmp_path_factory.mktemp("demo"))
    yield demo
    demo.cluster.close()
    demo.store.close()


def _policies(policies: object) -> list[tuple[str, str, str, int]]:
    return [(p.kind, p.namespace, p.name, p.revision) for p in policies]  # type: ignore[attr-defined]


def test_faults_show_in_the_traffic_as_cilium_would_enforce_them(demo: Demo) -> None:
    rev = demo.judge.revision
    # Drift: the hand-edited checkout-egress lets checkout reach redis, which the desired set denies.
    assert {f.verdict for f in demo.flows("shop/checkout", "data/redis", 6379)} == {flow_pb2.FORWARDED}
    # Pods started before Cilium: redis-0 is not enforced; redis-deny-monitoring does not bite.
    scrape = demo.flows("monitoring/prometheus", "data/redis", 6379)
    assert {f.verdict for f in scrape} == {flow_pb2.FORWARDED}
    assert not any(f.ingress_allowed_by or f.ingress_denied_by for f in scrape)
    assert any(_policies(f.egress_allowed_by) == [(CNP, "monitoring", "prometheus-egress", rev)] for f in scrape)
    # The missing rule: payments cannot reach Stripe; default deny names no policy (133).
    stripe = demo.flows("shop/payments", "54.187.174.169", 443)
    assert {(f.verdict, f.drop_reason_desc, f.traffic_direction) for f in stripe} == {
        (flow_pb2.DROPPED, 133, flow_pb2.EGRESS)}
    assert not any(f.egress_denied_by for f in stripe)
    # A deny rule: 181 with the policy that denied it.
    metadata = demo.flows("shop/cart", "169.254.169.254", 80)
    assert {(f.verdict, f.drop_reason_desc) for f in metadata} == {(flow_pb2.DROPPED, 181)}
    assert {tuple(_policies(f.egress_denied_by)) for f in metadata} == {((CCNP, "", "deny-cloud-metadata", rev),)}
    # Allowed by the policies on the cluster, attributed per direction.
    cart = demo.flows("shop/frontend", "shop/cart", 7070)
    assert {f.verdict for f in cart} == {flow_pb2.FORWARDED}
    assert any(_policies(f.ingress_allowed_by) == [(CNP, "shop", "cart-allow-frontend", rev)] for f in cart)


def test_sync_and_diff_find_the_drift_and_the_unmanaged_pods_and_the_traffic_follows(
        demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    diff = demo.cli(capsys, "diff", "-f", str(DEMO_POLICIES))
    assert "CiliumNetworkPolicy shop/checkout-egress" in diff, diff

    out = demo.cli(capsys, "sync", "--cluster", CLUSTER)
    assert "drift: CiliumNetworkPolicy shop/checkout-egress: changed" in out, out
    assert "updated CiliumNetworkPolicy shop/checkout-egress" in out
    assert "Pod data/redis-0 of StatefulSet redis" in out
    before = demo.judge.revision
    assert demo.judge.refresh() and demo.judge.revision > before
    checkout = demo.flows("shop/checkout", "data/redis", 6379)
    assert {(f.verdict, f.drop_reason_desc, f.traffic_direction) for f in checkout} == {
        (flow_pb2.DROPPED, 133, flow_pb2.EGRESS)}

    out = demo.cli(capsys, "sync", "--cluster", CLUSTER, "--restart-unmanaged")
    assert "drift:" not in out and "restarted StatefulSet data/redis" in out, out
    assert demo.cluster.stub.get("CiliumEndpoint", "redis-0", "data") is not None
    demo.judge.refresh()
    scrape = demo.flows("monitoring/prometheus", "data/redis", 6379)
    # Let out of prometheus (FORWARDED on its way), dropped where it enters redis.
    assert {(f.verdict, f.drop_reason_desc) for f in scrape if f.traffic_direction == flow_pb2.INGRESS} == {
        (flow_pb2.DROPPED, 181)}
    assert {tuple(_policies(f.ingress_denied_by)) for f in scrape if f.verdict == flow_pb2.DROPPED} == {
        ((CNP, "data", "redis-deny-monitoring", demo.judge.revision),)}
    out = demo.cli(capsys, "sync", "--cluster", CLUSTER)
    assert "drift:" not in out and "started before Cilium" not in out, out


def test_a_policy_applied_and_synced_changes_the_traffic(
        demo: Demo, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = tmp_path / "quarantine.yaml"
    doc.write_text(textwrap.dedent("""\
        apiVersion: netwarden.io/v1
        kind: Policy
        metadata: {name: quarantine-cart}
        spec:
          scope: namespace
          rules:
            - name: no-frontend
              cilium:
                endpointSelector: {matchLabels: {app: cart}}
                ingressDeny:
                  - fromEndpoints: [{matchLabels: {app: frontend}}]
        ---
        apiVersion: netwarden.io/v1
        kind: Assignment
        metadata: {name: quarantine-cart}
        spec: {policy: quarantine-cart, targets: [{cluster: demo-east, namespace: shop}]}
        """))
    demo.cli(capsys, "apply", "-f", str(doc))
    demo.judge.refresh()  # applied, not synced: Cilium does not know it yet
    assert {f.verdict for f in demo.flows("shop/frontend", "shop/cart", 7070)} == {flow_pb2.FORWARDED}
    demo.cli(capsys, "sync", "--cluster", CLUSTER)
    assert demo.judge.refresh()
    cart = demo.flows("shop/frontend", "shop/cart", 7070)
    assert {(f.verdict, f.drop_reason_desc) for f in cart if f.traffic_direction == flow_pb2.INGRESS} == {
        (flow_pb2.DROPPED, 181)}
    assert {tuple(_policies(f.ingress_denied_by)) for f in cart if f.verdict == flow_pb2.DROPPED} == {
        ((CNP, "shop", "quarantine-cart", demo.judge.revision),)}
    # Let out by frontend-egress on the way: Hubble's egress policy verdict names it.
    assert any(_policies(f.egress_allowed_by) == [(CNP, "shop", "frontend-egress", demo.judge.revision)]
               for f in demo.flows("shop/frontend", "shop/cart", 7070))


def test_restarted_up_finds_the_cluster_as_it_was_left_and_seeds_nothing(demo: Demo) -> None:
    url = demo.cluster.url
    demo.cluster.close()
    demo.open()
    assert not demo.cluster.fresh and demo.cluster.url == url  # same port: the registered apiServer holds
    assert demo.cluster.stub.get(CNP, "quarantine-cart", "shop") is not None
    assert demo.cluster.stub.get("CiliumEndpoint", "redis-0", "data") is not None
    assert seed_demo_policies(demo.store, {CLUSTER: url}) == []
    cart = demo.flows("shop/frontend", "shop/cart", 7070)
    assert {f.drop_reason_desc for f in cart if f.traffic_direction == flow_pb2.INGRESS} == {181}

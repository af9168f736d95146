"""The inventory topic on a real Tansu broker: control-plane writes (the admin CLI on the data dir, as while
`netwarden up` runs) reach the worker's inventory; a restarted worker reads it again from the start; Kafka
being down never fails a write; an ownership change published mid-stream applies to later keys only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collectors.traffic import DemoTraffic
from netwarden.broker import ensure_topics, free_port
from netwarden.cli import main as cli_main
from netwarden.demo_seed import seed_demo
from policy_engine.inventory import pending_messages
from policy_engine.inventory_publisher import InventoryPublisher
from policy_engine.store import ControlPlaneStore
from schemas.topics import INVENTORY, pipeline_topics
from streams.inventory import InventoryFeed, start_inventory
from streams.verdicts import PolicyEnricher
from tests.enrichment.flowkeys import enrich_flows, flow_key

TIMEOUT = 30


def inventory_topic() -> list:
    return [t for t in pipeline_topics(1) if t.name == INVENTORY]


async def ensure_inventory_topic(bootstrap: str) -> None:
    await ensure_topics(bootstrap, inventory_topic())


def seeded_data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    with ControlPlaneStore.open(data) as store:
        seed_demo(store, data)
    return data


async def cli(*argv: str) -> int:
    """The real `netwarden` CLI, in a thread as another process would be."""
    return await asyncio.to_thread(cli_main, list(argv))


@dataclass
class Running:
    data: Path
    bootstrap: str
    publisher: InventoryPublisher
    feed: InventoryFeed


@pytest.fixture
async def running(tansu: object, tmp_path: Path) -> AsyncIterator[Running]:
    bootstrap = tansu.bootstrap  # type: ignore[attr-defined]
    data = seeded_data_dir(tmp_path)
    await ensure_inventory_topic(bootstrap)
    stop = asyncio.Event()
    publisher = InventoryPublisher(lambda: ControlPlaneStore.open(data), bootstrap, poll_seconds=0.1,
                                   ensure_topic=ensure_inventory_topic)
    task = asyncio.create_task(publisher.run(stop))
    feed = await start_inventory(bootstrap)
    try:
        await feed.view.wait_for(lambda s: {"demo-east", "demo-west"} <= s.keys(), TIMEOUT)
        yield Running(data, bootstrap, publisher, feed)
    finally:
        await feed.stop()
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)


async def test_a_cli_write_reaches_the_worker_and_a_restart_reads_from_the_start(running: Running) -> None:
    view = running.feed.view
    east = view.get("demo-east")
    assert east is not None and east.project == "storefront"
    assert east.namespaces["shop"].workspace == "shop-team" and east.desired is not None
    code = await cli("admin", "workspace", "create", "platform-team", "--project", "storefront",
                     "--namespace", "demo-east/kube-system", "--data-dir", str(running.data))
    assert code == 0
    await view.wait_for(lambda s: "kube-system" in s["demo-east"].namespaces, TIMEOUT)
    latest = view.get("demo-east")
    assert latest is not None and latest.revision > east.revision
    assert latest.namespaces["kube-system"].workspace == "platform-team"
    # The worker restarts: a fresh consumer rebuilds the same inventory from the topic alone.
    restarted = await start_inventory(running.bootstrap)
    try:
        await asyncio.wait_for(restarted.view.ready.wait(), TIMEOUT)
        assert dict(restarted.view.snapshot()) == dict(view.snapshot())
    finally:
        await restarted.stop()
    # A deleted cluster disappears (tombstone) for running and restarted workers alike.
    assert await cli("admin", "cluster", "create", "scratch", "--data-dir", str(running.data)) == 0
    await view.wait_for(lambda s: "scratch" in s, TIMEOUT)
    assert await cli("admin", "cluster", "delete", "scratch", "--data-dir", str(running.data)) == 0
    await view.wait_for(lambda s: "scratch" not in s, TIMEOUT)


async def test_scale_mode_cli_publishes_itself_and_kafka_down_never_fails_a_write(
    tansu: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = tansu.bootstrap  # type: ignore[attr-defined]
    data = seeded_data_dir(tmp_path)
    # Kafka unreachable: the write is committed, the update stays queued, the user is told.
    monkeypatch.setenv("NETWARDEN_KAFKA", f"127.0.0.1:{free_port()}")
    assert await cli("admin", "project", "create", "lab", "--cluster", "demo-west", "--data-dir", str(data)) == 0
    assert "stay queued" in capsys.readouterr().err
    with ControlPlaneStore.open(data) as store:
        assert store.get_project("lab") is not None
        assert [m.cluster for m in pending_messages(store)] == ["demo-east", "demo-west"]
    # Kafka back (NETWARDEN_KAFKA): the next write sends everything pending itself, no publisher running.
    monkeypatch.setenv("NETWARDEN_KAFKA", bootstrap)
    assert await cli("admin", "workspace", "create", "lab-team", "--project", "lab",
                     "--namespace", "demo-west/shop", "--data-dir", str(data)) == 0
    with ControlPlaneStore.open(data) as store:
        assert pending_messages(store) == []
    feed = await start_inventory(bootstrap)
    try:
        await asyncio.wait_for(feed.view.ready.wait(), TIMEOUT)
        west = feed.view.get("demo-west")
        assert west is not None and west.projects == ("lab", "platform")
        assert west.namespaces["shop"].workspace == "lab-team"
    finally:
        await feed.stop()


async def test_an_ownership_change_mid_stream_applies_to_later_keys_only(running: Running) -> None:
    view = running.feed.view
    enricher = PolicyEnricher(view)
    keys = [flow_key("demo-east", r.flow) for r in DemoTraffic("demo-east").flows(2000)]
    shop = [i for i, k in enumerate(keys) if k.src_namespace == "shop"]
    before = enrich_flows(enricher, keys)
    assert {before[i]["src_workspace"] for i in shop} == {"shop-team"}
    evaluations = enricher.evaluations
    # The shop namespace moves to another workspace while flows keep coming.
    assert await cli("admin", "workspace", "delete", "shop-team", "--data-dir", str(running.data)) == 0
    assert await cli("admin", "workspace", "create", "checkout-team", "--project", "storefront",
                     "--namespace", "demo-east/shop", "--data-dir", str(running.data)) == 0
    await view.wait_for(lambda s: s["demo-east"].namespaces.get("shop", None) is not None
                        and s["demo-east"].namespaces["shop"].workspace == "checkout-team", TIMEOUT)
    after = enrich_flows(enricher, keys)
    assert {after[i]["src_workspace"] for i in shop} == {"checkout-team"}
    assert {before[i]["src_workspace"] for i in shop} == {"shop-team"}  # earlier rows keep what they got
    # Same policy set (no blueprint on the demo clusters): ownership re-read, verdicts from the cache.
    assert enricher.evaluations == evaluations
    assert [r["desired_verdict"] for r in after] == [r["desired_verdict"] for r in before]


async def test_admin_inventory_show_and_one_shot_publish(
    tansu: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = tansu.bootstrap  # type: ignore[attr-defined]
    data = seeded_data_dir(tmp_path)
    assert await cli("admin", "inventory", "show", "--data-dir", str(data)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["CLUSTER", "REVISION", "PUBLISHED"]
    assert any(line.startswith("demo-east") and "shop=shop-team" in line for line in table)
    assert await cli("admin", "inventory", "publish", "--kafka", bootstrap, "--data-dir", str(data)) == 0
    assert "2 inventory message(s) sent" in capsys.readouterr().out
    feed = await start_inventory(bootstrap)
    try:
        await asyncio.wait_for(feed.view.ready.wait(), TIMEOUT)
        assert set(feed.view.snapshot()) == {"demo-east", "demo-west"}
    finally:
        await feed.stop()
    assert await cli("admin", "inventory", "show", "-o", "json", "--cluster", "demo-west", "--data-dir", str(data)) == 0
    [west] = json.loads(capsys.readouterr().out)
    assert west["cluster"] == "demo-west" and west["publishedRevision"] == west["revision"]


async def test_the_publisher_waits_out_a_broker_that_is_not_up_yet(tmp_path: Path) -> None:
    from netwarden.broker import TansuBroker

    data = seeded_data_dir(tmp_path)
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    stop = asyncio.Event()
    publisher = InventoryPublisher(lambda: ControlPlaneStore.open(data), bootstrap, poll_seconds=0.1,
                                   ensure_topic=ensure_inventory_topic)
    task = asyncio.create_task(publisher.run(stop))
    # Writes go on while there is no broker at all.
    assert await cli("admin", "project", "create", "lab", "--cluster", "demo-west", "--data-dir", str(data)) == 0
    broker = TansuBroker(port=port, log_path=tmp_path / "late-tansu.log")
    await asyncio.to_thread(broker.start)
    try:
        await asyncio.wait_for(publisher.sent_event.wait(), TIMEOUT)
        feed = await start_inventory(bootstrap)
        try:
            await feed.view.wait_for(lambda s: "lab" in getattr(s.get("demo-west"), "projects", ()), TIMEOUT)
        finally:
            await feed.stop()
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)
        broker.stop()

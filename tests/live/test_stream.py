"""Live stream end to end on real parts: Hubble gRPC server -> collector -> Tansu -> Faust -> chDB -> LiveHub
-> API under uvicorn -> real WebSocket and SSE clients. Auth is the real API-token authenticator over a
control-plane store; scopes are the real ScopeFilter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI

from collectors.traffic import DemoTraffic
from netwarden.commands.bench_live import LiveRig
from policy_engine.control_plane import ControlPlane
from policy_engine.model import Cluster, NamespaceRef, Project, Workspace
from policy_engine.roles import Ownership, Principal
from policy_engine.store import ControlPlaneStore
from policy_engine.tenancy import Tenancy
from query_api.auth import Authenticator, fastapi_dependency, stream_ticket_router
from query_api.flow_query import FlowFilter
from query_api.live import STREAM_PATH, LiveHub, Missed, live_router
from query_api.scope import ScopeFilter
from query_api.store import FlowStore
from schemas.flow_render import row_to_jsonpb
from schemas.hubble.observer import observer_pb2

CLUSTER = "live-e2e"
WORKSPACE_NS = "shop"
SLOW_PREFIX = "/small"  # a second router whose clients get a tiny queue
SLOW_QUEUE = 20


def control_plane(tmp: Path) -> tuple[Tenancy, Ownership, dict[str, str]]:
    store = ControlPlaneStore.open(tmp)
    cp = ControlPlane(store, Principal.with_role("org-admin", name="test"))
    cp.put_cluster(Cluster(CLUSTER, "upstream", "cilium"))
    cp.put_project(Project("retail", (CLUSTER,)))
    cp.put_workspace(Workspace("shop-team", "retail", (NamespaceRef(CLUSTER, WORKSPACE_NS),)))
    tenancy = Tenancy(store)
    tokens = {}
    for user, role, scope in (("olga", "org-admin", None), ("wanda", "workspace-admin", "shop-team")):
        tenancy.create_user(user)
        tenancy.add_binding(user, role, scope)
        tokens[user] = tenancy.create_token(user)[1]
    ownership = Ownership(
        project_clusters={"retail": frozenset({CLUSTER})},
        workspace_project={"shop-team": "retail"},
        workspace_namespaces={"shop-team": frozenset({NamespaceRef(CLUSTER, WORKSPACE_NS)})},
    )
    return tenancy, ownership, tokens


def app_factory(tenancy: Tenancy, ownership: Ownership) -> Callable[[LiveHub], FastAPI]:
    def build(hub: LiveHub) -> FastAPI:
        authenticator = Authenticator(tenancy)
        principal = fastapi_dependency(authenticator)

        def scope_for(p: Principal) -> ScopeFilter:
            return ScopeFilter.for_principal(p, ownership)

        app = FastAPI()
        app.include_router(stream_ticket_router(authenticator, principal))
        app.include_router(live_router(hub, principal, scope_for))
        app.include_router(live_router(hub, principal, scope_for, queue_flows=SLOW_QUEUE), prefix=SLOW_PREFIX)
        return app

    return build


class Client:
    """Collects what one stream delivers: flows (jsonpb) and missed counts."""

    def __init__(self) -> None:
        self.flows: list[dict[str, Any]] = []
        self.missed = 0

    def take(self, message: dict[str, Any]) -> None:
        if "missed" in message:
            self.missed += int(message["missed"])
        else:
            self.flows.append(message)

    @property
    def uuids(self) -> list[str]:
        return [f["flow"]["uuid"] for f in self.flows]


async def ws_client(url: str, client: Client, ready: asyncio.Event, **kw: Any) -> None:
    async with websockets.connect(url, **kw) as ws:
        ready.set()
        async for text in ws:
            client.take(json.loads(text))


async def sse_client(url: str, token: str, client: Client, ready: asyncio.Event) -> None:
    async with (
        httpx.AsyncClient(timeout=None) as http,
        http.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = "message"
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                ready.set()  # the stream's opening comment: subscribed
            elif line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                message = json.loads(line[5:])
                assert ("missed" in message) == (event == "missed")
                client.take(message)
                event = "message"


@contextlib.asynccontextmanager
async def running(*coros: Any) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def small_buffer_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so a client that stops reading pushes back at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def history(store: FlowStore, scope: ScopeFilter | None = None, **kw: Any) -> list[dict[str, Any]]:
    """What /api/v1/flows shows for the same filter and scope (rows redacted as for that caller)."""
    return store.query_flows(FlowFilter(cluster=CLUSTER, last=None, **kw), scope=scope)


@pytest.mark.slow
def test_live_stream_end_to_end(tmp_path: Path, tansu: Any, chdb_dsn: str) -> None:
    tenancy, ownership, tokens = control_plane(tmp_path / "cp")

    async def run() -> None:
        rig = LiveRig(
            tmp_path / "data",
            cluster=CLUSTER,
            kafka=tansu.bootstrap,
            clickhouse_dsn=chdb_dsn,
            build_app=app_factory(tenancy, ownership),
        )
        async with rig:
            assert rig.server is not None and rig.stack is not None
            base_ws = rig.ws_url + STREAM_PATH
            org = {"additional_headers": {"Authorization": f"Bearer {tokens['olga']}"}}

            # Authentication and bad filters are refused before the stream opens.
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(base_ws):
                    pass
            assert refused.value.response.status_code == 401  # the handshake refused with the HTTP status
            async with httpx.AsyncClient(base_url=rig.http_url) as http:
                assert (await http.get(STREAM_PATH)).status_code == 401
                bad = await http.get(
                    STREAM_PATH,
                    params={"verdict": "MAYBE"},
                    headers={"Authorization": f"Bearer {tokens['olga']}"},
                )
                assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "verdict"]
                ticket = (
                    await http.post(
                        "/api/v1/stream-tickets", headers={"Authorization": f"Bearer {tokens['wanda']}"}
                    )
                ).json()["ticket"]
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(f"{base_ws}?protocol=http", **org):
                    pass
            assert refused.value.response.status_code == 422

            everything, sse, filtered, scoped = (Client() for _ in range(4))
            ready = [asyncio.Event() for _ in range(4)]
            async with running(
                ws_client(base_ws, everything, ready[0], **org),
                sse_client(rig.http_url + STREAM_PATH, tokens["olga"], sse, ready[1]),
                ws_client(
                    f"{base_ws}?namespace=shop&protocol=tcp&verdict=forwarded", filtered, ready[2], **org
                ),
                # Browsers cannot set headers: a stream ticket rides in the query (never the token).
                ws_client(f"{base_ws}?ticket={ticket}", scoped, ready[3]),
            ):
                await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 10)
                traffic = DemoTraffic(CLUSTER, seed=21)
                sent: list[str] = []
                for _ in range(20):
                    entries = traffic.serialized(100)
                    sent += [observer_pb2.GetFlowsResponse.FromString(d).flow.uuid for _, _, d in entries]
                    rig.server.add_serialized(entries)
                    await asyncio.sleep(0.03)
                await wait_until(lambda: len(everything.flows) >= len(sent), 60, "the WebSocket client")
                await wait_until(lambda: len(sse.flows) >= len(sent), 30, "the SSE client")
                await wait_until(rig.hub.drained, 10, "the hub to offer every row")
                await asyncio.sleep(0.5)

            store = FlowStore(rig.stack.clickhouse)
            # The worker may hold small batches before writing them to flows (live clients get them at decode):
            # compare with history once it has them all.
            await wait_until(lambda: len(history(store)) >= len(sent), 30, "every flow in history")
            # Every flow once; per node in the order Hubble produced them.
            assert sorted(everything.uuids) == sorted(sent) == sorted(sse.uuids)
            assert everything.missed == sse.missed == 0

            # Filters mean what they mean in history.
            want = history(store, namespace="shop", protocol="tcp", verdict="FORWARDED")
            assert 0 < len(want) < len(sent)
            assert sorted(filtered.uuids) == sorted(str(r["uuid"]) for r in want)

            # Scope: only the workspace's flows; the peer outside it redacted, exactly as history shows it.
            scope = ScopeFilter.for_principal(tenancy.principal_for_user("wanda"), ownership)
            seen = {str(r["uuid"]): r for r in history(store, scope=scope)}
            assert 0 < len(seen) < len(sent)
            assert sorted(scoped.uuids) == sorted(seen)
            for message in scoped.flows:
                assert message == row_to_jsonpb(seen[message["flow"]["uuid"]])
                flow = message["flow"]
                inside = [s for s in ("source", "destination") if flow[s].get("namespace") == WORKSPACE_NS]
                assert inside
                for side in {"source", "destination"} - set(inside):
                    assert "pod_name" not in flow[side] and "workloads" not in flow[side]

    asyncio.run(run())


@pytest.mark.slow
def test_slow_client_is_told_what_it_missed_while_fast_client_gets_everything(
    tmp_path: Path, tansu: Any, chdb_dsn: str
) -> None:
    tenancy, ownership, tokens = control_plane(tmp_path / "cp")
    org = {"additional_headers": {"Authorization": f"Bearer {tokens['olga']}"}}

    async def run() -> None:
        rig = LiveRig(
            tmp_path / "data",
            cluster=CLUSTER + "-slow",
            kafka=tansu.bootstrap,
            clickhouse_dsn=chdb_dsn,
            build_app=app_factory(tenancy, ownership),
        )
        async with rig:
            assert rig.server is not None
            fast, slow = Client(), Client()
            fast_ready = asyncio.Event()
            url = rig.ws_url + SLOW_PREFIX + STREAM_PATH
            async with websockets.connect(
                url, sock=small_buffer_socket(rig.port), max_queue=1, **org
            ) as stuck:
                async with running(ws_client(rig.ws_url + STREAM_PATH, fast, fast_ready, **org)):
                    await asyncio.wait_for(fast_ready.wait(), 10)
                    traffic = DemoTraffic(CLUSTER + "-slow", seed=22)
                    sent = 0
                    for _ in range(20):
                        entries = traffic.serialized(200)
                        rig.server.add_serialized(entries)
                        sent += len(entries)
                        await asyncio.sleep(0.05)
                    await wait_until(lambda: len(fast.flows) >= sent, 60, "the fast client")
                    await wait_until(rig.hub.drained, 10, "the hub to offer every row")
                    await asyncio.sleep(0.5)

                # Now the stuck client reads what was kept for it, in order, gaps marked where they were.
                async def drain() -> None:
                    async for text in stuck:
                        slow.take(json.loads(text))
                        if len(slow.flows) + slow.missed >= sent:
                            return

                await asyncio.wait_for(drain(), 30)
            assert fast.missed == 0 and len(fast.flows) == sent
            assert slow.missed > 0, "the stuck client was never told it missed flows"
            assert len(slow.flows) + slow.missed == sent
            assert len(set(slow.uuids)) == len(slow.flows)

    asyncio.run(run())


@pytest.mark.slow
def test_scale_mode_api_replica_follows_flows_enriched(tmp_path: Path, tansu: Any, chdb_dsn: str) -> None:
    """With an external Kafka the worker publishes stored batches to flows.enriched; an API replica in
    another process would feed its own hub from there (here: a second hub in this process)."""
    from query_api.live import EnrichedTopicFeed

    async def run() -> None:
        rig = LiveRig(
            tmp_path / "data", cluster=CLUSTER + "-scale", kafka=tansu.bootstrap, clickhouse_dsn=chdb_dsn
        )
        async with rig:
            assert rig.server is not None
            replica = LiveHub()
            feed = EnrichedTopicFeed(tansu.bootstrap, replica)
            stop = asyncio.Event()
            feeding = asyncio.create_task(feed.run(stop))
            try:
                await asyncio.wait_for(feed.assigned.wait(), 30)
                sub = replica.subscribe(lambda row: row if row["cluster"] == CLUSTER + "-scale" else None)
                entries = DemoTraffic(CLUSTER + "-scale", seed=23).serialized(500)
                sent = sorted(observer_pb2.GetFlowsResponse.FromString(d).flow.uuid for _, _, d in entries)
                rig.server.add_serialized(entries)
                got: list[str] = []
                while len(got) < len(sent):
                    batch = await asyncio.wait_for(sub.next_batch(), 60)
                    assert batch is not None
                    got += [row_to_jsonpb(r)["flow"]["uuid"] for r in batch if not isinstance(r, Missed)]
                assert sorted(got) == sent
                assert feed.undecodable == 0
            finally:
                stop.set()
                await asyncio.wait_for(feeding, 10)
                replica.close()

    asyncio.run(run())

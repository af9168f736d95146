"""TLS / mTLS with certificates made by the openssl CLI, and `netwarden hubble-serve` as a process."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from collectors.hubble_server import HubbleServer, ServerTLS
from schemas.hubble.observer import observer_pb2, observer_pb2_grpc

from .conftest import make_flow

REPO = Path(__file__).resolve().parents[3]
SERVER_NAME = "ui.hubble-relay.cilium.io"  # the name a Relay client overrides, as in hubble-api.md 10.1

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA, a server cert for *.hubble-relay.cilium.io, and a client cert."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-hubble-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "server.ext").write_text(f"subjectAltName=DNS:*.hubble-relay.cilium.io,DNS:{SERVER_NAME},IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "*.hubble-relay.cilium.io"), ("client", "collector.hubble-ui.cilium.io")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return d


def _channel(port: int, pki: Path, client_cert: bool) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(pki / "client.crt").read_bytes() if client_cert else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


async def test_tls_serves_flows(pki: Path) -> None:
    server = HubbleServer(node_names=["test/node-a"])
    server.add_flows([make_flow(0)])
    port = await server.start(tls=ServerTLS.from_files(pki / "server.crt", pki / "server.key"))
    try:
        async with _channel(port, pki, client_cert=False) as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            got = [r async for r in stub.GetFlows(observer_pb2.GetFlowsRequest(), timeout=5)]
            assert len(got) == 1
            nodes = await stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)
            assert nodes.nodes[0].tls.enabled
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await observer_pb2_grpc.ObserverStub(plain).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=2)
    finally:
        await server.stop(0.5)


async def test_mtls_requires_a_client_certificate(pki: Path) -> None:
    server = HubbleServer(node_names=["test/node-a"])
    tls = ServerTLS.from_files(pki / "server.crt", pki / "server.key", client_ca=pki / "ca.crt")
    port = await server.start(tls=tls)
    try:
        async with _channel(port, pki, client_cert=True) as channel:
            status = await observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=5)
            assert status.num_connected_nodes.value == 1
        async with _channel(port, pki, client_cert=False) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await observer_pb2_grpc.ObserverStub(channel).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=3)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0.5)


async def test_collector_follows_over_mtls_with_a_server_name_override(pki: Path) -> None:
    """The collector's TLS options against a Relay-like server: the cert names *.hubble-relay.cilium.io,
    not the address dialled, so only the server-name override lets the handshake pass."""
    from collectors.hubble_client import ClientTLS, HubbleCollector

    server = HubbleServer(node_names=["test/node-a"])
    server.add_flows([make_flow(t) for t in range(5)])
    tls = ServerTLS.from_files(pki / "server.crt", pki / "server.key", client_ca=pki / "ca.crt")
    port = await server.start(tls=tls)
    shipped: list[bytes] = []

    async def ship(node: str, responses: list[bytes]) -> None:
        shipped.extend(responses)

    async def run(client_tls: ClientTLS, until_flows: int) -> HubbleCollector:
        collector = HubbleCollector("tls", f"localhost:{port}", ship, tls=client_tls, linger_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        for _ in range(60):
            if len(shipped) >= until_flows or collector.stats.last_error:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)
        return collector

    try:
        good = ClientTLS.from_files(
            str(pki / "ca.crt"), str(pki / "client.crt"), str(pki / "client.key"), SERVER_NAME
        )
        await run(good, 5)
        assert len(shipped) == 5

        shipped.clear()
        no_override = ClientTLS.from_files(str(pki / "ca.crt"), str(pki / "client.crt"), str(pki / "client.key"), None)
        refused = await run(no_override, 1)
        assert shipped == [] and refused.stats.last_error  # hostname mismatch: nothing read, error kept

        no_client_cert = ClientTLS.from_files(str(pki / "ca.crt"), None, None, SERVER_NAME)
        refused = await run(no_client_cert, 1)
        assert shipped == [] and refused.stats.last_error  # mTLS: the server wants a client certificate
    finally:
        await server.stop(0.5)


async def test_hubble_serve_command_serves_capture_and_generated_traffic(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    from google.protobuf import json_format

    lines = [json_format.MessageToJson(make_flow(t, "cap/node-1"), preserving_proto_field_name=True, indent=None)
             for t in range(5)]
    capture.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netwarden", "hubble-serve", "--port", "0", "--capture", str(capture),
        "--generate", "demo-west", "--rate", "500", cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.search(r"127\.0\.0\.1:(\d+)", first)
        if found is None:
            proc.kill()
            _, err = await proc.communicate()
            pytest.fail(f"no listening address in {first!r}; stderr: {err.decode()[-2000:]}")
        port = int(found.group(1))
        await asyncio.sleep(0.5)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            got = [r async for r in stub.GetFlows(observer_pb2.GetFlowsRequest(), timeout=10)]
            nodes = {r.node_name for r in got}
            assert "cap/node-1" in nodes
            assert {n for n in nodes if n.startswith("demo-west/")}, nodes
            assert sum(r.node_name == "cap/node-1" for r in got) == 5
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    assert f"{capture}:3" in err.decode()  # the bad line is named and skipped


async def test_hubble_serve_preload_serves_exactly_the_generated_flows() -> None:
    """`--preload N` (benchmarks): N flows per generated cluster up front, nothing generated afterwards."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netwarden", "hubble-serve", "--port", "0", "--generate", "demo-east",
        "--preload", "5000", "--ring", "100", cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.search(r"127\.0\.0\.1:(\d+)", first)
        assert found, first
        async with grpc.aio.insecure_channel(f"127.0.0.1:{found.group(1)}") as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            got = [r async for r in stub.GetFlows(observer_pb2.GetFlowsRequest(), timeout=10)]
            await asyncio.sleep(0.3)
            again = [r async for r in stub.GetFlows(observer_pb2.GetFlowsRequest(), timeout=10)]
        assert len(got) == 5000 == len({r.flow.uuid for r in got})  # the ring grew past --ring 100
        assert [r.flow.uuid for r in again] == [r.flow.uuid for r in got]  # nothing new was generated
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 15)

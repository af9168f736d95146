"""Contract tests for the Hubble-compatible protos in schemas/hubble.

The reference material lives in the `shared/` folder that sits beside the repository
(CI clones the repository with `shared/` next to it): recorded `hubble observe -o jsonpb`
captures and the API facts in `reference/hubble-api.md`, whose Appendix A lists every
message, enum and field of the upstream Cilium v1.19.4 protos.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from google.protobuf import descriptor, json_format

from schemas.hubble.flow import flow_pb2
from schemas.hubble.observer import observer_pb2, observer_pb2_grpc
from schemas.hubble.peer import peer_pb2, peer_pb2_grpc
from schemas.hubble.relay import relay_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"
REFERENCE = SHARED / "reference"
CAPTURES = REFERENCE / "hubble-flows"
API_DOC = REFERENCE / "hubble-api.md"

FILE_DESCRIPTORS = {
    "flow": flow_pb2.DESCRIPTOR,
    "relay": relay_pb2.DESCRIPTOR,
    "observer": observer_pb2.DESCRIPTOR,
    "peer": peer_pb2.DESCRIPTOR,
}


def _capture_files() -> list[Path]:
    files = sorted(CAPTURES.glob("*.jsonl"))
    assert files, f"no Hubble captures found under {CAPTURES} (is shared/ checked out beside the repo?)"
    return files


# --- (1) real captures round-trip strictly -------------------------------------------------------


@pytest.mark.parametrize("capture", _capture_files(), ids=lambda p: p.name)
def test_capture_lines_parse_strictly_and_round_trip(capture: Path) -> None:
    count = 0
    for lineno, line in enumerate(capture.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        msg = observer_pb2.GetFlowsResponse()
        try:
            json_format.Parse(line, msg)
        except json_format.ParseError as exc:  # pragma: no cover - failure path
            pytest.fail(f"{capture.name}:{lineno}: strict parse failed: {exc}")
        rendered = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        assert rendered == json.loads(line), f"{capture.name}:{lineno}: round trip differs"
        count += 1
    assert count > 0, f"{capture.name} holds no flows"


# --- (2) spot checks of wire numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        (flow_pb2.Flow, "time", 1),
        (flow_pb2.Flow, "uuid", 34),
        (flow_pb2.Flow, "emitter", 41),
        (flow_pb2.Flow, "IP", 5),
        (flow_pb2.Flow, "Type", 10),
        (flow_pb2.Flow, "tunnel", 39),
        (flow_pb2.Flow, "drop_reason_desc", 25),
        (flow_pb2.Flow, "is_reply", 26),
        (flow_pb2.Flow, "egress_allowed_by", 21001),
        (flow_pb2.Flow, "ingress_denied_by", 21005),
        (flow_pb2.Flow, "aggregate", 21007),
        (flow_pb2.Flow, "Summary", 100000),
        (flow_pb2.Flow, "extensions", 150000),
        (flow_pb2.Endpoint, "cluster_name", 7),
        (flow_pb2.Layer4, "IGMP", 7),
        (flow_pb2.Layer7, "kafka", 102),
        (flow_pb2.FlowFilter, "uuid", 29),
        (flow_pb2.FlowFilter, "encrypted", 40),
        (flow_pb2.FlowFilter, "experimental", 999),
        (observer_pb2.GetFlowsRequest, "follow", 3),
        (observer_pb2.GetFlowsRequest, "field_mask", 10),
        (observer_pb2.GetFlowsRequest, "extensions", 150000),
        (observer_pb2.GetAgentEventsRequest, "follow", 2),
        (observer_pb2.GetFlowsResponse, "lost_events", 3),
        (observer_pb2.GetFlowsResponse, "node_name", 1000),
        (observer_pb2.GetFlowsResponse, "time", 1001),
        (peer_pb2.ChangeNotification, "tls", 4),
    ],
)
def test_field_numbers(message, field: str, number: int) -> None:
    assert message.DESCRIPTOR.fields_by_name[field].number == number


@pytest.mark.parametrize(
    ("enum", "name", "number"),
    [
        (flow_pb2.DropReason, "POLICY_DENIED", 133),
        (flow_pb2.DropReason, "POLICY_DENY", 181),
        (flow_pb2.DropReason, "DROP_PUNT_PROXY", 205),
        (flow_pb2.TraceObservationPoint, "TO_ENDPOINT", 101),
        (flow_pb2.Verdict, "TRANSLATED", 7),
        (flow_pb2.EventType, "EventSample", 9),
        (flow_pb2.LostEventSource, "HUBBLE_RING_BUFFER", 3),
        (relay_pb2.NodeState, "NODE_ERROR", 4),
        (peer_pb2.ChangeNotificationType, "PEER_UPDATED", 3),
    ],
)
def test_enum_numbers(enum, name: str, number: int) -> None:
    assert enum.Value(name) == number


def test_packages_and_public_import() -> None:
    assert {name: fd.package for name, fd in FILE_DESCRIPTORS.items()} == {
        "flow": "flow",
        "relay": "relay",
        "observer": "observer",
        "peer": "peer",
    }
    # observer.proto does `import public` of flow.proto, as upstream: flow types are re-exported.
    assert observer_pb2.Flow is flow_pb2.Flow
    assert (
        observer_pb2.GetFlowsResponse.DESCRIPTOR.fields_by_name["flow"].message_type.full_name == "flow.Flow"
    )
    oneof = observer_pb2.GetFlowsResponse.DESCRIPTOR.oneofs_by_name["response_types"]
    assert [f.name for f in oneof.fields] == ["flow", "node_status", "lost_events"]


# --- (3) gRPC method paths -----------------------------------------------------------------------


def test_observer_service_method_paths() -> None:
    service = observer_pb2.DESCRIPTOR.services_by_name["Observer"]
    assert service.full_name == "observer.Observer"
    paths = {
        f"/{service.full_name}/{m.name}": (m.client_streaming, m.server_streaming) for m in service.methods
    }
    assert paths == {
        "/observer.Observer/GetFlows": (False, True),
        "/observer.Observer/GetAgentEvents": (False, True),
        "/observer.Observer/GetDebugEvents": (False, True),
        "/observer.Observer/GetNodes": (False, False),
        "/observer.Observer/GetNamespaces": (False, False),
        "/observer.Observer/ServerStatus": (False, False),
    }
    assert hasattr(observer_pb2_grpc, "ObserverStub")
    assert hasattr(observer_pb2_grpc, "add_ObserverServicer_to_server")


def test_peer_service_method_path() -> None:
    service = peer_pb2.DESCRIPTOR.services_by_name["Peer"]
    (method,) = service.methods
    assert f"/{service.full_name}/{method.name}" == "/peer.Peer/Notify"
    assert (method.client_streaming, method.server_streaming) == (False, True)
    assert method.output_type.full_name == "peer.ChangeNotification"
    assert hasattr(peer_pb2_grpc, "PeerStub")


# --- (4) completeness against the reference tables (Appendix A) ----------------------------------

_SECTION = re.compile(r"^### A\.\d+ (\w+)\.proto")
_ITEM = re.compile(r"^#### (message|enum|service) `([\w.]+)`")
_SCALARS = {"string", "bool", "double", "float", "bytes", "int32", "int64", "uint32", "uint64"}


def _appendix_tables() -> list[tuple[str, str, str, list[list[str]]]]:
    """(proto file, kind, name, table rows) for every table of Appendix A."""
    text = API_DOC.read_text(encoding="utf-8")
    lines = text[text.index("## Appendix A") :].splitlines()
    tables: list[tuple[str, str, str, list[list[str]]]] = []
    proto = ""
    current: list[list[str]] | None = None
    for line in lines:
        if m := _SECTION.match(line):
            proto, current = m.group(1), None
        elif m := _ITEM.match(line):
            current = []
            tables.append((proto, m.group(1), m.group(2), current))
        elif current is not None and line.startswith("|"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if cells[0] in {"#", "value", "rpc"} or set(cells[0]) <= {"-"}:
                continue
            current.append(cells)
    return tables


def _lookup(proto: str, kind: str, name: str):
    fd = FILE_DESCRIPTORS[proto]
    head, _, tail = name.partition(".")
    if kind == "service":
        return fd.services_by_name[name]
    if not tail:
        return (fd.message_types_by_name if kind == "message" else fd.enum_types_by_name)[name]
    parent = fd.message_types_by_name[head]
    return (parent.nested_types_by_name if kind == "message" else parent.enum_types_by_name)[tail]


def _reserved_numbers(spec: str) -> set[int]:
    numbers: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition(" to ")
        numbers.update(range(int(lo), int(hi or lo) + 1))
    return numbers


def _type_name(field: descriptor.FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return {
        descriptor.FieldDescriptor.TYPE_STRING: "string",
        descriptor.FieldDescriptor.TYPE_BOOL: "bool",
        descriptor.FieldDescriptor.TYPE_DOUBLE: "double",
        descriptor.FieldDescriptor.TYPE_FLOAT: "float",
        descriptor.FieldDescriptor.TYPE_BYTES: "bytes",
        descriptor.FieldDescriptor.TYPE_INT32: "int32",
        descriptor.FieldDescriptor.TYPE_INT64: "int64",
        descriptor.FieldDescriptor.TYPE_UINT32: "uint32",
        descriptor.FieldDescriptor.TYPE_UINT64: "uint64",
    }[field.type]


def _expected_type(reference: str, owner: descriptor.Descriptor, package: str) -> str:
    if reference in _SCALARS or "." in reference and reference.split(".")[0] in {"google", *FILE_DESCRIPTORS}:
        return reference
    for nested in (*getattr(owner, "nested_types", ()), *getattr(owner, "enum_types", ())):
        if nested.name == reference:
            return nested.full_name
    return f"{package}.{reference}"


def _tables() -> list[tuple[str, str, str, list[list[str]]]]:
    tables = _appendix_tables()
    assert len(tables) > 80, f"could not read Appendix A tables from {API_DOC}"
    return tables


@pytest.mark.parametrize(
    ("proto", "kind", "name", "rows"),
    [pytest.param(*table, id=f"{table[0]}.{table[2]}") for table in _tables()],
)
def test_definition_matches_reference(proto: str, kind: str, name: str, rows: list[list[str]]) -> None:
    desc = _lookup(proto, kind, name)
    package = FILE_DESCRIPTORS[proto].package
    if kind == "service":
        got = {
            m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
            for m in desc.methods
        }
        want = {
            r[0]: (
                _expected_type(r[1], desc, package),
                _expected_type(r[2], desc, package),
                r[3] == "yes",
                r[4] == "yes",
            )
            for r in rows
        }
        assert got == want
        return
    if kind == "enum":
        got = {v.name: v.number for v in desc.values}
        want = {r[1]: int(r[0]) for r in rows if r[0] != "reserved"}
        assert got == want
        reserved = set().union(*(_reserved_numbers(r[1]) for r in rows if r[0] == "reserved"))
        for number in reserved:
            assert number not in desc.values_by_number
        deprecated = {r[1] for r in rows if r[0] != "reserved" and "deprecated" in r[2]}
        assert {v.name for v in desc.values if v.GetOptions().deprecated} == deprecated
        return
    got = {
        f.name: (
            f.number,
            _type_name(f),
            "repeated" if f.is_repeated else "",
            f.containing_oneof.name if f.containing_oneof else "",
            f.GetOptions().deprecated,
        )
        for f in desc.fields
    }
    want = {
        r[1]: (int(r[0]), _expected_type(r[2], desc, package), r[3], r[4], "deprecated" in r[5])
        for r in rows
        if r[0] != "reserved"
    }
    assert got == want
    reserved = set().union(*(_reserved_numbers(r[1]) for r in rows if r[0] == "reserved"))
    for number in reserved:
        assert number not in desc.fields_by_number


def test_every_definition_is_in_the_reference() -> None:
    """Nothing extra: every message, enum and service we define is listed in Appendix A."""
    listed = {(proto, name) for proto, _, name, _ in _tables()}
    defined: set[tuple[str, str]] = set()
    for proto, fd in FILE_DESCRIPTORS.items():
        defined.update((proto, s) for s in fd.services_by_name)
        defined.update((proto, e) for e in fd.enum_types_by_name)
        for message in fd.message_types_by_name.values():
            defined.add((proto, message.name))
            defined.update(
                (proto, f"{message.name}.{n.name}") for n in (*message.nested_types, *message.enum_types)
            )
    assert defined == listed


def test_observer_stub_streams_over_loopback() -> None:
    """The generated stub and servicer talk to each other over real gRPC on loopback."""
    from concurrent import futures

    import grpc

    class RecordedObserver(observer_pb2_grpc.ObserverServicer):
        def GetFlows(self, request, context):
            for i in range(request.number):
                yield observer_pb2.GetFlowsResponse(
                    flow=flow_pb2.Flow(uuid=f"flow-{i}", verdict=flow_pb2.DROPPED), node_name="kind/node-a"
                )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    observer_pb2_grpc.add_ObserverServicer_to_server(RecordedObserver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            responses = list(stub.GetFlows(observer_pb2.GetFlowsRequest(number=3), timeout=10))
            assert [r.flow.uuid for r in responses] == ["flow-0", "flow-1", "flow-2"]
            assert all(r.WhichOneof("response_types") == "flow" for r in responses)
            with pytest.raises(grpc.RpcError) as err:
                stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)

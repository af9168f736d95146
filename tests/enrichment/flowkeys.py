"""Test-side reference of the sink's keying (what the ClickHouse SQL computes per batch), the join back onto
flows, and the `netwarden policy check` document for the same keys.

Keying rules (schemas.flow_record.ENRICHMENT_KEY_COLUMNS plus the requests in the sink's notes):
- IPs only for sides that are not pods (namespace empty); pods get '::'.
- dst_port: the connection's server port: the flow's src_port for replies (is_reply true), else dst_port;
  for ICMP the request's type (an echo reply, 0 or 129, counts as its request, 8 or 128).
- verdict: Hubble's, 0 for drops that are not policy drops (drop reason other than 133/181), so a
  non-policy drop is never called a policy mismatch.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from schemas.flow_record import ENRICHMENT_COLUMNS, ENRICHMENT_KEY_SCHEMA, L4_PROTOCOL_NUMBERS
from schemas.hubble.flow import flow_pb2
from schemas.inventory import ClusterInventory

ZERO_IP = bytes(16)
V4_PREFIX = bytes(10) + b"\xff\xff"
POLICY_DROPS = (133, 181)


@dataclass(frozen=True)
class FlowKey:
    cluster: str
    verdict: int
    traffic_direction: int
    is_reply: bool | None
    l4_protocol: int
    dst_port: int
    src_identity: int
    src_namespace: str
    src_labels: tuple[str, ...]
    src_ip: bytes
    dst_identity: int
    dst_namespace: str
    dst_labels: tuple[str, ...]
    dst_ip: bytes

    @property
    def ekey(self) -> int:
        return int.from_bytes(hashlib.blake2b(repr(self).encode(), digest_size=8).digest(), "little")


def ip16(text: str) -> bytes:
    if not text:
        return ZERO_IP
    ip = ipaddress.ip_address(text)
    return V4_PREFIX + ip.packed if ip.version == 4 else ip.packed


def flow_key(cluster: str, flow: flow_pb2.Flow) -> FlowKey:
    l4 = flow.l4.WhichOneof("protocol") or ""
    proto = L4_PROTOCOL_NUMBERS.get(l4, 0)
    src_port = dst_port = 0
    if l4 in ("TCP", "UDP", "SCTP"):
        layer = getattr(flow.l4, l4)
        src_port, dst_port = layer.source_port, layer.destination_port
    is_reply = flow.is_reply.value if flow.HasField("is_reply") else None
    if l4 in ("ICMPv4", "ICMPv6"):
        icmp_type = getattr(flow.l4, l4).type
        echo_reply, echo_request = (0, 8) if l4 == "ICMPv4" else (129, 128)
        dst_port = echo_request if is_reply and icmp_type == echo_reply else icmp_type
    verdict = flow.verdict
    if verdict == flow_pb2.DROPPED and flow.drop_reason_desc not in POLICY_DROPS:
        verdict = 0
    src, dst = flow.source, flow.destination
    return FlowKey(
        cluster, verdict, flow.traffic_direction, is_reply, proto,
        src_port if is_reply and l4 not in ("ICMPv4", "ICMPv6") else dst_port,
        src.identity, src.namespace, tuple(src.labels), ZERO_IP if src.namespace else ip16(flow.IP.source),
        dst.identity, dst.namespace, tuple(dst.labels), ZERO_IP if dst.namespace else ip16(flow.IP.destination),
    )


def key_table(keys: Iterable[FlowKey]) -> pa.Table:
    """Distinct keys as the sink hands them to enrich_keys."""
    distinct = list(dict.fromkeys(keys))
    rows = [(k.ekey, *(getattr(k, f.name) for f in ENRICHMENT_KEY_SCHEMA if f.name != "ekey")) for k in distinct]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in ENRICHMENT_KEY_SCHEMA]
    return pa.Table.from_arrays(
        [pa.array([list(v) if isinstance(v, tuple) else v for v in col], type=f.type)
         for col, f in zip(columns, ENRICHMENT_KEY_SCHEMA, strict=True)],
        schema=ENRICHMENT_KEY_SCHEMA,
    )


def enrich_flows(enricher: Any, keys: Sequence[FlowKey]) -> list[dict[str, Any]]:
    """Each flow's enrichment columns: enrich the distinct keys once, join back by ekey."""
    result = enricher.enrich_keys(key_table(keys))
    by_ekey = {row["ekey"]: row for row in result.to_pylist()}
    assert len(by_ekey) == result.num_rows == len(set(keys))
    return [by_ekey[k.ekey] for k in keys]


# -- `netwarden policy check` for the same keys --------------------------------------------------------

def _split_labels(labels: Sequence[str]) -> tuple[dict[str, str], dict[str, str], str]:
    """Hubble identity labels -> (pod labels, namespace labels, namespace from the labels)."""
    pod: dict[str, str] = {}
    ns: dict[str, str] = {}
    namespace = ""
    for label in labels:
        key, _, value = label.partition("=")
        if not key.startswith("k8s:"):
            continue
        key = key[4:]
        if key == "io.kubernetes.pod.namespace":
            namespace = value
        elif key.startswith("io.cilium.k8s.namespace.labels."):
            ns[key[len("io.cilium.k8s.namespace.labels."):]] = value
        else:
            pod[key] = value
    return pod, ns, namespace


RESERVED = {1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node",
            7: "kube-apiserver", 8: "ingress", 9: "world", 10: "world"}


def _entities(labels: Sequence[str], identity: int) -> list[str]:
    names = sorted({"world" if lab[9:] in ("world-ipv4", "world-ipv6") else lab[9:]
                    for lab in labels if lab.startswith("reserved:")})
    return names or [RESERVED.get(identity, "world")]


def policy_check_document(inventory: ClusterInventory, keys: Sequence[FlowKey]) -> tuple[dict[str, Any], list[FlowKey]]:
    """The `policy check` input that asks, for each evaluable key, about the connection it belongs to
    (client -> server, server port). Returns the document and the keys its probes stand for, in order."""
    desired = inventory.desired
    assert desired is not None
    namespaces: dict[str, dict[str, str]] = {ns: dict(lab) for ns, lab in desired.namespace_labels.items()}
    pods: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    entities: dict[str, list[str]] = {}
    probes: list[dict[str, Any]] = []
    asked: list[FlowKey] = []

    def side(namespace: str, labels: Sequence[str], ip: bytes, identity: int) -> str | None:
        pod_labels, ns_labels, label_ns = _split_labels(labels)
        namespace = namespace or label_ns
        if namespace:
            namespaces.setdefault(namespace, {}).update(ns_labels)
            ref = pods.setdefault((namespace, tuple(sorted(pod_labels.items()))), f"{namespace}/pod-{len(pods)}")
            return ref
        if ip == ZERO_IP:
            return None
        addr = ipaddress.IPv6Address(ip)
        text = str(addr.ipv4_mapped or addr)
        entities[text] = _entities(labels, identity)
        return text

    for k in dict.fromkeys(keys):
        if k.l4_protocol not in (1, 2, 3, 4, 5) or not (k.l4_protocol in (3, 4) or 1 <= k.dst_port <= 65535):
            continue
        src = side(k.src_namespace, k.src_labels, k.src_ip, k.src_identity)
        dst = side(k.dst_namespace, k.dst_labels, k.dst_ip, k.dst_identity)
        if src is None or dst is None:
            continue
        client, server = (dst, src) if k.is_reply else (src, dst)
        # ICMP: the key's port is the request's type, as `policy check` takes it.
        protocol = {1: "TCP", 2: "UDP", 3: "ICMP", 4: "ICMPv6", 5: "SCTP"}[k.l4_protocol]
        probes.append({"from": client, "to": server, "port": k.dst_port, "protocol": protocol})
        asked.append(k)
    doc = {
        "namespaces": namespaces,
        "pods": [{"namespace": ns, "name": ref.split("/", 1)[1], "labels": dict(labels)}
                 for (ns, labels), ref in pods.items()],
        "policies": [dict(p) for p in desired.policies],
        "engine": desired.engine,
        "policyEnforcementMode": desired.enforcement_mode,
        "entities": {ip: names for ip, names in entities.items() if names != ["world"]},
        "probes": probes,
    }
    return doc, asked


def expected_owner(index: Any, projects: Mapping[str, str], cluster: str, namespace: str,
                   labels: Sequence[str], identity: int) -> tuple[str, str]:
    """The control plane's answer for one side: OwnershipIndex for namespaces, the cluster's project for
    the cluster's reserved endpoints, nothing for the world."""
    if namespace:
        owner = index.owner(cluster, namespace)
        return owner if owner is not None else (projects.get(cluster, ""), "")
    if set(_entities(labels, identity)) - {"world"}:
        return projects.get(cluster, ""), ""
    return "", ""


ENRICHMENT_NAMES = [c.name for c in ENRICHMENT_COLUMNS]

# ruff: noqa
import datetime

from schemas.hubble.flow import flow_pb2 as _flow_pb2
from schemas.hubble.relay import relay_pb2 as _relay_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union
from schemas.hubble.flow.flow_pb2 import Flow as Flow
from schemas.hubble.flow.flow_pb2 import Emitter as Emitter
from schemas.hubble.flow.flow_pb2 import FileInfo as FileInfo
from schemas.hubble.flow.flow_pb2 import Layer4 as Layer4
from schemas.hubble.flow.flow_pb2 import Layer7 as Layer7
from schemas.hubble.flow.flow_pb2 import TraceContext as TraceContext
from schemas.hubble.flow.flow_pb2 import TraceParent as TraceParent
from schemas.hubble.flow.flow_pb2 import Endpoint as Endpoint
from schemas.hubble.flow.flow_pb2 import Workload as Workload
from schemas.hubble.flow.flow_pb2 import TCP as TCP
from schemas.hubble.flow.flow_pb2 import IP as IP
from schemas.hubble.flow.flow_pb2 import Ethernet as Ethernet
from schemas.hubble.flow.flow_pb2 import TCPFlags as TCPFlags
from schemas.hubble.flow.flow_pb2 import UDP as UDP
from schemas.hubble.flow.flow_pb2 import SCTP as SCTP
from schemas.hubble.flow.flow_pb2 import ICMPv4 as ICMPv4
from schemas.hubble.flow.flow_pb2 import ICMPv6 as ICMPv6
from schemas.hubble.flow.flow_pb2 import VRRP as VRRP
from schemas.hubble.flow.flow_pb2 import IGMP as IGMP
from schemas.hubble.flow.flow_pb2 import Tunnel as Tunnel
from schemas.hubble.flow.flow_pb2 import Policy as Policy
from schemas.hubble.flow.flow_pb2 import EventTypeFilter as EventTypeFilter
from schemas.hubble.flow.flow_pb2 import CiliumEventType as CiliumEventType
from schemas.hubble.flow.flow_pb2 import FlowFilter as FlowFilter
from schemas.hubble.flow.flow_pb2 import DNS as DNS
from schemas.hubble.flow.flow_pb2 import HTTPHeader as HTTPHeader
from schemas.hubble.flow.flow_pb2 import HTTP as HTTP
from schemas.hubble.flow.flow_pb2 import Kafka as Kafka
from schemas.hubble.flow.flow_pb2 import Service as Service
from schemas.hubble.flow.flow_pb2 import IPTraceID as IPTraceID
from schemas.hubble.flow.flow_pb2 import LostEvent as LostEvent
from schemas.hubble.flow.flow_pb2 import AgentEvent as AgentEvent
from schemas.hubble.flow.flow_pb2 import AgentEventUnknown as AgentEventUnknown
from schemas.hubble.flow.flow_pb2 import TimeNotification as TimeNotification
from schemas.hubble.flow.flow_pb2 import PolicyUpdateNotification as PolicyUpdateNotification
from schemas.hubble.flow.flow_pb2 import EndpointRegenNotification as EndpointRegenNotification
from schemas.hubble.flow.flow_pb2 import EndpointUpdateNotification as EndpointUpdateNotification
from schemas.hubble.flow.flow_pb2 import IPCacheNotification as IPCacheNotification
from schemas.hubble.flow.flow_pb2 import ServiceUpsertNotificationAddr as ServiceUpsertNotificationAddr
from schemas.hubble.flow.flow_pb2 import ServiceUpsertNotification as ServiceUpsertNotification
from schemas.hubble.flow.flow_pb2 import ServiceDeleteNotification as ServiceDeleteNotification
from schemas.hubble.flow.flow_pb2 import NetworkInterface as NetworkInterface
from schemas.hubble.flow.flow_pb2 import DebugEvent as DebugEvent
from schemas.hubble.flow.flow_pb2 import Aggregate as Aggregate
from schemas.hubble.flow.flow_pb2 import FlowType as FlowType
from schemas.hubble.flow.flow_pb2 import AuthType as AuthType
from schemas.hubble.flow.flow_pb2 import TraceObservationPoint as TraceObservationPoint
from schemas.hubble.flow.flow_pb2 import TraceReason as TraceReason
from schemas.hubble.flow.flow_pb2 import L7FlowType as L7FlowType
from schemas.hubble.flow.flow_pb2 import IPVersion as IPVersion
from schemas.hubble.flow.flow_pb2 import Verdict as Verdict
from schemas.hubble.flow.flow_pb2 import DropReason as DropReason
from schemas.hubble.flow.flow_pb2 import TrafficDirection as TrafficDirection
from schemas.hubble.flow.flow_pb2 import DebugCapturePoint as DebugCapturePoint
from schemas.hubble.flow.flow_pb2 import EventType as EventType
from schemas.hubble.flow.flow_pb2 import LostEventSource as LostEventSource
from schemas.hubble.flow.flow_pb2 import AgentEventType as AgentEventType
from schemas.hubble.flow.flow_pb2 import SocketTranslationPoint as SocketTranslationPoint
from schemas.hubble.flow.flow_pb2 import DebugEventType as DebugEventType

DESCRIPTOR: _descriptor.FileDescriptor
UNKNOWN_TYPE: _flow_pb2.FlowType
L3_L4: _flow_pb2.FlowType
L7: _flow_pb2.FlowType
SOCK: _flow_pb2.FlowType
DISABLED: _flow_pb2.AuthType
SPIRE: _flow_pb2.AuthType
TEST_ALWAYS_FAIL: _flow_pb2.AuthType
UNKNOWN_POINT: _flow_pb2.TraceObservationPoint
TO_PROXY: _flow_pb2.TraceObservationPoint
TO_HOST: _flow_pb2.TraceObservationPoint
TO_STACK: _flow_pb2.TraceObservationPoint
TO_OVERLAY: _flow_pb2.TraceObservationPoint
TO_ENDPOINT: _flow_pb2.TraceObservationPoint
FROM_ENDPOINT: _flow_pb2.TraceObservationPoint
FROM_PROXY: _flow_pb2.TraceObservationPoint
FROM_HOST: _flow_pb2.TraceObservationPoint
FROM_STACK: _flow_pb2.TraceObservationPoint
FROM_OVERLAY: _flow_pb2.TraceObservationPoint
FROM_NETWORK: _flow_pb2.TraceObservationPoint
TO_NETWORK: _flow_pb2.TraceObservationPoint
FROM_CRYPTO: _flow_pb2.TraceObservationPoint
TO_CRYPTO: _flow_pb2.TraceObservationPoint
TRACE_REASON_UNKNOWN: _flow_pb2.TraceReason
NEW: _flow_pb2.TraceReason
ESTABLISHED: _flow_pb2.TraceReason
REPLY: _flow_pb2.TraceReason
RELATED: _flow_pb2.TraceReason
REOPENED: _flow_pb2.TraceReason
SRV6_ENCAP: _flow_pb2.TraceReason
SRV6_DECAP: _flow_pb2.TraceReason
ENCRYPT_OVERLAY: _flow_pb2.TraceReason
UNKNOWN_L7_TYPE: _flow_pb2.L7FlowType
REQUEST: _flow_pb2.L7FlowType
RESPONSE: _flow_pb2.L7FlowType
SAMPLE: _flow_pb2.L7FlowType
IP_NOT_USED: _flow_pb2.IPVersion
IPv4: _flow_pb2.IPVersion
IPv6: _flow_pb2.IPVersion
VERDICT_UNKNOWN: _flow_pb2.Verdict
FORWARDED: _flow_pb2.Verdict
DROPPED: _flow_pb2.Verdict
ERROR: _flow_pb2.Verdict
AUDIT: _flow_pb2.Verdict
REDIRECTED: _flow_pb2.Verdict
TRACED: _flow_pb2.Verdict
TRANSLATED: _flow_pb2.Verdict
DROP_REASON_UNKNOWN: _flow_pb2.DropReason
INVALID_SOURCE_MAC: _flow_pb2.DropReason
INVALID_DESTINATION_MAC: _flow_pb2.DropReason
INVALID_SOURCE_IP: _flow_pb2.DropReason
POLICY_DENIED: _flow_pb2.DropReason
INVALID_PACKET_DROPPED: _flow_pb2.DropReason
CT_TRUNCATED_OR_INVALID_HEADER: _flow_pb2.DropReason
CT_MISSING_TCP_ACK_FLAG: _flow_pb2.DropReason
CT_UNKNOWN_L4_PROTOCOL: _flow_pb2.DropReason
CT_CANNOT_CREATE_ENTRY_FROM_PACKET: _flow_pb2.DropReason
UNSUPPORTED_L3_PROTOCOL: _flow_pb2.DropReason
MISSED_TAIL_CALL: _flow_pb2.DropReason
ERROR_WRITING_TO_PACKET: _flow_pb2.DropReason
UNKNOWN_L4_PROTOCOL: _flow_pb2.DropReason
UNKNOWN_ICMPV4_CODE: _flow_pb2.DropReason
UNKNOWN_ICMPV4_TYPE: _flow_pb2.DropReason
UNKNOWN_ICMPV6_CODE: _flow_pb2.DropReason
UNKNOWN_ICMPV6_TYPE: _flow_pb2.DropReason
ERROR_RETRIEVING_TUNNEL_KEY: _flow_pb2.DropReason
ERROR_RETRIEVING_TUNNEL_OPTIONS: _flow_pb2.DropReason
INVALID_GENEVE_OPTION: _flow_pb2.DropReason
UNKNOWN_L3_TARGET_ADDRESS: _flow_pb2.DropReason
STALE_OR_UNROUTABLE_IP: _flow_pb2.DropReason
NO_MATCHING_LOCAL_CONTAINER_FOUND: _flow_pb2.DropReason
ERROR_WHILE_CORRECTING_L3_CHECKSUM: _flow_pb2.DropReason
ERROR_WHILE_CORRECTING_L4_CHECKSUM: _flow_pb2.DropReason
CT_MAP_INSERTION_FAILED: _flow_pb2.DropReason
INVALID_IPV6_EXTENSION_HEADER: _flow_pb2.DropReason
IP_FRAGMENTATION_NOT_SUPPORTED: _flow_pb2.DropReason
SERVICE_BACKEND_NOT_FOUND: _flow_pb2.DropReason
NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT: _flow_pb2.DropReason
FAILED_TO_INSERT_INTO_PROXYMAP: _flow_pb2.DropReason
REACHED_EDT_RATE_LIMITING_DROP_HORIZON: _flow_pb2.DropReason
UNKNOWN_CONNECTION_TRACKING_STATE: _flow_pb2.DropReason
LOCAL_HOST_IS_UNREACHABLE: _flow_pb2.DropReason
NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION: _flow_pb2.DropReason
UNSUPPORTED_L2_PROTOCOL: _flow_pb2.DropReason
NO_MAPPING_FOR_NAT_MASQUERADE: _flow_pb2.DropReason
UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE: _flow_pb2.DropReason
FIB_LOOKUP_FAILED: _flow_pb2.DropReason
ENCAPSULATION_TRAFFIC_IS_PROHIBITED: _flow_pb2.DropReason
INVALID_IDENTITY: _flow_pb2.DropReason
UNKNOWN_SENDER: _flow_pb2.DropReason
NAT_NOT_NEEDED: _flow_pb2.DropReason
IS_A_CLUSTERIP: _flow_pb2.DropReason
FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND: _flow_pb2.DropReason
FORBIDDEN_ICMPV6_MESSAGE: _flow_pb2.DropReason
DENIED_BY_LB_SRC_RANGE_CHECK: _flow_pb2.DropReason
SOCKET_LOOKUP_FAILED: _flow_pb2.DropReason
SOCKET_ASSIGN_FAILED: _flow_pb2.DropReason
PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL: _flow_pb2.DropReason
POLICY_DENY: _flow_pb2.DropReason
VLAN_FILTERED: _flow_pb2.DropReason
INVALID_VNI: _flow_pb2.DropReason
INVALID_TC_BUFFER: _flow_pb2.DropReason
NO_SID: _flow_pb2.DropReason
MISSING_SRV6_STATE: _flow_pb2.DropReason
NAT46: _flow_pb2.DropReason
NAT64: _flow_pb2.DropReason
AUTH_REQUIRED: _flow_pb2.DropReason
CT_NO_MAP_FOUND: _flow_pb2.DropReason
SNAT_NO_MAP_FOUND: _flow_pb2.DropReason
INVALID_CLUSTER_ID: _flow_pb2.DropReason
UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP: _flow_pb2.DropReason
NO_EGRESS_GATEWAY: _flow_pb2.DropReason
UNENCRYPTED_TRAFFIC: _flow_pb2.DropReason
TTL_EXCEEDED: _flow_pb2.DropReason
NO_NODE_ID: _flow_pb2.DropReason
DROP_RATE_LIMITED: _flow_pb2.DropReason
IGMP_HANDLED: _flow_pb2.DropReason
IGMP_SUBSCRIBED: _flow_pb2.DropReason
MULTICAST_HANDLED: _flow_pb2.DropReason
DROP_HOST_NOT_READY: _flow_pb2.DropReason
DROP_EP_NOT_READY: _flow_pb2.DropReason
DROP_NO_EGRESS_IP: _flow_pb2.DropReason
DROP_PUNT_PROXY: _flow_pb2.DropReason
TRAFFIC_DIRECTION_UNKNOWN: _flow_pb2.TrafficDirection
INGRESS: _flow_pb2.TrafficDirection
EGRESS: _flow_pb2.TrafficDirection
DBG_CAPTURE_POINT_UNKNOWN: _flow_pb2.DebugCapturePoint
DBG_CAPTURE_DELIVERY: _flow_pb2.DebugCapturePoint
DBG_CAPTURE_FROM_LB: _flow_pb2.DebugCapturePoint
DBG_CAPTURE_AFTER_V46: _flow_pb2.DebugCapturePoint
DBG_CAPTURE_AFTER_V64: _flow_pb2.DebugCapturePoint
DBG_CAPTURE_PROXY_PRE: _flow_pb2.DebugCapturePoint
DBG_CAPTURE_PROXY_POST: _flow_pb2.DebugCapturePoint
DBG_CAPTURE_SNAT_PRE: _flow_pb2.DebugCapturePoint
DBG_CAPTURE_SNAT_POST: _flow_pb2.DebugCapturePoint
UNKNOWN: _flow_pb2.EventType
EventSample: _flow_pb2.EventType
RecordLost: _flow_pb2.EventType
UNKNOWN_LOST_EVENT_SOURCE: _flow_pb2.LostEventSource
PERF_EVENT_RING_BUFFER: _flow_pb2.LostEventSource
OBSERVER_EVENTS_QUEUE: _flow_pb2.LostEventSource
HUBBLE_RING_BUFFER: _flow_pb2.LostEventSource
AGENT_EVENT_UNKNOWN: _flow_pb2.AgentEventType
AGENT_STARTED: _flow_pb2.AgentEventType
POLICY_UPDATED: _flow_pb2.AgentEventType
POLICY_DELETED: _flow_pb2.AgentEventType
ENDPOINT_REGENERATE_SUCCESS: _flow_pb2.AgentEventType
ENDPOINT_REGENERATE_FAILURE: _flow_pb2.AgentEventType
ENDPOINT_CREATED: _flow_pb2.AgentEventType
ENDPOINT_DELETED: _flow_pb2.AgentEventType
IPCACHE_UPSERTED: _flow_pb2.AgentEventType
IPCACHE_DELETED: _flow_pb2.AgentEventType
SERVICE_UPSERTED: _flow_pb2.AgentEventType
SERVICE_DELETED: _flow_pb2.AgentEventType
SOCK_XLATE_POINT_UNKNOWN: _flow_pb2.SocketTranslationPoint
SOCK_XLATE_POINT_PRE_DIRECTION_FWD: _flow_pb2.SocketTranslationPoint
SOCK_XLATE_POINT_POST_DIRECTION_FWD: _flow_pb2.SocketTranslationPoint
SOCK_XLATE_POINT_PRE_DIRECTION_REV: _flow_pb2.SocketTranslationPoint
SOCK_XLATE_POINT_POST_DIRECTION_REV: _flow_pb2.SocketTranslationPoint
DBG_EVENT_UNKNOWN: _flow_pb2.DebugEventType
DBG_GENERIC: _flow_pb2.DebugEventType
DBG_LOCAL_DELIVERY: _flow_pb2.DebugEventType
DBG_ENCAP: _flow_pb2.DebugEventType
DBG_LXC_FOUND: _flow_pb2.DebugEventType
DBG_POLICY_DENIED: _flow_pb2.DebugEventType
DBG_CT_LOOKUP: _flow_pb2.DebugEventType
DBG_CT_LOOKUP_REV: _flow_pb2.DebugEventType
DBG_CT_MATCH: _flow_pb2.DebugEventType
DBG_CT_CREATED: _flow_pb2.DebugEventType
DBG_CT_CREATED2: _flow_pb2.DebugEventType
DBG_ICMP6_HANDLE: _flow_pb2.DebugEventType
DBG_ICMP6_REQUEST: _flow_pb2.DebugEventType
DBG_ICMP6_NS: _flow_pb2.DebugEventType
DBG_ICMP6_TIME_EXCEEDED: _flow_pb2.DebugEventType
DBG_CT_VERDICT: _flow_pb2.DebugEventType
DBG_DECAP: _flow_pb2.DebugEventType
DBG_PORT_MAP: _flow_pb2.DebugEventType
DBG_ERROR_RET: _flow_pb2.DebugEventType
DBG_TO_HOST: _flow_pb2.DebugEventType
DBG_TO_STACK: _flow_pb2.DebugEventType
DBG_PKT_HASH: _flow_pb2.DebugEventType
DBG_LB6_LOOKUP_FRONTEND: _flow_pb2.DebugEventType
DBG_LB6_LOOKUP_FRONTEND_FAIL: _flow_pb2.DebugEventType
DBG_LB6_LOOKUP_BACKEND_SLOT: _flow_pb2.DebugEventType
DBG_LB6_LOOKUP_BACKEND_SLOT_SUCCESS: _flow_pb2.DebugEventType
DBG_LB6_LOOKUP_BACKEND_SLOT_V2_FAIL: _flow_pb2.DebugEventType
DBG_LB6_LOOKUP_BACKEND_FAIL: _flow_pb2.DebugEventType
DBG_LB6_REVERSE_NAT_LOOKUP: _flow_pb2.DebugEventType
DBG_LB6_REVERSE_NAT: _flow_pb2.DebugEventType
DBG_LB4_LOOKUP_FRONTEND: _flow_pb2.DebugEventType
DBG_LB4_LOOKUP_FRONTEND_FAIL: _flow_pb2.DebugEventType
DBG_LB4_LOOKUP_BACKEND_SLOT: _flow_pb2.DebugEventType
DBG_LB4_LOOKUP_BACKEND_SLOT_SUCCESS: _flow_pb2.DebugEventType
DBG_LB4_LOOKUP_BACKEND_SLOT_V2_FAIL: _flow_pb2.DebugEventType
DBG_LB4_LOOKUP_BACKEND_FAIL: _flow_pb2.DebugEventType
DBG_LB4_REVERSE_NAT_LOOKUP: _flow_pb2.DebugEventType
DBG_LB4_REVERSE_NAT: _flow_pb2.DebugEventType
DBG_LB4_LOOPBACK_SNAT: _flow_pb2.DebugEventType
DBG_LB4_LOOPBACK_SNAT_REV: _flow_pb2.DebugEventType
DBG_CT_LOOKUP4: _flow_pb2.DebugEventType
DBG_RR_BACKEND_SLOT_SEL: _flow_pb2.DebugEventType
DBG_REV_PROXY_LOOKUP: _flow_pb2.DebugEventType
DBG_REV_PROXY_FOUND: _flow_pb2.DebugEventType
DBG_REV_PROXY_UPDATE: _flow_pb2.DebugEventType
DBG_L4_POLICY: _flow_pb2.DebugEventType
DBG_NETDEV_IN_CLUSTER: _flow_pb2.DebugEventType
DBG_NETDEV_ENCAP4: _flow_pb2.DebugEventType
DBG_CT_LOOKUP4_1: _flow_pb2.DebugEventType
DBG_CT_LOOKUP4_2: _flow_pb2.DebugEventType
DBG_CT_CREATED4: _flow_pb2.DebugEventType
DBG_CT_LOOKUP6_1: _flow_pb2.DebugEventType
DBG_CT_LOOKUP6_2: _flow_pb2.DebugEventType
DBG_CT_CREATED6: _flow_pb2.DebugEventType
DBG_SKIP_PROXY: _flow_pb2.DebugEventType
DBG_L4_CREATE: _flow_pb2.DebugEventType
DBG_IP_ID_MAP_FAILED4: _flow_pb2.DebugEventType
DBG_IP_ID_MAP_FAILED6: _flow_pb2.DebugEventType
DBG_IP_ID_MAP_SUCCEED4: _flow_pb2.DebugEventType
DBG_IP_ID_MAP_SUCCEED6: _flow_pb2.DebugEventType
DBG_LB_STALE_CT: _flow_pb2.DebugEventType
DBG_INHERIT_IDENTITY: _flow_pb2.DebugEventType
DBG_SK_LOOKUP4: _flow_pb2.DebugEventType
DBG_SK_LOOKUP6: _flow_pb2.DebugEventType
DBG_SK_ASSIGN: _flow_pb2.DebugEventType
DBG_L7_LB: _flow_pb2.DebugEventType
DBG_SKIP_POLICY: _flow_pb2.DebugEventType
DBG_LB6_LOOPBACK_SNAT: _flow_pb2.DebugEventType
DBG_LB6_LOOPBACK_SNAT_REV: _flow_pb2.DebugEventType

class ServerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerStatusResponse(_message.Message):
    __slots__ = ("num_flows", "max_flows", "seen_flows", "uptime_ns", "num_connected_nodes", "num_unavailable_nodes", "unavailable_nodes", "version", "flows_rate")
    NUM_FLOWS_FIELD_NUMBER: _ClassVar[int]
    MAX_FLOWS_FIELD_NUMBER: _ClassVar[int]
    SEEN_FLOWS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    NUM_CONNECTED_NODES_FIELD_NUMBER: _ClassVar[int]
    NUM_UNAVAILABLE_NODES_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_NODES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FLOWS_RATE_FIELD_NUMBER: _ClassVar[int]
    num_flows: int
    max_flows: int
    seen_flows: int
    uptime_ns: int
    num_connected_nodes: _wrappers_pb2.UInt32Value
    num_unavailable_nodes: _wrappers_pb2.UInt32Value
    unavailable_nodes: _containers.RepeatedScalarFieldContainer[str]
    version: str
    flows_rate: float
    def __init__(self, num_flows: _Optional[int] = ..., max_flows: _Optional[int] = ..., seen_flows: _Optional[int] = ..., uptime_ns: _Optional[int] = ..., num_connected_nodes: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., num_unavailable_nodes: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., unavailable_nodes: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., flows_rate: _Optional[float] = ...) -> None: ...

class GetFlowsRequest(_message.Message):
    __slots__ = ("number", "first", "follow", "blacklist", "whitelist", "since", "until", "field_mask", "experimental", "extensions")
    class Experimental(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    BLACKLIST_FIELD_NUMBER: _ClassVar[int]
    WHITELIST_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    FIELD_MASK_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTAL_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    number: int
    first: bool
    follow: bool
    blacklist: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowFilter]
    whitelist: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowFilter]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    field_mask: _field_mask_pb2.FieldMask
    experimental: GetFlowsRequest.Experimental
    extensions: _any_pb2.Any
    def __init__(self, number: _Optional[int] = ..., first: _Optional[bool] = ..., follow: _Optional[bool] = ..., blacklist: _Optional[_Iterable[_Union[_flow_pb2.FlowFilter, _Mapping]]] = ..., whitelist: _Optional[_Iterable[_Union[_flow_pb2.FlowFilter, _Mapping]]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., field_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., experimental: _Optional[_Union[GetFlowsRequest.Experimental, _Mapping]] = ..., extensions: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class GetFlowsResponse(_message.Message):
    __slots__ = ("flow", "node_status", "lost_events", "node_name", "time")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_FIELD_NUMBER: _ClassVar[int]
    LOST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    flow: _flow_pb2.Flow
    node_status: _relay_pb2.NodeStatusEvent
    lost_events: _flow_pb2.LostEvent
    node_name: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, flow: _Optional[_Union[_flow_pb2.Flow, _Mapping]] = ..., node_status: _Optional[_Union[_relay_pb2.NodeStatusEvent, _Mapping]] = ..., lost_events: _Optional[_Union[_flow_pb2.LostEvent, _Mapping]] = ..., node_name: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAgentEventsRequest(_message.Message):
    __slots__ = ("number", "first", "follow", "since", "until")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    number: int
    first: bool
    follow: bool
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    def __init__(self, number: _Optional[int] = ..., first: _Optional[bool] = ..., follow: _Optional[bool] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAgentEventsResponse(_message.Message):
    __slots__ = ("agent_event", "node_name", "time")
    AGENT_EVENT_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    agent_event: _flow_pb2.AgentEvent
    node_name: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, agent_event: _Optional[_Union[_flow_pb2.AgentEvent, _Mapping]] = ..., node_name: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetDebugEventsRequest(_message.Message):
    __slots__ = ("number", "first", "follow", "since", "until")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    number: int
    first: bool
    follow: bool
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    def __init__(self, number: _Optional[int] = ..., first: _Optional[bool] = ..., follow: _Optional[bool] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetDebugEventsResponse(_message.Message):
    __slots__ = ("debug_event", "node_name", "time")
    DEBUG_EVENT_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    debug_event: _flow_pb2.DebugEvent
    node_name: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, debug_event: _Optional[_Union[_flow_pb2.DebugEvent, _Mapping]] = ..., node_name: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "version", "address", "state", "tls", "uptime_ns", "num_flows", "max_flows", "seen_flows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    NUM_FLOWS_FIELD_NUMBER: _ClassVar[int]
    MAX_FLOWS_FIELD_NUMBER: _ClassVar[int]
    SEEN_FLOWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    address: str
    state: _relay_pb2.NodeState
    tls: TLS
    uptime_ns: int
    num_flows: int
    max_flows: int
    seen_flows: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[_relay_pb2.NodeState, str]] = ..., tls: _Optional[_Union[TLS, _Mapping]] = ..., uptime_ns: _Optional[int] = ..., num_flows: _Optional[int] = ..., max_flows: _Optional[int] = ..., seen_flows: _Optional[int] = ...) -> None: ...

class TLS(_message.Message):
    __slots__ = ("enabled", "server_name")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    server_name: str
    def __init__(self, enabled: _Optional[bool] = ..., server_name: _Optional[str] = ...) -> None: ...

class GetNamespacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNamespacesResponse(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[Namespace]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[Namespace, _Mapping]]] = ...) -> None: ...

class Namespace(_message.Message):
    __slots__ = ("cluster", "namespace")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    namespace: str
    def __init__(self, cluster: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ExportEvent(_message.Message):
    __slots__ = ("flow", "node_status", "lost_events", "agent_event", "debug_event", "node_name", "time")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_FIELD_NUMBER: _ClassVar[int]
    LOST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    AGENT_EVENT_FIELD_NUMBER: _ClassVar[int]
    DEBUG_EVENT_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    flow: _flow_pb2.Flow
    node_status: _relay_pb2.NodeStatusEvent
    lost_events: _flow_pb2.LostEvent
    agent_event: _flow_pb2.AgentEvent
    debug_event: _flow_pb2.DebugEvent
    node_name: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, flow: _Optional[_Union[_flow_pb2.Flow, _Mapping]] = ..., node_status: _Optional[_Union[_relay_pb2.NodeStatusEvent, _Mapping]] = ..., lost_events: _Optional[_Union[_flow_pb2.LostEvent, _Mapping]] = ..., agent_event: _Optional[_Union[_flow_pb2.AgentEvent, _Mapping]] = ..., debug_event: _Optional[_Union[_flow_pb2.DebugEvent, _Mapping]] = ..., node_name: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

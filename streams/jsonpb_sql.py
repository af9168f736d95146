"""Hubble's jsonpb text of a stored row, computed by ClickHouse next to the rows the live stream reads back.

The live stream sends each flow as one jsonpb GetFlowsResponse. Rendering it in Python costs ~50 us to make
the row a dict and ~120 us to render it (measured at 10k flows/s on this machine's 2 cores: more than the
core the API has), so the sink asks ClickHouse for the text in the same SELECT that reads the stored rows
back; its threads run without the GIL. The text is byte for byte `query_api.live.render_jsonpb` dumped with
compact separators (tests/live compare both on every reference capture); a row the SQL cannot render
exactly (text outside printable ASCII, IPv6 forms Python prints differently, times past 2105) gets '' and
is rendered in Python.
"""

from __future__ import annotations

from typing import Any

from schemas.hubble.flow import flow_pb2

JSONPB_COLUMN = "jsonpb"

_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")  # bit i = TCPFlags field i + 1


def _str(expr: str) -> str:
    return f"toJSONString(toString({expr}))"


def _enum(enum: Any, expr: str) -> str:
    """The enum's name as a JSON string, or the bare number when the name is unknown (proto3 open enums)."""
    values = sorted(enum.DESCRIPTOR.values, key=lambda v: v.number)
    nums = ", ".join(str(v.number) for v in values)
    names = ", ".join(f"'\"{v.name}\"'" for v in values)
    return f"transform(toInt64({expr}), [{nums}], [{names}], toString({expr}))"


def _obj(members: list[tuple[str, str, str | None]]) -> str:
    """A JSON object of (key, JSON value, condition or None for always), in the given order. Each member
    brings its leading comma; the first is cut (no arrays per row: ~3x cheaper than arrayFilter)."""
    items = []
    for key, value, cond in members:
        member = f"concat(',\"{key}\":', {value})"
        items.append(member if cond is None else f"if({cond}, {member}, '')")
    return f"concat('{{', substring(concat({', '.join(items)}, ''), 2), '}}')"


def _str_array(expr: str) -> str:
    return f"toJSONString(CAST({expr}, 'Array(String)'))"


def _endpoint(a: str, side: str) -> str:
    names, kinds = f"{a}{side}_workload_names", f"{a}{side}_workload_kinds"
    workload = _obj([("name", "toJSONString(toString(n))", "n != ''"), ("kind", "toJSONString(toString(k))", "k != ''")])
    workloads = (
        f"concat('[', arrayStringConcat(arrayMap((n, k) -> {workload}, {names}, "
        f"arrayResize(CAST({kinds}, 'Array(String)'), length({names}), '')), ','), ']')"
    )
    return _obj([
        ("ID", f"toString({a}{side}_id)", f"{a}{side}_id != 0"),
        ("identity", f"toString({a}{side}_identity)", f"{a}{side}_identity != 0"),
        ("namespace", _str(f"{a}{side}_namespace"), f"{a}{side}_namespace != ''"),
        ("labels", _str_array(f"{a}{side}_labels"), f"notEmpty({a}{side}_labels)"),
        ("pod_name", _str(f"{a}{side}_pod"), f"{a}{side}_pod != ''"),
        ("workloads", workloads, f"notEmpty({names})"),
        ("cluster_name", _str(f"{a}{side}_cluster_name"), f"{a}{side}_cluster_name != ''"),
    ])


def _ip(a: str, col: str) -> str:
    # IPv4 flows: the mapped address in dotted form (schemas.flow_render.ip_text); '::' is no address.
    return f"if({a}ip_version = 1, replaceOne(toString({a}{col}), '::ffff:', ''), toString({a}{col}))"


def _l4(a: str) -> str:
    proto = f"{a}l4_protocol"
    flags = _obj([(name, "'true'", f"bitTest({a}tcp_flags, {i})") for i, name in enumerate(_FLAG_NAMES)])
    ports = [
        ("source_port", f"toString({a}src_port)", f"{a}src_port != 0"),
        ("destination_port", f"toString({a}dst_port)", f"{a}dst_port != 0"),
    ]
    tcp = _obj([*ports, ("flags", flags, f"{a}tcp_flags != 0")])
    icmp = _obj([("type", f"toString({a}icmp_type)", f"{a}icmp_type != 0"),
                 ("code", f"toString({a}icmp_code)", f"{a}icmp_code != 0")])
    typed = _obj([("type", f"toString({a}icmp_type)", f"{a}icmp_type != 0")])
    return (
        f"multiIf({proto} = 1, concat('{{\"TCP\":', {tcp}, '}}'), "
        f"{proto} = 2, concat('{{\"UDP\":', {_obj(ports)}, '}}'), "
        f"{proto} = 5, concat('{{\"SCTP\":', {_obj(ports)}, '}}'), "
        f"{proto} = 3, concat('{{\"ICMPv4\":', {icmp}, '}}'), "
        f"{proto} = 4, concat('{{\"ICMPv6\":', {icmp}, '}}'), "
        f"{proto} = 6, concat('{{\"VRRP\":', {typed}, '}}'), "
        f"{proto} = 7, concat('{{\"IGMP\":', {typed}, '}}'), '{{}}')"
    )


def _policies(expr: str) -> str:
    item = _obj([
        ("name", "toJSONString(toString(p.3))", "p.3 != ''"),
        ("namespace", "toJSONString(toString(p.2))", "p.2 != ''"),
        ("labels", _str_array("p.5"), "notEmpty(p.5)"),
        ("revision", "concat('\"', toString(p.4), '\"')", "p.4 != 0"),
        ("kind", "toJSONString(toString(p.1))", "p.1 != ''"),
    ])
    return f"concat('[', arrayStringConcat(arrayMap(p -> {item}, {expr}), ','), ']')"


def _time(ns: str) -> str:
    nanos = f"({ns} % 1000000000)"
    fraction = (
        f"multiIf({nanos} = 0, '', {nanos} % 1000000 = 0, concat('.', leftPad(toString(intDiv({nanos}, 1000000)), 3, '0')), "
        f"{nanos} % 1000 = 0, concat('.', leftPad(toString(intDiv({nanos}, 1000)), 6, '0')), "
        f"concat('.', leftPad(toString({nanos}), 9, '0')))"
    )
    seconds = f"toDateTime(intDiv({ns}, 1000000000), 'UTC')"
    return f"concat('\"', formatDateTime({seconds}, '%Y-%m-%dT%H:%i:%S', 'UTC'), {fraction}, 'Z\"')"


def _exact(a: str) -> str:
    """Rows whose text the SQL renders exactly as Python does (the rest get '' and Python's rendering)."""
    strings = [f"{a}{c}" for c in ("node_name", "src_namespace", "src_pod", "src_cluster_name", "src_service",
                                   "src_service_namespace", "dst_namespace", "dst_pod", "dst_cluster_name",
                                   "dst_service", "dst_service_namespace")]
    arrays = [f"arrayStringConcat({a}{side}_{c}, ' ')" for side in ("src", "dst")
              for c in ("labels", "workload_names", "workload_kinds", "names")]
    policies = [
        f"arrayStringConcat(arrayMap(p -> concat(p.1, p.2, p.3, arrayStringConcat(p.5, ' ')), {a}{col}), ' ')"
        for col in ("ingress_allowed_by", "egress_allowed_by", "ingress_denied_by", "egress_denied_by")
    ]
    text = f"concat({', '.join(['toString(' + s + ')' for s in strings] + arrays + policies)})"
    mapped = "startsWith(toString({0}), '::ffff:') OR startsWith(toString({0}), '::') AND position(toString({0}), '.') > 0"
    v6_ok = f"NOT ({mapped.format(a + 'ip_src')}) AND NOT ({mapped.format(a + 'ip_dst')})"
    v4_ok = (f"(toString({a}ip_src) = '::' OR startsWith(toString({a}ip_src), '::ffff:')) AND "
             f"(toString({a}ip_dst) = '::' OR startsWith(toString({a}ip_dst), '::ffff:'))")
    ns = f"toUnixTimestamp64Nano({a}time)"
    return (
        f"match({text}, '^[ -~]*$') AND {ns} >= 0 AND {ns} < 4260211200000000000 AND "
        f"({a}ip_version != 1 OR {v4_ok}) AND ({a}ip_version = 1 OR {v6_ok})"
    )


def jsonpb_sql(alias: str = "") -> str:
    """SQL of the jsonpb text of a row of the flows/stage columns (prefix `alias.`), '' where not exact."""
    a = f"{alias}." if alias else ""
    ns = f"toUnixTimestamp64Nano({a}time)"
    time_text = _time(ns)
    ip = _obj([
        ("source", f"toJSONString({_ip(a, 'ip_src')})", f"toString({a}ip_src) != '::'"),
        ("destination", f"toJSONString({_ip(a, 'ip_dst')})", f"toString({a}ip_dst) != '::'"),
        ("ipVersion", _enum(flow_pb2.IPVersion, f"{a}ip_version"), None),
        ("encrypted", "'true'", f"{a}ip_encrypted"),
    ])
    event = _obj([("type", f"toString({a}event_type)", f"{a}event_type != 0"),
                  ("sub_type", f"toString({a}event_sub_type)", f"{a}event_sub_type != 0")])
    l7 = f"if({a}l7_type != 0, concat('{{\"type\":', {_enum(flow_pb2.L7FlowType, a + 'l7_type')}, '}}'), '{{}}')"

    def service(side: str) -> str:
        return _obj([("name", _str(f"{a}{side}_service"), f"{a}{side}_service != ''"),
                     ("namespace", _str(f"{a}{side}_service_namespace"), f"{a}{side}_service_namespace != ''")])

    members: list[tuple[str, str, str | None]] = [
        ("time", time_text, None),
        ("verdict", _enum(flow_pb2.Verdict, f"{a}verdict"), f"{a}verdict != 0"),
        ("drop_reason", f"toString({a}drop_reason)", f"{a}drop_reason != 0"),
        ("IP", ip, f"{a}ip_version != 0"),
        ("l4", _l4(a), f"{a}l4_protocol != 0"),
        ("source", _endpoint(a, "src"), None),
        ("destination", _endpoint(a, "dst"), None),
        ("Type", _enum(flow_pb2.FlowType, f"{a}flow_type"), f"{a}flow_type != 0"),
        ("node_name", _str(f"{a}node_name"), f"{a}node_name != ''"),
        ("source_names", _str_array(f"{a}src_names"), f"notEmpty({a}src_names)"),
        ("destination_names", _str_array(f"{a}dst_names"), f"notEmpty({a}dst_names)"),
        ("l7", l7, f"{a}flow_type = 2"),
        ("reply", "'true'", f"{a}reply"),
        ("event_type", event, None),
        ("source_service", service("src"), f"{a}src_service != '' OR {a}src_service_namespace != ''"),
        ("destination_service", service("dst"), f"{a}dst_service != '' OR {a}dst_service_namespace != ''"),
        ("traffic_direction", _enum(flow_pb2.TrafficDirection, f"{a}traffic_direction"),
         f"{a}traffic_direction != 0"),
        ("trace_observation_point", _enum(flow_pb2.TraceObservationPoint, f"{a}trace_observation_point"),
         f"{a}trace_observation_point != 0"),
        ("drop_reason_desc", _enum(flow_pb2.DropReason, f"{a}drop_reason_desc"), f"{a}drop_reason_desc != 0"),
        ("is_reply", f"if(assumeNotNull({a}is_reply), 'true', 'false')", f"isNotNull({a}is_reply)"),
        ("uuid", f"concat('\"', toString({a}uuid), '\"')", f"{a}uuid_given"),
        ("trace_reason", _enum(flow_pb2.TraceReason, f"{a}trace_reason"), f"{a}trace_reason != 0"),
    ]
    for field in ("egress_allowed_by", "ingress_allowed_by", "egress_denied_by", "ingress_denied_by"):
        members.append((field, _policies(f"{a}{field}"), f"notEmpty({a}{field})"))
    flow = _obj(members)
    out = _obj([("flow", flow, None), ("node_name", _str(f"{a}node_name"), f"{a}node_name != ''"),
                ("time", time_text, None)])
    return f"if({_exact(a)}, {out}, '')"


# ClickHouse writes '/' unescaped then, as Python's json does.
JSONPB_SETTINGS: dict[str, str | int] = {"output_format_json_escape_forward_slashes": 0}

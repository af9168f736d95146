"""The validation report as one self-contained HTML page: inline CSS, inline SVG charts, no script and no
external resource (it opens offline, from a file or a mail attachment). Every value is escaped.

Input: the report document (policy_engine.traffic_report.validation_report). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:2px solid #d8dde6;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}.muted{color:#667085}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #d8dde6;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:20px}.bad b{color:#b42318}.ok b{color:#067647}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;width:100%}
th,td{border:1px solid #e4e7ec;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f2f4f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
.tag{display:inline-block;padding:0 6px;border-radius:4px;font-size:12px;background:#eef2f6}
.tag.on{background:#d1fadf;color:#05603a}.tag.off{background:#fee4e2;color:#912018}
code{font-size:12px;background:#f2f4f7;padding:1px 4px;border-radius:3px}svg{background:#fff;border:1px solid #e4e7ec;border-radius:6px}
"""
_VERDICT_COLORS = {"FORWARDED": "#12b76a", "DROPPED": "#f04438", "AUDIT": "#f79009", "ERROR": "#7a5af8"}
_OTHER_COLOR = "#98a2b3"


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> str:
    nums = set(numeric)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if i in nums else ''}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    if not body:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{body}</table>"


def _endpoint(side: Mapping[str, Any]) -> str:
    if side.get("namespace"):
        text = f"{side['namespace']}/{side.get('workload') or '*'}"
    else:
        reserved, ip = side.get("reserved") or "", side.get("ip") or ""
        text = f"{reserved} ({ip})" if reserved and ip else reserved or ip or "unknown"
    return _e(text)


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{float(value) * 100:.0f}%"


def _bar(value: Any, width: int = 120) -> str:
    """A small inline SVG bar of a share (0..1)."""
    share = 0.0 if value is None else max(0.0, min(1.0, float(value)))
    color = "#12b76a" if share >= 0.999 else "#f79009" if share >= 0.5 else "#f04438"
    return (
        f'<svg width="{width}" height="12" role="img" aria-label="{_share(value)}" style="border:0;background:none">'
        f'<rect width="{width}" height="12" fill="#eaecf0" rx="2"/>'
        f'<rect width="{share * width:.1f}" height="12" fill="{color}" rx="2"/></svg> {_share(value)}'
    )


def verdict_chart(buckets: Sequence[Mapping[str, Any]], width: int = 720, height: int = 180) -> str:
    """Stacked bars of flows per verdict over the window's buckets."""
    if not buckets:
        return '<p class="muted">no flows in the window</p>'
    totals = [sum(int(v) for v in (b.get("verdicts") or {}).values()) for b in buckets]
    top = max(totals) or 1
    pad_left, pad_bottom = 48, 20
    plot_w, plot_h = width - pad_left - 8, height - pad_bottom - 8
    step = plot_w / len(buckets)
    bar_w = max(1.0, step * 0.8)
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="flows per verdict over time">']
    parts.append(f'<text x="4" y="14" font-size="11" fill="#667085">{top:,}</text>')
    parts.append(f'<text x="4" y="{8 + plot_h}" font-size="11" fill="#667085">0</text>')
    names: set[str] = set()
    for i, bucket in enumerate(buckets):
        y = 8 + plot_h
        x = pad_left + i * step
        for name, count in sorted((bucket.get("verdicts") or {}).items()):
            h = plot_h * int(count) / top
            y -= h
            names.add(name)
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{_VERDICT_COLORS.get(name, _OTHER_COLOR)}"><title>{_e(bucket.get("start"))} {_e(name)}: '
                f"{int(count):,}</title></rect>"
            )
    parts.append(f'<text x="{pad_left}" y="{height - 4}" font-size="11" fill="#667085">{_e(buckets[0].get("start"))}</text>')
    parts.append(
        f'<text x="{width - 8}" y="{height - 4}" font-size="11" fill="#667085" text-anchor="end">'
        f'{_e(buckets[-1].get("start"))}</text>'
    )
    legend_x = pad_left + 8
    for name in sorted(names):
        parts.append(f'<rect x="{legend_x}" y="6" width="10" height="10" fill="{_VERDICT_COLORS.get(name, _OTHER_COLOR)}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="15" font-size="11">{_e(name)}</text>')
        legend_x += 20 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(items: Sequence[tuple[str, int]], width: int = 720) -> str:
    """Horizontal bars, biggest first (drops by reason / by policy)."""
    if not items:
        return '<p class="muted">none</p>'
    items = list(items)[:12]
    top = max(n for _, n in items) or 1
    row_h, label_w = 20, 260
    height = row_h * len(items) + 8
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="drops">']
    for i, (label, n) in enumerate(items):
        y = 4 + i * row_h
        w = (width - label_w - 80) * n / top
        parts.append(f'<text x="4" y="{y + 14}" font-size="12">{_e(label[:40])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="14" fill="#f04438" rx="2"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 14}" font-size="12">{n:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _conversation_row(c: Mapping[str, Any], *extra: Any) -> list[Any]:
    return [
        _endpoint(c["source"]),
        _endpoint(c["destination"]),
        _e(f"{c['port']}/{c['protocol']}"),
        f"{int(c['flows']):,}",
        *extra,
        _e(c.get("last_seen")),
    ]


def _causes(causes: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for c in causes:
        text = f'<span class="tag off">{_e(c.get("cause"))}</span> {_e(c.get("detail"))}'
        if c.get("pods"):
            text += "<br>pods: " + ", ".join(_e(f"{p['namespace']}/{p['name']}") for p in c["pods"])
        if c.get("fix"):
            text += f"<br>fix: <code>{_e(c['fix'])}</code>"
        out.append(text)
    return "<br>".join(out)


def _cluster_html(c: Mapping[str, Any]) -> str:
    parts = [f"<h2>Cluster {_e(c['cluster'])}</h2>"]
    desired = c.get("desired_set") or {}
    kube = c.get("kube")
    facts = [
        f"engine {_e(desired.get('engine') or 'unknown')}",
        f"blueprint {_e(desired.get('blueprint') or 'none')} v{_e(desired.get('blueprint_version') or 0)}",
        f"desired set revision {_e(desired.get('revision', 'none'))}",
        "kube API: " + ("not asked" if kube is None else "reachable" if kube.get("reachable")
                        else f"unreachable ({_e(kube.get('error'))})"),
    ]
    parts.append(f'<p class="muted">{" · ".join(facts)}</p>')
    if not c.get("desired_set"):
        parts.append('<p><span class="tag off">no desired policy set</span> nothing to validate against</p>')
    elif desired.get("error"):
        parts.append(f'<p><span class="tag off">desired set cannot be rendered</span> {_e(desired["error"])}</p>')

    def card(label: str, value: Any, bad: bool) -> str:
        return f'<div class="card {"bad" if bad else "ok"}"><b>{_e(value)}</b>{_e(label)}</div>'

    parts.append(
        '<div class="cards">'
        + card("conversations", f"{int(c.get('conversations', 0)):,}", False)
        + card("flows", f"{int(c.get('flows', 0)):,}", False)
        + card("not in effect", len(c["not_in_effect"]), bool(c["not_in_effect"]))
        + card("unexpected drops", len(c["unexpected_drops"]), bool(c["unexpected_drops"]))
        + card("unused rules", len(c["unused_rules"]), bool(c["unused_rules"]))
        + card("staged policies", len(c["staged"]), False)
        + "</div>"
    )
    drops = c.get("drops") or {}

    parts.append("<h3>Zero-trust coverage</h3>")
    rows = []
    for ns in c["namespaces"]:
        dd, cov = ns["default_deny"], ns["coverage"]
        rows.append([
            _e(ns["namespace"]), _e(ns.get("workspace") or ""),
            *(f'<span class="tag {"on" if dd[d] else "off"}">{"on" if dd[d] else "off"}</span>' for d in ("ingress", "egress")),
            *(f"{_bar(cov[d]['workloads'])} ({cov[d]['workloads_selected']}/{cov[d]['workloads_total']})"
              for d in ("ingress", "egress")),
            *(_bar(cov[d]["flows"]) for d in ("ingress", "egress")),
        ])
    parts.append(_table(["namespace", "workspace", "default deny ingress", "default deny egress",
                         "workloads ingress", "workloads egress", "flows ingress", "flows egress"], rows))

    parts.append("<h3>Not in effect: forwarded, but the desired set denies</h3>")
    parts.append(_table(
        ["workload", "direction", "policy / rule", "flows", "conversations", "likely cause"],
        [[_e(f"{g['namespace']}/{g['workload']}"), _e(g["direction"]),
          _e(f"{g['policy']} v{g['version']} {g['rule']}"), f"{int(g['flows']):,}",
          "<br>".join(f"{_endpoint(x['source'])} → {_endpoint(x['destination'])} {_e(x['port'])}/{_e(x['protocol'])}"
                      for x in g["conversations"][:5]),
          _causes(g["causes"])] for g in c["not_in_effect"]],
        numeric=(3,),
    ))

    parts.append("<h3>Unexpected drops: dropped, but the desired set allows</h3>")
    parts.append(_table(
        ["source", "destination", "port", "flows", "drop reason", "cause", "last seen"],
        [_conversation_row(d, _e(d.get("drop_reason")), _causes(d["causes"])) for d in c["unexpected_drops"]],
        numeric=(3,),
    ))

    parts.append("<h3>Drops by reason</h3>")
    parts.append(bar_chart([(str(r["reason"]), int(r["flows"])) for r in drops.get("by_reason") or []]))
    parts.append("<h3>Drops by policy (Hubble's attribution)</h3>")
    parts.append(bar_chart([
        (f"{r['kind']} {r['namespace'] + '/' if r.get('namespace') else ''}{r['name']}", int(r["flows"]))
        for r in drops.get("by_policy") or []
    ]))
    parts.append("<h3>Top dropped conversations</h3>")
    parts.append(_table(
        ["source", "destination", "port", "flows", "drop reason", "desired", "last seen"],
        [_conversation_row(t, _e(t.get("drop_reason")), _e(t.get("desired"))) for t in drops.get("top_conversations") or []],
        numeric=(3,),
    ))

    parts.append("<h3>Rules in effect</h3>")
    parts.append(_table(
        ["policy", "version", "object", "rule", "flows", "last matched"],
        [[_e(r["policy"]), _e(r["version"]), _e(r["object"]), _e(r["rule"]),
          '<span class="tag off">0</span>' if not r["flows"] else f"{int(r['flows']):,}", _e(r["last_matched"] or "")]
         for r in c.get("rules") or c["unused_rules"]],
        numeric=(4,),
    ))

    parts.append("<h3>Staged policies</h3>")
    staged_rows = []
    for s in c["staged"]:
        def listing(items: Sequence[Mapping[str, Any]]) -> str:
            return "<br>".join(
                f"{_endpoint(x['source'])} → {_endpoint(x['destination'])} {_e(x['port'])}/{_e(x['protocol'])} "
                f"({int(x['flows']):,})" for x in items[:10]
            ) or '<span class="muted">nothing</span>'
        staged_rows.append([_e(f"{s['policy']} v{s['version']}"),
                            f"{int(s['newly_denied_flows']):,}<br>{listing(s['newly_denied'])}",
                            f"{int(s['newly_allowed_flows']):,}<br>{listing(s['newly_allowed'])}"])
    parts.append(_table(["policy", "would newly deny (flows)", "would newly allow (flows)"], staged_rows))

    health = c.get("health") or {}
    parts.append("<h3>Health</h3>")
    lost = health.get("lost_ranges") or []
    parts.append(_table(["from", "to", "what"], [[_e(r.get("since")), _e(r.get("until")), _e(r.get("what"))] for r in lost])
                 if lost else f'<p class="muted">no lost ranges recorded. {_e(health.get("note", ""))}</p>')
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    window = report.get("window") or {}
    clusters = report.get("clusters") or []
    drops = report.get("drops") or {}
    overview = (
        "<h2>All clusters in this report</h2><h3>Flows per verdict</h3>" + verdict_chart(drops.get("buckets") or [])
        + "<h3>Drops by reason</h3>"
        + bar_chart([(str(r["reason"]), int(r["flows"])) for r in drops.get("by_reason") or []])
    )
    body = overview + (
        "".join(_cluster_html(c) for c in clusters) or '<p class="muted">no cluster in this report</p>'
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>netwarden validation report {_e(window.get('since'))} – {_e(window.get('until'))}</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>netwarden validation report</h1>"
        f"<p class=\"muted\">window {_e(window.get('since'))} – {_e(window.get('until'))} · "
        f"{len(clusters)} cluster(s)</p>"
        f"{body}</body></html>\n"
    )

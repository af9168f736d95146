"""netwarden's Grafana dashboards as data: panels (title, type, queries from netwarden.grafana.queries) laid out
on Grafana's 24-column grid, rendered to dashboard JSON (schemaVersion 39, Grafana 10.2+/11).

`netwarden grafana dashboards --out DIR` writes them; deploy/grafana/dashboards holds the committed copy
(tests/grafana checks it equals what this module renders, and runs every query).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from netwarden.grafana import queries as q

SCHEMA_VERSION = 39
CLICKHOUSE_UID = "netwarden-clickhouse"  # deploy/grafana/provisioning/datasources/netwarden.yaml
PROMETHEUS_UID = "netwarden-prometheus"
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": CLICKHOUSE_UID}
PROMETHEUS = {"type": "prometheus", "uid": PROMETHEUS_UID}
TAGS = ["netwarden"]

PanelType = Literal["timeseries", "table", "stat", "bargauge"]


@dataclass(frozen=True)
class Query:
    """One panel target: ClickHouse SQL (with the plugin's macros) or PromQL."""

    expr: str
    source: Literal["clickhouse", "prometheus"] = "clickhouse"
    legend: str = ""  # PromQL legend format

    def target(self, ref_id: str, panel_type: PanelType) -> dict[str, Any]:
        if self.source == "prometheus":
            return {"datasource": PROMETHEUS, "refId": ref_id, "expr": self.expr,
                    "legendFormat": self.legend or "__auto", "range": True}
        series = panel_type == "timeseries"
        # format 0: time series (long rows time, label, value become one series per label); 1: table
        return {"datasource": CLICKHOUSE, "refId": ref_id, "editorType": "sql", "rawSql": self.expr,
                "format": 0 if series else 1, "queryType": "timeseries" if series else "table"}


@dataclass(frozen=True)
class Panel:
    title: str
    type: PanelType
    queries: Sequence[Query]
    description: str = ""
    unit: str = "short"
    width: int = 12
    height: int = 8

    def render(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        datasource = PROMETHEUS if self.queries[0].source == "prometheus" else CLICKHOUSE
        options: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        if self.type == "timeseries":
            custom = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never",
                      "spanNulls": False}
            options = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
                       "tooltip": {"mode": "multi", "sort": "desc"}}
        elif self.type == "stat":
            options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "colorMode": "value", "graphMode": "none", "textMode": "auto"}
        elif self.type == "table":
            options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
        return {
            "id": panel_id,
            "type": self.type,
            "title": self.title,
            "description": self.description,
            "datasource": datasource,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": self.unit, "custom": custom}, "overrides": []},
            "options": options,
            "targets": [query.target(chr(ord("A") + i), self.type) for i, query in enumerate(self.queries)],
        }


@dataclass(frozen=True)
class Variable:
    """A query variable over ClickHouse."""

    name: str
    label: str
    sql: str
    multi: bool = False
    include_all: bool = False

    def render(self) -> dict[str, Any]:
        current = {"selected": True, "text": ["All"], "value": ["$__all"]} if self.include_all else {}
        return {
            "name": self.name,
            "label": self.label,
            "type": "query",
            "datasource": CLICKHOUSE,
            "query": {"editorType": "sql", "rawSql": self.sql, "format": 1},
            "definition": self.sql,
            "refresh": 2,  # on time range change
            "multi": self.multi,
            "includeAll": self.include_all,
            "current": current,
            "options": [],
            "sort": 1,
            "hide": 0,
            "regex": "",
        }


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    file: str
    description: str
    panels: Sequence[Panel]
    variables: Sequence[Variable] = field(default_factory=tuple)
    time_from: str = "now-1h"

    def render(self) -> dict[str, Any]:
        rendered, x, y, row_height = [], 0, 0, 0
        for i, panel in enumerate(self.panels, start=1):
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            rendered.append(panel.render(i, x, y))
            x += panel.width
            row_height = max(row_height, panel.height)
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": TAGS,
            "timezone": "utc",
            "editable": True,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": self.time_from, "to": "now"},
            "templating": {"list": [v.render() for v in self.variables]},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": TAGS, "asDropdown": True, "title": "netwarden"}],
            "panels": rendered,
        }


def _ch(*sql: str) -> list[Query]:
    return [Query(s) for s in sql]


def _prom(*exprs: tuple[str, str]) -> list[Query]:
    return [Query(e, "prometheus", legend) for e, legend in exprs]


CLUSTER_ALL = Variable("cluster", "Cluster", q.VAR_STORED_CLUSTERS, multi=True, include_all=True)

FLEET = Dashboard(
    "netwarden-fleet", "netwarden / Fleet overview", "fleet-overview.json",
    "Flows of every cluster: verdicts, drops, top talkers, policy drops and where netwarden's policies "
    "disagree with what Hubble saw.",
    [
        Panel("Flows", "stat", _ch(q.FLEET_TOTAL_FLOWS), width=6, height=4),
        Panel("Dropped", "stat", _ch(q.FLEET_DROPPED_SHARE), unit="percentunit", width=6, height=4),
        Panel("Verdict mismatches (requests)", "stat", _ch(q.FLEET_MISMATCH_TOTAL), width=6, height=4,
              description="Requests where Hubble's verdict and netwarden's desired policy set disagree."),
        Panel("Active namespaces", "stat", _ch(q.FLEET_ACTIVE_NAMESPACES), width=6, height=4),
        Panel("Flows/s by verdict", "timeseries", _ch(q.FLEET_FLOWS_BY_VERDICT), unit="ops"),
        Panel("Flows/s by cluster", "timeseries", _ch(q.FLEET_FLOWS_BY_CLUSTER), unit="ops"),
        Panel("Drops/s by reason", "timeseries", _ch(q.FLEET_DROPS_BY_REASON), unit="ops"),
        Panel("Verdict mismatches/s by cluster", "timeseries", _ch(q.FLEET_MISMATCHES_OVER_TIME), unit="ops"),
        Panel("Top talkers", "table", _ch(q.FLEET_TOP_TALKERS),
              description="Endpoint pairs (cluster/namespace/workload) by flows, both directions."),
        Panel("Policy drops", "table", _ch(q.FLEET_POLICY_DROPS),
              description="Drops Hubble attributes to a policy (denied_by), per policy."),
        Panel("netwarden vs Hubble verdict mismatches", "table", _ch(q.FLEET_MISMATCHES), width=24, height=10,
              description="Requests Hubble and netwarden's desired policy set judge differently, with the "
                          "netwarden policy and rule that decided."),
    ],
    [CLUSTER_ALL],
)

NAMESPACE = Dashboard(
    "netwarden-namespace", "netwarden / Network overview (namespace)", "namespace-overview.json",
    "One namespace's traffic, in the spirit of Cilium's Hubble / Network Overview (Namespace): what reaches "
    "it, what it reaches, what is dropped and why.",
    [
        Panel("Flows/s by direction and verdict", "timeseries", _ch(q.NS_FLOWS_BY_VERDICT), unit="ops"),
        Panel("Drops/s by reason", "timeseries", _ch(q.NS_DROPS_BY_REASON), unit="ops"),
        Panel("Top sources (ingress)", "table", _ch(q.NS_TOP_SOURCES)),
        Panel("Top destinations (egress requests)", "table", _ch(q.NS_TOP_DESTINATIONS)),
        Panel("Dropped connections", "table", _ch(q.NS_DROPPED_CONNECTIONS)),
        Panel("Policy drops", "table", _ch(q.NS_POLICY_DROPS)),
        Panel("netwarden vs Hubble verdict mismatches", "table", _ch(q.NS_MISMATCHES), width=24),
        Panel("Recent dropped flows", "table", _ch(q.NS_RECENT_DROPS), width=24, height=10),
    ],
    [
        Variable("cluster", "Cluster", q.VAR_NAMESPACE_CLUSTERS),
        Variable("namespace", "Namespace", q.VAR_NAMESPACES, multi=True, include_all=True),
    ],
)

POLICY = Dashboard(
    "netwarden-policy-verdicts", "netwarden / Policy verdicts", "policy-verdicts.json",
    "netwarden's desired policy set per policy and rule (decisions, denials, rules idle in the range) and "
    "Hubble's own attribution. Conversations are stored per whole hour.",
    [
        Panel("Decisions per netwarden policy and rule", "table", _ch(q.POLICY_DECISIONS), width=24, height=10),
        Panel("Denied flows per rule", "timeseries", _ch(q.POLICY_DENIALS_OVER_TIME)),
        Panel("Hubble policy drops/s", "timeseries", _ch(q.HUBBLE_POLICY_DROPS_OVER_TIME), unit="ops"),
        Panel("Idle rules", "table", _ch(q.POLICY_IDLE_RULES),
              description="Rules that decided flows earlier within retention but none in the selected range. "
                          "Rules that never decided a flow are not in ClickHouse: `netwarden report validate` "
                          "lists them (unused_rules)."),
        Panel("Hubble attribution (allowed_by / denied_by)", "table", _ch(q.HUBBLE_ATTRIBUTION)),
    ],
    [CLUSTER_ALL],
    time_from="now-24h",
)

PIPELINE = Dashboard(
    "netwarden-pipeline", "netwarden / Pipeline health", "pipeline-health.json",
    "Collectors, worker, broker and API from /metrics (Prometheus), and the store's own view of freshness.",
    [
        Panel("Collector flows/s", "timeseries", _prom((q.PROM_COLLECTOR_FLOWS, "{{cluster}}"),
                                                       (q.PROM_COLLECTOR_CHILD_FLOWS, "{{cluster}} (embedded)")),
              unit="ops"),
        Panel("Collector lag (newest flow shipped)", "timeseries", _prom((q.PROM_COLLECTOR_LAG, "{{cluster}}")),
              unit="s"),
        Panel("Lost events", "timeseries", _prom((q.PROM_COLLECTOR_LOST, "{{cluster}} {{source}}"),
                                                 (q.PROM_COLLECTOR_CHILD_LOST, "{{cluster}} (embedded)"),
                                                 (q.PROM_STREAM_LOST, "{{cluster}} (worker)"))),
        Panel("Collector reconnects", "timeseries", _prom((q.PROM_RECONNECTS, "{{cluster}}"))),
        Panel("Stored flows/s (worker)", "timeseries", _prom((q.PROM_STORED, "{{cluster}}")), unit="ops"),
        Panel("Dead-lettered (flows.dlq)", "timeseries", _prom((q.PROM_DLQ, "{{reason_kind}}"))),
        Panel("Insert latency p95 by sink stage", "timeseries", _prom((q.PROM_INSERT_P95, "{{stage}}")), unit="s"),
        Panel("Offset commit latency p95", "timeseries", _prom((q.PROM_COMMIT_P95, "commit")), unit="s"),
        Panel("Retries and back-off", "timeseries", _prom((q.PROM_RETRIES, "retries {{stage}}"),
                                                          (q.PROM_BACKING_OFF, "backing off {{stage}}"))),
        Panel("Seconds since the worker last stored rows", "stat", _prom((q.PROM_WORKER_IDLE, "worker")),
              unit="s", width=6),
        Panel("Broker rotations", "stat", _prom((q.PROM_ROTATIONS, "rotations")), width=6),
        Panel("Broker memory (RSS)", "timeseries", _prom((q.PROM_BROKER_RSS, "broker"),
                                                         (q.PROM_CHILD_RSS, "{{child}}")), unit="bytes"),
        Panel("API latency p95 by route", "timeseries", _prom((q.PROM_API_P95, "{{route}}")), unit="s"),
        Panel("Newest stored flow per cluster (ClickHouse)", "table", _ch(q.PIPELINE_NEWEST_FLOW),
              description="Freshness as the store sees it: a growing lag means a collector or the worker stalls."),
        Panel("Stored flows/s by cluster (ClickHouse)", "timeseries", _ch(q.PIPELINE_STORED_BY_CLUSTER), unit="ops"),
        Panel("Flow age at insert p95 (ClickHouse)", "timeseries", _ch(q.PIPELINE_INGEST_DELAY), unit="s"),
    ],
    [CLUSTER_ALL],
)

DASHBOARDS: tuple[Dashboard, ...] = (FLEET, NAMESPACE, POLICY, PIPELINE)


def dashboard_json(dashboard: Dashboard) -> str:
    """The committed file's exact text (stable key order, trailing newline)."""
    return json.dumps(dashboard.render(), indent=2, sort_keys=True) + "\n"


def write_dashboards(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for dashboard in DASHBOARDS:
        path = out / dashboard.file
        path.write_text(dashboard_json(dashboard))
        written.append(path)
    return written

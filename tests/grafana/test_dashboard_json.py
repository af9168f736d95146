"""The committed dashboards and provisioning: generated from netwarden.grafana (no hand edits), fixed uids,
datasource uids that the provisioning defines, schemaVersion, variables that exist, and Prometheus queries
that name metrics and labels the code really exports."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from netwarden.cli import main
from netwarden.grafana.dashboards import DASHBOARDS, SCHEMA_VERSION, Dashboard, dashboard_json
from query_api.metrics import QueryApiMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD_DIR = DEPLOY / "dashboards"


def provisioned_datasources() -> dict[str, str]:
    doc = yaml.safe_load((DEPLOY / "provisioning" / "datasources" / "netwarden.yaml").read_text())
    return {ds["uid"]: ds["type"] for ds in doc["datasources"]}


def test_committed_json_is_what_the_module_generates(tmp_path: Path) -> None:
    assert main(["grafana", "dashboards", "--out", str(tmp_path)]) == 0
    generated = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in DASHBOARD_DIR.glob("*.json")}
    assert generated == committed, "run: netwarden grafana dashboards --out deploy/grafana/dashboards"
    assert generated == {d.file: dashboard_json(d) for d in DASHBOARDS}


def test_at_least_four_dashboards_with_fixed_unique_uids() -> None:
    docs = [json.loads((DASHBOARD_DIR / d.file).read_text()) for d in DASHBOARDS]
    assert len(docs) >= 4
    assert [d["uid"] for d in docs] == ["netwarden-fleet", "netwarden-namespace", "netwarden-policy-verdicts",
                                       "netwarden-pipeline"]
    assert all(d["schemaVersion"] == SCHEMA_VERSION == 39 for d in docs)


def _datasources(doc: dict[str, Any]) -> list[dict[str, str]]:
    out = [v["datasource"] for v in doc["templating"]["list"]]
    for panel in doc["panels"]:
        out.append(panel["datasource"])
        out += [t["datasource"] for t in panel["targets"]]
    return out


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_panels_use_provisioned_datasources_and_defined_variables(dashboard: Dashboard) -> None:
    doc = json.loads((DASHBOARD_DIR / dashboard.file).read_text())
    provisioned = provisioned_datasources()
    assert set(provisioned) == {"netwarden-clickhouse", "netwarden-prometheus"}
    for ds in _datasources(doc):
        assert provisioned.get(ds["uid"]) == ds["type"], ds
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["panels"]
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
    defined = {v["name"] for v in doc["templating"]["list"]}
    texts = [t.get("rawSql", "") for p in doc["panels"] for t in p["targets"]]
    texts += [v["query"]["rawSql"] for v in doc["templating"]["list"]]
    used = {m for text in texts for m in re.findall(r"\$\{?(\w+)", text) if not m.startswith("__")}
    assert used <= defined, used - defined


def exported_metrics() -> dict[str, set[str]]:
    """Every metric name the code registers (with the _total/_bucket/... sample names) -> its label names."""
    for module in ("collectors.hubble_client", "streams.sink", "streams.app", "streams.verdicts",
                   "streams.inventory", "netwarden.embedded", "netwarden.supervise", "query_api.live"):
        importlib.import_module(module)
    out: dict[str, set[str]] = {}
    for registry in (REGISTRY, QueryApiMetrics().registry):
        for name, collector in registry._names_to_collectors.items():
            labels = set(getattr(collector, "_labelnames", ()))
            out[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return out


def test_prometheus_queries_name_exported_metrics_and_labels() -> None:
    metrics = exported_metrics()
    checked = 0
    for dashboard in DASHBOARDS:
        for panel in dashboard.panels:
            for query in panel.queries:
                if query.source != "prometheus":
                    continue
                names = re.findall(r"\bnetwarden_\w+", query.expr)
                assert names and all(n in metrics for n in names), (panel.title, names)
                labels = set().union(*(metrics[n] for n in names))
                used = set(re.findall(r"(\w+)=\"", query.expr)) | set(re.findall(r"\{\{(\w+)\}\}", query.legend))
                for by in re.findall(r"by \(([^)]*)\)", query.expr):
                    used |= {label.strip() for label in by.split(",")}
                assert used <= labels, (panel.title, used - labels)
                checked += 1
    assert checked >= 10


def test_dashboard_provider_points_at_one_folder() -> None:
    doc = yaml.safe_load((DEPLOY / "provisioning" / "dashboards" / "netwarden.yaml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]

"""The report's HTML page and terminal table: names from the clusters cannot inject markup or control sequences,
and the page needs no network."""

from __future__ import annotations

from datetime import timedelta

from netwarden.commands.report import render_table
from policy_engine.traffic_report import ClusterFacts, DropRollups, ReportView, validation_report
from query_api.report_html import render_html
from schemas.conversation import Side
from tests.reports.test_traffic_report import CLUSTER, DESIRED, T0, conv, everything

HOSTILE = "<script>alert(1)</script>"


def _report() -> dict:
    evil = Side(namespace="shop", workload=HOSTILE, labels=("k8s:app=evil", "k8s:io.kubernetes.pod.namespace=shop"))
    blog = Side(namespace="blog", workload="blog\x1b[2J", labels=("k8s:app=blog", "k8s:io.kubernetes.pod.namespace=blog"))
    rollups = DropRollups(by_reason=({"reason": "POLICY_DENIED", "flows": 3},),
                          buckets=({"start": "2026-11-29T10:00:00Z", "verdicts": {"FORWARDED": 5, "DROPPED": 3}},))
    convs = [conv(evil, blog, 80, 1, 5), conv(evil, blog, 81, 2, 3, drop_reason=133)]
    return validation_report(T0, T0 + timedelta(hours=1), [ClusterFacts(CLUSTER, convs, DESIRED)],
                             ReportView(everything), rollups=rollups)


def test_html_is_self_contained_and_escaped() -> None:
    page = render_html(_report())
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 3
    assert HOSTILE not in page and "&lt;script&gt;" in page
    for external in ("://", "<script", "<link", "<img", "@import", "url("):
        assert external not in page


def test_table_has_every_section_and_no_control_sequences() -> None:
    text = render_table(_report())
    for section in ("ZERO-TRUST COVERAGE", "NOT IN EFFECT", "UNEXPECTED DROPS", "DROPS BY REASON", "DROPS BY POLICY",
                    "TOP DROPPED CONVERSATIONS", "UNUSED RULES", "STAGED POLICIES", "HEALTH"):
        assert section in text
    assert "\x1b" not in text and "\\x1b" in text

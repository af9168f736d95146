"""Prometheus metrics of the query API (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class QueryApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # `route` is the route template (/api/v1/flows), never the raw path: bounded label values.
        self.requests = Counter(
            "netwarden_api_requests_total",
            "HTTP requests by route, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "netwarden_api_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.flows_returned = Counter(
            "netwarden_api_flows_returned_total",
            "Flows returned by history queries, by output format",
            ["format"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "netwarden_api_store_errors_total",
            "History queries that failed in the flow store (ClickHouse)",
            registry=self.registry,
        )

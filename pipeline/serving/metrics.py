"""The service's Prometheus metrics, in a registry of its own (so tests can run several
services in one process)."""

from __future__ import annotations


class Metrics:
    """Prometheus metrics of one service (its own registry, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pipeline_serving_requests",
            "Requests by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pipeline_serving_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.rows = Counter("pipeline_serving_rows", "Patients scored", registry=self.registry)
        self.model = Gauge(
            "pipeline_serving_model_version",
            "The registry version being served",
            ["model_name", "alias"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "pipeline_serving_model_swaps", "Versions swapped in", registry=self.registry
        )

    def observe(self, endpoint: str, status: int, latency: float, rows: int | None) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(latency)
        if endpoint == "/invocations" and status == 200 and rows:
            self.rows.inc(rows)

    def served(self, name: str, alias: str, version: str) -> None:
        self.model.labels(name, alias).set(float(version) if version.isdigit() else -1)
        self.swaps.inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

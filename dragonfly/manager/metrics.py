"""Prometheus metrics of one manager (namespace ``dragonfly_manager``), on the REST port at ``/metrics``.

Off unless ``metrics.enable``: the figures (how many schedulers, which routes fail) are for the operator's scraper,
and the REST port faces users.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NAMESPACE = "dragonfly_manager"


class ManagerMetrics:
    """The manager's counters and gauges, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{NAMESPACE}_requests",
            "REST requests by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            f"{NAMESPACE}_request_duration_seconds",
            "REST request duration.",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.instances = Gauge(
            f"{NAMESPACE}_instances",
            "Schedulers and seed peers by state (refreshed by the keep-alive check).",
            ["kind", "state"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """Return the text exposition."""
        return generate_latest(self.registry)

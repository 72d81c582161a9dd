"""Prometheus metrics (``GET /metrics``) and liveness (``GET /healthy``) of the daemon."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Where a piece's bytes came from, as dfget reports it.
SOURCES = ("origin", "seed", "peer", "local")


class DaemonMetrics:
    """The daemon's metrics in their own registry (several daemons may share a test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ns = "dragonfly_dfdaemon"
        self.download_bytes = Counter(
            "download_bytes", "Bytes of downloaded pieces by source.", ["source"], namespace=ns, registry=self.registry
        )
        self.upload_bytes = Counter("upload_bytes", "Bytes of pieces served.", namespace=ns, registry=self.registry)
        self.piece_cost = Histogram(
            "piece_download_duration_seconds",
            "Time to download one piece, by source.",
            ["source"],
            namespace=ns,
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.failures = Counter("failures", "Failures by kind.", ["kind"], namespace=ns, registry=self.registry)
        self.tasks = Counter(
            "download_tasks", "Download requests by result.", ["result"], namespace=ns, registry=self.registry
        )
        self.active_tasks = Gauge("active_tasks", "Tasks being downloaded now.", namespace=ns, registry=self.registry)
        self.upload_connections = Gauge(
            "upload_connections", "Vortex connections being served now.", namespace=ns, registry=self.registry
        )

    # No label carries a task id or URL: /metrics is readable by anyone who reaches it, and task ids name content
    # (docs/security.md).
    def record_piece(self, source: str, length: int, seconds: float) -> None:
        self.download_bytes.labels(source).inc(length)
        self.piece_cost.labels(source).observe(seconds)

    def app(self) -> web.Application:
        async def metrics(_request: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


def health_app() -> web.Application:
    async def healthy(_request: web.Request) -> web.Response:
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/healthy", healthy)
    return app

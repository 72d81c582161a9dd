"""Prometheus metrics (``GET /metrics``) and liveness (``GET /healthy``) of the daemon."""

from __future__ import annotations

import platform

from aiohttp import web
from dragonfly_api import common_pb2
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dragonfly import __version__

#: Where a piece's bytes came from, as dfget reports it.
SOURCES = ("origin", "seed", "peer", "local")
#: Dragonfly's traffic type names (common.v2.TrafficType), the ``type`` label of its client's traffic metrics.
_TRAFFIC_TYPES = {"origin": "BACK_TO_SOURCE", "seed": "REMOTE_PEER", "peer": "REMOTE_PEER", "local": "LOCAL_PEER"}
# Dragonfly's client (Rust, prometheus crate) names these counters without the `_total` that prometheus_client adds
# to every counter; the exposition is renamed back so Dragonfly's dashboards find them.
_UNSUFFIXED_COUNTERS = ("dragonfly_client_download_traffic", "dragonfly_client_upload_traffic")
_TASK_LABELS = ("type", "tag", "app", "priority")


class DaemonMetrics:
    """The daemon's metrics in their own registry (several daemons may share a test process).

    Names, labels and units are those of Dragonfly's client (``dragonfly_client_*``), so its Grafana dashboards
    work unchanged; ``dragonfly_dfdaemon_*`` remain only for what Dragonfly does not measure (docs/operations.md).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        dragonfly = "dragonfly_client"
        ours = "dragonfly_dfdaemon"
        registry = self.registry
        self.version = Gauge(
            "version",
            "Version info of the service.",
            ["git_version", "git_commit", "platform", "build_time"],
            namespace=dragonfly,
            registry=registry,
        )
        self.version.labels(__version__, "", f"{platform.system().lower()}/{platform.machine()}", "").set(1)
        self.download_traffic = Counter(
            "download_traffic", "Counter of the number of the download traffic.", ["type"], namespace=dragonfly,
            registry=registry,
        )  # fmt: skip
        self.upload_traffic = Counter(
            "upload_traffic", "Counter of the number of the upload traffic.", namespace=dragonfly, registry=registry
        )
        self.piece_cost = Histogram(
            "download_piece_duration_milliseconds",
            "Histogram of the download piece duration.",
            ["type"],
            namespace=dragonfly,
            registry=registry,
            buckets=tuple(float(2**n) for n in range(24)),
        )
        self.download_tasks = Counter(
            "download_task_total", "Counter of the number of the download task.", _TASK_LABELS, namespace=dragonfly,
            registry=registry,
        )  # fmt: skip
        self.download_task_failures = Counter(
            "download_task_failure_total",
            "Counter of the number of failed of the download task.",
            _TASK_LABELS,
            namespace=dragonfly,
            registry=registry,
        )
        self.concurrent_download_tasks = Gauge(
            "concurrent_download_task_total",
            "Gauge of the number of concurrent of the download task.",
            _TASK_LABELS,
            namespace=dragonfly,
            registry=registry,
        )
        # Ours, where Dragonfly's client has no equivalent.
        self.failures = Counter("failures", "Failures by kind.", ["kind"], namespace=ours, registry=registry)
        self.upload_connections = Gauge(
            "upload_connections", "Vortex connections being served now.", namespace=ours, registry=registry
        )

    # No label carries a task id or URL: /metrics is readable by anyone who reaches it, and task ids name content
    # (docs/security.md). Tag and application are the user's labels, as in Dragonfly.
    def record_piece(self, source: str, length: int, seconds: float) -> None:
        traffic_type = _TRAFFIC_TYPES[source]
        self.download_traffic.labels(traffic_type).inc(length)
        self.piece_cost.labels(traffic_type).observe(seconds * 1000.0)

    def record_upload(self, length: int) -> None:
        self.upload_traffic.inc(length)

    def task_labels(self, download: common_pb2.Download) -> tuple[str, str, str, str]:
        """Return the labels of Dragonfly's download task metrics for a request."""
        priority = download.priority
        name = common_pb2.Priority.Name(priority) if priority in common_pb2.Priority.values() else str(priority)
        return (str(download.type), download.tag, download.application, name)

    def task_started(self, labels: tuple[str, str, str, str]) -> None:
        self.download_tasks.labels(*labels).inc()
        self.concurrent_download_tasks.labels(*labels).inc()

    def task_finished(self, labels: tuple[str, str, str, str], *, failed: bool) -> None:
        if failed:
            self.download_task_failures.labels(*labels).inc()
        self.concurrent_download_tasks.labels(*labels).dec()

    def exposition(self) -> bytes:
        """Return the registry in Prometheus text format, under Dragonfly's names."""
        body = generate_latest(self.registry)
        for name in _UNSUFFIXED_COUNTERS:
            body = body.replace(f"{name}_total".encode(), name.encode())
        return body

    def app(self) -> web.Application:
        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


def health_app() -> web.Application:
    async def healthy(_request: web.Request) -> web.Response:
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/healthy", healthy)
    return app

"""Prometheus metrics of one scheduler (namespace ``dragonfly_scheduler``), served on ``/metrics``."""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiohttp import web

    from dragonfly.scheduler.resource.manager import ResourceManager

NAMESPACE = "dragonfly_scheduler"
DECISION_KINDS = ("normal", "empty", "need_back_to_source", "metadata_only", "error")
_DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_GC_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _ResourceCollector:
    """Gauges read from the resource model at scrape time (scrapes run on the event loop)."""

    def __init__(self, resource: ResourceManager) -> None:
        self._resource = resource

    def collect(self) -> Iterator[GaugeMetricFamily]:
        resource = self._resource
        hosts = GaugeMetricFamily(f"{NAMESPACE}_hosts", "Announced hosts by type.", labels=["type"])
        seeds = sum(1 for host in resource.hosts.values() if host.is_seed)
        hosts.add_metric(["normal"], len(resource.hosts) - seeds)
        hosts.add_metric(["seed"], seeds)
        yield hosts
        tasks = GaugeMetricFamily(f"{NAMESPACE}_tasks", "Tasks by state.", labels=["state"])
        by_state: dict[str, int] = {}
        for task in resource.tasks.values():
            by_state[task.state] = by_state.get(task.state, 0) + 1
        for state, count in sorted(by_state.items()):
            tasks.add_metric([state], count)
        yield tasks
        peers = GaugeMetricFamily(f"{NAMESPACE}_peers", "Peers by state.", labels=["state"])
        for state, count in sorted(resource.peer_state_counts.items()):
            peers.add_metric([state], count)
        yield peers


class Metrics:
    """Counters and histograms the service updates, on a private registry (several schedulers per process)."""

    def __init__(self, resource: ResourceManager) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        registry.register(_ResourceCollector(resource))
        self.announce_peer = Counter(
            f"{NAMESPACE}_announce_peer", "AnnouncePeer messages by request type.", ["request"], registry=registry
        )
        self.decisions = Counter(
            f"{NAMESPACE}_decisions", "Scheduling decisions sent, by kind.", ["kind"], registry=registry
        )
        self.back_to_source = Counter(
            f"{NAMESPACE}_back_to_source", "Peers told to download from the origin.", registry=registry
        )
        self.bad_parent_marks = Counter(
            f"{NAMESPACE}_bad_parent_marks", "Parents marked bad, by reason.", ["reason"], registry=registry
        )
        self.seed_triggers = Counter(
            f"{NAMESPACE}_seed_peer_triggers", "Seed-peer DownloadTask calls, by result.", ["result"], registry=registry
        )
        self.preheats = Counter(
            f"{NAMESPACE}_preheats", "PreheatFile and PreheatImage runs started, by type.", ["type"], registry=registry
        )
        self.preheat_downloads = Counter(
            f"{NAMESPACE}_preheat_downloads",
            "Preheat downloads (one URL on one host), by result.",
            ["result"],
            registry=registry,
        )
        self.piece_reports = Counter(
            f"{NAMESPACE}_piece_reports",
            "Finished-piece reports, by traffic type.",
            ["traffic_type"],
            registry=registry,
        )
        self.rejected_piece_claims = Counter(
            f"{NAMESPACE}_rejected_piece_claims",
            "Finished-piece reports not believed (docs/security.md), by reason.",
            ["reason"],
            registry=registry,
        )
        self.traffic = Counter(
            f"{NAMESPACE}_traffic_bytes", "Bytes reported downloaded, by traffic type.", ["type"], registry=registry
        )
        self.schedule_duration = Histogram(
            f"{NAMESPACE}_schedule_duration_seconds",
            "Time from a register or reschedule request to the decision.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        # A full collection walks every object the process holds, so its pause grows with the peers and streams
        # held; every decision and message due meanwhile waits (bench/RESULTS.md, scheduler scale).
        self.gc_pause = Histogram(
            f"{NAMESPACE}_python_gc_pause_seconds",
            "Pauses of CPython's cyclic garbage collector, by generation (2: full collections).",
            ["generation"],
            buckets=_GC_PAUSE_BUCKETS,
            registry=registry,
        )
        self._gc_pauses = [self.gc_pause.labels(str(generation)) for generation in range(3)]
        # Objects found unreachable (cyclic garbage): what a frozen heap (pythonGCFreezeInterval) holds until its
        # next full collection, so how much a churning scheduler makes per peer says what freezing costs.
        self.gc_collected = Counter(
            f"{NAMESPACE}_python_gc_collected_objects",
            "Objects CPython's cyclic garbage collector freed, by generation (2: full collections).",
            ["generation"],
            registry=registry,
        )
        self._gc_collected = [self.gc_collected.labels(str(generation)) for generation in range(3)]
        self._gc_started = 0.0
        self._gc_callback = self._on_gc
        # Children resolved once: the hot paths skip the label lookup.
        self.decision = {kind: self.decisions.labels(kind) for kind in DECISION_KINDS}
        self._announce: dict[str, Counter] = {}
        self._traffic: dict[str, tuple[Counter, Counter]] = {}

    def watch_gc(self) -> None:
        """Time the garbage collector's pauses into ``gc_pause`` until unwatch_gc()."""
        if self._gc_callback not in gc.callbacks:
            gc.callbacks.append(self._gc_callback)

    def unwatch_gc(self) -> None:
        """Stop timing the garbage collector."""
        if self._gc_callback in gc.callbacks:
            gc.callbacks.remove(self._gc_callback)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            generation = info["generation"]
            self._gc_pauses[generation].observe(time.perf_counter() - self._gc_started)
            self._gc_collected[generation].inc(info["collected"])

    def count_request(self, kind: str) -> None:
        """Count one AnnouncePeer message of type ``kind``."""
        child = self._announce.get(kind)
        if child is None:
            child = self._announce[kind] = self.announce_peer.labels(kind)
        child.inc()

    def count_piece(self, traffic_type: str, length: int) -> None:
        """Count one finished-piece report and its bytes."""
        children = self._traffic.get(traffic_type)
        if children is None:
            children = self._traffic[traffic_type] = (
                self.piece_reports.labels(traffic_type),
                self.traffic.labels(traffic_type),
            )
        children[0].inc()
        children[1].inc(length)

    def render(self) -> bytes:
        """Return the exposition text."""
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """Serve ``GET /metrics``."""
        from aiohttp import web

        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

"""Prometheus metrics of one scheduler (namespace ``dragonfly_scheduler``), served on ``/metrics``."""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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


class _MessageCounts:
    """The per-message counters (AnnouncePeer messages, piece reports and their bytes) as plain integers, turned into
    counter families at scrape time.

    Every piece report counts three times; a prometheus_client Counter takes a lock and two method calls per
    increment, this one dictionary update (bench/RESULTS.md §6, CPU per message). The families have the names,
    help texts and labels the Counters had; they carry no ``_created`` samples, as Dragonfly's Go metrics do not.
    """

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        # traffic type -> [reports, bytes]
        self.pieces: dict[str, list[int]] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily(
            f"{NAMESPACE}_announce_peer", "AnnouncePeer messages by request type.", labels=["request"]
        )
        for kind, count in sorted(self.requests.items()):
            requests.add_metric([kind], count)
        yield requests
        reports = CounterMetricFamily(
            f"{NAMESPACE}_piece_reports", "Finished-piece reports, by traffic type.", labels=["traffic_type"]
        )
        traffic = CounterMetricFamily(
            f"{NAMESPACE}_traffic_bytes", "Bytes reported downloaded, by traffic type.", labels=["type"]
        )
        for traffic_type, (count, length) in sorted(self.pieces.items()):
            reports.add_metric([traffic_type], count)
            traffic.add_metric([traffic_type], length)
        yield reports
        yield traffic


class Metrics:
    """Counters and histograms the service updates, on a private registry (several schedulers per process)."""

    def __init__(self, resource: ResourceManager) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        registry.register(_ResourceCollector(resource))
        self._counts = _MessageCounts()
        registry.register(self._counts)
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
        self.rejected_piece_claims = Counter(
            f"{NAMESPACE}_rejected_piece_claims",
            "Finished-piece reports not believed (docs/security.md), by reason.",
            ["reason"],
            registry=registry,
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
        """Count one AnnouncePeer message of type ``kind`` (one of the request oneof's names)."""
        requests = self._counts.requests
        requests[kind] = requests.get(kind, 0) + 1

    def count_piece(self, traffic_type: str, length: int) -> None:
        """Count one finished-piece report and its bytes (a TrafficType name)."""
        counts = self._counts.pieces.get(traffic_type)
        if counts is None:
            counts = self._counts.pieces[traffic_type] = [0, 0]
        counts[0] += 1
        counts[1] += length

    def render(self) -> bytes:
        """Return the exposition text."""
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """Serve ``GET /metrics``."""
        from aiohttp import web

        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

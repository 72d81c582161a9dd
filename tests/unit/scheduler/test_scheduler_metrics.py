"""The scheduler's own metrics that are not about requests: the garbage collector's pauses."""

from __future__ import annotations

import gc

from dragonfly.scheduler.metrics import Metrics


def _full_collections(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("dragonfly_scheduler_python_gc_pause_seconds_count", {"generation": "2"})
    return value or 0.0


def test_full_collections_are_timed_while_watched_only(world):
    metrics = Metrics(world.resource)
    gc.collect()
    assert _full_collections(metrics) == 0
    metrics.watch_gc()
    metrics.watch_gc()  # once only, however often it is asked
    try:
        gc.collect()
        assert _full_collections(metrics) == 1
        assert (
            metrics.registry.get_sample_value("dragonfly_scheduler_python_gc_pause_seconds_sum", {"generation": "2"})
            > 0
        )
    finally:
        metrics.unwatch_gc()
    gc.collect()
    assert _full_collections(metrics) == 1

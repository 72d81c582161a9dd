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


class _Cycle:
    """An object only the cyclic collector can free."""

    def __init__(self) -> None:
        self.itself = self


def test_the_cyclic_garbage_a_collection_frees_is_counted_by_generation(world):
    metrics = Metrics(world.resource)
    metrics.watch_gc()
    try:
        gc.collect()
        before = metrics.registry.get_sample_value(
            "dragonfly_scheduler_python_gc_collected_objects_total", {"generation": "2"}
        )
        cycles = [_Cycle() for _ in range(100)]
        del cycles
        gc.collect()
        after = metrics.registry.get_sample_value(
            "dragonfly_scheduler_python_gc_collected_objects_total", {"generation": "2"}
        )
    finally:
        metrics.unwatch_gc()
    assert after - before >= 100

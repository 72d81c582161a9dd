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


def test_message_counts_are_counters_of_the_registry(world):
    metrics = Metrics(world.resource)
    sample = metrics.registry.get_sample_value
    assert sample("dragonfly_scheduler_announce_peer_total", {"request": "register_peer_request"}) is None
    metrics.count_request("register_peer_request")
    for _ in range(3):
        metrics.count_request("download_piece_finished_request")
        metrics.count_piece("REMOTE_PEER", 4 << 20)
    metrics.count_piece("BACK_TO_SOURCE", 1000)
    assert sample("dragonfly_scheduler_announce_peer_total", {"request": "register_peer_request"}) == 1
    assert sample("dragonfly_scheduler_announce_peer_total", {"request": "download_piece_finished_request"}) == 3
    assert sample("dragonfly_scheduler_piece_reports_total", {"traffic_type": "REMOTE_PEER"}) == 3
    assert sample("dragonfly_scheduler_piece_reports_total", {"traffic_type": "BACK_TO_SOURCE"}) == 1
    assert sample("dragonfly_scheduler_traffic_bytes_total", {"type": "REMOTE_PEER"}) == 3 * (4 << 20)
    assert sample("dragonfly_scheduler_traffic_bytes_total", {"type": "BACK_TO_SOURCE"}) == 1000
    text = metrics.render().decode()
    assert "# TYPE dragonfly_scheduler_piece_reports_total counter" in text
    assert 'dragonfly_scheduler_traffic_bytes_total{type="REMOTE_PEER"} 1.2582912e+07' in text

"""bench scheduler's bookkeeping: the peers' layout across client processes and the figures read from /metrics."""

from __future__ import annotations

import argparse

import pytest

from bench import scheduler_layout, scheduler_report


def _args(**overrides: int) -> argparse.Namespace:
    values = {"hosts": 50, "peers": 500, "peers_per_task": 100, "clients": 3, "probe_peers": 40}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_children_never_share_a_host_with_their_tasks_source_and_each_client_plays_a_disjoint_share() -> None:
    layout = scheduler_layout.Layout(_args())
    assert len(layout.tasks) == 5
    assert layout.children == 495
    assert layout.late == 49
    assert layout.probes == 40
    source_hosts = {layout.source_host(t) for t in range(len(layout.tasks))}
    for index in range(layout.children):
        task, host = layout.child(index)
        assert host != layout.source_host(layout.tasks.index(task))
        assert host not in source_hosts
        assert 0 <= host < layout.hosts
    probe = list(layout.probe_children())
    assert len(probe) == 40
    early = [list(layout.early(k, 3)) for k in range(3)]
    late = [list(layout.late_children(k, 3)) for k in range(3)]
    played = [index for share in early + late for index in share] + probe
    assert sorted(played) == list(range(layout.children)), "every child is played once, by one process"
    for k in range(3):
        assert all(index % 3 == k for index in early[k] + late[k])
    assert sum(len(share) for share in late) == layout.late
    assert max(max(share) for share in early) < min(probe)
    assert max(probe) < min(min(share) for share in late)


def test_the_probe_takes_at_most_half_the_early_children() -> None:
    layout = scheduler_layout.Layout(_args(probe_peers=10_000))
    assert layout.probes == (layout.children - layout.late) // 2
    assert len(layout.probe_children()) == layout.probes


def test_full_collections_are_read_from_the_generation_2_histogram() -> None:
    text = "\n".join(
        [
            'dragonfly_scheduler_python_gc_pause_seconds_bucket{generation="0",le="0.001"} 900.0',
            'dragonfly_scheduler_python_gc_pause_seconds_bucket{generation="2",le="0.5"} 1.0',
            'dragonfly_scheduler_python_gc_pause_seconds_bucket{generation="2",le="2.5"} 3.0',
            'dragonfly_scheduler_python_gc_pause_seconds_bucket{generation="2",le="+Inf"} 3.0',
            'dragonfly_scheduler_python_gc_pause_seconds_sum{generation="2"} 4.25',
        ]
    )
    assert scheduler_report.full_collections(text) == {"count": 3.0, "seconds": 4.25, "longest_le_s": 2.5}
    assert scheduler_report.full_collections("")["count"] == 0


def test_histogram_quantile_interpolates_within_the_bucket_of_the_rank() -> None:
    before = [(0.001, 0.0), (0.002, 0.0), (float("inf"), 0.0)]
    after = [(0.001, 50.0), (0.002, 100.0), (float("inf"), 100.0)]
    assert scheduler_report.histogram_quantile(before, after, 0.5) == pytest.approx(1.0)
    assert scheduler_report.histogram_quantile(before, after, 0.99) == pytest.approx(1.98)


def test_cyclic_garbage_is_read_by_generation() -> None:
    text = "\n".join(
        [
            'dragonfly_scheduler_python_gc_collected_objects_total{generation="0"} 120.0',
            'dragonfly_scheduler_python_gc_collected_objects_total{generation="2"} 7.0',
        ]
    )
    assert scheduler_report.collected_objects(text) == [120.0, 0.0, 7.0]

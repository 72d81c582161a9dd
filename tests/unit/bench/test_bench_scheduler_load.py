"""bench scheduler's bookkeeping: the peers' layout across client processes and the figures read from /metrics."""

from __future__ import annotations

import argparse

import pytest

from bench import scheduler_layout, scheduler_report


def _args(**overrides: int) -> argparse.Namespace:
    values = {"hosts": 50, "peers": 500, "peers_per_task": 100, "clients": 3}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_children_never_share_a_host_with_their_tasks_source_and_each_client_plays_a_disjoint_share() -> None:
    layout = scheduler_layout.Layout(_args())
    assert len(layout.tasks) == 5
    assert layout.children == 495
    assert layout.late == 49
    source_hosts = {layout.source_host(t) for t in range(len(layout.tasks))}
    for index in range(layout.children):
        task, host = layout.child(index)
        assert host != layout.source_host(layout.tasks.index(task))
        assert host not in source_hosts
        assert 0 <= host < layout.hosts
    shares = [set(range(k, layout.children, 3)) for k in range(3)]
    assert set().union(*shares) == set(range(layout.children))
    assert sum(len(share) for share in shares) == layout.children


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

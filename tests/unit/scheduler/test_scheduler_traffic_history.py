"""The scheduler's per-minute byte counts by source, for the console's overview (last hour and day)."""

from __future__ import annotations

from dragonfly.scheduler.service.swarm import DAY_BUCKETS, TrafficHistory


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_totals_cover_whole_minutes_back_from_now_and_a_day_is_kept() -> None:
    clock = Clock()
    history = TrafficHistory(clock)
    history.add(100, from_source=True)
    history.add(10, from_source=False)
    clock.now += 60
    history.add(5, from_source=False)
    assert history.totals(60) == {"source": 0, "peers": 5}
    assert history.totals(3600) == {"source": 100, "peers": 15}
    clock.now += 3600
    assert history.totals(3600) == {"source": 0, "peers": 0}
    assert history.totals(86400) == {"source": 100, "peers": 15}
    # A day later the old minutes are gone, from the totals and from memory.
    clock.now += 86400
    history.add(1, from_source=True)
    assert history.totals(86400) == {"source": 1, "peers": 0}
    assert len(history._buckets) == 1


def test_memory_is_bounded_by_a_day_of_minutes() -> None:
    clock = Clock()
    history = TrafficHistory(clock)
    for _ in range(3 * DAY_BUCKETS):
        history.add(1, from_source=False)
        clock.now += 60
    assert len(history._buckets) == DAY_BUCKETS
    assert history.totals(86400)["peers"] == DAY_BUCKETS - 1

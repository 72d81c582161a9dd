"""Connection caps per host and in total, with fair eviction (pure policy; the Vortex tests use it over TCP)."""

from __future__ import annotations

import pytest

from dragonfly.daemon.upload.connection_limits import Connection, ConnectionLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Conns:
    """Admit connections and remember which ones the limiter evicted."""

    def __init__(self, **caps: int) -> None:
        self.limiter = ConnectionLimiter(clock=Clock(), **caps)
        self.evicted: list[str] = []

    def open(self, host: str, name: str) -> Connection | None:
        return self.limiter.admit(host, lambda: self.evicted.append(name))


def test_a_host_at_its_cap_gives_up_its_longest_idle_connection():
    conns = Conns(max_total=100, max_per_host=2)
    a1 = conns.open("a", "a1")
    a2 = conns.open("a", "a2")
    assert a1 is not None
    assert a2 is not None
    conns.limiter.set_idle(a1, False)
    conns.limiter.set_idle(a1, True)  # a1 idle again, more recently than a2
    assert conns.open("a", "a3") is not None
    assert conns.evicted == ["a2"]
    assert conns.limiter.count("a") == 2


def test_a_host_whose_connections_are_all_busy_is_refused_a_new_one():
    conns = Conns(max_total=100, max_per_host=2)
    for name in ("a1", "a2"):
        connection = conns.open("a", name)
        assert connection is not None
        conns.limiter.set_idle(connection, False)
    assert conns.open("a", "a3") is None
    assert conns.evicted == []
    assert conns.limiter.refused == 1
    # Another host is not affected by a's cap.
    assert conns.open("b", "b1") is not None


def test_at_the_total_cap_the_heaviest_host_loses_a_connection_busy_or_not():
    conns = Conns(max_total=4, max_per_host=10)
    for name in ("a1", "a2", "a3"):
        connection = conns.open("a", name)
        assert connection is not None
        conns.limiter.set_idle(connection, False)  # e.g. reading nothing it asked for
    assert conns.open("b", "b1") is not None
    assert conns.open("c", "c1") is not None  # total cap: a, the heaviest, loses its oldest (busy) connection
    assert conns.evicted == ["a1"]
    assert conns.limiter.total == 4
    # The heaviest host cannot push others out: at the cap, a newcomer from it is refused.
    assert conns.open("a", "a4") is None
    assert conns.limiter.count("a") == 2


def test_released_connections_free_their_place_once():
    conns = Conns(max_total=2, max_per_host=2)
    a1 = conns.open("a", "a1")
    assert a1 is not None
    conns.limiter.release(a1)
    conns.limiter.release(a1)
    assert conns.limiter.total == 0
    assert conns.limiter.count("a") == 0


def test_caps_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        ConnectionLimiter(max_total=0, max_per_host=1)

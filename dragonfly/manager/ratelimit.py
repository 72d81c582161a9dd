"""Events per key in a sliding window: how the manager limits failed sign-ins and job creation.

Counts live in the process: several managers behind one address each apply the limits on their own
(docs/manager.md#sign-in-limits, docs/preheat.md#on-the-manager).

A key's events are dropped only once none is left in its window, so dropping them can never be seen: a client
that makes keys by the thousand (one per address it sprays from) cannot reset another key's count or end a lock-out
early. The table is swept for such keys when it holds ``max_keys``, at most ten times a window; keys still in use
stay, so past ``max_keys`` it grows only with the events of one window, which the callers bound (a failed sign-in
costs an argon2 verification, ``auth.KDF_CONCURRENCY`` at a time; jobs are counted per user). Attempts in flight
(``begin``/``end``) are counted apart and only ``end`` removes them.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class SlidingWindow:
    """The times of the last events of each key within ``window`` seconds, and the attempts of each in flight."""

    __slots__ = ("_clock", "_events", "_in_flight", "_next_sweep", "max_keys", "window")

    def __init__(self, window: float, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}
        self._next_sweep = 0.0

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            return deque()
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
        return events

    def wait(self, key: str, limit: int) -> float:
        """Return seconds until ``key`` has fewer than ``limit`` events in the window (0 = now)."""
        now = self._clock()
        events = self._recent(key, now)
        if len(events) < limit:
            return 0.0
        return max(0.0, events[-limit] + self.window - now)

    def room(self, key: str, limit: int) -> int:
        """Return how many more attempts of ``key`` may begin: ``limit`` less its events and attempts in flight."""
        return limit - len(self._recent(key, self._clock())) - self._in_flight.get(key, 0)

    def add(self, key: str, limit: int) -> None:
        """Record one event of ``key``, keeping the last ``limit``."""
        now = self._clock()
        events = self._events.get(key)
        if events is None:
            self._sweep(now)
        if events is None or events.maxlen != limit:
            events = self._events[key] = deque(events or (), maxlen=limit)
        events.append(now)

    def begin(self, key: str) -> None:
        """Count one attempt of ``key`` in flight (``room`` counts it against the limit) until ``end``."""
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def end(self, key: str) -> None:
        """End one attempt of ``key`` that ``begin`` counted."""
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def forget(self, key: str) -> None:
        """Drop the events of ``key`` (its attempts in flight still count)."""
        self._events.pop(key, None)

    def _sweep(self, now: float) -> None:
        """Drop the keys whose window holds no event, when the table is full (attempts in flight are kept apart)."""
        if len(self._events) < self.max_keys or now < self._next_sweep:
            return
        cutoff = now - self.window
        idle = [key for key, events in self._events.items() if not events or events[-1] <= cutoff]
        for key in idle:
            del self._events[key]
        self._next_sweep = now + self.window / 10

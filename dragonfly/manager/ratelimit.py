"""Events per key in a sliding window: how the manager limits failed sign-ins and job creation.

Counts live in the process: several managers behind one address each apply the limits on their own.
"""

from __future__ import annotations

import time
from collections import deque


class SlidingWindow:
    """The times of the last events of each key within ``window`` seconds, with a bounded number of keys."""

    __slots__ = ("_events", "max_keys", "window")

    def __init__(self, window: float, max_keys: int = 100_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

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
        now = time.monotonic()
        events = self._recent(key, now)
        if len(events) < limit:
            return 0.0
        return max(0.0, events[-limit] + self.window - now)

    def add(self, key: str, limit: int) -> None:
        """Record one event of ``key``, keeping the last ``limit``; past ``max_keys`` the oldest keys go."""
        if len(self._events) > self.max_keys:
            for stale in list(self._events)[: max(1, self.max_keys // 10)]:
                del self._events[stale]
        events = self._events.get(key)
        if events is None or events.maxlen != limit:
            events = self._events[key] = deque(events or (), maxlen=limit)
        events.append(time.monotonic())

    def forget(self, key: str) -> None:
        """Drop the events of ``key``."""
        self._events.pop(key, None)

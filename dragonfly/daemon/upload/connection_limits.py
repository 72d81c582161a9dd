"""Caps on the connections one server keeps: per remote host and in total, with fair eviction.

Any host can open connections and leave them idle (or never read what it asked for); without caps a few hosts
exhaust the file descriptors of the daemon and break its other services (docs/robustness.md#connection-limits).
Policy, applied when a connection arrives:

- a host at its cap gives up its oldest idle connection for the new one; with none idle, the new one is refused;
- a server at its total cap takes one from the host that holds the most connections (its oldest idle one, else
  its oldest busy one), so hosts that hog connections lose them first and a host with few never starves; when the
  newcomer's host is itself the heaviest, the newcomer is refused instead.

An idle connection waits for its next request; a busy one is answering. Eviction calls the connection's
``evict`` callback (the server cancels its handler, which closes the socket).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Connection:
    """One admitted connection, as the limiter sees it."""

    __slots__ = ("evict", "host", "idle", "since")

    def __init__(self, host: str, evict: Callable[[], object], now: float) -> None:
        self.host = host
        self.evict = evict
        #: When the connection last became idle or busy (the oldest idle one is evicted first).
        self.since = now
        self.idle = True


class ConnectionLimiter:
    """Count connections per host; admit, refuse or evict as the module docstring says."""

    def __init__(self, *, max_total: int, max_per_host: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_total < 1 or max_per_host < 1:
            raise ValueError("connection caps must be >= 1")
        self.max_total = max_total
        self.max_per_host = max_per_host
        self._clock = clock
        self._by_host: dict[str, list[Connection]] = {}
        self.total = 0
        #: Connections evicted and refused since start (for metrics and tests).
        self.evicted = 0
        self.refused = 0

    def count(self, host: str) -> int:
        return len(self._by_host.get(host, ()))

    def admit(self, host: str, evict: Callable[[], object]) -> Connection | None:
        """Register a new connection from ``host``; return None when it must be refused (close it at once)."""
        mine = self._by_host.get(host, [])
        if len(mine) >= self.max_per_host:
            victim = _oldest(mine, idle_only=True)
            if victim is None:
                self.refused += 1
                return None
            self._evict(victim)
        if self.total >= self.max_total:
            heaviest = max(self._by_host.values(), key=len)
            if heaviest and len(heaviest) > len(self._by_host.get(host, ())):
                victim = _oldest(heaviest, idle_only=True) or _oldest(heaviest, idle_only=False)
                assert victim is not None
                self._evict(victim)
            else:
                self.refused += 1
                return None
        connection = Connection(host, evict, self._clock())
        self._by_host.setdefault(host, []).append(connection)
        self.total += 1
        return connection

    def set_idle(self, connection: Connection, idle: bool) -> None:
        """Mark a connection idle (waiting for a request) or busy (answering one)."""
        if connection.idle != idle:
            connection.idle = idle
            connection.since = self._clock()

    def release(self, connection: Connection) -> None:
        """Forget a connection that closed (idempotent: an evicted one is already forgotten)."""
        mine = self._by_host.get(connection.host)
        if mine is None or connection not in mine:
            return
        mine.remove(connection)
        self.total -= 1
        if not mine:
            del self._by_host[connection.host]

    def _evict(self, connection: Connection) -> None:
        self.release(connection)
        self.evicted += 1
        log.info(
            "connection evicted to make room",
            extra={"host": connection.host, "idle": connection.idle, "host_connections": self.count(connection.host)},
        )
        connection.evict()


def _oldest(connections: list[Connection], *, idle_only: bool) -> Connection | None:
    candidates = [c for c in connections if c.idle or not idle_only]
    return min(candidates, key=lambda c: c.since, default=None)

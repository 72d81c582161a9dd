"""Eviction of stored tasks by TTL and by disk thresholds (``dragonfly-protocol.md`` §3.7)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable

from dragonfly.daemon.config import GCConfig
from dragonfly.daemon.storage.storage import Storage

log = logging.getLogger(__name__)

# An unfinished task untouched this long is considered abandoned and may be evicted for space.
_STALE_UNFINISHED = 24 * 3600.0


class GarbageCollector:
    """Evict expired tasks, then the least recently used ones while disk usage is above the high threshold."""

    def __init__(
        self,
        storage: Storage,
        config: GCConfig,
        *,
        is_busy: Callable[[str], bool],
        on_evict: Callable[[str], Awaitable[None]],
    ) -> None:
        self._storage = storage
        self._config = config
        self._is_busy = is_busy
        self._on_evict = on_evict

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval)
            try:
                await self.collect()
            except Exception:
                log.exception("garbage collection failed")

    def disk_usage(self) -> tuple[int, int]:
        """Return (total, used) bytes that the thresholds apply to."""
        threshold = self._config.policy.disk_threshold
        if threshold > 0:
            return threshold, self._storage.usage()
        usage = shutil.disk_usage(self._storage.dir)
        return usage.total, usage.used

    async def collect(self) -> list[str]:
        """Run one pass; return the evicted task ids."""
        policy = self._config.policy
        now = time.time()
        evicted: list[str] = []
        for task in self._storage.tasks():
            if task.updated_at + policy.task_ttl < now and not self._is_busy(task.id):
                await self._evict(task.id, "ttl expired")
                evicted.append(task.id)

        total, used = self.disk_usage()
        if total <= 0 or used * 100 / total < policy.disk_high_threshold_percent:
            return evicted
        to_free = total * (used * 100 / total - policy.disk_low_threshold_percent) / 100
        candidates = sorted(
            (
                t
                for t in self._storage.tasks()
                if not self._is_busy(t.id)
                and (t.finished_at is not None or t.failed_at is not None or now - t.updated_at > _STALE_UNFINISHED)
            ),
            key=lambda t: t.updated_at,
        )
        freed = 0
        for task in candidates:
            if freed >= to_free:
                break
            freed += task.content_length
            await self._evict(task.id, "disk usage above high threshold")
            evicted.append(task.id)
        return evicted

    async def _evict(self, task_id: str, reason: str) -> None:
        log.info("evicting task", extra={"task_id": task_id, "reason": reason})
        self._storage.delete_task(task_id)
        try:
            await self._on_evict(task_id)
        except Exception as exc:
            log.warning("could not tell the scheduler about an evicted task", extra={"task_id": task_id, "error": exc})

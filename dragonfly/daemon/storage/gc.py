"""Eviction of stored tasks by TTL and by disk thresholds, and page-cache release of idle ones
(``docs/reference/protocol.md#garbage-collection``)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable

from dragonfly.daemon.config import GCConfig
from dragonfly.daemon.storage.storage import Storage

log = logging.getLogger(__name__)

# An unfinished task untouched this long is considered abandoned and may be evicted for space.
_STALE_UNFINISHED = 24 * 3600.0


def _drop_page_cache(paths: list[str]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # evicted meanwhile
        try:
            # DONTNEED releases clean cached pages of the inode, whichever descriptor wrote them.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class GarbageCollector:
    """Evict expired tasks, then the least recently used ones while disk usage is above the high threshold.

    Also give the page cache of finished tasks idle for ``pageCacheIdleTimeout`` back to the kernel: a seed peer
    holding many finished tasks would otherwise crowd out the pages of the tasks being served.
    """

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
        # Task id -> its updated_at when its page cache was dropped: not dropped again until it is used again.
        self._page_cache_dropped: dict[str, float] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval)
            try:
                await self.collect()
                await self.drop_idle_page_cache()
            except Exception:
                log.exception("garbage collection failed")

    async def drop_idle_page_cache(self) -> list[str]:
        """Drop the cached pages of finished tasks nobody read or wrote for a while; return their ids."""
        idle_since = time.time() - self._config.policy.page_cache_idle_timeout
        tasks = {t.id: t for t in self._storage.tasks()}
        for task_id in self._page_cache_dropped.keys() - tasks.keys():
            del self._page_cache_dropped[task_id]
        idle = [
            t
            for t in tasks.values()
            if t.finished_at is not None
            and t.updated_at < idle_since
            and self._page_cache_dropped.get(t.id) != t.updated_at
            and not self._is_busy(t.id)
        ]
        if not idle:
            return []
        await asyncio.to_thread(_drop_page_cache, [self._storage.content_path(t.id) for t in idle])
        for task in idle:
            self._page_cache_dropped[task.id] = task.updated_at
        log.info("dropped the page cache of idle tasks", extra={"tasks": len(idle)})
        return [t.id for t in idle]

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

"""Copies leave the persistent cache: when their TTL runs out, when the disk is too full (copies that are not
persistent replicas, least recently used first), and when their content no longer matches its digest (the scrub
after a start, and the Vortex server's finding)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import TYPE_CHECKING

from dragonfly.common.background import BackgroundJobs
from dragonfly.daemon.persistent_cache.announcer import SchedulerAnnouncer
from dragonfly.daemon.persistent_cache.metrics import PersistentCacheMetrics

if TYPE_CHECKING:
    from dragonfly.daemon.config import GCPolicyConfig
    from dragonfly.daemon.persistent_cache.copies import LocalCopies

log = logging.getLogger(__name__)

#: How often expired entries are looked for.
EXPIRY_INTERVAL = 1.0


class CopyExpiry:
    """Drops expired, surplus and corrupt copies, and tells the scheduler about the ones it dropped."""

    def __init__(
        self,
        copies: LocalCopies,
        announcer: SchedulerAnnouncer,
        metrics: PersistentCacheMetrics,
        jobs: BackgroundJobs,
        *,
        gc_policy: GCPolicyConfig | None,
        gc_interval: float,
    ) -> None:
        self._copies = copies
        self._announcer = announcer
        self._metrics = metrics
        self._jobs = jobs
        self._gc_policy = gc_policy
        self._gc_interval = gc_interval
        self._last_gc = time.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            try:
                if time.monotonic() - self._last_gc >= self._gc_interval:
                    self._last_gc = time.monotonic()
                    await self.collect()
                else:
                    self.drop_expired(time.time())
            except Exception:
                log.exception("persistent cache expiry failed")

    async def collect(self) -> list[str]:
        """Drop expired copies; when the disk is above the GC's high threshold, evict copies that are not
        persistent replicas (least recently used first) down to the low threshold. Return the evicted ids."""
        evicted = self.drop_expired(time.time())
        policy = self._gc_policy
        if policy is None:
            return evicted
        if policy.disk_threshold > 0:
            total, used = int(policy.disk_threshold), self._copies.storage.usage()
        else:
            usage = shutil.disk_usage(self._copies.storage.dir)
            total, used = usage.total, usage.used
        for task_id in self.evict_for_space(
            total, used, policy.disk_high_threshold_percent, policy.disk_low_threshold_percent
        ):
            await self._announcer.tell_dropped(task_id)
            evicted.append(task_id)
        return evicted

    def evict_for_space(self, total: int, used: int, high_percent: float, low_percent: float) -> list[str]:
        """Evict non-persistent copies, least recently used first, while usage is above ``high_percent`` of
        ``total``, until ``low_percent`` is reached; persistent replicas and imports are never evicted for space."""
        if total <= 0 or used * 100 / total < high_percent:
            return []
        to_free = total * (used * 100 / total - low_percent) / 100
        candidates = []
        for entry in self._copies.entries.values():
            task = self._copies.storage.get_task(entry.id)
            if entry.persistent or entry.importer or task is None or entry.id in self._copies.active:
                continue
            candidates.append((task.updated_at, entry.id, task.content_length))
        evicted = []
        freed = 0
        for _updated, task_id, length in sorted(candidates):
            if freed >= to_free:
                break
            log.info("evicting a persistent cache copy", extra={"task_id": task_id, "reason": "disk usage"})
            self._copies.delete(task_id)
            self._metrics.evictions.labels("space").inc()
            freed += length
            evicted.append(task_id)
        return evicted

    def evict_corrupt(self, task_id: str) -> None:
        """Evict a copy whose stored bytes were found not to match (by the Vortex server); tell the scheduler."""
        if self._copies.delete(task_id):
            log.warning("persistent cache content no longer matches its digest: evicted", extra={"task_id": task_id})
            self._metrics.evictions.labels("digest").inc()
            self._jobs.spawn(self._announcer.tell_dropped(task_id))

    async def scrub(self) -> list[str]:
        """Hash every copy once against its digest and evict those that no longer match (after a restart: a crash
        or a disk fault may have changed them); one copy at a time, on the executor. Return the evicted ids."""
        evicted = []
        for entry in list(self._copies.entries.values()):
            task = self._copies.storage.get_task(entry.id)
            if task is None or entry.id in self._copies.active or not entry.content_digest:
                continue
            if await self._copies.content_matches(entry.id, entry.content_digest, task.content_length):
                continue
            if self._copies.entries.get(entry.id) is entry:
                self.evict_corrupt(entry.id)
                evicted.append(entry.id)
        if evicted:
            log.warning("persistent cache copies evicted by the scrub", extra={"tasks": len(evicted)})
        return evicted

    def drop_expired(self, now: float) -> list[str]:
        """Delete the entries whose TTL has run out (the scheduler forgets them on its own); return their ids."""
        expired = [e.id for e in self._copies.entries.values() if e.expired(now) and e.id not in self._copies.active]
        for task_id in expired:
            log.info("persistent cache task expired", extra={"task_id": task_id})
            self._copies.delete(task_id)
            self._metrics.evictions.labels("ttl").inc()
        return expired

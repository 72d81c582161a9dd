"""Garbage collection of peers, tasks and hosts (``docs/reference/scheduler.md#garbage-collection``), each on its own
interval.

A peer that qualifies is moved to Leave and removed in the same pass (Dragonfly removes it one pass later).
Peers of disable-shared hosts are collected only once their stream has closed, so their download is not cut.

The periodic peer pass works through the peers in slices of ``PEER_SLICE`` and lets the event loop run between
slices: one pass over 100,000 peers costs ~40 ms, which would otherwise stall every decision and piece report due
in that time (``bench/RESULTS.md``, scheduler scale).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from dragonfly.scheduler.resource import peer as peer_states
from dragonfly.scheduler.resource.task import PEER_COUNT_LIMIT_FOR_TASK

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from dragonfly.scheduler.config import GCConfig
    from dragonfly.scheduler.resource.manager import ResourceManager
    from dragonfly.scheduler.resource.peer import Peer

log = logging.getLogger(__name__)

_DOWNLOADING = frozenset((peer_states.RUNNING, peer_states.BACK_TO_SOURCE))
# Peers examined between two returns to the event loop in the periodic pass (~0.5 ms of work).
PEER_SLICE = 1000


class GarbageCollector:
    """Periodic collection; each ``collect_*`` can also be called directly."""

    def __init__(self, config: GCConfig, resource: ResourceManager, clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._resource = resource
        self._clock = clock
        self._jobs: list[asyncio.Task[None]] = []

    def _reason(self, peer: Peer, now: float) -> str | None:
        config = self._config
        if peer.state == peer_states.LEAVE:
            return "left"
        if peer.host.disable_shared and not peer.stream_open:
            return "host does not share"
        if peer.state in _DOWNLOADING and now - peer.piece_updated_at > config.piece_download_timeout:
            return "no piece within pieceDownloadTimeout"
        if now - peer.updated_at > config.peer_ttl:
            return "idle longer than peerTTL"
        if now - peer.host.updated_at > config.host_ttl:
            return "host not seen within hostTTL"
        if peer.state == peer_states.FAILED:
            return "failed"
        if (
            peer.state == peer_states.SUCCEEDED
            and len(peer.task.peers) > PEER_COUNT_LIMIT_FOR_TASK
            and not peer.parents
            and not peer.children
        ):
            return "finished leaf of a crowded task"
        return None

    def collect_peers(self) -> int:
        """Remove peers that left, failed, stalled or expired; return how many."""
        return sum(self._collect_peer_slices())

    async def collect_peers_sliced(self) -> int:
        """Like collect_peers, returning to the event loop after every ``PEER_SLICE`` peers."""
        removed = 0
        for count in self._collect_peer_slices():
            removed += count
            await asyncio.sleep(0)
        return removed

    def _collect_peer_slices(self) -> Iterator[int]:
        """Collect the peers present now, a slice at a time; yield how many each slice removed.

        Between slices, peers may register, change or be deleted: each is judged when its slice comes.
        """
        resource = self._resource
        peers = list(resource.peers.values())
        for start in range(0, len(peers), PEER_SLICE):
            now = self._clock()
            removed = 0
            for peer in peers[start : start + PEER_SLICE]:
                if peer.deleted:
                    continue
                reason = self._reason(peer, now)
                if reason is not None:
                    resource.delete_peer(peer, now)
                    removed += 1
                    log.debug("peer collected", extra={"task_id": peer.task.id, "peer_id": peer.id, "reason": reason})
            yield removed

    def collect_tasks(self) -> int:
        """Remove tasks without peers; return how many."""
        resource = self._resource
        empty = [task for task in resource.tasks.values() if not task.peers and not task.seed_trigger_active]
        for task in empty:
            resource.delete_task(task)
        return len(empty)

    def collect_hosts(self) -> int:
        """Remove hosts silent for twice their announce interval, with their peers; return how many.

        A host announced without an interval (Dragonfly never collects those, so anyone could fill the scheduler's
        memory with announcements) expires after ``hostTTL`` of silence, the bound its peers already have.
        """
        now = self._clock()
        resource = self._resource
        host_ttl = self._config.host_ttl
        expired = [
            host
            for host in resource.hosts.values()
            if now - host.updated_at > (2 * host.announce_interval if host.announce_interval > 0 else host_ttl)
        ]
        for host in expired:
            log.info("host expired", extra={"host_id": host.id})
            resource.delete_host(host, now)
        return len(expired)

    def start(self) -> None:
        """Start the three periodic collections."""
        config = self._config
        for interval, collect in (
            (config.peer_gc_interval, self.collect_peers_sliced),
            (config.task_gc_interval, self._collect_tasks),
            (config.host_gc_interval, self._collect_hosts),
        ):
            self._jobs.append(asyncio.create_task(self._every(interval, collect), name=f"gc-{collect.__name__}"))

    async def _collect_tasks(self) -> int:
        return self.collect_tasks()

    async def _collect_hosts(self) -> int:
        return self.collect_hosts()

    async def _every(self, interval: float, collect: Callable[[], Awaitable[int]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await collect()
            except Exception:
                log.exception("garbage collection failed", extra={"job": collect.__name__})

    async def stop(self) -> None:
        """Stop the collections."""
        for job in self._jobs:
            job.cancel()
        for job in self._jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        self._jobs.clear()

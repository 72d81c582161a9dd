"""Re-announcing copies to a scheduler that forgot them: a scheduler keeps persistent cache tasks in memory only, so
after it restarts the importer declares its task again and other holders register their copies."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

import grpc

from dragonfly.common.piece import piece_count
from dragonfly.daemon.persistent_cache.announcer import SchedulerAnnouncer
from dragonfly.daemon.persistent_cache.entries import Entry

if TYPE_CHECKING:
    from dragonfly.daemon.persistent_cache.copies import LocalCopies

log = logging.getLogger(__name__)


class Reconciler:
    """Makes the scheduler know every live copy this host holds."""

    def __init__(self, copies: LocalCopies, announcer: SchedulerAnnouncer, *, host_id: str, interval: float) -> None:
        self._copies = copies
        self._announcer = announcer
        self.host_id = host_id
        self._interval = interval
        # Task id -> reconciliation rounds in a row the scheduler did not know a held copy's task.
        self._unknown_rounds: dict[str, int] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                count = await self.reconcile()
            except Exception:
                log.exception("persistent cache reconciliation failed")
                continue
            if count:
                log.info("persistent cache copies announced to the scheduler again", extra={"tasks": count})

    async def reconcile(self) -> int:
        """Make the scheduler know every live local copy (it keeps them in memory only, so a restarted scheduler
        has forgotten them): the importer declares its task again, other holders register their copy. Return how
        many copies were announced again."""
        count = 0
        now = time.time()
        for entry in list(self._copies.entries.values()):
            task = self._copies.storage.get_task(entry.id)
            if entry.expired(now) or entry.id in self._copies.active or task is None or task.finished_at is None:
                continue
            try:
                if entry.peer_id and await self._announcer.peer_known(entry):
                    continue
                if await self.announce_again(entry, task.piece_length, task.content_length, now):
                    count += 1
            except grpc.aio.AioRpcError as exc:
                log.debug(
                    "persistent cache copy not announced again",
                    extra={"task_id": entry.id, "code": exc.code().name},
                )
        return count

    async def announce_again(self, entry: Entry, piece_length: int, content_length: int, now: float) -> bool:
        peer_id = entry.peer_id or f"{self.host_id}-{uuid.uuid4()}"
        known = await self._announcer.task_known(entry.id)
        count = piece_count(content_length, piece_length)
        if not known:
            if not entry.importer:
                # The importer declares a forgotten task. A persistent holder waits one round for it (it may be
                # restarting too), then declares the task itself, with the importer's digest it verified: the
                # content stays in the swarm when its importer is gone.
                missed = self._unknown_rounds.get(entry.id, 0) + 1
                self._unknown_rounds[entry.id] = missed
                if not entry.persistent or missed < 2:
                    return False
            self._unknown_rounds.pop(entry.id, None)
            # The task expires when it would have: the scheduler counts the TTL from now.
            await self._announcer.upload_started(
                entry, peer_id, piece_length, content_length, max(entry.expires_at() - now, 1.0)
            )
            await self._announcer.upload_finished(entry.id, peer_id)
        else:
            # A holder registers its copy and reports it finished at once.
            await self._announcer.register_finished_copy(entry, peer_id, piece_length, count)
        if entry.peer_id != peer_id:
            entry.peer_id = peer_id
            self._copies.put(entry)
        return True

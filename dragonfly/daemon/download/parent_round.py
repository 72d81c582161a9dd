"""Run one round of candidate parents: start the fetches a PieceDispatcher plans, watch them, act on their ends.

The policy (which piece, from which parent, when a transfer is too slow, when a parent is out) is the
dispatcher's; the bytes are the ``fetch`` callable's. This module only turns the dispatcher's decisions into running
fetches and their outcomes back into the dispatcher's state, so the swarm's behaviour can be changed and tested
with fake parents and fake fetches, without gRPC, storage or a scheduler:

- the round ends when the wanted pieces are stored, when no parent may report anything more, when every parent is
  excluded, or after ``collectedPieceTimeout`` with nothing to fetch and nothing reported;
- an overdue transfer is aborted (the dispatcher says which, and why) and fails with its parent to blame;
- a parent excluded after a failure loses its other transfers at once: they come from the same sender; the
  scheduler hears of the failure that excluded it, not of each transfer that ends with it (three reports of one
  slow moment used to reach its bad-parent threshold, so the task's seed peer was marked bad for every child);
- a full disk ends the round with ``NoSpace`` (no other parent would do better); the transfers still running are
  aborted and awaited, whatever ends the round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from dragonfly.common.errors import DigestMismatch
from dragonfly.daemon.download.piece_collector import ParentState
from dragonfly.daemon.download.piece_dispatcher import PieceDispatcher, PieceFetch
from dragonfly.daemon.download.vortex_client import FetchAbort
from dragonfly.daemon.errors import DownloadFailed, NoSpace

#: Fetch one piece into storage; return the seconds its bytes took to arrive.
FetchPiece = Callable[[PieceFetch, FetchAbort], Coroutine[Any, Any, float]]
#: Tell the world (metrics, logs and, when the last argument is True, the scheduler) that a fetch failed; the round
#: has updated the dispatcher already. False: its parent had been excluded before, the scheduler knows.
ReportFailure = Callable[[PieceFetch, BaseException, bool], None]


class CollectedPieces(Protocol):
    """What the round reads of the parents' piece reports (a ``PieceCollector``)."""

    @property
    def parents(self) -> Mapping[str, ParentState]: ...

    @property
    def first_seen(self) -> Mapping[int, float]: ...

    @property
    def changed(self) -> asyncio.Event: ...

    def syncing(self) -> bool: ...


class ParentRound:
    """The fetches in flight of one round of parents; see the module docstring."""

    def __init__(
        self,
        dispatcher: PieceDispatcher,
        collector: CollectedPieces,
        *,
        fetch: FetchPiece,
        report_failure: ReportFailure,
        idle_timeout: float,
    ) -> None:
        self._dispatcher = dispatcher
        self._collector = collector
        self._fetch = fetch
        self._report_failure = report_failure
        self._idle_timeout = idle_timeout
        self._running: dict[asyncio.Task[float], PieceFetch] = {}
        self._aborts: dict[int, FetchAbort] = {}
        #: How many times the round asked the dispatcher for a plan (a count that does not depend on the load).
        self.plans = 0

    def failed_parents(self) -> set[str]:
        """Return the parents that let this round down: excluded, or their SyncPieces stream failed."""
        failed = set(self._dispatcher.excluded)
        failed.update(p.id for p in self._collector.parents.values() if p.error is not None)
        return failed

    async def run(self, complete: Callable[[], bool], stopping: Callable[[], bool]) -> None:
        """Fetch pieces until ``complete()`` or the round can do no more; ``stopping()`` ends it with DownloadFailed.

        One wake-up source: the collector's ``changed``, which the collector sets on a report the round may act on and
        each fetch's done callback sets as it ends. Waiting on it alone costs a future per wake-up; an
        ``asyncio.wait`` over every transfer plus a waiter task cost a task and two callbacks per transfer in flight
        per wake-up, and a wake-up comes with about every piece.
        """
        dispatcher, collector = self._dispatcher, self._collector
        changed = collector.changed
        try:
            while True:
                # Cleared before looking: whatever ends or is reported from here on wakes the wait below.
                changed.clear()
                self._end_finished()
                if complete():
                    return
                if stopping():
                    raise DownloadFailed("dfdaemon is shutting down")
                parents = collector.parents.values()
                self.plans += 1
                fetches, next_ready = dispatcher.plan(parents, collector.first_seen, time.monotonic())
                for fetch in fetches:
                    abort = self._aborts[fetch.number] = FetchAbort()
                    task = asyncio.create_task(self._fetch(fetch, abort))
                    self._running[task] = fetch
                    task.add_done_callback(self._ended)
                if not self._running and next_ready is None:
                    if not collector.syncing() or dispatcher.all_excluded(parents):
                        return
                    try:
                        async with asyncio.timeout(self._idle_timeout):
                            await changed.wait()
                    except TimeoutError:
                        return
                    continue
                if not changed.is_set():
                    try:
                        async with asyncio.timeout(self._wake_after(next_ready)):
                            await changed.wait()
                    except TimeoutError:
                        pass
                self._abort_overdue()
        finally:
            for abort in self._aborts.values():
                abort.abort("the download from parents ended")
            if self._running:
                await asyncio.wait(self._running)
            for task in self._running:
                if not task.cancelled():
                    task.exception()  # retrieved: the round is over, its outcome no longer matters

    def _ended(self, task: asyncio.Task[float]) -> None:
        # A fetch the round has already acted on (it saw it done before this callback ran) is no news.
        if task in self._running:
            self._collector.changed.set()

    def _end_finished(self) -> None:
        """Act on every fetch that has ended, including those whose done callbacks have not run yet: fetches that
        end in the same turn of the loop are acted on in one look, not one wake-up and one plan each."""
        for task in [task for task in self._running if task.done()]:
            self._end(task)

    def _wake_after(self, next_ready: float | None) -> float:
        """Return how long the round may sleep: until a piece becomes dispatchable or a transfer overdue.

        The transfers' progress is looked at four times per minDuration, so a trickling one is abandoned within a
        quarter of minDuration of becoming overdue.
        """
        now = time.monotonic()
        wake = now + self._dispatcher.slow.min_duration / 4
        for moment in (next_ready, self._dispatcher.next_deadline()):
            if moment is not None:
                wake = min(wake, moment)
        return max(wake - now, 0.001)

    def _abort_overdue(self) -> None:
        first = self._dispatcher.first_judgement()
        if first is None or time.monotonic() < first:
            return
        progress = {number: got for number, abort in self._aborts.items() if (got := abort.received()) is not None}
        for fetch in self._dispatcher.overdue(time.monotonic(), progress):
            assert fetch.abandoned is not None
            self._aborts[fetch.number].abort(fetch.abandoned)

    def _end(self, done: asyncio.Task[float]) -> None:
        fetch = self._running.pop(done)
        del self._aborts[fetch.number]
        error = done.exception()
        if error is None:
            self._dispatcher.succeeded(fetch.number, seconds=done.result())
            return
        if isinstance(error, NoSpace):
            # Not the parent's fault, and no other parent would do better.
            raise error
        known = fetch.parent.id in self._dispatcher.excluded
        self._dispatcher.failed(fetch.number, corrupt=isinstance(error, DigestMismatch))
        self._report_failure(fetch, error, not known)
        if fetch.parent.id in self._dispatcher.excluded:
            # Whatever else is coming from it is no better (corrupt bytes cost a whole piece each).
            why = f"parent {fetch.parent.id} was excluded after piece {fetch.number}: {error}"
            for other in self._dispatcher.abandon_parent(fetch.parent.id, why):
                self._aborts[other.number].abort(why)

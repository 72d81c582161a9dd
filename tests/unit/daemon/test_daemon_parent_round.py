"""A round of parents driven by ParentRound over fake parents: what it fetches, from whom, and how it ends.

The parents are scripted per id: serve; corrupt (the first piece, then stalls); stall (until aborted); refuse; disk full
(the first piece, then stalls). Nothing here patches the downloader.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from dragonfly_api import common_pb2

from dragonfly.common.errors import DigestMismatch
from dragonfly.daemon.download import piece_dispatcher as pd
from dragonfly.daemon.download.parent_round import ParentRound
from dragonfly.daemon.download.parent_selector import ParentSelector
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.piece_collector import ParentState
from dragonfly.daemon.download.piece_dispatcher import PieceDispatcher, PieceFetch
from dragonfly.daemon.download.vortex_client import FetchAbort, PieceAbandoned
from dragonfly.daemon.errors import DownloadFailed, NoSpace
from tests.waiting import eventually

PIECES = 16
PIECE_LENGTH = 4 << 20
# Bounds of the waits below; a round that needs them has hung.
_BOUND = 10.0


def _peer(name: str) -> common_pb2.Peer:
    return common_pb2.Peer(id=f"10.0.0.1-{name}", host=common_pb2.Host(id=name, ip="127.0.0.1", port=4000))


class Reports:
    """The parents' piece reports, set by the test (what a PieceCollector learns over SyncPieces)."""

    def __init__(self, peers: list[common_pb2.Peer]) -> None:
        self.parents = {peer.id: ParentState(peer, PIECES) for peer in peers}
        self.first_seen: dict[int, float] = {}
        self.changed = asyncio.Event()

    def has(self, parent_id: str, numbers: Iterable[int]) -> None:
        parent = self.parents[parent_id]
        parent.vortex_addr = ("127.0.0.1", 4005)
        for number in numbers:
            parent.bitmap.set(number)
            # Reported long ago: dispatchable at once, without waiting for COLLECT_WINDOW.
            self.first_seen.setdefault(number, time.monotonic() - 10)
        self.changed.set()

    def syncing(self) -> bool:
        return any(p.syncing for p in self.parents.values())


async def _until_aborted(abort: FetchAbort) -> str:
    """Wait (bounded) for the round to abort a transfer, as a real one notices its socket shut down."""
    # FetchAbort is a flag for executor threads, with nothing to await: polled.
    reason: str = await eventually(lambda: abort.reason, _BOUND, "the round to abort the transfer", interval=0.005)
    return reason


class Swarm:
    """Scripted parents behind one ParentRound; records what was stored from whom and every failure reported."""

    def __init__(
        self,
        behaviour: dict[str, str],
        *,
        concurrency: int = 8,
        slow: pd.SlowPiecePolicy | None = None,
        idle_timeout: float = _BOUND,
    ) -> None:
        peers = [_peer(name) for name in behaviour]
        self.behaviour = {peer.id: how for peer, how in zip(peers, behaviour.values(), strict=True)}
        self.ids = [peer.id for peer in peers]
        self.reports = Reports(peers)
        selector = ParentSelector(ParentChannels(), host_id="h", peer_id="child", parents=peers)
        self.dispatcher = PieceDispatcher(
            PIECES * PIECE_LENGTH, PIECE_LENGTH, skip=[], concurrency=concurrency, selector=selector, slow=slow
        )
        self.stored: dict[int, str] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self.running = 0
        self.first_pieces_stored = asyncio.Event()
        self.failures: list[tuple[int, str, BaseException]] = []
        #: The failures the scheduler would hear of.
        self.told: list[tuple[int, str, BaseException]] = []
        self.round = ParentRound(
            self.dispatcher,
            self.reports,
            fetch=self._fetch,
            report_failure=self._failed,
            idle_timeout=idle_timeout,
        )

    def _failed(self, fetch: PieceFetch, error: BaseException, tell_scheduler: bool) -> None:
        self.failures.append((fetch.number, fetch.parent.id, error))
        if tell_scheduler:
            self.told.append((fetch.number, fetch.parent.id, error))

    async def _fetch(self, fetch: PieceFetch, abort: FetchAbort) -> float:
        parent = fetch.parent.id
        assert fetch.number not in self.stored, "a stored piece was requested again"
        self.requests[parent] += 1
        nth = self.requests[parent]
        self.running += 1
        try:
            how = self.behaviour[parent]
            # "staggered": the transfers end over a few turns of the loop, several of them in each.
            for _ in range(1 + (fetch.number % 3 if how == "staggered" else 0)):
                await asyncio.sleep(0)
            fetch.transfer_started = time.monotonic()
            if how == "corrupt" and nth == 1:
                raise DigestMismatch("crc32:1", "crc32:2", what=f"piece {fetch.number} from parent {parent}")
            if how == "refuse":
                raise ConnectionRefusedError(f"{parent} refused")
            if how in ("stall", "corrupt") or (how == "disk full" and nth > 1):
                raise PieceAbandoned(await _until_aborted(abort))
            if how == "disk full":
                raise NoSpace("no room for the piece")
            assert how in ("serve", "staggered")
            self.stored[fetch.number] = parent
            if len(self.stored) == 4:
                self.first_pieces_stored.set()
            return 0.01
        finally:
            self.running -= 1

    def all_have_every_piece(self) -> None:
        for parent_id in self.ids:
            self.reports.has(parent_id, range(PIECES))

    def complete(self) -> bool:
        return len(self.stored) == PIECES

    async def run(self, stopping: Callable[[], bool] = lambda: False) -> None:
        async with asyncio.timeout(_BOUND):
            await self.round.run(self.complete, stopping)

    def failed_with(self, parent_id: str) -> set[type[BaseException]]:
        return {type(error) for _number, parent, error in self.failures if parent == parent_id}


async def test_every_piece_is_fetched_once_and_the_round_ends_when_complete():
    swarm = Swarm({"a": "serve", "b": "serve"})
    a, b = swarm.ids
    swarm.all_have_every_piece()
    await swarm.run()
    assert sorted(swarm.stored) == list(range(PIECES))
    assert set(swarm.stored.values()) == {a, b}
    assert swarm.failures == []
    assert swarm.round.failed_parents() == set()
    assert swarm.dispatcher.in_flight == {}


async def test_pieces_reported_later_are_fetched_as_they_appear():
    swarm = Swarm({"a": "serve"})
    [a] = swarm.ids
    swarm.reports.has(a, range(4))

    async def report_the_rest() -> None:
        # Once the first pieces are in, the parent reports the others (as its own download goes on).
        async with asyncio.timeout(_BOUND):
            await swarm.first_pieces_stored.wait()
        swarm.reports.has(a, range(4, PIECES))

    await asyncio.gather(swarm.run(), report_the_rest())
    assert sorted(swarm.stored) == list(range(PIECES))


async def test_a_corrupt_parent_is_excluded_at_once_and_loses_its_other_transfers():
    swarm = Swarm({"liar": "corrupt", "honest": "serve"})
    liar, honest = swarm.ids
    swarm.all_have_every_piece()
    await swarm.run()
    assert set(swarm.stored.values()) == {honest}
    assert sorted(swarm.stored) == list(range(PIECES))
    # One share of the slots went to the liar at the start: the first corrupt piece ended them all (the others
    # would have stalled for a minute), and the liar was never asked again.
    assert swarm.requests[liar] == -(-8 // 2)
    assert swarm.failed_with(liar) == {DigestMismatch, PieceAbandoned}
    assert all(
        "was excluded after piece" in str(error)
        for _n, _p, error in swarm.failures
        if isinstance(error, PieceAbandoned)
    )
    assert swarm.round.failed_parents() == {liar}
    # The scheduler hears of the corrupt piece only: the transfers ended with it are no news about the liar.
    assert [type(error) for _n, _p, error in swarm.told] == [DigestMismatch]


async def test_failures_count_as_strikes_until_the_parent_is_excluded():
    swarm = Swarm({"flaky": "refuse", "good": "serve"}, concurrency=2)
    flaky, good = swarm.ids
    swarm.all_have_every_piece()
    await swarm.run()
    assert set(swarm.stored.values()) == {good}
    assert swarm.requests[flaky] == pd.PARENT_STRIKES
    assert swarm.failed_with(flaky) == {ConnectionRefusedError}
    assert swarm.round.failed_parents() == {flaky}
    assert len(swarm.told) == pd.PARENT_STRIKES  # each strike is a failure of its own


async def test_a_stalled_transfer_is_abandoned_and_its_piece_comes_from_another_parent():
    # No relative floor: a transfer ends at the piece timeout, which is 50 ms here.
    slow = pd.SlowPiecePolicy(ratio=0.0, min_duration=0.05, initial_floor=0, timeout=0.05)
    swarm = Swarm({"stalled": "stall", "good": "serve"}, slow=slow)
    stalled, good = swarm.ids
    swarm.all_have_every_piece()
    await swarm.run()
    assert set(swarm.stored.values()) == {good}
    assert sorted(swarm.stored) == list(range(PIECES))
    assert swarm.failed_with(stalled) == {PieceAbandoned}
    assert any("piece timeout" in str(error) for _n, _p, error in swarm.failures)
    assert swarm.round.failed_parents() == {stalled}
    # Its share of the slots was stalled; the scheduler hears of it once.
    assert len([f for f in swarm.failures if f[1] == stalled]) > 1
    assert len(swarm.told) == 1


async def test_a_full_disk_ends_the_round_after_every_transfer_has_ended():
    swarm = Swarm({"a": "disk full"}, concurrency=4)
    [a] = swarm.ids
    swarm.all_have_every_piece()
    with pytest.raises(NoSpace):
        await swarm.run()
    assert swarm.running == 0
    assert swarm.requests[a] == 4
    # Not the parent's fault: it is neither blamed nor reported.
    assert swarm.failures == []
    assert swarm.round.failed_parents() == set()


async def test_the_round_ends_incomplete_when_every_parent_is_excluded():
    swarm = Swarm({"liar": "corrupt"})
    [liar] = swarm.ids
    swarm.all_have_every_piece()
    await swarm.run()
    assert swarm.stored == {}
    assert swarm.round.failed_parents() == {liar}


async def test_the_round_ends_when_no_parent_may_report_more_or_nothing_is_reported_in_time():
    swarm = Swarm({"gone": "serve"})
    [gone] = swarm.ids
    swarm.reports.parents[gone].syncing = False
    swarm.reports.parents[gone].error = "UNAVAILABLE: connection refused"
    await swarm.run()
    assert swarm.stored == {}
    assert swarm.round.failed_parents() == {gone}

    swarm = Swarm({"silent": "serve"}, idle_timeout=0.05)
    await swarm.run()
    assert swarm.stored == {}
    assert swarm.requests == {}


async def test_a_stopping_daemon_ends_the_round_with_an_error():
    swarm = Swarm({"a": "serve"})
    swarm.all_have_every_piece()
    with pytest.raises(DownloadFailed, match="shutting down"):
        await swarm.run(stopping=lambda: True)
    assert swarm.requests == {}


async def test_the_round_plans_once_per_wake_up_and_acts_on_every_fetch_that_ended_by_then():
    # The transfers end a few at a time; each wake-up acts on every fetch that has ended by then, including those
    # whose done callbacks have not run yet (they would each wake the round and make a plan of their own).
    swarm = Swarm({"a": "staggered"}, concurrency=8)
    swarm.all_have_every_piece()
    await swarm.run()
    assert sorted(swarm.stored) == list(range(PIECES))
    assert swarm.dispatcher.in_flight == {}
    # Three ends in each of the turns of the loop: at most one plan per turn with an end, and the first.
    assert 1 < swarm.round.plans <= -(-PIECES // 3) + 1


async def test_the_round_starts_one_task_per_fetch_and_none_per_wake_up():
    # Counted, not timed: the round used to start a waiter task on the collector's event at every wake-up (about
    # one per piece), besides the task of each fetch.
    swarm = Swarm({"a": "serve"}, concurrency=4)
    swarm.all_have_every_piece()
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    started: list[asyncio.Task[object]] = []

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[object]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        started.append(task)
        return task

    loop.set_task_factory(counting)
    try:
        await swarm.run()
    finally:
        loop.set_task_factory(previous)
    assert sorted(swarm.stored) == list(range(PIECES))
    assert len(started) == PIECES

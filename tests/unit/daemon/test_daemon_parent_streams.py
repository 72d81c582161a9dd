"""The streams a download opens to its parents: SyncPieces only where the child has to learn something, SyncHost
only where there is more than one choice of parent to make.

A finished parent whose Vortex address the daemon learnt in an earlier task is fetched from at once; a failed fetch
makes the daemon ask it over SyncPieces again. A one-piece task opens no SyncHost stream. The parents are fake
gRPC stubs that record what they were asked; the transfers are fake too (no Vortex, no storage).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.common.errors import DigestMismatch
from dragonfly.daemon.config import load_dfdaemon_config
from dragonfly.daemon.download.parent_downloader import ParentDownloader
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.piece_collector import PieceCollector, _Silence
from dragonfly.daemon.download.piece_dispatcher import PieceFetch, PieceRates
from dragonfly.daemon.download.task_download import REMOTE_PEER, TaskDownload
from dragonfly.daemon.download.vortex_client import FetchAbort
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.storage import PieceRecord, TaskRecord
from tests.waiting import eventually

PIECE_LENGTH = 4 << 20
VORTEX = ("127.0.0.9", 4005)
# Bound of every download below; one that needs it has hung.
_BOUND = 10.0


class _Call:
    """A server-streaming call: the given responses, then nothing more until cancelled (a parent still busy)."""

    def __init__(self, responses: list[Any]) -> None:
        self._responses = responses
        self._never = asyncio.Event()

    async def read(self) -> Any:
        if self._responses:
            return self._responses.pop(0)
        await self._never.wait()

    def __aiter__(self) -> _Call:
        return self

    async def __anext__(self) -> Any:
        return await self.read()

    def cancel(self) -> None:
        pass


class _Stub:
    def __init__(self, addr: str, parent: FakeParents) -> None:
        self._addr = addr
        self._parent = parent

    def SyncPieces(self, request: dfdaemon_pb2.SyncPiecesRequest) -> _Call:
        self._parent.calls.append(("SyncPieces", self._addr))
        responses = [
            dfdaemon_pb2.SyncPiecesResponse(number=n, length=PIECE_LENGTH, ip=VORTEX[0], tcp_port=VORTEX[1])
            for n in request.interested_piece_numbers
        ]
        return _Call(responses)

    def SyncHost(self, request: dfdaemon_pb2.SyncHostRequest) -> _Call:
        self._parent.calls.append(("SyncHost", self._addr))
        return _Call([])


class FakeParents(ParentChannels):
    """The daemon's channels to parents, each parent a fake stub that holds every piece it is asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def stub(self, addr: str) -> Any:
        return _Stub(addr, self)


class _Stream:
    """The AnnouncePeer stream: what the downloader reported."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def report(self, **request: Any) -> None:
        self.reports.append(request)


def _parent(name: str, *, finished: bool) -> common_pb2.Peer:
    return common_pb2.Peer(
        id=f"127.0.0.1-{name}",
        state="Succeeded" if finished else "Running",
        host=common_pb2.Host(id=name, ip="127.0.0.1", port=4000),
    )


def _task(length: int) -> TaskRecord:
    return TaskRecord(id="t" * 64, url="http://o/f", piece_length=PIECE_LENGTH, content_length=length,
                      response_header={}, created_at=0.0, updated_at=0.0)  # fmt: skip


class Child:
    """A ParentDownloader whose transfers store the piece at once (or fail, once, with ``fail_first``)."""

    def __init__(self, channels: FakeParents, *, fail_first: bool = False) -> None:
        config = load_dfdaemon_config(None, overrides={"host": {"hostname": "child", "ip": "127.0.0.1"}})
        self.downloader = ParentDownloader(
            config, host_id="127.0.0.1-child", channels=channels, storage=None, executor=None,  # type: ignore[arg-type]
            metrics=DaemonMetrics(), writer=None, source=None, piece_rates=PieceRates(),  # type: ignore[arg-type]
            stopping=lambda: False,
        )  # fmt: skip
        self._fail = fail_first
        self.fetched_from: list[tuple[str, int] | None] = []
        self.downloader._fetch_piece = self._fetch  # type: ignore[method-assign]

    async def _fetch(self, td: TaskDownload, task: TaskRecord, stream: Any, fetch: PieceFetch, _: FetchAbort) -> float:
        self.fetched_from.append(fetch.parent.vortex_addr)
        if self._fail:
            self._fail = False
            raise DigestMismatch("crc32:1", "crc32:2", what="a piece")
        offset = fetch.number * PIECE_LENGTH
        task.pieces[fetch.number] = PieceRecord(fetch.number, offset, fetch.length, "crc32:1", fetch.parent.id,
                                                REMOTE_PEER, 0.01, 0.0)  # fmt: skip
        return 0.01

    async def download(self, task: TaskRecord, parents: list[common_pb2.Peer]) -> bool:
        td = TaskDownload(task.id, common_pb2.Download(url=task.url), "127.0.0.1-child-peer", None)
        try:
            async with asyncio.timeout(_BOUND):
                return await self.downloader.download(td, task, _Stream(), parents, set())  # type: ignore[arg-type]
        finally:
            self.downloader.close()


async def test_a_finished_parent_is_asked_over_sync_pieces_once_then_fetched_from_at_once() -> None:
    channels = FakeParents()
    parent = _parent("seed", finished=True)
    first = Child(channels)
    assert await first.download(_task(1 << 20), [parent])
    assert channels.calls == [("SyncPieces", "127.0.0.1:4000")]
    assert channels.vortex_addr("127.0.0.1:4000") == VORTEX

    channels.calls.clear()
    second = Child(channels)
    assert await second.download(_task(1 << 20), [parent])
    assert channels.calls == []
    assert second.fetched_from == [VORTEX]


async def test_a_parent_still_downloading_is_always_asked_over_sync_pieces() -> None:
    channels = FakeParents()
    channels.remember_vortex_addr("127.0.0.1:4000", VORTEX)
    child = Child(channels)
    assert await child.download(_task(1 << 20), [_parent("p1", finished=False)])
    assert channels.calls == [("SyncPieces", "127.0.0.1:4000")]


def _listed_with(parent: common_pb2.Peer, numbers: list[int]) -> common_pb2.Peer:
    """Return ``parent`` as the scheduler lists a candidate with the pieces ``numbers``."""
    listed = common_pb2.Peer()
    listed.CopyFrom(parent)
    for number in numbers:
        listed.pieces.add(number=number, offset=number * PIECE_LENGTH, length=PIECE_LENGTH)
    return listed


async def test_a_parent_listed_with_every_piece_is_fetched_from_at_once_when_its_address_is_known() -> None:
    # A seed peer of a one-piece task between its piece report and its finished message.
    channels = FakeParents()
    channels.remember_vortex_addr("127.0.0.1:4000", VORTEX)
    child = Child(channels)
    assert await child.download(_task(1 << 20), [_listed_with(_parent("seed", finished=False), [0])])
    assert channels.calls == []
    assert child.fetched_from == [VORTEX]


@pytest.mark.parametrize("numbers", [[], [0], [0, 0], [0, 2]], ids=["none", "one of two", "repeated", "outside"])
async def test_a_parent_listed_without_every_piece_of_the_task_is_asked_over_sync_pieces(numbers: list[int]) -> None:
    channels = FakeParents()
    channels.remember_vortex_addr("127.0.0.1:4000", VORTEX)
    collector = PieceCollector(
        channels, host_id="h", task_id="t", parents=[_listed_with(_parent("p1", finished=False), numbers)],
        interested=[0, 1], piece_count=2, idle_timeout=1.0, first_timeout=1.0,
    )  # fmt: skip
    collector.start()
    try:
        await asyncio.sleep(0)
        assert not collector.parents["127.0.0.1-p1"].finished
        assert channels.calls == [("SyncPieces", "127.0.0.1:4000")]
    finally:
        await collector.stop()


async def test_a_failed_fetch_forgets_the_address_learnt_earlier() -> None:
    channels = FakeParents()
    channels.remember_vortex_addr("127.0.0.1:4000", VORTEX)
    child = Child(channels, fail_first=True)
    parent = _parent("seed", finished=True)
    await child.download(_task(1 << 20), [parent])
    assert child.fetched_from[0] == VORTEX
    assert channels.vortex_addr("127.0.0.1:4000") is None


@pytest.mark.parametrize(("length", "host_syncs"), [(1 << 20, 0), (PIECE_LENGTH + 1, 2)])
async def test_sync_host_only_where_several_pieces_are_to_be_placed(length: int, host_syncs: int) -> None:
    channels = FakeParents()
    child = Child(channels)
    assert await child.download(_task(length), [_parent("p1", finished=False), _parent("p2", finished=False)])
    assert sum(1 for method, _ in channels.calls if method == "SyncHost") == host_syncs
    assert sum(1 for method, _ in channels.calls if method == "SyncPieces") == 2


def test_the_collector_counts_a_finished_parent_with_a_known_address_as_holding_every_piece() -> None:
    channels = FakeParents()
    channels.remember_vortex_addr("127.0.0.1:4000", VORTEX)
    collector = PieceCollector(
        channels, host_id="h", task_id="t", parents=[_parent("seed", finished=True)], interested=[1, 2],
        piece_count=3, idle_timeout=1.0, first_timeout=1.0,
    )  # fmt: skip
    collector.start()
    state = collector.parents["127.0.0.1-seed"]
    assert state.vortex_addr == VORTEX
    assert state.bitmap.is_full()
    assert not collector.syncing()
    assert sorted(collector.first_seen) == [1, 2]
    assert collector.changed.is_set()
    assert channels.calls == []


class _ScriptedCall:
    """A SyncPieces call whose reports the test releases one at a time; like a gRPC call, cancelling it ends a
    pending read with CancelledError."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = asyncio.Event()

    async def read(self) -> Any:
        report = asyncio.ensure_future(self.queue.get())
        cancelled = asyncio.ensure_future(self.cancelled.wait())
        try:
            await asyncio.wait([report, cancelled], return_when=asyncio.FIRST_COMPLETED)
        finally:
            report.cancel()
            cancelled.cancel()
        if self.cancelled.is_set():
            raise asyncio.CancelledError
        return report.result()

    def cancel(self) -> None:
        self.cancelled.set()


class _ScriptedParent(FakeParents):
    """One parent whose SyncPieces call is ``call``."""

    def __init__(self, call: _ScriptedCall) -> None:
        super().__init__()
        self._call = call

    def stub(self, addr: str) -> Any:
        return self

    def SyncPieces(self, request: dfdaemon_pb2.SyncPiecesRequest) -> _ScriptedCall:
        return self._call


async def test_a_report_wakes_the_downloader_only_for_a_piece_it_wants_or_a_parent_it_could_not_use() -> None:
    call = _ScriptedCall()
    channels = _ScriptedParent(call)
    collector = PieceCollector(
        channels, host_id="h", task_id="t", parents=[_parent("p1", finished=False)], interested=[0, 1, 2],
        piece_count=3, idle_timeout=_BOUND, first_timeout=_BOUND,
    )  # fmt: skip
    collector.wanted = lambda number: number == 2
    parent = collector.parents["127.0.0.1-p1"]
    collector.start()
    try:
        for number, wakes in ((0, True), (1, False), (2, True)):
            collector.changed.clear()
            await call.queue.put(dfdaemon_pb2.SyncPiecesResponse(number=number, ip=VORTEX[0], tcp_port=VORTEX[1]))
            await eventually(lambda n=number: parent.bitmap.test(n), _BOUND, f"piece {number} reported", interval=0.001)
            # 0: unwanted, but the parent's first report (it becomes usable); 1: unwanted; 2: wanted.
            assert collector.changed.is_set() is wakes, number
        assert sorted(collector.first_seen) == [0, 1, 2]
    finally:
        await collector.stop()


async def test_a_parent_silent_for_collected_piece_timeout_after_reporting_is_dropped_with_the_reason():
    call = _ScriptedCall()
    collector = PieceCollector(
        _ScriptedParent(call), host_id="h", task_id="t", parents=[_parent("p1", finished=False)],
        interested=list(range(4)), piece_count=4, idle_timeout=0.3, first_timeout=2 * _BOUND,
    )  # fmt: skip
    parent = collector.parents["127.0.0.1-p1"]
    collector.start()
    try:
        for number in range(2):
            await call.queue.put(dfdaemon_pb2.SyncPiecesResponse(number=number, ip=VORTEX[0], tcp_port=VORTEX[1]))
        # The first report shortens the deadline from firstCollectedPieceTimeout, longer than this wait's bound.
        await eventually(lambda: not parent.syncing, _BOUND, "the silent parent to be dropped", interval=0.01)
        assert call.cancelled.is_set()
        assert parent.error == "no further piece reported for 0.3s (collectedPieceTimeout)"
        assert parent.bitmap.count() == 2
    finally:
        await collector.stop()


class _Timer:
    def __init__(self) -> None:
        self.is_cancelled = False

    def cancel(self) -> None:
        self.is_cancelled = True

    def cancelled(self) -> bool:
        return self.is_cancelled


class _Clock:
    """The part of an event loop a _Silence uses, with time moved by the test and timers fired by it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[[], object], _Timer]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> _Timer:
        handle = _Timer()
        self.timers.append((when, callback, handle))
        return handle

    def live(self) -> list[float]:
        return [when for when, _callback, handle in self.timers if not handle.cancelled()]

    def fire(self) -> None:
        """Move to the earliest live timer and run it."""
        when, callback, handle = min((t for t in self.timers if not t[2].cancelled()), key=lambda t: t[0])
        self.timers.remove((when, callback, handle))
        self.now = when
        callback()


def test_silence_moves_its_deadline_later_without_a_timer_and_earlier_with_one() -> None:
    clock = _Clock()
    cancelled: list[bool] = []
    silence = _Silence(clock, lambda: cancelled.append(True), 10.0)  # type: ignore[arg-type]
    assert clock.live() == [110.0]
    # Reports move the deadline later: no timer of their own.
    for now in (101.0, 102.0, 103.0):
        clock.now = now
        silence.move(now + 10.0)
    assert clock.live() == [110.0]
    # The timer, early, sleeps until the deadline it finds.
    clock.fire()
    assert clock.live() == [113.0]
    assert not cancelled
    assert not silence.expired
    # A shorter timeout (collectedPieceTimeout after the first report) moves it earlier: re-armed.
    clock.now = 104.0
    silence.move(104.5)
    assert clock.live() == [104.5]
    # Past the deadline the call is cancelled, once.
    clock.fire()
    assert cancelled == [True]
    assert silence.expired
    assert clock.live() == []
    silence.stop()

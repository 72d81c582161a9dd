"""The daemon's side of AnnouncePeer: what a download waits for before it fetches (docs/reference/protocol.md).

The stream, the parents and the origin are fakes: the stream records what is queued and never finishes a write,
as a scheduler connection whose writes are held up would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dragonfly_api import common_pb2, scheduler_pb2

from dragonfly.daemon.config import load_dfdaemon_config
from dragonfly.daemon.download.peer_announcer import PeerAnnouncer
from dragonfly.daemon.download.task_download import TaskDownload
from dragonfly.daemon.storage import TaskRecord

# Bound of every wait below; one that needs it has hung.
_BOUND = 10.0


class StuckStream:
    """An AnnouncePeer stream whose writes never complete; queued reports are kept in order."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self._never = asyncio.Event()

    async def send(self, **request: Any) -> None:
        self.queued.extend(request)
        await self._never.wait()

    def report(self, **request: Any) -> None:
        self.queued.extend(request)


class Called:
    """A fake origin or parent downloader: records that the download was asked for, and succeeds."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def download(self, *args: Any) -> bool:
        self.called.set()
        return True


def _announcer(source: Called, parents: Called) -> PeerAnnouncer:
    config = load_dfdaemon_config(None, overrides={"host": {"hostname": "child", "ip": "127.0.0.1"}})
    return PeerAnnouncer(
        config, scheduler=None, host_id="127.0.0.1-child", seed=True,  # type: ignore[arg-type]
        new_peer_id=lambda: "peer", parents=parents, source=source,  # type: ignore[arg-type]
    )  # fmt: skip


def _task() -> TaskRecord:
    return TaskRecord(id="t" * 64, url="http://o/f", piece_length=4 << 20, content_length=8 << 20,
                      response_header={}, created_at=0.0, updated_at=0.0)  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "started", "fetching"),
    [
        (
            scheduler_pb2.AnnouncePeerResponse(need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse()),
            "download_peer_back_to_source_started_request",
            "source",
        ),
        (
            scheduler_pb2.AnnouncePeerResponse(
                normal_task_response=scheduler_pb2.NormalTaskResponse(candidate_parents=[common_pb2.Peer(id="p")])
            ),
            "download_peer_started_request",
            "parents",
        ),
    ],
    ids=["back to source", "parents"],
)
async def test_the_download_starts_without_waiting_for_the_started_message_to_be_written(
    answer: scheduler_pb2.AnnouncePeerResponse, started: str, fetching: str
) -> None:
    fakes = {"source": Called(), "parents": Called()}
    announcer = _announcer(fakes["source"], fakes["parents"])
    task = _task()
    td = TaskDownload(task.id, common_pb2.Download(url=task.url), "peer", None)
    stream = StuckStream()
    following = asyncio.ensure_future(announcer._follow(td, task, stream, answer))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(_BOUND):
            await fakes[fetching].called.wait()
        assert stream.queued[0] == started, "queued ahead of any piece report"
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


class SlowToCloseStream:
    """An AnnouncePeer stream whose close waits for the scheduler to end it (here: until ``ended`` is set)."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.closed = False

    async def close(self) -> None:
        await self.ended.wait()
        self.closed = True


class OneScheduler:
    """The scheduler client: one address, known, and the one stream above."""

    def __init__(self, stream: SlowToCloseStream) -> None:
        self.stream = stream

    def owner(self, task_id: str) -> str:
        return "scheduler:8002"

    async def ensure_announced(self, addr: str) -> bool:
        return True

    def announce_peer(self, addr: str, **ids: str) -> SlowToCloseStream:
        return self.stream


def _announcer_with(stream: SlowToCloseStream, spawned: list[Any] | None) -> PeerAnnouncer:
    config = load_dfdaemon_config(None, overrides={"host": {"hostname": "child", "ip": "127.0.0.1"}})
    announcer = PeerAnnouncer(
        config, scheduler=OneScheduler(stream), host_id="127.0.0.1-child", seed=False,  # type: ignore[arg-type]
        new_peer_id=lambda: "peer", parents=Called(), source=Called(),  # type: ignore[arg-type]
        spawn=None if spawned is None else spawned.append,
    )  # fmt: skip

    async def follow(*args: Any) -> bool:
        return True

    announcer._follow = follow  # type: ignore[method-assign]
    return announcer


async def test_a_finished_download_does_not_wait_for_the_scheduler_to_end_its_stream() -> None:
    stream = SlowToCloseStream()
    spawned: list[Any] = []
    announcer = _announcer_with(stream, spawned)
    task = _task()
    td = TaskDownload(task.id, common_pb2.Download(url=task.url), "peer", None)
    async with asyncio.timeout(_BOUND):
        assert await announcer.download(td, task)
    assert not stream.closed
    assert len(spawned) == 1, "the stream is closed in the background"
    stream.ended.set()
    async with asyncio.timeout(_BOUND):
        await spawned[0]
    assert stream.closed


async def test_without_a_background_runner_the_stream_is_closed_before_the_download_returns() -> None:
    stream = SlowToCloseStream()
    stream.ended.set()
    announcer = _announcer_with(stream, None)
    task = _task()
    td = TaskDownload(task.id, common_pb2.Download(url=task.url), "peer", None)
    async with asyncio.timeout(_BOUND):
        assert await announcer.download(td, task)
    assert stream.closed

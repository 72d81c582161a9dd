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

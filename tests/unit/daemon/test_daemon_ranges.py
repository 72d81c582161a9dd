"""Ranged downloads in the task manager: only the covering pieces, exact output bytes, whole-file task identity."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from dragonfly_api import common_pb2
from standalone import standalone_task_manager

from dragonfly.common.byte_range import ByteRange, InvalidRange, RangeNotSatisfiable
from dragonfly.common.errors import DigestMismatch
from dragonfly.daemon.download.download_request import task_id_for
from dragonfly.daemon.download.task_download import PieceDone, TaskStarted
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.storage import Storage

MIB = 1024 * 1024
BODY = os.urandom(17 * MIB + 123)  # 5 pieces of 4 MiB: 4 full and one of 1 MiB + 123 bytes


class Origin:
    def __init__(self) -> None:
        self.ranges: list[str] = []
        self.base = ""


@contextlib.asynccontextmanager
async def serve_origin() -> AsyncIterator[Origin]:
    origin = Origin()

    async def handle(request: web.Request) -> web.StreamResponse:
        origin.ranges.append(request.headers.get("Range", ""))
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        if not match:
            return web.Response(body=BODY)
        start, end = int(match.group(1)), min(int(match.group(2)), len(BODY) - 1)
        return web.Response(
            status=206, body=BODY[start : end + 1], headers={"Content-Range": f"bytes {start}-{end}/{len(BODY)}"}
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    origin.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield origin
    finally:
        await runner.cleanup()


class Harness:
    def __init__(self, tmp_path: Path, origin: Origin, manager: TaskManager, storage: Storage) -> None:
        self.tmp_path = tmp_path
        self.origin = origin
        self.manager = manager
        self.storage = storage

    def request(self, **fields: object) -> common_pb2.Download:
        return common_pb2.Download(url=self.origin.base + "/blob", **fields)  # type: ignore[arg-type]

    async def download(self, **fields: object) -> list[TaskStarted | PieceDone]:
        return [event async for event in self.manager.download(self.request(**fields))]

    def piece_requests(self) -> list[str]:
        return sorted(r for r in self.origin.ranges if r != "bytes=0-0")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with serve_origin() as origin, standalone_task_manager(tmp_path, workers=8) as daemon:
        yield Harness(tmp_path, origin, daemon.manager, daemon.storage)


def piece_numbers(events: list[TaskStarted | PieceDone]) -> list[int]:
    return sorted(e.piece.number for e in events if isinstance(e, PieceDone))


async def test_range_fetches_only_covering_pieces_and_writes_exactly_the_range(harness: Harness) -> None:
    out = harness.tmp_path / "part"
    start, length = 4 * MIB - 10, 4 * MIB + 20  # the end of piece 0, all of piece 1, the start of piece 2
    events = await harness.download(output_path=str(out), range=common_pb2.Range(start=start, length=length))
    started = events[0]
    assert isinstance(started, TaskStarted)
    assert started.range == ByteRange(start, length)
    assert started.content_length == len(BODY)
    assert started.task_id == task_id_for(harness.request())  # the whole file's task id
    assert piece_numbers(events) == [0, 1, 2]
    assert out.read_bytes() == BODY[start : start + length]
    assert harness.piece_requests() == ["bytes=0-4194303", "bytes=4194304-8388607", "bytes=8388608-12582911"]
    task = harness.storage.get_task(started.task_id)
    assert task is not None
    assert task.finished_at is None
    assert task.failed_at is None

    # A full download afterwards keeps the layout and fetches only the two pieces still missing.
    harness.origin.ranges.clear()
    full = harness.tmp_path / "full"
    events = await harness.download(output_path=str(full))
    assert full.read_bytes() == BODY
    assert harness.piece_requests() == ["bytes=12582912-16777215", "bytes=16777216-17825914"]
    local = {e.piece.number for e in events if isinstance(e, PieceDone) and e.traffic_type == common_pb2.LOCAL_PEER}
    assert local == {0, 1, 2}


async def test_range_header_suffix_and_open_end(harness: Harness) -> None:
    suffix = harness.tmp_path / "suffix"
    events = await harness.download(output_path=str(suffix), request_header={"Range": "bytes=-100"})
    assert suffix.read_bytes() == BODY[-100:]
    assert piece_numbers(events) == [4]
    # Served from storage now: no further origin request.
    harness.origin.ranges.clear()
    again = harness.tmp_path / "again"
    events = await harness.download(output_path=str(again), request_header={"range": f"bytes={len(BODY) - 50}-"})
    assert again.read_bytes() == BODY[-50:]
    assert harness.origin.ranges == []
    assert {e.traffic_type for e in events if isinstance(e, PieceDone)} == {common_pb2.LOCAL_PEER}


async def test_unsatisfiable_and_invalid_ranges_fail_without_output(harness: Harness) -> None:
    out = harness.tmp_path / "never"
    with pytest.raises(RangeNotSatisfiable, match=f"bytes={len(BODY)}- is not satisfiable"):
        await harness.download(output_path=str(out), request_header={"Range": f"bytes={len(BODY)}-"})
    with pytest.raises(InvalidRange, match="several ranges"):
        await harness.download(output_path=str(out), request_header={"Range": "bytes=0-1,4-5"})
    with pytest.raises(InvalidRange, match="length must be > 0"):
        await harness.download(output_path=str(out), range=common_pb2.Range(start=0, length=0))
    assert not out.exists()
    assert harness.piece_requests() == []  # at most the stat reached the origin


async def test_digest_of_a_range_is_the_digest_of_its_bytes(harness: Harness) -> None:
    part = BODY[100:2000]
    good = harness.tmp_path / "good"
    digest = "sha256:" + hashlib.sha256(part).hexdigest()
    await harness.download(output_path=str(good), range=common_pb2.Range(start=100, length=1900), digest=digest)
    assert good.read_bytes() == part
    bad = harness.tmp_path / "bad"
    with pytest.raises(DigestMismatch):
        await harness.download(
            output_path=str(bad), range=common_pb2.Range(start=100, length=1900), digest="sha256:" + "0" * 64
        )
    assert not bad.exists()
    assert [n for n in os.listdir(harness.tmp_path) if "dragonfly-tmp" in n] == []


async def test_a_range_and_a_full_download_at_once(harness: Harness) -> None:
    ranged, full = await asyncio.gather(
        harness.download(output_path=str(harness.tmp_path / "r"), range=common_pb2.Range(start=9 * MIB, length=10)),
        harness.download(output_path=str(harness.tmp_path / "f")),
    )
    assert (harness.tmp_path / "r").read_bytes() == BODY[9 * MIB : 9 * MIB + 10]
    assert (harness.tmp_path / "f").read_bytes() == BODY
    assert piece_numbers(ranged) == [2]
    assert piece_numbers(full) == [0, 1, 2, 3, 4]
    # Each piece left the origin once, whichever request asked first.
    assert len(harness.piece_requests()) == len(set(harness.piece_requests())) == 5

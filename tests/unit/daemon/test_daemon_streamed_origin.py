"""Origins that ignore Range: the task is read as one streamed GET cut into pieces as the bytes arrive."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from dragonfly_api import common_pb2
from standalone import standalone_task_manager

from dragonfly.daemon.download.task_download import PieceDone
from dragonfly.daemon.download.task_manager import TaskManager

MIB = 1024 * 1024
BODY = os.urandom(13 * MIB + 5)  # 4 pieces


class Origin:
    def __init__(self, honour_stat_range: bool) -> None:
        # A server may honour ranges from byte 0 (the stat, or the stat that asks for piece 0) and ignore every other
        # range; the piece requests then find out.
        self.honour_stat_range = honour_stat_range
        self.requests: list[str] = []
        self.base = ""


@contextlib.asynccontextmanager
async def serve(honour_stat_range: bool = False) -> AsyncIterator[Origin]:
    origin = Origin(honour_stat_range)

    async def handle(request: web.Request) -> web.StreamResponse:
        asked = request.headers.get("Range", "")
        origin.requests.append(asked)
        if asked.startswith("bytes=0-") and origin.honour_stat_range:
            end = int(asked.removeprefix("bytes=0-"))
            headers = {"Content-Range": f"bytes 0-{end}/{len(BODY)}"}
            return web.Response(status=206, body=BODY[: end + 1], headers=headers)
        response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await response.prepare(request)
        for start in range(0, len(BODY), MIB):
            await response.write(BODY[start : start + MIB])
        return response

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


async def download(manager: TaskManager, url: str, **fields: object) -> list[PieceDone]:
    events = [e async for e in manager.download(common_pb2.Download(url=url, **fields))]  # type: ignore[arg-type]
    return [e for e in events if isinstance(e, PieceDone)]


@pytest.mark.parametrize("honour_stat_range", [False, True], ids=["stat-sees-200", "piece-sees-200"])
async def test_an_origin_without_range_is_read_once(tmp_path: Path, honour_stat_range: bool) -> None:
    async with serve(honour_stat_range) as origin, standalone_task_manager(tmp_path, workers=8) as daemon:
        out = tmp_path / "out"
        pieces = await download(daemon.manager, origin.base + "/f", output_path=str(out))
        assert out.read_bytes() == BODY
        assert sorted(p.piece.number for p in pieces) == [0, 1, 2, 3]
        assert {p.traffic_type for p in pieces} == {common_pb2.BACK_TO_SOURCE}
        whole_body_gets = [r for r in origin.requests if r == ""]
        assert len(whole_body_gets) == 1  # the one streamed GET
        if honour_stat_range:
            # The first piece requests got 200; at most the window's worth of them before the switch.
            assert len(origin.requests) <= 2 + 8
        else:
            # Without a scheduler the stat is piece 0's request (its answer, 200, is the stat).
            assert origin.requests == [f"bytes=0-{4 * MIB - 1}", ""]


async def test_a_range_of_an_origin_without_range_support(tmp_path: Path) -> None:
    async with serve() as origin, standalone_task_manager(tmp_path, workers=8) as daemon:
        out = tmp_path / "part"
        pieces = await download(
            daemon.manager, origin.base + "/f", output_path=str(out), range=common_pb2.Range(start=5 * MIB, length=10)
        )
        assert out.read_bytes() == BODY[5 * MIB : 5 * MIB + 10]
        assert [p.piece.number for p in pieces] == [1]
        # A later full download (no new stat: the task is known) finds out again from its first piece request,
        # then reads the body once, skipping the piece it holds.
        origin.requests.clear()
        full = tmp_path / "full"
        await download(daemon.manager, origin.base + "/f", output_path=str(full))
        assert full.read_bytes() == BODY
        assert origin.requests.count("") == 1
        assert origin.requests[-1] == ""
        assert len(origin.requests) <= 1 + 8

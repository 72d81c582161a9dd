"""A piece buffer has one owner at a time (issue 8 item 19): when a piece download is cancelled (its timeout
fires, the task is stopped) while an executor thread still writes from the pooled buffer, the download must not
end, and so hand the buffer back to the pool, before that write has ended.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web

from dragonfly.daemon.backends import body_socket
from dragonfly.daemon.backends import http as backend_module
from dragonfly.daemon.backends.http import HTTPBackend
from dragonfly.daemon.backends.piece_chunks import PieceDigest

BODY = os.urandom(256 * 1024)


@pytest.fixture(params=["known length", "chunked"])
async def origin(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The origin; a body of known length is read from the socket (body_socket), a chunked one through aiohttp."""
    chunked = request.param == "chunked"

    async def handle(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=BODY)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(BODY)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/f", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/f"
    await runner.cleanup()


@pytest.mark.parametrize("cancels", [1, 2], ids=["cancelled", "cancelled again while waiting"])
async def test_a_cancelled_piece_download_waits_for_its_write(
    origin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancels: int
) -> None:
    started, release = threading.Event(), threading.Event()
    done_while_writing: list[bool] = []
    task: asyncio.Task[int] | None = None
    real_write = backend_module.write_chunk

    def blocking_write(
        fd: int, offset: int, view: memoryview, crc: int, starts_piece: bool, digest: PieceDigest | None
    ) -> int:
        started.set()
        assert release.wait(30), "the test never released the write"
        # Still inside the write: the download that owns the buffer must not have ended.
        assert task is not None
        done_while_writing.append(task.done())
        return real_write(fd, offset, view, crc, starts_piece, digest)

    # Through aiohttp, or straight from the socket (a plain-HTTP body of known length: body_socket).
    monkeypatch.setattr(backend_module, "write_chunk", blocking_write)
    monkeypatch.setattr(body_socket, "write_chunk", blocking_write)
    with ThreadPoolExecutor(2) as executor:
        backend = HTTPBackend(request_header={}, max_retries=0, piece_timeout=30.0, executor=executor)
        await backend.start()
        fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            buffer = bytearray(len(BODY))
            task = asyncio.create_task(
                backend.download_piece(origin, {}, fd=fd, offset=0, length=len(BODY), buffer=buffer)
            )
            assert await asyncio.to_thread(started.wait, 30), "the write never started"
            for _ in range(cancels):
                # What the piece timeout does; then, while the task waits for the write, the download is stopped.
                task.cancel()
                # A cancelled run_in_executor future ends the task within a few loop turns; run_blocking does not.
                for _ in range(50):
                    await asyncio.sleep(0)
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
        finally:
            release.set()
            os.close(fd)
            await backend.close()
    assert done_while_writing == [False]

"""A plain-HTTP piece body read straight from the socket (``backends.body_socket``), against a real origin.

What aiohttp had already read is kept and the rest follows it in order; a body of unknown length (chunked) stays
with aiohttp; a stalled body fails within the piece timeout and a cancelled download stops without waiting for it;
a connection whose body was taken over is never reused for another request.
"""

from __future__ import annotations

import asyncio
import os
import re
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web

from dragonfly.common import native
from dragonfly.daemon.backends import body_socket
from dragonfly.daemon.backends import http as backend_module
from dragonfly.daemon.backends.http import HTTPBackend
from dragonfly.daemon.backends.piece_chunks import PieceDigest
from dragonfly.daemon.errors import BackendError
from tests.waiting import eventually

DATA = os.urandom(2 * 1024 * 1024 + 77)


class Origin:
    """Serves DATA at /f with Range; ``chunked`` frames the body in chunks; ``stall`` sends half of it, then waits
    (then sends the rest if ``finish_after_stall``)."""

    def __init__(self) -> None:
        self.chunked = False
        self.stall: asyncio.Event | None = None
        self.finish_after_stall = False
        self.trickle = False
        self.connections: set[int] = set()
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        assert request.transport is not None
        self.connections.add(request.transport.get_extra_info("peername")[1])  # the client port: one per connection
        body, status, headers = DATA, 200, {}
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        if match:
            start, end = int(match.group(1)), min(int(match.group(2)), len(DATA) - 1)
            body, status = DATA[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(DATA)}"
        response = web.StreamResponse(status=status, headers=headers)
        if self.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(body)
        await response.prepare(request)
        if self.trickle:
            for start in range(len(body)):
                await response.write(body[start : start + 1])
                await asyncio.sleep(0.05)
            return response
        if self.stall is not None:
            await response.write(body[: len(body) // 2])
            await self.stall.wait()
            if self.finish_after_stall:
                await response.write(body[len(body) // 2 :])
            return response
        # Several writes: some of the body reaches the client before the takeover, some after.
        for start in range(0, len(body), 256 * 1024):
            await response.write(body[start : start + 256 * 1024])
        return response


@pytest.fixture
async def origin() -> AsyncIterator[tuple[Origin, str]]:
    state = Origin()
    app = web.Application()
    app.router.add_get("/f", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield state, f"http://127.0.0.1:{runner.addresses[0][1]}/f"
    if state.stall is not None:
        state.stall.set()
    await runner.shutdown()
    await runner.cleanup()


async def _backend(executor: ThreadPoolExecutor, piece_timeout: float = 30.0) -> HTTPBackend:
    backend = HTTPBackend(request_header={}, max_retries=0, piece_timeout=piece_timeout, executor=executor)
    await backend.start()
    return backend


@pytest.mark.parametrize("chunked", [False, True])
async def test_pieces_arrive_whole_and_in_order_whoever_reads_the_body(
    origin: tuple[Origin, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    state, url = origin
    state.chunked = chunked
    taken: list[bool] = []
    real = body_socket.take_over

    def spy(resp, length):  # type: ignore[no-untyped-def]
        body = real(resp, length)
        taken.append(body is not None)
        return body

    monkeypatch.setattr(backend_module, "take_over", spy)
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT, 0o600)
    progress: list[int] = []
    with ThreadPoolExecutor(4) as executor:
        backend = await _backend(executor)
        try:
            pieces = [(0, 1024 * 1024), (1024 * 1024, len(DATA) - 1024 * 1024)]
            for offset, length in pieces:
                digest = PieceDigest("blake3")
                crc = await backend.download_piece(
                    url, {}, fd=fd, offset=offset, length=length, buffer=bytearray(96 * 1024),
                    progress=progress.append, digest=digest,
                )  # fmt: skip
                assert crc == zlib.crc32(DATA[offset : offset + length])
                assert (
                    digest.result(length)
                    == f"blake3:{native.Hasher('blake3', DATA[offset : offset + length]).hexdigest()}"
                )
        finally:
            os.close(fd)
            await backend.close()
    assert (tmp_path / "content").read_bytes() == DATA
    assert sum(progress) == len(DATA)
    # A chunked body has no declared length: aiohttp reads it (the socket carries chunk framing).
    assert taken == [not chunked, not chunked]
    if not chunked:
        # Each taken-over connection was closed after its piece: the second request came on a new one.
        assert len(state.connections) == 2


async def test_a_piece_is_written_and_hashed_as_its_bytes_arrive(origin: tuple[Origin, str], tmp_path: Path) -> None:
    """A buffer as large as the piece (the daemon's 4 MiB for 4 MiB pieces) is not written only when full: what has
    arrived is on file and hashed while the rest is awaited, so the piece's last byte leaves little to write."""
    state, url = origin
    state.stall = asyncio.Event()
    state.finish_after_stall = True
    content = tmp_path / "content"
    fd = os.open(content, os.O_RDWR | os.O_CREAT, 0o600)
    half = len(DATA) // 2
    with ThreadPoolExecutor(2) as executor:
        backend = await _backend(executor)
        try:
            digest = PieceDigest("blake3")
            task = asyncio.create_task(
                backend.download_piece(
                    url, {}, fd=fd, offset=0, length=len(DATA), buffer=bytearray(len(DATA)), digest=digest
                )
            )
            # The origin sent the first half and waits: all of it is written and hashed meanwhile.
            await eventually(
                lambda: digest.fed >= half and content.read_bytes()[:half] == DATA[:half],
                30,
                "the first half's steps written and hashed",
            )
            assert not task.done()
            state.stall.set()
            crc = await asyncio.wait_for(task, 30)
        finally:
            os.close(fd)
            await backend.close()
    assert crc == zlib.crc32(DATA)
    assert digest.result(len(DATA)) == f"blake3:{native.Hasher('blake3', DATA).hexdigest()}"
    assert content.read_bytes() == DATA


async def test_a_taken_over_body_survives_a_resume_from_the_connections_previous_reader(
    origin: tuple[Origin, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp hands a connection to the next request once its parser saw the end of a body, and that body's reader,
    still draining its buffer, resumes the protocol's reading with every read: the transport must not start
    reading the taken-over body then (its bytes would never reach the thread, and the piece would stall)."""
    state, url = origin
    state.stall = asyncio.Event()
    state.finish_after_stall = True
    real = body_socket.take_over
    resumed: list[bool] = []

    def take_over_then_resume(resp, length):  # type: ignore[no-untyped-def]
        body = real(resp, length)
        assert body is not None
        assert resp.connection is not None
        # What the previous body's reader does on the same protocol (StreamReader._read_nowait_chunk).
        resp.connection.protocol.resume_reading()
        resumed.append(True)
        return body

    monkeypatch.setattr(backend_module, "take_over", take_over_then_resume)
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT, 0o600)
    with ThreadPoolExecutor(2) as executor:
        backend = await _backend(executor, piece_timeout=10.0)
        try:
            task = asyncio.create_task(
                backend.download_piece(url, {}, fd=fd, offset=0, length=len(DATA), buffer=bytearray(len(DATA)))
            )
            await eventually(lambda: resumed, 30, "the takeover")
            # The rest of the body arrives after the resume, while the event loop runs.
            state.stall.set()
            crc = await asyncio.wait_for(task, 30)
        finally:
            os.close(fd)
            await backend.close()
    assert crc == zlib.crc32(DATA)
    assert (tmp_path / "content").read_bytes() == DATA


async def test_a_stalled_body_fails_within_the_piece_timeout(origin: tuple[Origin, str], tmp_path: Path) -> None:
    state, url = origin
    state.stall = asyncio.Event()
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT, 0o600)
    with ThreadPoolExecutor(2) as executor:
        backend = await _backend(executor, piece_timeout=1.0)
        try:
            with pytest.raises(BackendError, match="did not answer in time"):
                await asyncio.wait_for(
                    backend.download_piece(url, {}, fd=fd, offset=0, length=len(DATA), buffer=bytearray(1 << 20)),
                    30,
                )
        finally:
            os.close(fd)
            await backend.close()


async def test_a_cancelled_download_stops_reading_a_stalled_body(origin: tuple[Origin, str], tmp_path: Path) -> None:
    state, url = origin
    state.stall = asyncio.Event()
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT, 0o600)
    with ThreadPoolExecutor(2) as executor:
        # A piece timeout far beyond the bound below: only the stop makes the thread return in time.
        backend = await _backend(executor, piece_timeout=300.0)
        try:
            task = asyncio.create_task(
                backend.download_piece(url, {}, fd=fd, offset=0, length=len(DATA), buffer=bytearray(1 << 20))
            )
            # Into the stalled body: its first half is in, a buffer's worth written.
            await eventually(lambda: (tmp_path / "content").stat().st_size >= 1 << 20, 30, "the first half written")
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=30)
            assert task in done
            assert task.cancelled()
        finally:
            os.close(fd)
            await backend.close()


async def test_a_trickling_body_ends_within_the_piece_timeout_and_frees_its_thread(
    origin: tuple[Origin, str], tmp_path: Path
) -> None:
    state, url = origin
    state.trickle = True  # a byte per 50 ms: never silent for long, never done
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT, 0o600)
    with ThreadPoolExecutor(1) as executor:
        backend = await _backend(executor, piece_timeout=1.0)
        try:
            with pytest.raises(BackendError, match="did not answer in time"):
                await asyncio.wait_for(
                    backend.download_piece(url, {}, fd=fd, offset=0, length=len(DATA), buffer=bytearray(1 << 20)),
                    30,
                )
            # The executor's only thread is free again.
            assert await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(executor, lambda: 7), 10) == 7
        finally:
            os.close(fd)
            await backend.close()


async def test_no_more_than_a_few_bodies_hold_executor_threads(
    origin: tuple[Origin, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, url = origin
    state.stall = asyncio.Event()
    readers: list[int] = []
    real = body_socket.read_body

    async def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        readers.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(backend_module, "read_body", counting)
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT, 0o600)
    pieces = backend_module._SOCKET_READERS + 2
    with ThreadPoolExecutor(pieces + 2) as executor:
        backend = await _backend(executor)
        try:
            tasks = [
                asyncio.create_task(
                    backend.download_piece(url, {}, fd=fd, offset=0, length=len(DATA), buffer=bytearray(1 << 20))
                )
                for _ in range(pieces)
            ]
            await eventually(lambda: state.requests == pieces, 30, "every piece's request")
            await eventually(lambda: len(readers) == backend_module._SOCKET_READERS, 30, "the socket readers")
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=30)
            assert all(task.done() for task in tasks)
        finally:
            os.close(fd)
            await backend.close()
    # The others were read through aiohttp: never more than the cap on executor threads.
    assert len(readers) == backend_module._SOCKET_READERS

"""The HTTP origin backend against a real aiohttp server on 127.0.0.1 with Range support and faults."""

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
from dragonfly.daemon.backends.http import HTTPBackend, OpenedPiece, StatResult
from dragonfly.daemon.backends.origin_head import OriginHead
from dragonfly.daemon.backends.piece_chunks import PieceDigest
from dragonfly.daemon.errors import BackendError

DATA = os.urandom(3 * 1024 * 1024 + 123)


class Origin:
    """Serves DATA at /f with Range support; ``fault`` breaks the next ``fault_count`` requests."""

    def __init__(self) -> None:
        self.fault: str | None = None
        self.fault_count = 1_000_000
        self.requests: list[dict[str, str]] = []
        self.ignore_range = False
        self.body = DATA
        # Replaces the Content-Range of ranged answers (the origin lies); the body stays the range asked for.
        self.content_range: str | None = None
        # Answers with chunked framing, no Content-Length.
        self.chunked = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        if request.path == "/moved":
            raise web.HTTPFound("/f")
        if request.path == "/empty":
            if request.headers.get("Range"):
                return web.Response(status=416, headers={"Content-Range": "bytes */0"})
            return web.Response(body=b"")
        if request.path != "/f":
            raise web.HTTPNotFound()
        fault = None
        if self.fault and self.fault_count > 0:
            fault, self.fault_count = self.fault, self.fault_count - 1
        if fault in ("500", "503"):
            return web.Response(status=int(fault), text="origin trouble")
        body, status, headers = self.body, 200, {}
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        if match and not self.ignore_range:
            start, end = int(match.group(1)), min(int(match.group(2)), len(self.body) - 1)
            body, status = self.body[start : end + 1], 206
            headers["Content-Range"] = self.content_range or f"bytes {start}-{end}/{len(self.body)}"
        response = web.StreamResponse(status=status, headers=headers)
        if self.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(body)
        await response.prepare(request)
        if fault in ("reset", "short"):
            await response.write(body[: len(body) // 2])
            assert request.transport is not None
            if fault == "reset":
                request.transport.abort()
            else:
                request.transport.close()
            return response
        await response.write(body)
        return response


@pytest.fixture
async def origin() -> AsyncIterator[tuple[Origin, str]]:
    state = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def backend() -> AsyncIterator[HTTPBackend]:
    with ThreadPoolExecutor(4) as executor:
        backend = HTTPBackend(request_header={"X-Default": "d"}, max_retries=1, piece_timeout=10.0, executor=executor)
        await backend.start()
        yield backend
        await backend.close()


async def test_stat_uses_one_range_request(origin: tuple[Origin, str], backend: HTTPBackend) -> None:
    state, base = origin
    result = await backend.stat(f"{base}/f", {"X-User": "u"})
    assert result.content_length == len(DATA)
    assert len(state.requests) == 1
    assert state.requests[0]["Range"] == "bytes=0-0"
    assert state.requests[0]["X-Default"] == "d"
    assert state.requests[0]["X-User"] == "u"
    assert state.requests[0]["User-Agent"].startswith("dragonfly/")


async def test_stat_without_range_support_and_of_an_empty_object(
    origin: tuple[Origin, str], backend: HTTPBackend
) -> None:
    state, base = origin
    state.ignore_range = True
    assert (await backend.stat(f"{base}/f", {})).content_length == len(DATA)
    assert (await backend.stat(f"{base}/empty", {})).content_length == 0


async def test_stat_follows_redirects(origin: tuple[Origin, str], backend: HTTPBackend) -> None:
    _state, base = origin
    assert (await backend.stat(f"{base}/moved", {})).content_length == len(DATA)


async def stat_with_head(
    backend: HTTPBackend, url: str, head: int, header: dict[str, str] | None = None
) -> tuple[StatResult, OriginHead | None, bytes]:
    """Stat with the head; return the result, the head and every byte it yields once it has ended."""
    readers: list[asyncio.Task[None]] = []
    result, origin_head = await backend.stat_with_head(
        url, header or {}, head=head, spawn=lambda coro: readers.append(asyncio.ensure_future(coro))
    )
    if origin_head is None:
        assert not readers
        return result, None, b""
    data = b"".join([chunk async for chunk in origin_head.chunks()])
    await asyncio.gather(*readers)
    assert origin_head.ended
    assert origin_head.data == data
    return result, origin_head, data


async def test_stat_with_head_is_one_request_whose_body_arrives_after_it(
    origin: tuple[Origin, str], backend: HTTPBackend
) -> None:
    state, base = origin
    result, head, data = await stat_with_head(backend, f"{base}/f", 256 * 1024, {"X-User": "u"})
    assert (result.content_length, result.supports_range) == (len(DATA), True)
    assert head is not None
    assert (head.size, head.content_length) == (256 * 1024, len(DATA))
    assert data == DATA[: 256 * 1024]
    assert [r["Range"] for r in state.requests] == [f"bytes=0-{256 * 1024 - 1}"]
    assert state.requests[0]["X-User"] == "u"


async def test_stat_with_head_of_an_origin_that_ignores_range_reads_the_head_only(
    origin: tuple[Origin, str], backend: HTTPBackend
) -> None:
    state, base = origin
    state.ignore_range = True
    result, _head, data = await stat_with_head(backend, f"{base}/f", 64 * 1024)
    assert (result.content_length, result.supports_range) == (len(DATA), False)
    assert data == DATA[: 64 * 1024]
    # A content shorter than the head comes whole; an empty one falls back to the stat, with no head.
    state.ignore_range = False
    state.body = DATA[:1000]
    result, _head, data = await stat_with_head(backend, f"{base}/f", 64 * 1024)
    assert (result.content_length, data) == (1000, DATA[:1000])
    result, head, data = await stat_with_head(backend, f"{base}/empty", 64 * 1024)
    assert (result.content_length, head, data) == (0, None, b"")


async def test_stat_with_head_refused_is_the_status_error(origin: tuple[Origin, str], backend: HTTPBackend) -> None:
    _state, base = origin
    with pytest.raises(BackendError) as info:
        await stat_with_head(backend, f"{base}/nope", 64 * 1024)
    assert info.value.status_code == 404


async def test_every_reader_of_an_origin_head_gets_it_from_its_start() -> None:
    head = OriginHead(10, 100, {})
    early = head.chunks()
    waiting = asyncio.ensure_future(anext(early))  # nothing has arrived: it waits for the first bytes
    head.feed(b"01234")
    assert await waiting == b"01234"
    head.feed(b"56789-beyond-the-size")
    head.end()
    assert b"01234" + await _read_all_from(early) == b"0123456789"
    assert await _read_all_from(head.chunks()) == b"0123456789"
    with pytest.raises(RuntimeError):
        head.feed(b"x")


async def _read_all_from(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_a_head_cut_short_ends_with_what_arrived(origin: tuple[Origin, str], backend: HTTPBackend) -> None:
    state, base = origin
    state.fault, state.fault_count = "short", 1
    result, head, data = await stat_with_head(backend, f"{base}/f", 256 * 1024)
    assert result.content_length == len(DATA)
    assert head is not None
    assert head.size == 256 * 1024
    assert data == DATA[: 128 * 1024]


@pytest.mark.parametrize("buffer_size", [4 * 1024 * 1024, 64 * 1024])
async def test_piece_lands_at_its_offset_with_its_crc(
    origin: tuple[Origin, str], backend: HTTPBackend, tmp_path: Path, buffer_size: int
) -> None:
    state, base = origin
    path = tmp_path / "content"
    path.write_bytes(b"\0" * len(DATA))
    fd = os.open(path, os.O_RDWR)
    digest = PieceDigest("blake3")
    try:
        offset, length = 1024 * 1024, 2 * 1024 * 1024
        crc = await backend.download_piece(
            f"{base}/f",
            {"Range": "bytes=0-1"},
            fd=fd,
            offset=offset,
            length=length,
            buffer=bytearray(buffer_size),
            digest=digest,
        )
        # The digest fed on the way is that of the bytes written (what reading the piece back gives).
        assert digest.result(length) == f"blake3:{native.file_digest('blake3', fd, offset, length).hex()}"
    finally:
        os.close(fd)
    assert crc == zlib.crc32(DATA[offset : offset + length])
    content = path.read_bytes()
    assert content[offset : offset + length] == DATA[offset : offset + length]
    assert content[:offset] == b"\0" * offset
    # The user's Range header never replaces the piece range.
    assert state.requests[-1]["Range"] == f"bytes={offset}-{offset + length - 1}"


async def test_404_is_final_and_carries_the_status(origin: tuple[Origin, str], backend: HTTPBackend) -> None:
    state, base = origin
    with pytest.raises(
        BackendError, match=r"origin returned HTTP 404 Not Found for http://127\.0\.0\.1:\d+/nope"
    ) as info:
        await backend.stat(f"{base}/nope", {})
    assert info.value.status_code == 404
    assert len(state.requests) == 1


async def test_500_is_retried_then_reported(origin: tuple[Origin, str], backend: HTTPBackend) -> None:
    state, base = origin
    state.fault = "500"
    with pytest.raises(BackendError, match="HTTP 500") as info:
        await backend.stat(f"{base}/f", {})
    assert info.value.status_code == 500
    assert len(state.requests) == 2  # one retry (backend.maxRetries: 1)


async def test_a_transient_failure_recovers_on_retry(origin: tuple[Origin, str], backend: HTTPBackend) -> None:
    state, base = origin
    state.fault, state.fault_count = "503", 1
    assert (await backend.stat(f"{base}/f", {})).content_length == len(DATA)


@pytest.mark.parametrize("fault", ["reset", "short"])
async def test_broken_body_is_a_clear_error(
    origin: tuple[Origin, str], backend: HTTPBackend, tmp_path: Path, fault: str
) -> None:
    state, base = origin
    state.fault = fault
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(BackendError, match=rf"piece download from {re.escape(base)}/f failed: ") as info:
            await backend.download_piece(
                f"{base}/f", {}, fd=fd, offset=0, length=len(DATA), buffer=bytearray(1024 * 1024)
            )
    finally:
        os.close(fd)
    assert info.value.status_code is None
    assert len(state.requests) == 2


async def test_a_retried_piece_is_hashed_from_its_first_byte_again(
    origin: tuple[Origin, str], backend: HTTPBackend, tmp_path: Path
) -> None:
    state, base = origin
    state.fault, state.fault_count = "short", 1  # the first answer breaks off half way, after some bytes were fed
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT)
    digest = PieceDigest("blake3")
    try:
        crc = await backend.download_piece(
            f"{base}/f", {}, fd=fd, offset=0, length=len(DATA), buffer=bytearray(64 * 1024), digest=digest
        )
    finally:
        os.close(fd)
    assert len(state.requests) == 2
    assert crc == zlib.crc32(DATA)
    assert digest.fed == len(DATA)
    assert digest.result(len(DATA)) == f"blake3:{native.Hasher('blake3', DATA).hexdigest()}"


async def test_content_shorter_than_announced(origin: tuple[Origin, str], backend: HTTPBackend, tmp_path: Path) -> None:
    state, base = origin
    state.body = DATA[:1000]  # the object shrank after the stat
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(BackendError, match=r"after 1000 of 2000 bytes .*content shorter than announced"):
            await backend.download_piece(f"{base}/f", {}, fd=fd, offset=0, length=2000, buffer=bytearray(4096))
    finally:
        os.close(fd)


async def test_unreachable_origin(backend: HTTPBackend) -> None:
    with pytest.raises(BackendError, match=r"stat of http://127\.0\.0\.1:9/f failed: "):
        await backend.stat("http://127.0.0.1:9/f", {})


PIECE = 1024 * 1024


async def fetch_first_piece(
    backend: HTTPBackend, url: str, opened: OpenedPiece | None, tmp_path: Path, length: int = PIECE
) -> tuple[int, bytes]:
    """Fetch piece 0 (``length`` bytes) through ``opened``; return its CRC-32 and the bytes written."""
    path = tmp_path / "content"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        crc = await backend.download_piece(
            url, {}, fd=fd, offset=0, length=length, buffer=bytearray(256 * 1024), opened=opened
        )
    finally:
        os.close(fd)
    return crc, path.read_bytes()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_stat_with_first_piece_is_piece_0s_request(
    origin: tuple[Origin, str], backend: HTTPBackend, tmp_path: Path, chunked: bool
) -> None:
    state, base = origin
    state.chunked = chunked
    stat, opened = await backend.stat_with_first_piece(f"{base}/moved", {"X-User": "u"}, piece_length=PIECE)
    assert (stat.content_length, stat.supports_range) == (len(DATA), True)
    assert opened is not None
    assert opened.length == PIECE
    crc, written = await fetch_first_piece(backend, f"{base}/moved", opened, tmp_path)
    assert (crc, written) == (zlib.crc32(DATA[:PIECE]), DATA[:PIECE])
    # The redirect, then one request whose body was piece 0: nothing asked again.
    assert [r.get("Range") for r in state.requests] == [f"bytes=0-{PIECE - 1}"] * 2
    assert state.requests[-1]["X-User"] == "u"


async def test_stat_with_first_piece_of_a_content_shorter_than_a_piece(
    origin: tuple[Origin, str], backend: HTTPBackend, tmp_path: Path
) -> None:
    state, base = origin
    state.body = DATA[:1000]
    stat, opened = await backend.stat_with_first_piece(f"{base}/f", {}, piece_length=PIECE)
    assert stat.content_length == 1000
    assert opened is not None
    assert opened.length == 1000
    assert await fetch_first_piece(backend, f"{base}/f", opened, tmp_path, 1000) == (
        zlib.crc32(DATA[:1000]),
        DATA[:1000],
    )
    assert len(state.requests) == 1
    # An empty content (416) is stat'ed as before, with nothing kept.
    stat, opened = await backend.stat_with_first_piece(f"{base}/empty", {}, piece_length=PIECE)
    assert (stat.content_length, opened) == (0, None)


async def test_stat_with_first_piece_of_an_origin_that_ignores_range(
    origin: tuple[Origin, str], backend: HTTPBackend
) -> None:
    state, base = origin
    state.ignore_range = True
    stat, opened = await backend.stat_with_first_piece(f"{base}/f", {}, piece_length=PIECE)
    # A 200 is the whole body: its length is the stat, and the task is streamed (nothing kept).
    assert (stat.content_length, stat.supports_range, opened) == (len(DATA), False, None)
    assert len(state.requests) == 1


@pytest.mark.parametrize(
    ("content_range", "length", "requests"),
    [
        # Not piece 0: the total is still the stat's answer (as the 1-byte stat takes it), the body is dropped.
        (f"bytes 5-{PIECE + 4}/{len(DATA)}", len(DATA), 1),
        (f"bytes 0-{PIECE - 2}/{len(DATA)}", len(DATA), 1),
        # A total of a length that disagrees with the range: not piece 0 either.
        (f"bytes 0-{PIECE - 1}/1000", 1000, 1),
        # No total: the plain stat (its 1-byte range, lied to alike, then a GET without a Range).
        (f"bytes 0-{PIECE - 1}/*", len(DATA), 3),
    ],
    ids=["other-start", "other-end", "short-total", "no-total"],
)
async def test_stat_with_first_piece_keeps_no_body_that_is_not_piece_0(
    origin: tuple[Origin, str], backend: HTTPBackend, content_range: str, length: int, requests: int
) -> None:
    state, base = origin
    state.content_range = content_range
    stat, opened = await backend.stat_with_first_piece(f"{base}/f", {}, piece_length=PIECE)
    assert (stat.content_length, opened) == (length, None)
    assert len(state.requests) == requests


async def test_a_first_piece_whose_body_breaks_is_asked_for_again(
    origin: tuple[Origin, str], backend: HTTPBackend, tmp_path: Path
) -> None:
    state, base = origin
    state.fault, state.fault_count = "short", 1
    stat, opened = await backend.stat_with_first_piece(f"{base}/f", {}, piece_length=PIECE)
    assert stat.content_length == len(DATA)
    crc, written = await fetch_first_piece(backend, f"{base}/f", opened, tmp_path)
    assert (crc, written) == (zlib.crc32(DATA[:PIECE]), DATA[:PIECE])
    assert [r["Range"] for r in state.requests] == [f"bytes=0-{PIECE - 1}"] * 2


async def test_a_first_piece_of_another_length_is_dropped_and_the_piece_asked_for(
    origin: tuple[Origin, str], backend: HTTPBackend, tmp_path: Path
) -> None:
    state, base = origin
    _stat, opened = await backend.stat_with_first_piece(f"{base}/f", {}, piece_length=PIECE // 2)
    assert opened is not None
    crc, written = await fetch_first_piece(backend, f"{base}/f", opened, tmp_path)
    assert (crc, written) == (zlib.crc32(DATA[:PIECE]), DATA[:PIECE])
    assert [r["Range"] for r in state.requests] == [f"bytes=0-{PIECE // 2 - 1}", f"bytes=0-{PIECE - 1}"]

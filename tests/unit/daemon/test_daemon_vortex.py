"""Vortex piece server and client over real TCP on 127.0.0.1: bytes, digests, errors, rate limit."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dragonfly.common import native
from dragonfly.common.digest import format_piece_digest
from dragonfly.common.errors import VortexRemoteError
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.download.vortex_client import ConnectionPool, FetchedPiece, fetch_piece
from dragonfly.daemon.storage import PieceRecord, Storage
from dragonfly.daemon.upload.vortex_server import VortexServer

TASK = "c0ffee" + "0" * 58
PIECE = 4 * 1024 * 1024
DATA = os.urandom(PIECE + 1000)


class Peer:
    def __init__(self, storage: Storage, server: VortexServer, executor: ThreadPoolExecutor) -> None:
        self.storage = storage
        self.server = server
        self.executor = executor
        self.served: list[tuple[str, int]] = []


@pytest.fixture
async def parent(tmp_path: Path) -> AsyncIterator[Peer]:
    storage = Storage(str(tmp_path / "parent"), keep=True)
    storage.open()
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=len(DATA), response_header={})
    with storage.content_fd(TASK) as fd:
        crc = native.write_piece(fd, 0, DATA[:PIECE])
    storage.finish_piece(TASK, PieceRecord(0, 0, PIECE, format_piece_digest(crc), None, 0, 0.1, time.time()))
    with ThreadPoolExecutor(4) as executor:
        served: list[tuple[str, int]] = []
        server = VortexServer(
            storage,
            ip="127.0.0.1",
            port=0,
            upload_bucket=native.TokenBucket(0),
            executor=executor,
            timeout=5.0,
            on_served=lambda task_id, n: served.append((task_id, n)),
        )
        await server.start()
        peer = Peer(storage, server, executor)
        peer.served = served
        yield peer
        await server.stop()
    storage.close()


async def fetch(
    parent: Peer, tmp_path: Path, number: int, offset: int, length: int, pool: ConnectionPool | None = None
) -> tuple[FetchedPiece, bytes]:
    path = tmp_path / "child"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fetched = await run_blocking(
            parent.executor,
            lambda: fetch_piece(
                ("127.0.0.1", parent.server.port),
                TASK,
                number,
                fd=fd,
                offset=offset,
                length=length,
                buffer=bytearray(256 * 1024),
                connect_timeout=2.0,
                timeout=5.0,
                pool=pool,
            ),
        )
    finally:
        os.close(fd)
    return fetched, path.read_bytes()[offset : offset + length]


async def test_a_finished_piece_is_sent_with_its_digest(parent: Peer, tmp_path: Path) -> None:
    fetched, data = await fetch(parent, tmp_path, 0, 0, PIECE)
    assert data == DATA[:PIECE]
    assert fetched.crc == zlib.crc32(DATA[:PIECE])
    assert fetched.digest == f"crc32:{fetched.crc}"
    assert parent.served == [(TASK, PIECE)]


async def test_an_unfinished_piece_is_not_found(parent: Peer, tmp_path: Path) -> None:
    with pytest.raises(VortexRemoteError, match=f"NotFound: piece 1 of task {TASK} not found") as info:
        await fetch(parent, tmp_path, 1, PIECE, 1000)
    assert info.value.code == 2
    assert parent.served == []


async def test_a_corrupted_piece_shows_in_the_crc(parent: Peer, tmp_path: Path) -> None:
    with parent.storage.content_fd(TASK) as fd:
        native.write_piece(fd, 100, b"garbage")
    fetched, _data = await fetch(parent, tmp_path, 0, 0, PIECE)
    assert format_piece_digest(fetched.crc) != fetched.digest


async def test_a_bad_task_id_or_frame_is_refused(parent: Peer) -> None:
    loop = asyncio.get_running_loop()

    def raw(request: bytes) -> tuple[int, str]:
        with socket.create_connection(("127.0.0.1", parent.server.port), timeout=5) as sock:
            sock.sendall(request)
            header = sock.recv(native.HEADER_SIZE, socket.MSG_WAITALL)
            _frame, tag, length = native.decode_header(header)
            assert tag == native.TAG_ERROR
            return native.decode_error(sock.recv(length, socket.MSG_WAITALL))

    bad_id = struct.pack(">BBI", 0, native.TAG_DOWNLOAD_PIECE, 68) + b"../" + b"a" * 61 + struct.pack(">I", 0)
    code, message = await loop.run_in_executor(None, raw, bad_id)
    assert code == 1
    assert "task_id must be 64 lowercase hex characters" in message
    close = native.encode_close()
    code, _message = await loop.run_in_executor(None, raw, close)
    assert code == 1


async def test_uploads_are_charged_to_the_upload_bucket(parent: Peer, tmp_path: Path) -> None:
    parent.server._bucket = native.TokenBucket(8 * 1024 * 1024, 1024)
    began = time.monotonic()
    await fetch(parent, tmp_path, 0, 0, PIECE)
    assert time.monotonic() - began >= 0.45  # 4 MiB at 8 MiB/s with an empty bucket


async def test_connections_are_reused_and_stale_ones_replaced(parent: Peer, tmp_path: Path) -> None:
    pool = ConnectionPool()
    addr = ("127.0.0.1", parent.server.port)
    for _ in range(3):
        _fetched, data = await fetch(parent, tmp_path, 0, 0, PIECE, pool)
        assert data == DATA[:PIECE]
    assert parent.server.active_connections == 1  # one kept-alive connection served all three

    # A pooled connection whose other end went away is replaced without failing the piece.
    with socket.create_server(("127.0.0.1", 0)) as dead:
        stale = socket.create_connection(dead.getsockname())
        dead.accept()[0].close()
    pool.discard(addr)
    pool.put(addr, stale)
    _fetched, data = await fetch(parent, tmp_path, 0, 0, PIECE, pool)
    assert data == DATA[:PIECE]
    assert stale.fileno() == -1
    pool.close()

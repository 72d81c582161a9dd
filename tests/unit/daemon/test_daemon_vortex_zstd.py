"""zstd on Vortex for persistent cache pieces (dragonfly.daemon.compression), over real TCP on 127.0.0.1, with mutual
TLS and in plaintext: a piece that compresses crosses compressed, one that does not (random bytes) crosses raw, and
nothing changes unless both ends want it."""

from __future__ import annotations

import os
import random
import time
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from loop_guard import no_blocking_calls

from dragonfly.common import native, pki, tls
from dragonfly.common.errors import VortexRemoteError
from dragonfly.daemon import compression
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.download.vortex_client import FetchedPiece, fetch_piece
from dragonfly.daemon.storage import PieceRecord, Storage
from dragonfly.daemon.upload.vortex_server import VortexServer

pytestmark = pytest.mark.skipif(not compression.available(), reason="zstandard is not installed")

TASK = "feed" + "1" * 60
PIECE = 4 * 1024 * 1024
_rng = random.Random(3)
TEXT = b"".join(
    f"10:{_rng.randrange(60):02d} GET /objects/{_rng.randrange(10**6)} 200 {_rng.randrange(10**5)}\n".encode()
    for _ in range(PIECE // 20)
)[:PIECE]
NOISE = os.urandom(PIECE)


@pytest.fixture(params=["tls", "plaintext"])
async def parent(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[VortexServer, object]]:
    """A Vortex server with a persistent cache storage holding piece 0 (text) and piece 1 (random bytes)."""
    secure = request.param == "tls"
    ca = pki.create_ca("zstd tests")
    ca_cert, _ = ca.write(tmp_path)
    files = []
    for name in ("parent", "child"):
        cert, key = pki.issue(ca, name, ips=["127.0.0.1"], roles=["peer"]).write(tmp_path, name)
        files.append(tls.TLSFiles(ca_cert=str(ca_cert), cert=str(cert), key=str(key)))
    storage = Storage(str(tmp_path / "parent"), keep=True)
    storage.open()
    storage.prepare_task(
        TASK, url="persistent-cache://x", piece_length=PIECE, content_length=2 * PIECE, response_header={}
    )
    for number, data in enumerate((TEXT, NOISE)):
        with storage.content_fd(TASK) as fd:
            crc = native.write_piece(fd, number * PIECE, data)
        storage.finish_piece(
            TASK, PieceRecord(number, number * PIECE, PIECE, f"crc32:{crc}", None, 0, 0.1, time.time())
        )
    with ThreadPoolExecutor(4) as executor:
        server = VortexServer(
            storage,
            ip="127.0.0.1",
            port=0,
            upload_bucket=native.TokenBucket(0),
            executor=executor,
            timeout=5.0,
            ssl_context=tls.server_ssl_context(files[0]) if secure else None,
            persistent_cache=storage,
            compression=True,
        )
        await server.start()
        yield server, tls.client_ssl_context(files[1]) if secure else None
        await server.stop()
    storage.close()


async def fetch(
    parent: tuple[VortexServer, object], tmp_path: Path, number: int, *, accept: bool
) -> tuple[FetchedPiece, bytes]:
    server, context = parent
    path = tmp_path / "child"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        with ThreadPoolExecutor(1) as executor:
            fetched = await run_blocking(
                executor,
                lambda: fetch_piece(
                    ("127.0.0.1", server.port),
                    TASK,
                    number,
                    fd=fd,
                    offset=number * PIECE,
                    length=PIECE,
                    buffer=bytearray(256 * 1024),
                    connect_timeout=2.0,
                    timeout=5.0,
                    ssl_context=context,  # type: ignore[arg-type]
                    persistent_cache=True,
                    accept_zstd=accept,
                ),
            )
    finally:
        os.close(fd)
    return fetched, path.read_bytes()[number * PIECE : (number + 1) * PIECE]


async def test_a_piece_that_compresses_crosses_compressed(parent: tuple[VortexServer, object], tmp_path: Path) -> None:
    with no_blocking_calls():  # the server's side of it runs on this loop
        fetched, data = await fetch(parent, tmp_path, 0, accept=True)
    assert data == TEXT
    assert fetched.crc == zlib.crc32(TEXT)
    assert fetched.digest == f"crc32:{fetched.crc}"
    assert 0 < fetched.wire_length < PIECE // 3


async def test_a_piece_is_compressed_once_for_many_children(
    parent: tuple[VortexServer, object], tmp_path: Path
) -> None:
    server = parent[0]
    for _ in range(3):
        fetched, data = await fetch(parent, tmp_path, 0, accept=True)
        assert data == TEXT
        assert fetched.wire_length < PIECE // 3
    assert (server.compressed_pieces.misses, server.compressed_pieces.hits) == (1, 2)


async def test_a_piece_whose_bytes_changed_on_disk_is_not_served(
    parent: tuple[VortexServer, object], tmp_path: Path
) -> None:
    server = parent[0]
    corrupt: list[str] = []
    server._on_corrupt = corrupt.append
    storage = server._persistent_cache
    assert storage is not None
    with storage.content_fd(TASK) as fd:
        os.pwrite(fd, b"#", 10)
    with pytest.raises(VortexRemoteError, match="not found"):
        await fetch(parent, tmp_path, 0, accept=True)
    assert corrupt == [TASK]


async def test_random_bytes_cross_raw(parent: tuple[VortexServer, object], tmp_path: Path) -> None:
    fetched, data = await fetch(parent, tmp_path, 1, accept=True)
    assert data == NOISE
    assert fetched.wire_length == PIECE


async def test_a_child_that_does_not_ask_gets_the_plain_frame(
    parent: tuple[VortexServer, object], tmp_path: Path
) -> None:
    fetched, data = await fetch(parent, tmp_path, 0, accept=False)
    assert data == TEXT
    assert fetched.wire_length == PIECE


def test_frames_round_trip() -> None:
    request = native.encode_download_piece(TASK, 3, tag=native.TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE)
    flagged = compression.with_accept_flag(request)
    assert len(flagged) == len(request) + 1
    assert compression.extension_header(flagged[:6], native.TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE) == (0, 4, 69)
    # Headers Dragonfly's peers send are left to the Vortex codec.
    assert compression.extension_header(request[:6], native.TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE) is None
    frame = compression.compressed_frame(7, b"meta", 1234)
    assert compression.extension_header(frame[:6], -1) == (7, 200, 12)
    assert compression.split_compressed_value(frame[6:]) == (1234, b"meta")
    with pytest.raises(ValueError, match="decompresses to"):
        compression.decompress_piece(compression.compress_piece_bytes(TEXT), 10)


def test_incompressible_data_is_not_compressed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(NOISE + TEXT)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert compression.compress_piece(fd, 0, PIECE) is None
        packed = compression.compress_piece(fd, PIECE, PIECE)
    finally:
        os.close(fd)
    assert packed is not None
    assert compression.decompress_piece(packed, PIECE) == TEXT

"""Vortex piece server and client over real TCP on 127.0.0.1: bytes, digests, errors, rate limit.

Every test runs four times: over mutual TLS through OpenSSL on both ends, over mutual TLS with the child on rustls
(``download.nativeTls``), with both ends on rustls (``storage.server.nativeTls`` too; raw connections of the tests
still speak Python's ssl to it) and in plaintext (sendfile and the native socket-to-file receive), which must
behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from loop_guard import no_blocking_calls

from dragonfly.common import native, pki, tls
from dragonfly.common.digest import format_piece_digest
from dragonfly.common.errors import VortexRemoteError
from dragonfly.daemon import vortex_tls
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.download.vortex_client import (
    ConnectionPool,
    FetchAbort,
    FetchedPiece,
    PieceAbandoned,
    fetch_piece,
)
from dragonfly.daemon.storage import PieceRecord, Storage
from dragonfly.daemon.upload import vortex_server
from dragonfly.daemon.upload.vortex_server import VortexServer
from tests.waiting import eventually

TASK = "c0ffee" + "0" * 58
PIECE = 4 * 1024 * 1024
DATA = os.urandom(PIECE + 1000)


class Peer:
    def __init__(
        self,
        storage: Storage,
        server: VortexServer,
        executor: ThreadPoolExecutor,
        client_context: ssl.SSLContext | None = None,
        native_tls: native.TlsClientConfig | None = None,
    ) -> None:
        self.storage = storage
        self.server = server
        self.executor = executor
        self.served: list[tuple[str, int]] = []
        # What a child uses to talk to this parent (None: plaintext).
        self.client_context = client_context
        # With download.nativeTls, the child's rustls configuration, which fetches use instead (raw connections made
        # by the tests still use client_context).
        self.native_tls = native_tls

    def pool(self) -> ConnectionPool:
        return ConnectionPool(ssl_context=self.client_context, native_tls=self.native_tls)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        if self.client_context is None:
            return sock
        return self.client_context.wrap_socket(sock, server_hostname="127.0.0.1")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[tls.TLSFiles, tls.TLSFiles]:
    """(parent, child) files of one CA; the parent's certificate is for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("pki")
    ca = pki.create_ca("vortex tests")
    ca_cert, _ = ca.write(directory)
    files = []
    for name in ("parent", "child"):
        cert, key = pki.issue(ca, name, ips=["127.0.0.1"], roles=["peer"]).write(directory, name)
        files.append(tls.TLSFiles(ca_cert=str(ca_cert), cert=str(cert), key=str(key)))
    return files[0], files[1]


@pytest.fixture(params=["tls", "native-tls", "rustls-server", "plaintext"])
async def parent(
    request: pytest.FixtureRequest, tmp_path: Path, certificates: tuple[tls.TLSFiles, tls.TLSFiles]
) -> AsyncIterator[Peer]:
    secure = request.param != "plaintext"
    parent_files, child_files = certificates
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
            ssl_context=tls.server_ssl_context(parent_files) if secure and request.param != "rustls-server" else None,
            native_tls=vortex_tls.native_server(parent_files) if request.param == "rustls-server" else None,
        )
        await server.start()
        native_tls = vortex_tls.native_client(child_files) if request.param in ("native-tls", "rustls-server") else None
        peer = Peer(storage, server, executor, tls.client_ssl_context(child_files) if secure else None, native_tls)
        peer.served = served
        yield peer
        await server.stop()
    storage.close()


async def fetch(
    parent: Peer,
    tmp_path: Path,
    number: int,
    offset: int,
    length: int,
    pool: ConnectionPool | None = None,
    *,
    blake3: bool = False,
) -> tuple[FetchedPiece, bytes]:
    path = tmp_path / "child"
    own_pool = pool is None and parent.native_tls is not None
    if own_pool:
        pool = parent.pool()
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
                ssl_context=None if parent.native_tls else parent.client_context,
                blake3=blake3,
            ),
        )
    finally:
        os.close(fd)
        if own_pool and pool is not None:
            pool.close()
    return fetched, path.read_bytes()[offset : offset + length]


async def test_a_finished_piece_is_sent_with_its_digest(parent: Peer, tmp_path: Path) -> None:
    with no_blocking_calls():  # the server's side of it runs on this loop
        fetched, data = await fetch(parent, tmp_path, 0, 0, PIECE)
    assert data == DATA[:PIECE]
    assert fetched.crc == zlib.crc32(DATA[:PIECE])
    assert fetched.digest == f"crc32:{fetched.crc}"
    assert fetched.blake3 is None
    # The server counts the piece after its last byte left, which may be after the child has read it all.
    await eventually(lambda: parent.served, 5, "the server to count the piece")
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


async def test_a_finished_task_whose_file_changed_is_dropped_not_served(parent: Peer, tmp_path: Path) -> None:
    storage = parent.storage
    with storage.content_fd(TASK) as fd:
        crc = native.write_piece(fd, PIECE, DATA[PIECE:])
    storage.finish_piece(TASK, PieceRecord(1, PIECE, 1000, format_piece_digest(crc), None, 0, 0.1, time.time()))
    storage.finish_task(TASK)
    # An output hard-linked to the cache, edited in place (root writes through the read-only mode).
    output = tmp_path / "output"
    os.link(storage.content_path(TASK), output)
    fd = os.open(output, os.O_WRONLY)
    try:
        os.pwrite(fd, b"edited", 0)
    finally:
        os.close(fd)
    with pytest.raises(VortexRemoteError, match=f"NotFound: piece 0 of task {TASK} not found"):
        await fetch(parent, tmp_path, 0, 0, PIECE)
    assert storage.get_task(TASK) is None
    assert parent.served == []
    assert output.read_bytes()[:6] == b"edited"  # the user's file is left alone


@pytest.mark.skipif(not native.USING_EXTENSIONS, reason="the twin's BLAKE3 hashes ~1 MB/s (tests/native compares it)")
async def test_blake3_is_computed_on_the_way_in(parent: Peer, tmp_path: Path) -> None:
    """Over TLS and plaintext alike: the digest of the bytes written, which the child verifies the piece by."""
    with parent.storage.content_fd(TASK) as fd:
        native.write_piece(fd, 100, b"garbage")
    fetched, data = await fetch(parent, tmp_path, 0, 0, PIECE, blake3=True)
    assert data != DATA[:PIECE]
    assert fetched.blake3 == "blake3:" + native.Hasher("blake3", data).hexdigest()


async def test_a_bad_task_id_or_frame_is_refused(parent: Peer) -> None:
    loop = asyncio.get_running_loop()

    def recv_exactly(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed early"
            data += chunk
        return data

    def raw(request: bytes) -> tuple[int, str]:
        with parent.connect() as sock:
            sock.sendall(request)
            _frame, tag, length = native.decode_header(recv_exactly(sock, native.HEADER_SIZE))
            assert tag == native.TAG_ERROR
            return native.decode_error(recv_exactly(sock, length))

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
    pool = parent.pool()
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


@pytest.mark.parametrize("parent", ["tls", "rustls-server"], indirect=True)
async def test_a_client_without_a_cluster_certificate_gets_no_bytes(parent: Peer, tmp_path: Path) -> None:
    request = native.encode_download_piece(TASK, 0)

    def exchange(context: ssl.SSLContext | None) -> bytes:
        received = b""
        raw = socket.create_connection(("127.0.0.1", parent.server.port), timeout=5)
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        with sock, contextlib.suppress(ssl.SSLError, ConnectionResetError, BrokenPipeError):
            sock.sendall(request)
            while chunk := sock.recv(65536):
                received += chunk
        return received

    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert parent.client_context is not None
    anonymous.load_verify_locations(cadata=parent.client_context.get_ca_certs(binary_form=True)[0])
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, exchange, anonymous) == b""
    assert len(await loop.run_in_executor(None, exchange, None)) < 100  # a TLS alert at most, never piece bytes
    assert parent.served == []
    _fetched, data = await fetch(parent, tmp_path, 0, 0, PIECE)  # members are still served
    assert data == DATA[:PIECE]


@pytest.mark.parametrize("parent", ["tls", "rustls-server"], indirect=True)
async def test_connections_that_never_handshake_do_not_hold_upload_threads(parent: Peer, tmp_path: Path) -> None:
    # More silent connections than the server has executor threads (4): the handshake waits on the event loop.
    silent = [socket.create_connection(("127.0.0.1", parent.server.port)) for _ in range(8)]
    try:
        _fetched, data = await asyncio.wait_for(fetch(parent, tmp_path, 0, 0, PIECE), 10)
        assert data == DATA[:PIECE]
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.parametrize("mode", ["plaintext", "native-tls"])
async def test_a_trickled_transfer_is_abandoned_at_once_and_its_connection_not_reused(
    tmp_path: Path, mode: str, certificates: tuple[tls.TLSFiles, tls.TLSFiles]
) -> None:
    """A parent that sends a byte now and then never trips a read timeout; abort() ends the transfer anyway (also
    while the native TLS client waits inside the extension)."""
    stop = threading.Event()
    first_byte = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    parent_files, child_files = certificates
    server_context = tls.server_ssl_context(parent_files) if mode == "native-tls" else None

    def trickle() -> None:
        raw, _ = listener.accept()
        raw.settimeout(10)
        conn = server_context.wrap_socket(raw, server_side=True) if server_context else raw
        with conn:
            conn.recv(1024)
            meta = native.PieceMetadata(
                number=0, offset=0, length=PIECE, digest="crc32:0", parent_id="p", traffic_type=1,
                cost_secs=0, created_at=0,
            )  # fmt: skip
            conn.sendall(native.encode_piece_content(meta))
            while not stop.is_set():
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
                first_byte.set()
                stop.wait(0.05)

    server = threading.Thread(target=trickle, daemon=True)
    server.start()
    pool = ConnectionPool(native_tls=vortex_tls.native_client(child_files) if server_context else None)
    abort = FetchAbort()
    fd = os.open(tmp_path / "child", os.O_RDWR | os.O_CREAT)
    loop = asyncio.get_running_loop()
    try:
        with ThreadPoolExecutor(1) as executor:
            transfer = loop.run_in_executor(
                executor,
                lambda: fetch_piece(
                    listener.getsockname(), TASK, 0, fd=fd, offset=0, length=PIECE, buffer=bytearray(65536),
                    connect_timeout=2.0, timeout=30.0, pool=pool, abort=abort,
                ),
            )  # fmt: skip
            await loop.run_in_executor(None, first_byte.wait, 10)
            # The kernel's count of what arrived for this transfer: the header, the metadata and a few bytes.
            received = await eventually(abort.received, 10, "the kernel to count the first bytes", interval=0.01)
            assert 0 < received < PIECE
            abort.abort("too slow for this test")
            with pytest.raises(PieceAbandoned, match="too slow for this test"):
                async with asyncio.timeout(10):  # far below the 30 s read timeout the trickle keeps resetting
                    await transfer
        assert pool.get(tuple(listener.getsockname())) is None
        # An abort that comes before the transfer starts stops it before a byte is requested.
        early = FetchAbort()
        early.abort("gone")
        with pytest.raises(PieceAbandoned, match="gone"):
            fetch_piece(
                listener.getsockname(), TASK, 0, fd=fd, offset=0, length=PIECE, buffer=bytearray(65536),
                connect_timeout=2.0, timeout=30.0, abort=early,
            )  # fmt: skip
    finally:
        stop.set()
        os.close(fd)
        listener.close()
        server.join(10)


def _request_and_never_read(parent: Peer, source: str = "127.0.0.1") -> socket.socket:
    """Open a connection that asks for piece 0 and then reads nothing (a tiny receive buffer fills at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", parent.server.port))
    if parent.client_context is not None:
        sock = parent.client_context.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.sendall(native.encode_download_piece(TASK, 0))
    return sock


async def test_readers_that_never_read_do_not_hold_upload_threads(parent: Peer, tmp_path: Path) -> None:
    """Issue 8 item 1: more stalled readers than upload threads, and an honest fetch still gets its piece."""
    parent.server._timeout = 120.0  # a stalled reader is dropped only after this; the honest fetch must not wait
    loop = asyncio.get_running_loop()
    stalled = [await loop.run_in_executor(None, _request_and_never_read, parent) for _ in range(12)]  # 4 threads
    try:
        async with asyncio.timeout(30):  # a quarter of the write timeout the stalled readers would have cost
            with no_blocking_calls():
                fetched, data = await fetch(parent, tmp_path, 0, 0, PIECE)
        assert data == DATA[:PIECE]
        assert fetched.crc == zlib.crc32(DATA[:PIECE])
        # The honest connection is gone once the server has seen it close (it counted 13 just after the fetch once).
        await eventually(lambda: parent.server.active_connections == 12, 10, "12 open connections on the server")
    finally:
        for sock in stalled:
            sock.close()


async def test_a_host_over_its_connection_cap_loses_its_longest_idle_connection(parent: Peer) -> None:
    loop = asyncio.get_running_loop()
    parent.server.limits.max_per_host = 3
    idle = [socket.create_connection(("127.0.0.1", parent.server.port)) for _ in range(3)]
    try:
        for sock in idle:
            sock.settimeout(10)
        await eventually(lambda: parent.server.active_connections == 3, 10, "3 open connections on the server")
        newcomer = socket.create_connection(("127.0.0.1", parent.server.port))
        # The oldest idle connection is closed by the server (EOF), the newcomer is served.
        assert await loop.run_in_executor(None, idle[0].recv, 1) == b""
        await eventually(lambda: parent.server.limits.evicted == 1, 10, "the server to evict one idle connection")
        assert parent.server.active_connections == 3
        newcomer.close()
    finally:
        for sock in idle:
            sock.close()


async def test_a_flood_from_one_host_cannot_take_every_connection(parent: Peer, tmp_path: Path) -> None:
    """Issue 8 item 4: at the total cap the flooding host loses connections, another host still gets served."""
    parent.server.limits.max_total = 8
    loop = asyncio.get_running_loop()
    flood = [await loop.run_in_executor(None, _request_and_never_read, parent, "127.0.0.2") for _ in range(8)]
    try:
        await eventually(lambda: parent.server.active_connections == 8, 10, "8 open connections on the server")
        async with asyncio.timeout(30):
            _fetched, data = await fetch(parent, tmp_path, 0, 0, PIECE)  # from 127.0.0.1
        assert data == DATA[:PIECE]
        assert parent.server.limits.evicted >= 1
    finally:
        for sock in flood:
            sock.close()


async def test_a_malformed_frame_gets_an_error_frame_not_a_reset(parent: Peer) -> None:
    """Issue 8 item 18: the error frame must arrive even though the client sent more than the server read."""
    loop = asyncio.get_running_loop()

    def send_garbage() -> tuple[int, str]:
        with parent.connect() as sock:
            sock.settimeout(10)
            sock.sendall(struct.pack(">BBI", 7, 99, 4) + b"\x00" * 4 + os.urandom(200_000))
            frame_id, tag, length = native.decode_header(_recv_exactly(sock, native.HEADER_SIZE))
            assert (frame_id, tag) == (7, native.TAG_ERROR)
            return native.decode_error(_recv_exactly(sock, length))

    code, message = await loop.run_in_executor(None, send_garbage)
    assert code == 1
    assert "unknown tag 99" in message


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"connection closed after {len(data)} of {count} bytes"
        data += chunk
    return data


# Requests in a row on one connection: after a piece, its executor thread waits for the next request and answers it
# there when it can (vortex_server._PieceRun); the patience is raised so that these tests never depend on how soon
# the client's next request comes.


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vortex_server, "_NEXT_REQUEST_PATIENCE", 30.0)
    monkeypatch.setattr(vortex_server, "_RUN_SLICE", 30.0)


def _finish_second_piece(storage: Storage) -> None:
    with storage.content_fd(TASK) as fd:
        crc = native.write_piece(fd, PIECE, DATA[PIECE:])
    storage.finish_piece(TASK, PieceRecord(1, PIECE, 1000, format_piece_digest(crc), None, 0, 0.1, time.time()))


def _exchange(sock: socket.socket, task_id: str, number: int) -> tuple[int, bytes, bytes]:
    """Ask for one piece on a raw connection; return the answer's tag, value and (for a piece) its bytes."""
    sock.sendall(native.encode_download_piece(task_id, number))
    _frame, tag, length = native.decode_header(_recv_exactly(sock, native.HEADER_SIZE))
    value = _recv_exactly(sock, length)
    if tag != native.TAG_PIECE_CONTENT:
        return tag, value, b""
    return tag, value, _recv_exactly(sock, native.decode_piece_content(value).length)


def _not_found(answer: tuple[int, bytes, bytes]) -> str:
    tag, value, _body = answer
    assert tag == native.TAG_ERROR
    code, message = native.decode_error(value)
    assert code == 2
    return message


@pytest.mark.usefixtures("patient")
async def test_requests_in_a_row_are_answered_on_the_thread_of_the_first(parent: Peer, tmp_path: Path) -> None:
    _finish_second_piece(parent.storage)
    calls: list[object] = []
    submit = parent.executor.submit

    def counting_submit(fn: object, /, *args: object) -> object:
        calls.append(fn)
        return submit(fn, *args)  # type: ignore[arg-type]

    parent.executor.submit = counting_submit  # type: ignore[method-assign,assignment]
    pieces = [(0, 0, PIECE), (1, PIECE, 1000), (0, 0, PIECE), (1, PIECE, 1000)]
    pool = parent.pool()
    output = os.open(tmp_path / "child", os.O_RDWR | os.O_CREAT)

    def fetch_in_a_row() -> list[FetchedPiece]:
        return [
            fetch_piece(
                ("127.0.0.1", parent.server.port),
                TASK,
                number,
                fd=output,
                offset=offset,
                length=length,
                buffer=bytearray(256 * 1024),
                connect_timeout=2.0,
                timeout=5.0,
                pool=pool,
            )
            for number, offset, length in pieces
        ]

    try:
        fetched = await asyncio.get_running_loop().run_in_executor(None, fetch_in_a_row)
    finally:
        pool.close()  # the server's thread sees the connection close and hands it back
        os.close(output)
    assert [f.crc for f in fetched] == [zlib.crc32(DATA[o : o + n]) for _, o, n in pieces]
    assert (tmp_path / "child").read_bytes() == DATA
    await eventually(lambda: len(parent.served) == 4, 10, "the server to count the four pieces")
    assert parent.served == [(TASK, PIECE), (TASK, 1000), (TASK, PIECE), (TASK, 1000)]
    assert len(calls) == 1  # one executor call sent all four


@pytest.mark.usefixtures("patient")
async def test_requests_its_thread_cannot_answer_are_answered_by_the_loop(parent: Peer) -> None:
    other = "d" * 64

    def exchanges() -> list[tuple[int, bytes, bytes]]:
        with parent.connect() as sock:
            sock.settimeout(10)
            return [_exchange(sock, *request) for request in ((TASK, 0), (TASK, 7), (other, 0), (TASK, 0))]

    first, unknown, other_task, again = await asyncio.get_running_loop().run_in_executor(None, exchanges)
    assert first[2] == again[2] == DATA[:PIECE]
    assert _not_found(unknown) == f"piece 7 of task {TASK} not found"
    assert _not_found(other_task) == f"piece 0 of task {other} not found"
    await eventually(lambda: len(parent.served) == 2, 10, "the server to count two pieces")


@pytest.mark.usefixtures("patient")
async def test_a_task_deleted_between_requests_is_not_served(parent: Peer) -> None:
    loop = asyncio.get_running_loop()
    with await loop.run_in_executor(None, parent.connect) as sock:  # a TLS handshake with this loop's server
        sock.settimeout(10)
        _tag, _value, body = await loop.run_in_executor(None, _exchange, sock, TASK, 0)
        assert body == DATA[:PIECE]
        parent.storage.delete_task(TASK)  # while the piece's thread waits for the next request
        answer = await loop.run_in_executor(None, _exchange, sock, TASK, 0)
    assert _not_found(answer) == f"piece 0 of task {TASK} not found"


@pytest.mark.usefixtures("patient")
async def test_a_file_changed_between_requests_is_dropped_not_served(parent: Peer, tmp_path: Path) -> None:
    storage = parent.storage
    _finish_second_piece(storage)
    storage.finish_task(TASK)
    output = tmp_path / "output"
    os.link(storage.content_path(TASK), output)
    loop = asyncio.get_running_loop()
    with await loop.run_in_executor(None, parent.connect) as sock:  # a TLS handshake with this loop's server
        sock.settimeout(10)
        _tag, _value, body = await loop.run_in_executor(None, _exchange, sock, TASK, 0)
        assert body == DATA[:PIECE]
        fd = os.open(output, os.O_WRONLY)
        try:
            os.pwrite(fd, b"edited", PIECE)
        finally:
            os.close(fd)
        answer = await loop.run_in_executor(None, _exchange, sock, TASK, 1)
    assert _not_found(answer) == f"piece 1 of task {TASK} not found"
    assert storage.get_task(TASK) is None


@pytest.mark.usefixtures("patient")
async def test_a_cancelled_connection_ends_its_threads_wait_for_the_next_request(parent: Peer) -> None:
    """Eviction and shutdown cancel a connection's handler: a thread waiting for the next request stops waiting at once
    (not after its patience, 30 s here) and starts no piece; the connection is closed."""
    loop = asyncio.get_running_loop()
    with await loop.run_in_executor(None, parent.connect) as sock:  # a TLS handshake with this loop's server
        sock.settimeout(10)
        _tag, _value, body = await loop.run_in_executor(None, _exchange, sock, TASK, 0)
        assert body == DATA[:PIECE]
        (handler,) = parent.server._handlers  # its piece's thread now waits for the next request
        handler.cancel()
        async with asyncio.timeout(10):
            await asyncio.wait([handler])
        with contextlib.suppress(OSError):  # a reset: the server closed with our request unread
            sock.sendall(native.encode_download_piece(TASK, 0))
        with contextlib.suppress(ConnectionResetError):
            assert await loop.run_in_executor(None, sock.recv, 1) == b""
    assert parent.served == [(TASK, PIECE)]
    assert parent.server.active_connections == 0


@pytest.mark.usefixtures("patient")
async def test_requests_in_a_row_are_charged_to_the_upload_bucket(parent: Peer) -> None:
    parent.server._bucket = native.TokenBucket(8 * 1024 * 1024, 1024)

    def two_pieces() -> list[bytes]:
        with parent.connect() as sock:
            sock.settimeout(10)
            return [_exchange(sock, TASK, 0)[2] for _ in range(2)]

    began = time.monotonic()
    assert await asyncio.get_running_loop().run_in_executor(None, two_pieces) == [DATA[:PIECE]] * 2
    assert time.monotonic() - began >= 0.9  # 8 MiB at 8 MiB/s with an empty bucket

"""One native call per fetched piece (``native.fetch_piece``, ``TlsClientStream.fetch_piece``) refuses what the
step-by-step path refuses, with the same errors, and stores the same bytes.

A scripted parent on 127.0.0.1 reads each request and sends a prepared answer: well-formed, or malformed in one way
(another piece number, offset or length, an error frame, a malformed one, another tag, an oversized value, an
answer cut short in its header, its metadata or its bytes). ``vortex_client.fetch_piece`` is run over plaintext
and native TLS (the one call) and over Python's ssl (the steps, kept for it and for compressed answers); every
answer must come out the same on all three. The native call and its Python twin are compared directly too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dragonfly.common import native, tls
from dragonfly.common.errors import ShortRead, VortexError, VortexRemoteError
from dragonfly.daemon.download.vortex_client import ConnectionPool, FetchAbort, PieceAbandoned, fetch_piece
from tests.tls_files import issue_tls_files

TASK = "4a0d59b2b8b2a3f4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c"
NUMBER = 3
# Small: the twin hashes BLAKE3 in pure Python.
LENGTH = 20_000 + 17
OFFSET = NUMBER * LENGTH
PAYLOAD = os.urandom(LENGTH)
DIGEST = f"crc32:{zlib.crc32(PAYLOAD)}"


def content(
    number: int = NUMBER, offset: int = OFFSET, length: int = LENGTH, tag: int = native.TAG_PIECE_CONTENT
) -> bytes:
    meta = native.PieceMetadata(
        number=number,
        offset=offset,
        length=length,
        digest=DIGEST,
        parent_id="127.0.0.1-parent-peer",
        traffic_type=0,
        cost_secs=0,
        created_at=0,
    )
    return bytes(native.encode_piece_content(meta, tag=tag))


FRAME = content()
BAD_METADATA = FRAME[:6] + (len(FRAME) - 9).to_bytes(4, "big") + FRAME[10:]

#: Each answer, and what every path must make of it: ("ok",) or (exception class, message).
ANSWERS: dict[str, tuple[bytes, tuple[Any, ...]]] = {
    "the piece": (FRAME + PAYLOAD, ("ok",)),
    "another piece number": (
        content(number=4) + PAYLOAD,
        (VortexError, f"parent sent piece 4 at {OFFSET}+{LENGTH}, expected piece 3 at {OFFSET}+{LENGTH}"),
    ),
    "another offset": (
        content(offset=0) + PAYLOAD,
        (VortexError, f"parent sent piece 3 at 0+{LENGTH}, expected piece 3 at {OFFSET}+{LENGTH}"),
    ),
    "another length": (
        content(length=LENGTH - 1) + PAYLOAD,
        (VortexError, f"parent sent piece 3 at {OFFSET}+{LENGTH - 1}, expected piece 3 at {OFFSET}+{LENGTH}"),
    ),
    "an error frame": (
        bytes(native.encode_error(2, "piece 3 not found")),
        (VortexRemoteError, "remote error NotFound: piece 3 not found"),
    ),
    "a malformed error frame": (bytes([0, 255, 0, 0, 0, 2, 1, 0xFF]), (VortexError, "message is not valid UTF-8")),
    "another content tag": (
        content(tag=native.TAG_PERSISTENT_CACHE_PIECE_CONTENT) + PAYLOAD,
        (VortexError, "expected a piece content frame, got tag 5"),
    ),
    "a close frame": (bytes(native.encode_close()), (VortexError, "expected a piece content frame, got tag 254")),
    "an unknown tag": (bytes([0, 8, 0, 0, 0, 0]), (VortexError, "unknown tag 8")),
    "an oversized value": (
        bytes([0, 1, 0, 1, 0, 1]),
        (VortexError, "value length 65537 exceeds MAX_VALUE_LENGTH 65536"),
    ),
    "malformed metadata": (
        BAD_METADATA,
        (VortexError, f"metadata_len {len(FRAME) - 9} does not match the {len(FRAME) - 10} bytes that follow"),
    ),
    "a header cut short": (FRAME[:3], (ShortRead, "connection closed after 3 of 6 bytes")),
    "metadata cut short": (FRAME[:20], (ShortRead, f"connection closed after 14 of {len(FRAME) - 6} bytes")),
    "bytes cut short": (FRAME + PAYLOAD[:5000], (ShortRead, f"connection closed after 5000 of {LENGTH} bytes")),
    "nothing": (b"", (ShortRead, "connection closed after 0 of 6 bytes")),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tls.TLSFiles]:
    return issue_tls_files(
        tmp_path_factory.mktemp("pki"),
        "fetch tests",
        {"parent": (True, "127.0.0.1"), "child": (True, "127.0.0.1")},
    )


class ScriptedParent:
    """Per connection (TLS with ``context``): read one request, keep it, send ``answer``, then close.

    Only the well-formed piece is answered on a connection that stays open (until the client closes it).
    """

    def __init__(self, answer: bytes, context: ssl.SSLContext | None) -> None:
        self.answer = answer
        self.context = context
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            raw.settimeout(10)
            with contextlib.suppress(OSError):
                conn = self.context.wrap_socket(raw, server_side=True) if self.context else raw
                with conn:
                    request = _recv_exactly(conn, native.HEADER_SIZE + 68)
                    self.requests.append(request)
                    conn.sendall(self.answer)
                    if self.answer == FRAME + PAYLOAD:
                        conn.recv(1)

    def close(self) -> None:
        # shutdown() wakes the thread's accept(); close() alone would not.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


class ResettingParent(ScriptedParent):
    """Per connection (TLS with ``context``): read one request, then reset the connection (SO_LINGER 0): no answer
    byte, no close_notify, no end of stream, as when the request reaches a parent that dropped an idle connection."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(b"", context)

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            raw.settimeout(10)
            with contextlib.suppress(OSError):
                conn = self.context.wrap_socket(raw, server_side=True) if self.context else raw
                self.requests.append(_recv_exactly(conn, native.HEADER_SIZE + 68))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()


def _recv_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def parent(files: dict[str, tls.TLSFiles]) -> Iterator[Callable[[bytes, bool], ScriptedParent]]:
    started: list[ScriptedParent] = []

    def start(answer: bytes, with_tls: bool) -> ScriptedParent:
        context = tls.server_ssl_context(files["parent"]) if with_tls else None
        started.append(ScriptedParent(answer, context))
        return started[-1]

    yield start
    for one in started:
        one.close()


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        call()
    except Exception as exc:
        return (type(exc), str(exc))
    return ("ok",)


#: How the child talks to the parent: plaintext and native TLS take the one call, Python's ssl the steps.
PATHS = ["plaintext", "native TLS", "Python ssl"]


def _fetch(path: str, files: dict[str, tls.TLSFiles], addr: tuple[str, int], fd: int) -> Any:
    pool = None
    context = None
    if path == "native TLS":
        child = files["child"]
        pool = ConnectionPool(native_tls=native.TlsClientConfig(child.ca_cert, child.cert, child.key))
    elif path == "Python ssl":
        context = tls.client_ssl_context(files["child"])
    try:
        return fetch_piece(
            addr,
            TASK,
            NUMBER,
            fd=fd,
            offset=OFFSET,
            length=LENGTH,
            buffer=bytearray(7000),
            connect_timeout=5,
            timeout=5,
            pool=pool,
            ssl_context=context,
            blake3=True,
        )
    finally:
        if pool is not None:
            pool.close()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_every_path_makes_the_same_of_each_answer(
    path: str,
    answer: str,
    files: dict[str, tls.TLSFiles],
    parent: Callable[[bytes, bool], ScriptedParent],
    tmp_path: Path,
) -> None:
    data, expected = ANSWERS[answer]
    scripted = parent(data, path != "plaintext")
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT)
    try:
        got = outcome(lambda: _fetch(path, files, scripted.addr, fd))
        assert got == expected
        assert scripted.requests == [bytes(native.encode_download_piece(TASK, NUMBER))]
        if expected == ("ok",):
            piece = _fetch(path, files, scripted.addr, fd)
            assert (piece.digest, piece.crc, piece.wire_length) == (DIGEST, zlib.crc32(PAYLOAD), LENGTH)
            assert piece.blake3 == "blake3:" + native.Hasher("blake3", PAYLOAD).hexdigest()
            assert os.pread(fd, LENGTH + 1, OFFSET) == PAYLOAD
    finally:
        os.close(fd)


needs_both = pytest.mark.skipif(not native.USING_EXTENSIONS, reason="compares the native call with its twin")


def _one_call(impl: str, files: dict[str, tls.TLSFiles], addr: tuple[str, int], with_tls: bool, **kwargs: Any) -> Any:
    """One fetch_piece call of one implementation (a fresh connection) into a new temporary file: its outcome
    and the file's bytes at the piece."""
    module = native.implementations("piece_io")[impl]
    fd = os.open(files["child"].key.rsplit("/", 1)[0], os.O_RDWR | os.O_TMPFILE)
    sock = socket.create_connection(addr, timeout=5)
    try:
        args: dict[str, Any] = {"offset": OFFSET, "length": LENGTH, "buffer": bytearray(7000), "timeout": 5.0}
        args.update(kwargs)
        if with_tls:
            child = files["child"]
            config = module.TlsClientConfig(child.ca_cert, child.cert, child.key)
            stream = module.TlsClientStream(config, sock.fileno(), addr[0], 5.0)
            call = lambda: stream.fetch_piece(TASK, NUMBER, file_fd=fd, **args)  # noqa: E731
        else:
            call = lambda: module.fetch_piece(sock.fileno(), TASK, NUMBER, file_fd=fd, **args)  # noqa: E731
        try:
            result: tuple[Any, ...] = ("ok", call())
        except Exception as exc:
            result = (type(exc), str(exc))
        return result, os.pread(fd, LENGTH, OFFSET)
    finally:
        sock.close()
        os.close(fd)


@needs_both
@pytest.mark.parametrize("with_tls", [False, True], ids=["plaintext", "TLS"])
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_the_native_call_and_its_twin_agree(
    answer: str, with_tls: bool, files: dict[str, tls.TLSFiles], parent: Callable[[bytes, bool], ScriptedParent]
) -> None:
    data, expected = ANSWERS[answer]
    scripted = parent(data, with_tls)
    native_result, native_bytes = _one_call("native", files, scripted.addr, with_tls, blake3=True)
    twin_result, twin_bytes = _one_call("python", files, scripted.addr, with_tls, blake3=True)
    assert native_result == twin_result
    assert native_bytes == twin_bytes
    if expected == ("ok",):
        assert native_result == ("ok", (DIGEST, zlib.crc32(PAYLOAD), native.Hasher("blake3", PAYLOAD).digest()))
        assert native_bytes == PAYLOAD
    else:
        assert native_result == expected


@needs_both
@pytest.mark.parametrize("impl", ["native", "python"])
@pytest.mark.parametrize("with_tls", [False, True], ids=["plaintext", "TLS"])
def test_a_reused_connection_closed_before_answering_is_none_not_an_error(
    impl: str, with_tls: bool, files: dict[str, tls.TLSFiles], parent: Callable[[bytes, bool], ScriptedParent]
) -> None:
    scripted = parent(b"", with_tls)
    assert _one_call(impl, files, scripted.addr, with_tls, reused=True)[0] == ("ok", None)
    # Cut short after the first answer byte, it is an error even on a reused connection.
    scripted = parent(FRAME[:3], with_tls)
    assert _one_call(impl, files, scripted.addr, with_tls, reused=True)[0] == (
        ShortRead,
        "connection closed after 3 of 6 bytes",
    )
    # Without blake3 the digest is None, the rest the same.
    scripted = parent(FRAME + PAYLOAD, with_tls)
    assert _one_call(impl, files, scripted.addr, with_tls)[0] == ("ok", (DIGEST, zlib.crc32(PAYLOAD), None))


@needs_both
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"number": -1}, (VortexError, "piece_number -1 out of range for u32")),
        ({"tag": 256}, (VortexError, "tag 256 out of range for u8")),
        ({"tag": native.TAG_PIECE_CONTENT}, (VortexError, "tag 1 is not a download piece tag")),
        ({"task_id": "abc"}, (VortexError, "task_id must be 64 lowercase hex characters")),
        ({"offset": -1}, (ValueError, "offset must be non-negative, got -1")),
        ({"length": -5}, (ValueError, "length must be non-negative, got -5")),
        ({"timeout": -1.0}, (ValueError, "timeout must be None or a finite number >= 0")),
        ({"buffer": b"read-only"}, (TypeError, "buffer must be writable")),
        ({"buffer": bytearray()}, (ValueError, "buffer must not be empty")),
    ],
)
def test_bad_calls_fail_alike_before_anything_is_sent(kwargs: dict[str, Any], error: tuple[Any, ...]) -> None:
    with socket.socket() as unconnected:
        for impl in ("native", "python"):
            module = native.implementations("piece_io")[impl]
            args: dict[str, Any] = {
                "task_id": TASK,
                "number": NUMBER,
                "offset": OFFSET,
                "length": LENGTH,
                "file_fd": 0,
                "buffer": bytearray(10),
                "timeout": 5.0,
            }
            args.update(kwargs)
            assert outcome(lambda: module.fetch_piece(unconnected.fileno(), **args)) == error, impl  # noqa: B023


@needs_both
@pytest.mark.parametrize("impl", ["native", "python"])
@pytest.mark.parametrize("with_tls", [False, True], ids=["plaintext", "TLS"])
def test_a_reset_before_the_answer_is_a_stale_connection_only_when_reused(
    impl: str, with_tls: bool, files: dict[str, tls.TLSFiles]
) -> None:
    """A parent that dropped a pooled connection may answer the request with a reset rather than an end of stream:
    reused, that is None (the piece is asked for again on a fresh connection); on a fresh connection, the error."""
    scripted = ResettingParent(tls.server_ssl_context(files["parent"]) if with_tls else None)
    try:
        assert _one_call(impl, files, scripted.addr, with_tls, reused=True)[0] == ("ok", None)
        assert _one_call(impl, files, scripted.addr, with_tls)[0][0] is ConnectionResetError
        assert scripted.requests == [bytes(native.encode_download_piece(TASK, NUMBER))] * 2
    finally:
        scripted.close()


def test_an_abort_of_a_reused_connection_makes_no_new_one(tmp_path: Path) -> None:
    """The abort shuts the socket, which looks like a pooled connection the parent closed; the fetch must then give
    up (PieceAbandoned) instead of dialling the parent again for a piece it abandoned."""
    accepted: list[socket.socket] = []
    requested = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        addr = listener.getsockname()[:2]
        pooled = socket.create_connection(addr, timeout=5)
        accepted.append(listener.accept()[0])
        listener.settimeout(0.05)
        pool = ConnectionPool()
        pool.put(addr, pooled)
        abort = FetchAbort()

        def parent() -> None:
            # Reads the request and never answers; the child's abort ends the wait.
            accepted[0].settimeout(5)
            if accepted[0].recv(native.HEADER_SIZE + 68):
                requested.set()

        thread = threading.Thread(target=parent, daemon=True)
        thread.start()
        threading.Thread(target=lambda: requested.wait(5) and abort.abort("too slow"), daemon=True).start()
        fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT)
        try:
            with pytest.raises(PieceAbandoned, match="too slow"):
                fetch_piece(
                    addr, TASK, NUMBER, fd=fd, offset=OFFSET, length=LENGTH, buffer=bytearray(7000),
                    connect_timeout=5, timeout=5, pool=pool, abort=abort,
                )  # fmt: skip
        finally:
            os.close(fd)
            thread.join(5)
        with pytest.raises(TimeoutError):
            accepted.append(listener.accept()[0])
        for sock in accepted:
            sock.close()
        pool.close()

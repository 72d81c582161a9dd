"""Piece I/O, native against its twin: same CRCs and bytes, the same exceptions at the boundary, GIL released."""

from __future__ import annotations

import array
import contextlib
import errno
import hashlib
import os
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dragonfly
from dragonfly.common import native
from dragonfly.common.errors import ShortRead

IMPLS = native.implementations("piece_io")
NATIVE = IMPLS["native"]
TWIN = IMPLS["python"]
MIB = 1024 * 1024

DIFF = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    before = open_fds()
    yield
    assert open_fds() == before


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


@contextlib.contextmanager
def temp_fd(data: bytes = b"") -> Iterator[int]:
    """A read-write temporary file holding ``data``, as a raw fd."""
    fd, path = tempfile.mkstemp(prefix="piece-io-")
    os.unlink(path)
    try:
        os.write(fd, data)
        yield fd
    finally:
        os.close(fd)


def contents(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: (client, server), both non-blocking as asyncio's sockets are."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    with client, server:
        client.setblocking(False)
        server.setblocking(False)
        yield client, server


def closed_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def test_module_metadata() -> None:
    assert NATIVE.__version__ == native.NATIVE_VERSION == dragonfly.__version__
    assert NATIVE.BUILD_PROFILE in ("debug", "release")


# -- write_piece / read_piece -------------------------------------------------------------------------------------


@DIFF
@given(data=st.binary(max_size=300_000), offset=st.integers(0, 2 * MIB))
def test_write_piece_matches_twin(data: bytes, offset: int) -> None:
    with temp_fd() as native_fd, temp_fd() as twin_fd:
        crc = NATIVE.write_piece(native_fd, offset, data)
        assert crc == TWIN.write_piece(twin_fd, offset, bytearray(data)) == zlib.crc32(data)
        assert hashlib.sha256(contents(native_fd)).digest() == hashlib.sha256(contents(twin_fd)).digest()
        if data:
            assert contents(native_fd)[offset:] == data


@DIFF
@given(data=st.binary(max_size=100_000), offset=st.integers(0, 120_000), size=st.integers(0, 120_000))
def test_read_piece_matches_twin(data: bytes, offset: int, size: int) -> None:
    with temp_fd(data) as fd:
        native_buf, twin_buf = bytearray(size), bytearray(size)
        count = NATIVE.read_piece(fd, offset, native_buf)
        assert count == TWIN.read_piece(fd, offset, twin_buf) == len(data[offset : offset + size])
        assert native_buf == twin_buf
        assert native_buf[:count] == data[offset : offset + count]


def test_read_piece_past_eof_returns_short_count(impl: ModuleType) -> None:
    with temp_fd(b"0123456789") as fd:
        buf = bytearray(20)
        assert impl.read_piece(fd, 5, buf) == 5
        assert buf[:5] == b"56789"
        assert impl.read_piece(fd, 100, buf) == 0


def test_buffers_of_every_kind_are_accepted(impl: ModuleType) -> None:
    with temp_fd() as fd:
        assert impl.write_piece(fd, 0, memoryview(b"abcdef")[2:]) == zlib.crc32(b"cdef")
        assert impl.write_piece(fd, 4, array.array("B", b"xy")) == zlib.crc32(b"xy")
        buf = array.array("B", bytes(6))
        assert impl.read_piece(fd, 0, memoryview(buf)) == 6
        assert buf.tobytes() == b"cdefxy"


def test_read_only_buffer_is_rejected(impl: ModuleType) -> None:
    with temp_fd(b"abc") as fd, tcp_pair() as (_, server):
        with pytest.raises(TypeError, match=r"^buffer must be writable$"):
            impl.read_piece(fd, 0, b"xxx")
        with pytest.raises(TypeError, match=r"^buffer must be writable$"):
            impl.recv_to_file(server.fileno(), fd, 0, 3, memoryview(bytearray(3)).toreadonly())


def test_non_contiguous_buffer_is_rejected(impl: ModuleType) -> None:
    strided = memoryview(bytearray(64))[::2]
    with temp_fd(b"abc") as fd, tcp_pair() as (_, server):
        with pytest.raises(BufferError, match=r"^buffer must be C-contiguous$"):
            impl.write_piece(fd, 0, strided)
        with pytest.raises(BufferError, match=r"^buffer must be C-contiguous$"):
            impl.read_piece(fd, 0, strided)
        with pytest.raises(BufferError, match=r"^buffer must be C-contiguous$"):
            impl.recv_to_file(server.fileno(), fd, 0, 3, strided)


def test_buffer_of_wider_items_is_rejected(impl: ModuleType) -> None:
    with temp_fd() as fd, pytest.raises(BufferError, match=r"^buffer contents are not compatible with u8$"):
        impl.write_piece(fd, 0, array.array("i", [1, 2]))


@pytest.mark.parametrize("bad_fd", [-1, "closed"])
def test_closed_fd_raises_ebadf(impl: ModuleType, bad_fd: int | str) -> None:
    with temp_fd(b"abc") as good, tcp_pair() as (client, _server):
        # Closed after the others are open, so none of them reuses its number.
        fd = closed_fd() if bad_fd == "closed" else int(bad_fd)
        calls: list[Callable[[], Any]] = [
            lambda: impl.write_piece(fd, 0, b"x"),
            lambda: impl.read_piece(fd, 0, bytearray(1)),
            lambda: impl.sendfile(fd, good, 0, 1, timeout=1),
            lambda: impl.sendfile(client.fileno(), fd, 0, 1, timeout=1),
            lambda: impl.recv_to_file(fd, good, 0, 1, bytearray(1), timeout=1),
        ]
        for call in calls:
            with pytest.raises(OSError, match="Bad file descriptor") as excinfo:
                call()
            assert excinfo.value.errno == errno.EBADF
            assert str(excinfo.value) == f"[Errno {errno.EBADF}] {os.strerror(errno.EBADF)}"


def test_negative_offsets_and_counts_raise_value_error(impl: ModuleType) -> None:
    with temp_fd() as fd, tcp_pair() as (client, server):
        with pytest.raises(ValueError, match=r"^offset must be non-negative, got -1$"):
            impl.write_piece(fd, -1, b"x")
        with pytest.raises(ValueError, match=r"^offset must be non-negative, got -4$"):
            impl.read_piece(fd, -4, bytearray(1))
        with pytest.raises(ValueError, match=r"^offset must be non-negative, got -1$"):
            impl.sendfile(client.fileno(), fd, -1, 1)
        with pytest.raises(ValueError, match=r"^count must be non-negative, got -1$"):
            impl.recv_to_file(server.fileno(), fd, 0, -1, bytearray(1))
        with pytest.raises(ValueError, match=r"^timeout must be None or a finite number >= 0$"):
            impl.recv_to_file(server.fileno(), fd, 0, 1, bytearray(1), timeout=-1)
        with pytest.raises(ValueError, match=r"^buffer must not be empty$"):
            impl.recv_to_file(server.fileno(), fd, 0, 1, bytearray())


def test_zero_counts_touch_nothing(impl: ModuleType) -> None:
    with temp_fd() as fd, tcp_pair() as (client, server):
        assert impl.sendfile(client.fileno(), fd, 0, 0) == 0
        assert impl.recv_to_file(server.fileno(), fd, 0, 0, bytearray()) == 0
        assert impl.write_piece(-1, 0, b"") == 0


# -- sendfile / recv_to_file --------------------------------------------------------------------------------------


@DIFF
@given(
    data=st.binary(min_size=1, max_size=400_000),
    span=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    dst_offset=st.integers(0, MIB),
    chunk=st.integers(1, 70_000),
    sender=st.sampled_from(["native", "python"]),
    receiver=st.sampled_from(["native", "python"]),
)
def test_transfer_matches_twin(
    data: bytes, span: tuple[float, float], dst_offset: int, chunk: int, sender: str, receiver: str
) -> None:
    offset = int(span[0] * len(data))
    count = int(span[1] * (len(data) - offset))
    expected = data[offset : offset + count]
    with temp_fd(data) as src, temp_fd() as dst, tcp_pair() as (client, server):
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(IMPLS[sender].sendfile, client.fileno(), src, offset, count, 10)
            crc = IMPLS[receiver].recv_to_file(server.fileno(), dst, dst_offset, count, bytearray(chunk), 10)
            assert sent.result(timeout=10) == count
        assert crc == zlib.crc32(expected)
        assert contents(dst)[dst_offset:] == expected


@settings(DIFF, max_examples=15)
@given(
    data=st.binary(min_size=0, max_size=60_000),
    dst_offset=st.integers(0, 4096),
    chunk=st.integers(1, 20_000),
    receiver=st.sampled_from(["native", "python"]),
)
def test_recv_to_file_blake3_matches_twin(data: bytes, dst_offset: int, chunk: int, receiver: str) -> None:
    """The BLAKE3 computed on the way in is the digest of the bytes written, whatever the buffer size."""
    with temp_fd(data) as src, temp_fd() as dst, tcp_pair() as (client, server):
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(NATIVE.sendfile, client.fileno(), src, 0, len(data), 10)
            crc, digest = IMPLS[receiver].recv_to_file_blake3(
                server.fileno(), dst, dst_offset, len(data), bytearray(chunk), 10
            )
            assert sent.result(timeout=10) == len(data)
        assert crc == zlib.crc32(data)
        assert digest == native.Hasher("blake3", data).digest()
        assert contents(dst)[dst_offset:] == data


def test_recv_to_file_blake3_short_read_and_gil(impl: ModuleType) -> None:
    with temp_fd() as dst, tcp_pair() as (client, server):
        client.setblocking(True)
        client.sendall(b"x" * 1000)
        client.close()
        with pytest.raises(ShortRead) as excinfo:
            impl.recv_to_file_blake3(server.fileno(), dst, 0, 2000, bytearray(4096), timeout=5)
        assert (excinfo.value.expected, excinfo.value.received) == (2000, 1000)
    with temp_fd() as dst, tcp_pair() as (_client, server):
        call = lambda: impl.recv_to_file_blake3(server.fileno(), dst, 0, 1, bytearray(1), 0.5)  # noqa: E731
        assert progress_of_other_thread(call) > 1000


def test_blocking_sockets_work_too(impl: ModuleType) -> None:
    data = os.urandom(3 * MIB)
    with temp_fd(data) as src, temp_fd() as dst, tcp_pair() as (client, server):
        client.setblocking(True)
        server.setblocking(True)
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(impl.sendfile, client.fileno(), src, 0, len(data))
            crc = impl.recv_to_file(server.fileno(), dst, 0, len(data), bytearray(256 * 1024), 10)
            assert sent.result(timeout=10) == len(data)
        assert crc == zlib.crc32(data)
        assert hashlib.sha256(contents(dst)).digest() == hashlib.sha256(data).digest()


def test_sendfile_past_eof_raises_eof_error(impl: ModuleType) -> None:
    with temp_fd(b"0123456789") as src, tcp_pair() as (client, server):
        with pytest.raises(EOFError, match=r"^file range ends after 6 of 20 bytes$"):
            impl.sendfile(client.fileno(), src, 4, 20, timeout=5)
        server.settimeout(5)
        assert server.recv(100) == b"456789"


def test_peer_closing_mid_transfer_raises_short_read(impl: ModuleType) -> None:
    with temp_fd() as dst, tcp_pair() as (client, server):
        client.setblocking(True)
        client.sendall(b"x" * 100_000)
        client.close()
        with pytest.raises(ShortRead) as excinfo:
            impl.recv_to_file(server.fileno(), dst, 10, 150_000, bytearray(4096), timeout=5)
        assert (excinfo.value.expected, excinfo.value.received) == (150_000, 100_000)
        assert str(excinfo.value) == "connection closed after 100000 of 150000 bytes"
        assert isinstance(excinfo.value, ConnectionError)
        # What did arrive is in the file.
        assert contents(dst)[10:] == b"x" * 100_000


def test_peer_reset_during_sendfile(impl: ModuleType) -> None:
    data = os.urandom(32 * MIB)
    with temp_fd(data) as src, tcp_pair() as (client, server):

        def read_some_then_reset() -> None:
            server.setblocking(True)
            server.settimeout(10)
            received = 0
            while received < MIB:
                received += len(server.recv(65536))
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            server.close()

        with ThreadPoolExecutor(1) as pool:
            peer = pool.submit(read_some_then_reset)
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                impl.sendfile(client.fileno(), src, 0, len(data), timeout=10)
            peer.result(timeout=10)


def test_recv_times_out_when_peer_sends_nothing(impl: ModuleType) -> None:
    with temp_fd() as dst, tcp_pair() as (_client, server):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"^no progress on the socket within the timeout$"):
            impl.recv_to_file(server.fileno(), dst, 0, 10, bytearray(10), timeout=0.3)
        assert time.monotonic() - started >= 0.3  # the timeout is a floor; a loaded machine only adds to it


def test_recv_times_out_on_a_blocking_socket(impl: ModuleType) -> None:
    with temp_fd() as dst, tcp_pair() as (_client, server):
        server.setblocking(True)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            impl.recv_to_file(server.fileno(), dst, 0, 10, bytearray(10), timeout=0.2)
        assert time.monotonic() - started >= 0.2


def test_recv_timeout_restarts_on_progress(impl: ModuleType) -> None:
    """The timeout bounds each wait, not the whole transfer."""
    with temp_fd() as dst, tcp_pair() as (client, server):

        def trickle() -> None:
            for _ in range(4):
                time.sleep(0.1)
                client.send(b"ab")

        with ThreadPoolExecutor(1) as pool:
            sender = pool.submit(trickle)
            assert impl.recv_to_file(server.fileno(), dst, 0, 8, bytearray(8), timeout=0.3) == zlib.crc32(b"ab" * 4)
            sender.result(timeout=5)


def test_sendfile_times_out_when_peer_reads_nothing(impl: ModuleType) -> None:
    with temp_fd(bytes(64 * MIB)) as src, tcp_pair() as (client, _server):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"^no progress on the socket within the timeout$"):
            impl.sendfile(client.fileno(), src, 0, 64 * MIB, timeout=0.3)
        # Never before the timeout; a sendfile that never times out hangs into the test's own timeout.
        assert time.monotonic() - started >= 0.3


# -- GIL release --------------------------------------------------------------------------------------------------


def progress_of_other_thread(call: Callable[[], Any]) -> int:
    """Run ``call`` and return how far a counting thread got meanwhile."""
    counter = [0]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        before = counter[0]
        with contextlib.suppress(TimeoutError):
            call()
        return counter[0] - before
    finally:
        stop.set()
        thread.join(timeout=5)


def test_recv_to_file_releases_the_gil(impl: ModuleType) -> None:
    with temp_fd() as dst, tcp_pair() as (_client, server):
        assert progress_of_other_thread(lambda: impl.recv_to_file(server.fileno(), dst, 0, 1, bytearray(1), 0.5)) > 1000


def test_sendfile_releases_the_gil(impl: ModuleType) -> None:
    with temp_fd(bytes(64 * MIB)) as src, tcp_pair() as (client, _server):
        assert progress_of_other_thread(lambda: impl.sendfile(client.fileno(), src, 0, 64 * MIB, 0.5)) > 1000


def test_native_write_piece_releases_the_gil() -> None:
    data = os.urandom(64 * MIB)
    with temp_fd() as fd:
        assert progress_of_other_thread(lambda: [NATIVE.write_piece(fd, 0, data) for _ in range(4)]) > 100


def test_outcomes_agree_on_bad_calls() -> None:
    """A sample of bad calls raise the same class with the same message on both sides."""
    calls: list[Callable[[ModuleType], Any]] = [
        lambda m: m.write_piece(0, -5, b"x"),
        lambda m: m.read_piece(0, 0, b"x"),
        lambda m: m.write_piece(0, 0, 5),
        lambda m: m.sendfile(-1, -1, 0, 1, float("nan")),
        lambda m: m.recv_to_file(-1, -1, 0, 1, bytearray(1)),
        lambda m: m.recv_to_file_blake3(-1, -1, 0, 1, bytearray(1)),
        lambda m: m.recv_to_file_blake3(-1, -1, -1, 1, bytearray(1)),
    ]
    for call in calls:
        native_kind, native_message = outcome(lambda: call(NATIVE))  # noqa: B023
        twin_kind, twin_message = outcome(lambda: call(TWIN))  # noqa: B023
        assert native_kind == twin_kind
        if native_kind != "TypeError":
            assert native_message == twin_message

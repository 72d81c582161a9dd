"""Positional piece reads and writes with CRC-32, and piece transfers between a socket and a file (the twins of
``piece.rs``, ``sendfile.rs`` and ``recv.rs``)."""

from __future__ import annotations

import errno
import math
import os
import select
import time
import zlib
from typing import TYPE_CHECKING, Final

from dragonfly.common._pyimpl.checks import contiguous, non_negative, timeout_arg, u8_view, writable
from dragonfly.common.errors import ShortRead

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Buffer

# Linux caps one read/write/sendfile at MAX_RW_COUNT bytes.
_MAX_RW_COUNT: Final = 0x7FFF_F000


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    written = 0
    while written < len(view):
        n = os.pwrite(fd, view[written:], offset + written)
        if n == 0:
            raise OSError("write zero")
        written += n


def write_piece(fd: int, offset: int, data: Buffer) -> int:
    """Write all of ``data`` at ``offset`` and return its CRC-32."""
    with u8_view(data) as raw:
        offset = non_negative("offset", offset)
        with contiguous(raw) as view:
            crc = zlib.crc32(view)
            pwrite_all(fd, view, offset)
    return crc


def read_piece(fd: int, offset: int, buffer: Buffer) -> int:
    """Read at ``offset`` until ``buffer`` is full or the file ends; return the count read."""
    with u8_view(buffer) as raw:
        offset = non_negative("offset", offset)
        with writable(raw) as view:
            filled = 0
            while filled < len(view):
                n = os.preadv(fd, [view[filled:]], offset + filled)
                if n == 0:
                    break
                filled += n
    return filled


class Waiter:
    """Wait for a socket to become ready, failing when it made no progress for ``timeout`` seconds."""

    __slots__ = ("_events", "_fd", "_last_progress", "_poll", "_timeout")

    def __init__(self, fd: int, events: int, timeout: float | None) -> None:
        self._fd = fd
        self._events = events
        self._timeout = timeout
        self._last_progress = time.monotonic()
        self._poll: select.poll | None = None

    def progress(self) -> None:
        self._last_progress = time.monotonic()

    def wait(self) -> None:
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self._fd, self._events)
        while True:
            ms = None
            if self._timeout is not None:
                left = self._timeout - (time.monotonic() - self._last_progress)
                ms = max(0, math.ceil(left * 1000))
            events = self._poll.poll(ms)
            if events:
                if events[0][1] & select.POLLNVAL:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                return
            if self._timeout is not None and time.monotonic() - self._last_progress >= self._timeout:
                raise TimeoutError("no progress on the socket within the timeout")


def sendfile(sock_fd: int, file_fd: int, offset: int, count: int, timeout: float | None = None) -> int:
    """Send exactly ``count`` bytes of the file range to a connected socket; return ``count``."""
    offset = non_negative("offset", offset)
    count = non_negative("count", count)
    waiter = Waiter(sock_fd, select.POLLOUT, timeout_arg(timeout))
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, min(count - sent, _MAX_RW_COUNT))
        except BlockingIOError:
            waiter.wait()
            continue
        if n == 0:
            raise EOFError(f"file range ends after {sent} of {count} bytes")
        sent += n
        waiter.progress()
    return sent


def recv_to_file(
    sock_fd: int, file_fd: int, offset: int, count: int, buffer: Buffer, timeout: float | None = None
) -> int:
    """Receive exactly ``count`` bytes from the socket into the file at ``offset`` via ``buffer``; return CRC-32."""
    return _recv_observed(sock_fd, file_fd, offset, count, buffer, timeout, None)


def recv_to_file_blake3(
    sock_fd: int, file_fd: int, offset: int, count: int, buffer: Buffer, timeout: float | None = None
) -> tuple[int, bytes]:
    """``recv_to_file`` that also returns the BLAKE3 digest of the bytes received."""
    from dragonfly.common._pyimpl.hashing import Hasher

    hasher = Hasher("blake3")
    crc = _recv_observed(sock_fd, file_fd, offset, count, buffer, timeout, hasher.update)
    return crc, hasher.digest()


def _recv_observed(
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    buffer: Buffer,
    timeout: float | None,
    observe: Callable[[memoryview], None] | None,
) -> int:
    with u8_view(buffer) as raw:
        offset = non_negative("offset", offset)
        count = non_negative("count", count)
        waiter = Waiter(sock_fd, select.POLLIN, timeout_arg(timeout))
        with writable(raw) as view:
            if count > 0 and len(view) == 0:
                raise ValueError("buffer must not be empty")
            if count > 0 and sock_fd < 0:
                # poll(2) ignores negative fds; the native recv fails on them at once.
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            crc = 0
            received = 0
            while received < count:
                want = min(count - received, len(view))
                filled = 0
                while filled < want:
                    waiter.wait()
                    try:
                        n = os.readv(sock_fd, [view[filled:want]])
                    except BlockingIOError:
                        continue
                    if n == 0:
                        pwrite_all(file_fd, view[:filled], offset + received)
                        raise ShortRead(count, received + filled)
                    crc = zlib.crc32(view[filled : filled + n], crc)
                    filled += n
                    waiter.progress()
                if observe is not None:
                    observe(view[:filled])
                pwrite_all(file_fd, view[:filled], offset + received)
                received += filled
    return crc

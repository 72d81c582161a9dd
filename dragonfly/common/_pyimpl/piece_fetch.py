"""One piece from a parent in one call: the twin of ``fetch.rs`` (and of its binding in ``python/fetch.rs``).

The request goes out, the answer's header and metadata come in and are checked against the piece asked for, then
the piece bytes go into the file with their CRC-32 (and BLAKE3 when asked) computed on the way. ``PlainLink`` runs
the exchange over a plaintext socket; the TLS twin (``tls_client.TlsClientStream``) passes itself as the link.
"""

from __future__ import annotations

import operator
import os
import select
from typing import TYPE_CHECKING, Protocol

from dragonfly.common._pyimpl.checks import non_negative, timeout_arg, u8_view, writable
from dragonfly.common._pyimpl.piece_transfer import Waiter, recv_to_file, recv_to_file_blake3
from dragonfly.common._pyimpl.vortex import (
    HEADER_SIZE,
    TAG_DOWNLOAD_PIECE,
    TAG_ERROR,
    _wire_int,
    decode_error,
    decode_header,
    decode_piece_content,
    encode_download_piece,
)
from dragonfly.common.errors import ShortRead, VortexError, VortexRemoteError

if TYPE_CHECKING:
    from typing_extensions import Buffer

#: What a fetch answers: (digest the parent announced, CRC-32, BLAKE3 digest or None), or None when ``reused`` and
#: the connection turned out closed before any byte of the answer.
Answer = tuple[str, int, bytes | None] | None


class Link(Protocol):
    """A connection a piece can be fetched over (``fetch.rs``'s ``Link``)."""

    def send_all(self, data: bytes, timeout: float | None = None) -> None: ...

    def recv_exact(self, count: int, timeout: float | None = None) -> bytes: ...

    def recv_to_file(
        self,
        file_fd: int,
        offset: int,
        count: int,
        buffer: Buffer,
        timeout: float | None = None,
        blake3: bool = False,
    ) -> tuple[int, bytes | None]: ...


class PlainLink:
    """A connected plaintext socket, by fd (blocking or not: every wait is a poll bounded by the timeout)."""

    __slots__ = ("_fd",)

    def __init__(self, sock_fd: int) -> None:
        self._fd = sock_fd

    def send_all(self, data: bytes, timeout: float | None = None) -> None:
        waiter = Waiter(self._fd, select.POLLOUT, timeout)
        view = memoryview(data)
        while view:
            try:
                # Python ignores SIGPIPE: a closed peer is BrokenPipeError, as the native MSG_NOSIGNAL send.
                n = os.write(self._fd, view)
            except BlockingIOError:
                waiter.wait()
                continue
            view = view[n:]
            waiter.progress()

    def recv_exact(self, count: int, timeout: float | None = None) -> bytes:
        waiter = Waiter(self._fd, select.POLLIN, timeout)
        data = bytearray(count)
        view = memoryview(data)
        filled = 0
        while filled < count:
            try:
                n = os.readv(self._fd, [view[filled:]])
            except BlockingIOError:
                waiter.wait()
                continue
            if n == 0:
                raise ShortRead(count, filled)
            filled += n
            waiter.progress()
        return bytes(data)

    def recv_to_file(
        self,
        file_fd: int,
        offset: int,
        count: int,
        buffer: Buffer,
        timeout: float | None = None,
        blake3: bool = False,
    ) -> tuple[int, bytes | None]:
        if blake3:
            return recv_to_file_blake3(self._fd, file_fd, offset, count, buffer, timeout)
        return recv_to_file(self._fd, file_fd, offset, count, buffer, timeout), None


def _closed_before_answer(exc: BaseException) -> bool:
    """A failure of the request or of the answer's first read that a closed idle connection explains."""
    if isinstance(exc, ShortRead):
        return exc.received == 0
    return isinstance(exc, (ConnectionResetError, BrokenPipeError))


def run(
    link: Link,
    task_id: str,
    number: int,
    offset: int,
    length: int,
    file_fd: int,
    buffer: Buffer,
    timeout: float | None,
    tag: int,
    blake3: bool,
    reused: bool,
) -> Answer:
    """Check the arguments in the native binding's order, then fetch the piece (``fetch.rs``'s ``fetch_piece``)."""
    number = _wire_int("piece_number", operator.index(number), "u32")
    tag = _wire_int("tag", operator.index(tag), "u8")
    offset = non_negative("offset", offset)
    length = non_negative("length", length)
    timeout = timeout_arg(timeout)
    with u8_view(buffer) as raw, writable(raw) as view:
        if length > 0 and len(view) == 0:
            raise ValueError("buffer must not be empty")
        request = encode_download_piece(task_id, number, 0, tag)
        try:
            link.send_all(request, timeout)
            header = link.recv_exact(HEADER_SIZE, timeout)
        except (ShortRead, ConnectionResetError, BrokenPipeError) as exc:
            if reused and _closed_before_answer(exc):
                return None
            raise
        _frame_id, answer_tag, value_length = decode_header(header)
        value = link.recv_exact(value_length, timeout)
        if answer_tag == TAG_ERROR:
            code, message = decode_error(value)
            raise VortexRemoteError(code, message)
        if answer_tag != tag + 1:
            raise VortexError(f"expected a piece content frame, got tag {answer_tag}")
        meta = decode_piece_content(value)
        if meta.number != number or meta.offset != offset or meta.length != length:
            raise VortexError(
                f"parent sent piece {meta.number} at {meta.offset}+{meta.length}, "
                f"expected piece {number} at {offset}+{length}"
            )
        crc, strong = link.recv_to_file(file_fd, offset, length, view, timeout, blake3)
    return meta.digest, crc, strong


def fetch_piece(
    sock_fd: int,
    task_id: str,
    number: int,
    offset: int,
    length: int,
    file_fd: int,
    buffer: Buffer,
    timeout: float | None = None,
    *,
    tag: int = TAG_DOWNLOAD_PIECE,
    blake3: bool = False,
    reused: bool = False,
) -> Answer:
    """Fetch piece ``number`` of ``task_id`` over the connected socket ``sock_fd`` into ``file_fd``."""
    return run(PlainLink(sock_fd), task_id, number, offset, length, file_fd, buffer, timeout, tag, blake3, reused)

"""Vortex over mutual TLS, the server (parent) side: the twin of ``tls/server.rs`` in Python's ssl over memory BIOs."""

from __future__ import annotations

import operator
import os
from typing import TYPE_CHECKING

from dragonfly.common._pyimpl.checks import contiguous, non_negative, u8_view
from dragonfly.common._pyimpl.tls_client import TLS_READ_CHUNK, mutual_tls_context
from dragonfly.common._pyimpl.vortex import HEADER_SIZE, MAX_VALUE_LENGTH

if TYPE_CHECKING:
    from typing_extensions import Buffer

#: Plaintext bytes read from the content file and encrypted per step, as the native side does.
_TLS_SEND_CHUNK = 128 * 1024


class TlsServerConfig:
    """The server side of mutual TLS for Vortex, from the PEM files of the cluster CA, this host's chain and key."""

    __slots__ = ("context",)

    def __init__(self, ca_cert: str, cert: str, key: str) -> None:
        import ssl

        self.context = mutual_tls_context(ssl.PROTOCOL_TLS_SERVER, ca_cert, cert, key)


class TlsServerStream:
    """One TLS server connection over an accepted non-blocking socket (Python's ssl, memory BIOs), in steps that
    never wait: each does what the socket allows now and otherwise returns "read" or "write" to wait for."""

    __slots__ = ("_begin", "_chunk", "_end", "_fd", "_file_fd", "_head", "_in", "_out", "_pos", "_tls", "_unsent")

    def __init__(self, config: TlsServerConfig, sock_fd: int) -> None:
        import ssl

        self._fd = sock_fd
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = config.context.wrap_bio(self._in, self._out, server_side=True)
        # Ciphertext the socket did not take yet.
        self._unsent = memoryview(b"")
        self._head: memoryview | None = None
        self._chunk = memoryview(b"")
        self._file_fd = -1
        self._begin = self._pos = self._end = 0

    def _flush(self) -> str | None:
        if not self._unsent:
            self._unsent = memoryview(self._out.read())
        while self._unsent:
            try:
                self._unsent = self._unsent[os.write(self._fd, self._unsent) :]
            except BlockingIOError:
                return "write"
            if not self._unsent:
                self._unsent = memoryview(self._out.read())
        return None

    def _read_packets(self) -> str | None:
        """Move what the socket holds into OpenSSL; "empty" when nothing, "closed" at the end of the stream."""
        try:
            data = os.read(self._fd, TLS_READ_CHUNK)
        except BlockingIOError:
            return "empty"
        if not data:
            self._in.write_eof()
            return "closed"
        self._in.write(data)
        return None

    def handshake(self) -> str | None:
        import ssl

        while True:
            try:
                self._tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError:
                # Tell the client why (the alert is in the outgoing BIO), if the socket takes it now.
                self._flush()
                raise
            if (want := self._flush()) is not None:
                return want
            if done:
                return None
            fed = self._read_packets()
            if fed == "empty":
                return "read"
            if fed == "closed":
                raise ssl.SSLError("handshake: the client closed the connection")

    def recv(self, count: int) -> bytes | str:
        import ssl

        if count > MAX_VALUE_LENGTH + HEADER_SIZE:
            raise ValueError(f"count {count} is larger than a Vortex frame")
        while True:
            try:
                return self._tls.read(count)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a TCP close without it: the end of the stream either way.
                return b""
            if (want := self._flush()) is not None:
                return want
            if self._read_packets() == "empty":
                return "read"

    def start_send(self, head: Buffer, file_fd: int, offset: int, length: int) -> None:
        with u8_view(head) as raw:
            file_fd = operator.index(file_fd)
            offset = non_negative("offset", offset)
            length = non_negative("length", length)
            view = contiguous(raw).toreadonly()
        if self._head or self._chunk or self._pos < self._end:
            raise ValueError("a send is already in progress on this connection")
        if length > 0 and file_fd < 0:
            raise ValueError("file_fd must be a file descriptor when length > 0")
        self._head = view
        self._file_fd, self._begin, self._pos, self._end = file_fd, offset, offset, offset + length

    def send_some(self) -> str | None:
        while True:
            if (want := self._flush()) is not None:
                return want
            if self._head:
                self._tls.write(self._head[:_TLS_SEND_CHUNK])
                self._head = self._head[_TLS_SEND_CHUNK:]
            elif self._chunk:
                self._tls.write(self._chunk[:_TLS_SEND_CHUNK])
                self._chunk = memoryview(b"")
            elif self._pos < self._end:
                buffer = bytearray(min(_TLS_SEND_CHUNK, self._end - self._pos))
                count = os.preadv(self._file_fd, [buffer], self._pos)
                if count == 0:
                    raise EOFError(
                        f"file range ends after {self._pos - self._begin} of {self._end - self._begin} bytes"
                    )
                self._chunk = memoryview(buffer)[:count]
                self._pos += count
            else:
                self._head = None
                return None

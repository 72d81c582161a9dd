"""Vortex over mutual TLS, the client (child) side: the twin of ``tls/client.rs`` in Python's ssl over memory BIOs."""

from __future__ import annotations

import os
import select
import zlib
from typing import TYPE_CHECKING, cast

from dragonfly.common._pyimpl.checks import non_negative, timeout_arg, u8_view, writable
from dragonfly.common._pyimpl.piece_transfer import Waiter, pwrite_all
from dragonfly.common._pyimpl.vortex import HEADER_SIZE, MAX_VALUE_LENGTH, TAG_DOWNLOAD_PIECE
from dragonfly.common.errors import ShortRead

if TYPE_CHECKING:
    import ssl

    from typing_extensions import Buffer

    from dragonfly.common._pyimpl.piece_fetch import Answer

#: Ciphertext bytes asked of the socket per read, as the native side does.
TLS_READ_CHUNK = 256 * 1024


class TlsClientConfig:
    """The client side of mutual TLS for Vortex, from the PEM files of the cluster CA, this host's chain and key."""

    __slots__ = ("context",)

    def __init__(self, ca_cert: str, cert: str, key: str) -> None:
        import ssl

        self.context = mutual_tls_context(ssl.PROTOCOL_TLS_CLIENT, ca_cert, cert, key)
        self.context.check_hostname = True


def mutual_tls_context(protocol: int, ca_cert: str, cert: str, key: str) -> ssl.SSLContext:
    """Return a TLS 1.2+ context of ``protocol`` that presents ``cert`` and requires a peer certificate of ``ca_cert``.

    Each file is opened first so that an unreadable one is named, as the native side names it.
    """
    import ssl

    for path in (ca_cert, cert, key):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise OSError(f"cannot read {path}: {exc.strerror}") from None
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class TlsClientStream:
    """One TLS client connection over a connected socket that the caller keeps open (Python's ssl, memory BIOs)."""

    __slots__ = ("_fd", "_in", "_out", "_tls")

    def __init__(self, config: TlsClientConfig, sock_fd: int, server_ip: str, timeout: float | None = None) -> None:
        import ipaddress
        import ssl

        timeout = timeout_arg(timeout)
        try:
            ipaddress.ip_address(server_ip)
        except ValueError:
            raise ValueError(f"server_ip must be an IP address, got {server_ip!r}") from None
        self._fd = sock_fd
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = config.context.wrap_bio(self._in, self._out, server_hostname=server_ip)
        waiter = Waiter(sock_fd, select.POLLIN, timeout)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush(timeout)
                if not self._feed(waiter):
                    raise ssl.SSLError("handshake: the server closed the connection") from None
        self._flush(timeout)

    def _flush(self, timeout: float | None) -> None:
        view = memoryview(self._out.read())
        waiter = Waiter(self._fd, select.POLLOUT, timeout)
        while view:
            waiter.wait()
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                continue
            waiter.progress()

    def _feed(self, waiter: Waiter) -> bool:
        waiter.wait()
        try:
            data = os.read(self._fd, TLS_READ_CHUNK)
        except BlockingIOError:
            return True
        if not data:
            return False
        self._in.write(data)
        waiter.progress()
        return True

    def _read_some(self, out: memoryview, waiter: Waiter) -> int:
        import ssl

        while True:
            try:
                # With a buffer, read() returns the count (typeshed types only the bytes form).
                return cast("int", self._tls.read(len(out), out))
            except ssl.SSLWantReadError:
                if not self._feed(waiter):
                    return 0
            except ssl.SSLZeroReturnError:
                return 0

    def send_all(self, data: bytes, timeout: float | None = None) -> None:
        timeout = timeout_arg(timeout)
        self._tls.write(data)
        self._flush(timeout)

    def recv_exact(self, count: int, timeout: float | None = None) -> bytes:
        if count > MAX_VALUE_LENGTH + HEADER_SIZE:
            raise ValueError(f"count {count} is larger than a Vortex frame")
        waiter = Waiter(self._fd, select.POLLIN, timeout_arg(timeout))
        data = bytearray(count)
        view = memoryview(data)
        filled = 0
        while filled < count:
            n = self._read_some(view[filled:], waiter)
            if n == 0:
                raise ShortRead(count, filled)
            filled += n
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
        from dragonfly.common._pyimpl.hashing import Hasher

        with u8_view(buffer) as raw:
            offset = non_negative("offset", offset)
            count = non_negative("count", count)
            waiter = Waiter(self._fd, select.POLLIN, timeout_arg(timeout))
            with writable(raw) as view:
                if count > 0 and len(view) == 0:
                    raise ValueError("buffer must not be empty")
                hasher = Hasher("blake3") if blake3 else None
                crc = 0
                received = 0
                while received < count:
                    want = min(count - received, len(view))
                    filled = 0
                    while filled < want:
                        n = self._read_some(view[filled:want], waiter)
                        if n == 0:
                            pwrite_all(file_fd, view[:filled], offset + received)
                            raise ShortRead(count, received + filled)
                        filled += n
                    crc = zlib.crc32(view[:filled], crc)
                    if hasher is not None:
                        hasher.update(view[:filled])
                    pwrite_all(file_fd, view[:filled], offset + received)
                    received += filled
        return crc, None if hasher is None else hasher.digest()

    def fetch_piece(
        self,
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
        """Fetch one piece over this connection: the request, the answer checked, the bytes into ``file_fd``."""
        from dragonfly.common._pyimpl.piece_fetch import run

        return run(self, task_id, number, offset, length, file_fd, buffer, timeout, tag, blake3, reused)

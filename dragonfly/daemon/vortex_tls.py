"""Piece bytes over a TLS connection: the Vortex data path when mutual TLS is on (``docs/security.md#vortex-over-tls``).

Plaintext Vortex sends a piece with ``sendfile(2)`` and receives it with a native socket-to-file loop; neither can
see TLS records. Kernel TLS would let both keep working after a userspace handshake, but the kernels we run on are
built without it (``CONFIG_TLS`` unset: ``setsockopt(TCP_ULP, "tls")`` fails with ENOENT), and Python's ``ssl``
cannot hand session keys to the kernel anyway. So with TLS the bytes are encrypted in user space. By default both
ends do it in rustls inside the native extension (``download.nativeTls``: ``native_client``;
``storage.server.nativeTls``: ``accept_native``, ``recv_native`` and ``NativePieceSender``, stepped from the event
loop the same way as below); with those off, through OpenSSL:

- sending: native ``read_piece`` (pread, GIL released) into a small per-connection buffer, then a non-blocking
  ``SSLSocket.send`` (OpenSSL encrypts with the GIL released), on an executor thread that returns whenever the
  socket is full (``PieceSender``);
- receiving: ``SSLSocket.recv_into`` the caller's pooled buffer, native CRC-32 (and BLAKE3) of the chunk,
  ``os.pwrite`` to the content file (all GIL released).

No Python ``bytes`` object per chunk and no copy beyond the one into the TLS library; both run on executor
threads. The cost against sendfile is measured by ``bench pair`` / ``bench swarm`` (see
``bench/RESULTS.md``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

from dragonfly.common import native
from dragonfly.common.errors import ConfigError, ShortRead
from dragonfly.common.tls import TLSFiles

#: Bytes per pread + TLS write when sending. Each connection being sent to holds one such buffer while its reader
#: is slow, so it is kept small; TLS records are 16 KiB, so this is four records per write.
SEND_CHUNK = 64 * 1024


class PieceSender:
    """Sends a metadata frame then a file range over a non-blocking TLS socket, in steps that never wait.

    ``send_some`` (an executor thread: pread may need the disk) writes until the range is sent or the socket would
    block; the event loop then waits for the socket and calls it again. A stalled reader so costs a socket and a
    small buffer, never a thread. After a would-block, OpenSSL must be given the same bytes again, so the unsent
    chunk is kept until it goes through.
    """

    __slots__ = ("_buffer", "_end", "_fd", "_pending", "_pos", "sock")

    def __init__(self, sock: ssl.SSLSocket, frame: bytes, fd: int, offset: int, length: int) -> None:
        self.sock = sock
        self._pending: memoryview | None = memoryview(frame) if frame else None
        self._fd = fd
        self._pos = offset
        self._end = offset + length
        self._buffer: memoryview | None = None

    def send_some(self) -> str | None:
        """Send what the socket takes; return None when all is sent, else "write" or "read" to wait for."""
        sock = self.sock
        while True:
            if self._pending is None:
                if self._pos >= self._end:
                    return None
                if self._buffer is None:
                    self._buffer = memoryview(bytearray(SEND_CHUNK))
                count = native.read_piece(self._fd, self._pos, self._buffer[: min(SEND_CHUNK, self._end - self._pos)])
                if count == 0:
                    raise EOFError(f"content file ends {self._end - self._pos} bytes before the end of the piece")
                self._pending = self._buffer[:count]
                self._pos += count
            try:
                sent = sock.send(self._pending)
            except ssl.SSLWantWriteError:
                return "write"
            except ssl.SSLWantReadError:
                return "read"
            self._pending = self._pending[sent:] if sent < len(self._pending) else None


def recv_piece(
    sock: ssl.SSLSocket, fd: int, offset: int, length: int, buffer: bytearray, hasher: native.Hasher | None = None
) -> int:
    """Receive exactly ``length`` bytes into ``fd`` at ``offset`` through ``buffer``; return their CRC-32.

    ``hasher`` is updated with the bytes as they pass (while they are in the CPU cache). The socket's timeout
    bounds each read; a peer that closes early raises ``ShortRead``.
    """
    view = memoryview(buffer)
    if not len(view):
        raise ValueError("buffer must not be empty")
    crc = 0
    done = 0
    while done < length:
        want = min(len(view), length - done)
        got = 0
        while got < want:
            count = sock.recv_into(view[got:want])
            if count == 0:
                raise ShortRead(length, done + got)
            got += count
        chunk = view[:got]
        crc = native.crc32(chunk, crc)
        if hasher is not None:
            hasher.update(chunk)
        written = 0
        while written < got:
            written += os.pwrite(fd, chunk[written:], offset + done + written)
        done += got
    return crc


def wrap_client(sock: socket.socket, context: ssl.SSLContext, server_ip: str) -> ssl.SSLSocket:
    """Handshake as a client on a connected blocking socket, checking that the parent's certificate is for its IP."""
    try:
        return context.wrap_socket(sock, server_hostname=server_ip)
    except BaseException:
        sock.close()
        raise


async def wait_ready(
    loop: asyncio.AbstractEventLoop, sock: socket.socket | NativeTlsSocket, *, write: bool = False
) -> None:
    """Wait on the loop until ``sock`` is readable (or writable)."""
    ready = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def accept(sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
    """Handshake as the server on the event loop (non-blocking); the caller bounds it with ``asyncio.timeout``.

    On the loop rather than an executor thread: a client that opens connections and never finishes its handshake
    then costs a file descriptor each, not an upload thread each.
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                await wait_ready(loop, tls)
            except ssl.SSLWantWriteError:
                await wait_ready(loop, tls, write=True)
    except BaseException:
        tls.close()
        raise


class NativeTlsSocket:
    """An accepted connection served through rustls (``storage.server.nativeTls``): its socket and TLS state."""

    __slots__ = ("sock", "stream")

    def __init__(self, sock: socket.socket, stream: native.TlsServerStream) -> None:
        self.sock = sock
        self.stream = stream

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


class NativePieceSender:
    """``PieceSender`` through rustls: ``send_some`` (an executor thread) preads, encrypts and writes several
    records per system call with the GIL released, until the range is sent or the socket would block."""

    __slots__ = ("_stream", "sock")

    def __init__(self, conn: NativeTlsSocket, head: bytes, fd: int, offset: int, length: int) -> None:
        conn.stream.start_send(head, fd, offset, length)
        self.sock = conn.sock
        self._stream = conn.stream

    def send_some(self) -> str | None:
        """Send what the socket takes; return None when all is sent, else "write" or "read" to wait for."""
        return self._stream.send_some()


def sender(
    conn: ssl.SSLSocket | NativeTlsSocket, head: bytes, fd: int, offset: int, length: int
) -> PieceSender | NativePieceSender:
    """Return the sender of ``head`` then the file range (``fd`` -1 and ``length`` 0: ``head`` only) on ``conn``."""
    if isinstance(conn, NativeTlsSocket):
        return NativePieceSender(conn, head, fd, offset, length)
    return PieceSender(conn, head, fd, offset, length)


async def accept_native(sock: socket.socket, config: native.TlsServerConfig) -> NativeTlsSocket:
    """Handshake as the server through rustls on the event loop, as ``accept`` does; the caller bounds it.

    Each step does what the socket allows and returns what to wait for, so a client that never finishes its
    handshake costs a file descriptor, never the loop or a thread. The steps' crypto (a signature and a chain
    check, well under a millisecond) runs on the loop thread with the GIL released, as OpenSSL's does in ``accept``.
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    stream = native.TlsServerStream(config, sock.fileno())
    while (want := stream.handshake()) is not None:
        await wait_ready(loop, sock, write=want == "write")
    return NativeTlsSocket(sock, stream)


async def recv_native(loop: asyncio.AbstractEventLoop, conn: NativeTlsSocket, count: int) -> bytes:
    """Receive up to ``count`` plaintext bytes (b"" once the client closed), waiting on the loop."""
    while isinstance(data := conn.stream.recv(count), str):
        await wait_ready(loop, conn.sock, write=data == "write")
    return data


def native_server(files: TLSFiles) -> native.TlsServerConfig:
    """Return the rustls server configuration of ``storage.server.nativeTls`` (the rules of ``server_ssl_context``)."""
    try:
        return native.TlsServerConfig(files.ca_cert, files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS files for storage.server.nativeTls (caCert {files.ca_cert}, cert {files.cert}, "
            f"key {files.key}): {exc}"
        ) from None


def native_client(files: TLSFiles) -> native.TlsClientConfig:
    """Return the rustls client configuration of ``download.nativeTls`` (the rules of ``client_ssl_context``)."""
    try:
        return native.TlsClientConfig(files.ca_cert, files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS files for download.nativeTls (caCert {files.ca_cert}, cert {files.cert}, "
            f"key {files.key}): {exc}"
        ) from None

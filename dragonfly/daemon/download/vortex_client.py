"""Fetch one piece from a parent over Vortex TCP (``docs/reference/protocol.md#vortex``).

One request frame out, one metadata frame and the raw piece bytes back. The exchange is a blocking function for an
executor thread: the bytes go from the socket into the content file in native code (GIL released) with the
CRC-32 and the BLAKE3 digest computed on the way.

A fetch can be abandoned from the event loop while its thread waits in ``recv`` (a parent that trickles bytes never
trips a read timeout): ``FetchAbort.abort()`` shuts the socket down, which wakes the thread at once.

Dragonfly opens a connection per piece and its server closes after one answer. Ours keeps serving, so the client
returns healthy connections to a pool and reuses them; a pooled connection the parent has closed in the meantime
fails before a single response byte arrives, and the piece is then simply requested on a fresh connection.

With mutual TLS the pool holds TLS connections: the handshake happens once per connection (the parent must present
a cluster certificate for the IP it was dialled at), and the piece bytes go through ``dragonfly.daemon.vortex_tls``
(Python's ssl), or with ``download.nativeTls`` through ``native.TlsClientStream`` (rustls in the extension: the
request, the answer and the whole piece in native calls with the GIL released, several TLS records per read).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import threading
import zlib
from dataclasses import dataclass

from dragonfly.common import native
from dragonfly.common.errors import DragonflyError, ShortRead, VortexError, VortexRemoteError
from dragonfly.daemon import compression, vortex_tls

_KEEPALIVE = ((socket.TCP_KEEPIDLE, 5), (socket.TCP_KEEPINTVL, 3), (socket.TCP_KEEPCNT, 3))


@dataclass(frozen=True, slots=True)
class FetchedPiece:
    """What the parent announced for a piece, and the CRC-32 and BLAKE3 digest of the bytes actually received."""

    number: int
    offset: int
    length: int
    digest: str
    crc: int
    #: Bytes that crossed the wire for the piece's content (less than ``length`` when it came compressed).
    wire_length: int = -1
    #: ``blake3:<hex>`` of the bytes received, computed on the way in when asked for (the child verifies pieces
    #: by it); None otherwise.
    blake3: str | None = None


class PieceAbandoned(DragonflyError, ConnectionError):
    """The downloader gave up on a piece transfer (too slow); the reason says why."""


# struct tcp_info (linux/tcp.h): tcpi_bytes_received, the bytes that arrived on the connection (Linux >= 4.1).
_TCP_INFO_LENGTH = 232
_BYTES_RECEIVED = struct.Struct("=Q")
_BYTES_RECEIVED_OFFSET = 128


def _bytes_received(sock: socket.socket) -> int | None:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
    except OSError:
        return None
    if len(info) < _BYTES_RECEIVED_OFFSET + _BYTES_RECEIVED.size:
        return None
    received: int = _BYTES_RECEIVED.unpack_from(info, _BYTES_RECEIVED_OFFSET)[0]
    return received


class FetchAbort:
    """Lets the event loop watch and abandon one fetch_piece call that runs on an executor thread.

    The socket is attached only while the transfer uses it, under a lock, so an abort can never shut down a
    connection that was already handed back to the pool for another piece. ``received()`` reads how many bytes
    have arrived for this transfer from the kernel's TCP counters, without disturbing the thread that reads them.
    """

    __slots__ = ("_base", "_lock", "_sock", "reason")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._base: int | None = None
        self.reason: str | None = None

    def received(self) -> int | None:
        """Return the bytes received on the connection since this transfer began using it (None: not known)."""
        with self._lock:
            if self._sock is None or self._base is None:
                return None
            now = _bytes_received(self._sock)
        return None if now is None else max(now - self._base, 0)

    def abort(self, reason: str) -> None:
        """Stop the transfer now (from any thread); the fetch then raises PieceAbandoned with ``reason``."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown even for a TLS one: the thread inside OpenSSL keeps its state.
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def _attach(self, sock: socket.socket) -> None:
        base = _bytes_received(sock)
        with self._lock:
            if self.reason is not None:
                raise PieceAbandoned(self.reason)
            self._sock = sock
            self._base = base

    def _detach(self) -> None:
        with self._lock:
            self._sock = None


class NativeTlsConnection:
    """A Vortex connection whose TLS runs in the extension: the plain socket (owned here) and its TLS stream."""

    __slots__ = ("sock", "tls")

    def __init__(self, sock: socket.socket, tls: native.TlsClientStream) -> None:
        self.sock = sock
        self.tls = tls

    def close(self) -> None:
        self.sock.close()


#: One pooled connection: plaintext, Python's ssl, or native TLS.
Connection = socket.socket | NativeTlsConnection


class ConnectionPool:
    """Idle Vortex connections per parent address, shared by executor threads; TLS ones with ``ssl_context``
    (Python's ssl) or ``native_tls`` (rustls), which wins when both are given."""

    def __init__(
        self,
        max_idle_per_addr: int = 16,
        *,
        ssl_context: ssl.SSLContext | None = None,
        native_tls: native.TlsClientConfig | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.native_tls = native_tls
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._max = max_idle_per_addr
        self._lock = threading.Lock()

    def get(self, addr: tuple[str, int]) -> Connection | None:
        with self._lock:
            idle = self._idle.get(addr)
            return idle.pop() if idle else None

    def put(self, addr: tuple[str, int], sock: Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(addr, [])
            if len(idle) < self._max:
                idle.append(sock)
                return
        sock.close()

    def discard(self, addr: tuple[str, int]) -> None:
        """Close the idle connections to one parent (it is gone or misbehaved)."""
        with self._lock:
            idle = self._idle.pop(addr, [])
        for sock in idle:
            sock.close()

    def close(self) -> None:
        with self._lock:
            idle = [sock for socks in self._idle.values() for sock in socks]
            self._idle.clear()
        for sock in idle:
            sock.close()


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = bytearray(count)
    view = memoryview(data)
    received = 0
    while received < count:
        n = sock.recv_into(view[received:])
        if n == 0:
            raise ShortRead(count, received)
        received += n
    return bytes(data)


def _connect(
    addr: tuple[str, int],
    timeout: float,
    context: ssl.SSLContext | None,
    native_tls: native.TlsClientConfig | None = None,
) -> Connection:
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, seconds in _KEEPALIVE:
        sock.setsockopt(socket.IPPROTO_TCP, option, seconds)
    if native_tls is not None:
        try:
            # The handshake waits at most the connect timeout for each step.
            return NativeTlsConnection(sock, native.TlsClientStream(native_tls, sock.fileno(), addr[0], timeout))
        except BaseException:
            sock.close()
            raise
    if context is not None:
        # The handshake is bounded by the connect timeout still set on the socket.
        return vortex_tls.wrap_client(sock, context, addr[0])
    return sock


def _plain(conn: Connection) -> socket.socket:
    return conn.sock if isinstance(conn, NativeTlsConnection) else conn


def _send_request(conn: Connection, request: bytes, timeout: float) -> None:
    if isinstance(conn, NativeTlsConnection):
        conn.tls.send_all(request, timeout)
    else:
        conn.sendall(request)


def _read(conn: Connection, count: int, timeout: float) -> bytes:
    if not isinstance(conn, NativeTlsConnection):
        return _recv_exact(conn, count)
    # A native read returns at most one Vortex frame; a compressed piece is longer.
    frame = native.MAX_VALUE_LENGTH
    return b"".join(conn.tls.recv_exact(min(frame, count - at), timeout) for at in range(0, count, frame))


def _steps(
    sock: Connection,
    header: bytes,
    number: int,
    *,
    fd: int,
    offset: int,
    length: int,
    buffer: bytearray,
    timeout: float,
    content_tag: int,
    accept_zstd: bool,
    blake3: bool,
) -> tuple[str, int, int, bytes | None]:
    """The rest of the answer whose ``header`` arrived, in several calls: a compressed answer or one over Python's
    ssl. Return the parent's digest, the CRC-32, the bytes on the wire and the BLAKE3 digest (None unless
    ``blake3``).
    """
    decoded = compression.extension_header(header, -1) if accept_zstd else None
    _frame_id, tag, value_length = decoded or native.decode_header(header)
    value = _read(sock, value_length, timeout)
    if tag == native.TAG_ERROR:
        code, message = native.decode_error(value)
        raise VortexRemoteError(code, message)
    compressed_length = -1
    if accept_zstd and tag == compression.TAG_COMPRESSED_PERSISTENT_CACHE_PIECE_CONTENT:
        try:
            compressed_length, value = compression.split_compressed_value(value)
        except ValueError as exc:
            raise VortexError(str(exc)) from exc
    elif tag != content_tag:
        raise VortexError(f"expected a piece content frame, got tag {tag}")
    meta = native.decode_piece_content(value)
    if meta.number != number or meta.offset != offset or meta.length != length:
        raise VortexError(
            f"parent sent piece {meta.number} at {meta.offset}+{meta.length}, "
            f"expected piece {number} at {offset}+{length}"
        )
    strong: bytes | None = None
    if compressed_length >= 0:
        if compressed_length > length + 1024 * 1024:
            raise VortexError(f"compressed piece of {compressed_length} bytes for {length} bytes of content")
        try:
            data = compression.decompress_piece(_read(sock, compressed_length, timeout), length)
        except ValueError as exc:
            raise VortexError(str(exc)) from exc
        crc = zlib.crc32(data)
        view = memoryview(data)
        written = 0
        while written < length:
            written += os.pwrite(fd, view[written:], offset + written)
        return meta.digest, crc, compressed_length, None
    if isinstance(sock, NativeTlsConnection):
        crc, strong = sock.tls.recv_to_file(fd, offset, length, buffer, timeout, blake3)
    elif isinstance(sock, ssl.SSLSocket):
        hasher = native.Hasher("blake3") if blake3 else None
        crc = vortex_tls.recv_piece(sock, fd, offset, length, buffer, hasher)
        strong = hasher.digest() if hasher is not None else None
    elif blake3:
        crc, strong = native.recv_to_file_blake3(sock.fileno(), fd, offset, length, buffer, timeout)
    else:
        crc = native.recv_to_file(sock.fileno(), fd, offset, length, buffer, timeout)
    return meta.digest, crc, length, strong


def fetch_piece(
    addr: tuple[str, int],
    task_id: str,
    number: int,
    *,
    fd: int,
    offset: int,
    length: int,
    buffer: bytearray,
    connect_timeout: float,
    timeout: float,
    pool: ConnectionPool | None = None,
    ssl_context: ssl.SSLContext | None = None,
    abort: FetchAbort | None = None,
    persistent_cache: bool = False,
    accept_zstd: bool = False,
    blake3: bool = False,
) -> FetchedPiece:
    """Download piece ``number`` of ``task_id`` from ``addr`` into ``fd`` (blocking; run it on an executor).

    New connections use TLS with ``ssl_context``, else with the pool's; plaintext when neither has one.
    ``persistent_cache`` asks for a piece of a persistent cache task (Vortex tags 4 and 5); with ``accept_zstd``
    the request says that a zstd-compressed answer is welcome (only to parents that offered it,
    ``dragonfly.daemon.compression``). With ``blake3`` the bytes are also hashed with BLAKE3 as they arrive.

    Over plaintext and native TLS, without ``accept_zstd``, the whole exchange is one native call
    (``native.fetch_piece``): the thread takes the GIL back once per piece instead of once per step (bench/RESULTS.md
    §2, "One native call per fetched piece"). A compressed answer and Python's ssl take the steps in Python.
    """
    abort = abort or FetchAbort()
    tag = native.TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE if persistent_cache else native.TAG_DOWNLOAD_PIECE
    reused = pool.get(addr) if pool is not None else None
    context = ssl_context or (pool.ssl_context if pool is not None else None)
    native_tls = pool.native_tls if pool is not None and ssl_context is None else None

    def exchange(conn: Connection, reused: bool) -> tuple[str, int, int, bytes | None] | None:
        """The request and its answer on ``conn``: the parent's digest, the CRC-32, the bytes on the wire and the
        BLAKE3 digest; None when ``reused`` and the connection was closed before any byte of the answer."""
        if not accept_zstd and not isinstance(conn, ssl.SSLSocket):
            if isinstance(conn, NativeTlsConnection):
                answer = conn.tls.fetch_piece(
                    task_id, number, offset, length, fd, buffer, timeout, tag=tag, blake3=blake3, reused=reused
                )
            else:
                answer = native.fetch_piece(
                    conn.fileno(), task_id, number, offset, length, fd, buffer, timeout,
                    tag=tag, blake3=blake3, reused=reused,
                )  # fmt: skip
            if answer is None:
                return None
            digest, crc, strong = answer
            return digest, crc, length, strong
        request = native.encode_download_piece(task_id, number, tag=tag)
        if accept_zstd:
            request = compression.with_accept_flag(request)
        try:
            _send_request(conn, request, timeout)
            header = _read(conn, native.HEADER_SIZE, timeout)
        except (ShortRead, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as exc:
            if not reused or (isinstance(exc, ShortRead) and exc.received):
                raise
            return None
        return _steps(
            conn, header, number, fd=fd, offset=offset, length=length, buffer=buffer, timeout=timeout,
            content_tag=tag + 1, accept_zstd=accept_zstd, blake3=blake3,
        )  # fmt: skip

    sock = reused or _connect(addr, connect_timeout, context, native_tls)
    try:
        abort._attach(_plain(sock))
        _plain(sock).settimeout(timeout)
        answered = exchange(sock, reused is not None)
        if answered is None:
            # The parent closed the pooled connection while it idled: ask again on a fresh one, unless it was this
            # fetch's own abort that shut it (then no new connection is worth making).
            sock.close()
            if abort.reason is not None:
                raise PieceAbandoned(abort.reason)
            sock = _connect(addr, connect_timeout, context, native_tls)
            abort._attach(_plain(sock))
            _plain(sock).settimeout(timeout)
            answered = exchange(sock, False)
        assert answered is not None  # only a reused connection answers None
        digest, crc, wire, strong = answered
        abort._detach()
    except BaseException as exc:
        abort._detach()
        with contextlib.suppress(OSError):
            sock.close()
        if abort.reason is not None and not isinstance(exc, PieceAbandoned):
            raise PieceAbandoned(abort.reason) from exc
        raise
    if pool is not None:
        pool.put(addr, sock)
    else:
        sock.close()
    hashed = None if strong is None else f"blake3:{strong.hex()}"
    return FetchedPiece(
        number=number, offset=offset, length=length, digest=digest, crc=crc, wire_length=wire, blake3=hashed
    )

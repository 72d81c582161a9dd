"""Vortex TCP piece server (``docs/reference/protocol.md#vortex``).

Per request: read the 74-byte request frame on the event loop (or on the thread that sent the previous piece, see
below), look the piece up (only finished, verified pieces exist in storage), charge the upload token bucket, write the
metadata frame, then the piece bytes: with ``sendfile(2)`` on plaintext connections, through OpenSSL
(``dragonfly.daemon.vortex_tls``) on TLS ones. A connection may carry several requests. uvloop has no ``sendfile``, so
the loop's own transports are never used for piece bytes.

With mutual TLS (the default) each connection first completes a TLS handshake on the loop (the client must
present a certificate of the cluster CA), and requests are read from the non-blocking ``SSLSocket`` on the loop;
with ``storage.server.nativeTls`` the same steps go through rustls (``vortex_tls.NativeTlsSocket``), and a piece is
read, encrypted and written by one native call per socketful.

A slow or stalled reader must cost a socket, never a thread for long: the piece bytes are written by an executor
thread (reading the content file may need the disk, which must not block the event loop) to the non-blocking socket,
and the thread returns once the socket buffer is full (has stayed full for 20 ms, or after 0.2 s in all); the loop
then waits for it to drain, for at most the write timeout without progress. Once a piece is sent, its thread waits
briefly for the connection's next request and, when it is a piece of the same task that may go out at once (stored,
the content file intact, upload tokens available), sends that too without a round trip through the loop
(``_PieceRun``); anything else goes back to the loop, which answers it as the first. Connections are capped per remote
host and in total (``ConnectionLimiter``), and a bad request gets an error frame and an orderly close, not a reset
(docs/robustness.md#serving-pieces).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from dragonfly.common import native
from dragonfly.common.errors import DragonflyError, VortexError
from dragonfly.daemon import compression, vortex_tls
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.compression import CorruptPiece, PieceCache
from dragonfly.daemon.errors import InvalidTaskId
from dragonfly.daemon.storage import Storage
from dragonfly.daemon.storage.metadata import PieceRecord, TaskRecord
from dragonfly.daemon.upload.connection_limits import Connection, ConnectionLimiter

log = logging.getLogger(__name__)

ERROR_INVALID_ARGUMENT = 1
ERROR_NOT_FOUND = 2
ERROR_INTERNAL = 3
REMOTE_PEER = 1
# A request frame is 6 + 64 + 4 bytes; anything much longer is not a piece request.
_MAX_REQUEST_VALUE = 1024
# A download request's value: a 64-character task id and a u32 piece number (one more byte: flags of ours).
_REQUEST_LENGTH = 68
_REQUEST_TIMEOUT = 30.0
# How long a kept-alive connection may wait for its next request.
_IDLE_TIMEOUT = 60.0
# After an error frame: how long the rest of a bad request is read and dropped, so that closing the socket with
# unread bytes does not turn into a TCP reset that destroys the error frame in flight.
_LINGER = 1.0
_LINGER_BYTES = 1 << 20
# A TLS send whose socket is full waits for it on its executor thread for up to this long in all, in slices of
# _SEND_SLICE, before handing the wait to the event loop: a reader that keeps up then costs one loop round trip per
# piece instead of one per socketful (on a busy host each round trip waits for the loop), while a slow or stalled
# reader still holds a thread for at most this long per call.
_SEND_PATIENCE = 0.2
_SEND_SLICE = 0.02
# After sending a piece, how long its executor thread waits for the connection's next request before handing the
# connection back to the loop. A child that keeps the connection asks for its next piece once it has read the last,
# which may still fill the socket buffers when the thread is done (several MiB on loopback; 20 ms missed most requests
# of a child with 8 pieces in flight); a slower one costs the thread this long once.
_NEXT_REQUEST_PATIENCE = 0.1
# At most this many threads wait for a next request at once (a quarter of the daemon's 32 upload threads): beyond
# it a thread hands its connection back at once, so waiting never keeps other connections' pieces from a thread.
_WAITING_RUNS = 8
# A thread serving one connection's requests in a row returns to the loop at least this often, so that the
# traffic served is counted (SyncHost, metrics) and a busy connection holds a thread in bounded slices.
_RUN_SLICE = 0.25
# A whole download request frame: the header and its value.
_REQUEST_FRAME = 6 + _REQUEST_LENGTH


# An accepted connection: a plain socket, an ssl.SSLSocket (Python's ssl) or a socket with rustls state.
Conn = socket.socket | vortex_tls.NativeTlsSocket


async def _recv(loop: asyncio.AbstractEventLoop, sock: Conn, count: int) -> bytes:
    """Receive up to ``count`` bytes from a non-blocking plain or TLS socket, waiting on the loop."""
    if isinstance(sock, vortex_tls.NativeTlsSocket):
        return await vortex_tls.recv_native(loop, sock, count)
    if not isinstance(sock, ssl.SSLSocket):
        return await loop.sock_recv(sock, count)
    while True:
        try:
            return sock.recv(count)
        except ssl.SSLWantReadError:
            await vortex_tls.wait_ready(loop, sock)
        except ssl.SSLWantWriteError:
            await vortex_tls.wait_ready(loop, sock, write=True)
        except ssl.SSLZeroReturnError:
            return b""


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: Conn, count: int, carry: _Carry | None = None) -> bytes:
    data = bytearray(carry.take(count) if carry is not None else b"")
    while len(data) < count:
        chunk = await _recv(loop, sock, count - len(data))
        if not chunk:
            raise ConnectionResetError(f"client closed the connection after {len(data)} of {count} request bytes")
        data += chunk
    return bytes(data)


def _sendfile_some(sock: socket.socket, fd: int, offset: int, count: int) -> int:
    """Send what the non-blocking socket takes of the file range now; 0 when its buffer is full (executor thread)."""
    try:
        sent = os.sendfile(sock.fileno(), fd, offset, count)
    except BlockingIOError:
        return 0
    if sent == 0:
        raise EOFError(f"content file ends before {offset} + {count}")
    return sent


def _send_patiently(sender: Sender) -> str | None:
    """``sender.send_some`` until all is sent (None), waiting here for the socket while it keeps taking bytes
    within ``_SEND_SLICE``, for at most ``_SEND_PATIENCE``; then "read" or "write" for the loop to wait for."""
    deadline = time.monotonic() + _SEND_PATIENCE
    poller: select.poll | None = None
    while (blocked := sender.send_some()) is not None:
        if poller is None:
            poller = select.poll()
        else:
            poller.unregister(sender.sock)
        poller.register(sender.sock, select.POLLOUT if blocked == "write" else select.POLLIN)
        if time.monotonic() >= deadline or not poller.poll(_SEND_SLICE * 1000):
            return blocked
    return None


def _recv_now(sock: Conn, count: int) -> bytes | str:
    """Receive up to ``count`` bytes now (b"" once the client closed), or "read" / "write" to wait for first."""
    if isinstance(sock, vortex_tls.NativeTlsSocket):
        return sock.stream.recv(count)
    try:
        return sock.recv(count)
    except (BlockingIOError, ssl.SSLWantReadError):
        return "read"
    except ssl.SSLWantWriteError:
        return "write"
    except ssl.SSLZeroReturnError:
        return b""


class _Carry:
    """What an executor thread read of a connection's next request and left to the loop: its first bytes, and
    whether the client closed the connection instead."""

    __slots__ = ("data", "eof")

    def __init__(self) -> None:
        self.data = b""
        self.eof = False

    def take(self, count: int) -> bytes:
        taken, self.data = self.data[:count], self.data[count:]
        return taken


class PlainPieceSender:
    """A metadata frame then a file range over a non-blocking plaintext socket (``sendfile``), in steps that never
    wait: ``send_some`` (an executor thread) sends what the socket takes and returns "write" when it is full."""

    __slots__ = ("_end", "_fd", "_head", "_pos", "sock")

    def __init__(self, sock: socket.socket, head: bytes, fd: int, offset: int, length: int) -> None:
        self.sock = sock
        self._head = memoryview(head)
        self._fd = fd
        self._pos = offset
        self._end = offset + length

    def send_some(self) -> str | None:
        """Send what the socket takes; return None when all is sent, else "write" to wait for."""
        while self._head:
            try:
                sent = self.sock.send(self._head)
            except BlockingIOError:
                return "write"
            self._head = self._head[sent:]
        while self._pos < self._end:
            sent = _sendfile_some(self.sock, self._fd, self._pos, self._end - self._pos)
            if not sent:
                return "write"
            self._pos += sent
        return None


# What sends a head and a file range in steps on an executor thread (``send_some``).
Sender = vortex_tls.PieceSender | vortex_tls.NativePieceSender | PlainPieceSender


def _sender(conn: Conn, head: bytes, fd: int, offset: int, length: int) -> Sender:
    if isinstance(conn, (ssl.SSLSocket, vortex_tls.NativeTlsSocket)):
        return vortex_tls.sender(conn, head, fd, offset, length)
    return PlainPieceSender(conn, head, fd, offset, length)


def _piece_frame(piece: PieceRecord, frame_id: int, content_tag: int) -> bytes:
    meta = native.PieceMetadata(
        number=piece.number,
        offset=piece.offset,
        length=piece.length,
        digest=piece.digest,
        parent_id=piece.parent_id or "",
        traffic_type=REMOTE_PEER,
        cost_secs=int(piece.cost),
        created_at=int(piece.created_at),
    )
    return native.encode_piece_content(meta, frame_id, tag=content_tag)


class _PieceRun:
    """A piece being sent on an executor thread, then the connection's next requests that the thread may answer
    itself (``step``), so that a child asking for piece after piece costs no loop round trip per piece.

    The thread answers only a download request of the run's tag for another stored piece of the same task, whose
    stored record is still the one the loop looked up, whose content file is intact (a finished task) and whose
    upload tokens are there now; it reads at most one request frame. Everything else (another task, an unknown
    piece, a malformed or flagged request, tokens to wait for, the client closing) is left in ``carry`` for the
    loop, which answers it as any request. The loop holds the content file's descriptor for the whole run and
    reports ``served`` (each piece's length) when it returns.
    """

    __slots__ = (
        "_bucket",
        "_content_tag",
        "_fd",
        "_length",
        "_report_at",
        "_request_tag",
        "_sender",
        "_stop",
        "_storage",
        "_task",
        "_waiting",
        "_wake",
        "_wake_lock",
        "cancelled",
        "carry",
        "conn",
        "served",
        "sock",
    )

    def __init__(
        self,
        conn: Conn,
        *,
        storage: Storage,
        task: TaskRecord,
        request_tag: int,
        content_tag: int,
        fd: int,
        head: bytes,
        piece: PieceRecord,
        bucket: native.TokenBucket,
        carry: _Carry,
        stop: threading.Event,
        waiting: threading.Semaphore,
    ) -> None:
        self.conn = conn
        self.sock = conn.sock if isinstance(conn, vortex_tls.NativeTlsSocket) else conn
        self._storage = storage
        self._task = task
        self._request_tag = request_tag
        self._content_tag = content_tag
        self._fd = fd
        self._bucket = bucket
        self.carry = carry
        self._stop = stop
        self._waiting = waiting
        self._sender = _sender(conn, head, fd, piece.offset, piece.length)
        self._length = piece.length
        self._report_at = time.monotonic() + _RUN_SLICE
        self.served: list[int] = []
        self.cancelled = False
        # An eventfd that a cancel writes to, made when the thread first waits for a next request: the wait polls
        # it with the socket, so a cancel ends the wait at once instead of up to _NEXT_REQUEST_PATIENCE later.
        self._wake: int | None = None
        self._wake_lock = threading.Lock()

    def cancel(self) -> None:
        """Stop after the piece being sent, or at once while waiting for the next request, whose piece is then not
        started (the handler was cancelled: eviction, shutdown). Called on the loop while ``step`` may run."""
        with self._wake_lock:
            self.cancelled = True
            if self._wake is not None:
                os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        """Release the wake-up descriptor (once no thread runs ``step``)."""
        if self._wake is not None:
            os.close(self._wake)
            self._wake = None

    def step(self) -> str | None:
        """Send until the socket is full ("read" / "write" for the loop to wait for) or the run ends (None)."""
        while True:
            blocked = _send_patiently(self._sender)
            if blocked is not None:
                return blocked
            self.served.append(self._length)
            if self.cancelled or self._stop.is_set() or time.monotonic() >= self._report_at:
                return None
            if not self._next():
                return None

    def _next(self) -> bool:
        """Read the next request and start on its piece; False when it is the loop's to answer."""
        carry = self.carry
        if self._waiting.acquire(blocking=False):
            try:
                with self._wake_lock:
                    if self.cancelled:
                        return False
                    if self._wake is None:
                        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                _read_request(self.conn, self.sock, carry, _NEXT_REQUEST_PATIENCE, self._wake)
            finally:
                self._waiting.release()
        else:
            _read_request(self.conn, self.sock, carry, 0.0)
        # A cancel during the wait: the request read (if any) is not answered.
        if self.cancelled or len(carry.data) < _REQUEST_FRAME:
            return False
        frame_id, tag, length = struct.unpack_from(">BBI", carry.data)
        if tag != self._request_tag or length != _REQUEST_LENGTH:
            return False
        try:
            task_id, number = native.decode_download_piece(carry.data[native.HEADER_SIZE :])
        except VortexError:
            return False
        task = self._task
        if task_id != task.id or self._storage.get_task(task_id) is not task:
            return False
        piece = task.pieces.get(number)
        if piece is None:
            return False
        # content_intact only reads once the task is stamped (it stamps on the loop otherwise).
        if task.finished_at is not None and (task.content_mtime_ns is None or not self._storage.content_intact(task)):
            return False
        if not self._bucket.try_acquire(piece.length):
            return False
        carry.data = b""
        self._sender = _sender(
            self.conn, _piece_frame(piece, frame_id, self._content_tag), self._fd, piece.offset, piece.length
        )
        self._length = piece.length
        return True


def _read_request(conn: Conn, sock: socket.socket, carry: _Carry, patience: float, wake: int = -1) -> None:
    """Read into ``carry`` up to one request frame, waiting for it at most ``patience`` seconds, and not at all once
    ``wake`` (a descriptor, -1 for none) is readable."""
    deadline = time.monotonic() + patience
    while len(carry.data) < _REQUEST_FRAME:
        got = _recv_now(conn, _REQUEST_FRAME - len(carry.data))
        if isinstance(got, str):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            poller = select.poll()
            poller.register(sock, select.POLLIN if got == "read" else select.POLLOUT)
            if wake >= 0:
                poller.register(wake, select.POLLIN)
            ready = poller.poll(remaining * 1000)
            if not ready or any(fd == wake for fd, _events in ready):
                return
            continue
        if not got:
            carry.eof = True
            return
        carry.data += got


class VortexServer:
    """Serve finished pieces of stored tasks to other peers."""

    def __init__(
        self,
        storage: Storage,
        *,
        ip: str,
        port: int,
        upload_bucket: native.TokenBucket,
        executor: Executor,
        timeout: float,
        max_connections: int = 1024,
        max_connections_per_host: int = 64,
        on_served: Callable[[str, int], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        native_tls: native.TlsServerConfig | None = None,
        persistent_cache: Storage | None = None,
        compression: bool = False,
        on_corrupt: Callable[[str], None] | None = None,
    ) -> None:
        self._storage = storage
        # Persistent cache tasks (Vortex tags 4 and 5) live in a storage of their own.
        self._persistent_cache = persistent_cache
        # zstd for persistent cache pieces, to children that ask for it (dragonfly.daemon.compression).
        self._compression = compression
        self.compressed_pieces = PieceCache()
        # Told about a persistent cache task whose stored bytes no longer match their CRC-32 (it is evicted).
        self._on_corrupt = on_corrupt
        self._ip = ip
        self._port = port
        self._bucket = upload_bucket
        self._executor = executor
        # The longest a send may wait for the reader to take more bytes.
        self._timeout = timeout
        self._on_served = on_served
        self._ssl = ssl_context
        # storage.server.nativeTls: mutual TLS through rustls instead of Python's ssl (used when given).
        self._native_tls = native_tls
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # Set on stop: threads serving requests in a row hand their connections back after the current piece.
        self._stop_runs = threading.Event()
        self._waiting_runs = threading.Semaphore(_WAITING_RUNS)
        self.limits = ConnectionLimiter(max_total=max_connections, max_per_host=max_connections_per_host)

    @property
    def active_connections(self) -> int:
        return self.limits.total

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("server is not started")
        port: int = self._listener.getsockname()[1]
        return port

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._ip else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self._ip, self._port))
        listener.listen(1024)
        listener.setblocking(False)
        self._listener = listener
        self._accept_task = asyncio.create_task(self._accept_loop(), name="vortex-accept")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; let pieces being sent finish within ``grace`` seconds."""
        self._stop_runs.set()
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        if self._listener is not None:
            self._listener.close()
        if self._handlers:
            _done, pending = await asyncio.wait(self._handlers, timeout=grace)
            for task in pending:
                task.cancel()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(self._listener)
            except OSError as exc:
                log.warning("vortex accept failed", extra={"error": exc})
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            host = addr[0] if isinstance(addr, tuple) else str(addr)
            task = asyncio.create_task(self._handle(conn, host))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _send_error(self, conn: Conn, frame_id: int, code: int, message: str) -> None:
        loop = asyncio.get_running_loop()
        frame = native.encode_error(code, message, frame_id)
        with contextlib.suppress(OSError, ssl.SSLError):
            async with asyncio.timeout(5.0):
                if isinstance(conn, (ssl.SSLSocket, vortex_tls.NativeTlsSocket)):
                    await self._send_tls(loop, vortex_tls.sender(conn, frame, -1, 0, 0))
                else:
                    await loop.sock_sendall(conn, frame)

    async def _refuse(self, conn: Conn, frame_id: int, message: str) -> None:
        """Answer a malformed request with an InvalidArgument frame and close in order, so the client reads it."""
        await self._send_error(conn, frame_id, ERROR_INVALID_ARGUMENT, message)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, ssl.SSLError):
            # The TCP half-close even on a TLS connection, whose state the drain below still needs.
            socket.socket.shutdown(conn.sock if isinstance(conn, vortex_tls.NativeTlsSocket) else conn, socket.SHUT_WR)
            async with asyncio.timeout(_LINGER):
                dropped = 0
                while dropped < _LINGER_BYTES:
                    chunk = await _recv(loop, conn, 65536)
                    if not chunk:
                        break
                    dropped += len(chunk)

    async def _handle(self, sock: socket.socket, host: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = self.limits.admit(host, task.cancel)
        if connection is None:
            log.warning("vortex connection refused: too many connections", extra={"host": host})
            sock.close()
            return
        conn: Conn = sock
        try:
            # A client certificate of the cluster CA is required.
            if self._native_tls is not None:
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    conn = await vortex_tls.accept_native(sock, self._native_tls)
            elif self._ssl is not None:
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    conn = await vortex_tls.accept(sock, self._ssl)
            # Dragonfly's peers send one request per connection and close; ours keep the connection for the next
            # piece, which saves a handshake and a slow start per piece. Both end here on EOF.
            first = True
            carry = _Carry()
            while await self._serve_one(conn, connection, _REQUEST_TIMEOUT if first else _IDLE_TIMEOUT, carry):
                first = False
        except ssl.SSLError as exc:
            log.warning("vortex TLS failed", extra={"host": host, "error": repr(exc)})
        except (OSError, TimeoutError, EOFError, DragonflyError) as exc:
            log.info("vortex request failed", extra={"host": host, "error": repr(exc)})
        finally:
            self.limits.release(connection)
            conn.close()
            sock.close()

    async def _serve_one(self, conn: Conn, connection: Connection, wait: float, carry: _Carry) -> bool:
        """Answer one request (its first bytes may be in ``carry``, left by an executor thread) and those its
        thread answers after it; return False when the client closed the connection or it must be closed."""
        loop = asyncio.get_running_loop()
        header = carry.take(native.HEADER_SIZE)
        if not header:
            if carry.eof:
                return False
            self.limits.set_idle(connection, True)
            try:
                async with asyncio.timeout(wait):
                    header = await _recv(loop, conn, native.HEADER_SIZE)
            except TimeoutError:
                return False
            if not header:
                return False
        self.limits.set_idle(connection, False)
        async with asyncio.timeout(_REQUEST_TIMEOUT):
            if len(header) < native.HEADER_SIZE:
                header += await _recv_exact(loop, conn, native.HEADER_SIZE - len(header), carry)
            try:
                decoded = compression.extension_header(header, native.TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE)
                frame_id, tag, length = decoded or native.decode_header(header)
            except VortexError as exc:
                await self._refuse(conn, header[0], f"malformed frame header: {exc}")
                return False
            if tag == native.TAG_DOWNLOAD_PIECE:
                storage, content_tag = self._storage, native.TAG_PIECE_CONTENT
            elif tag == native.TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE and self._persistent_cache is not None:
                storage, content_tag = self._persistent_cache, native.TAG_PERSISTENT_CACHE_PIECE_CONTENT
            else:
                await self._refuse(conn, frame_id, f"unsupported request tag {tag}")
                return False
            if length > _MAX_REQUEST_VALUE:
                await self._refuse(conn, frame_id, f"request of {length} bytes is too long")
                return False
            value = await _recv_exact(loop, conn, length, carry)
        accept_zstd = False
        if content_tag == native.TAG_PERSISTENT_CACHE_PIECE_CONTENT and len(value) == _REQUEST_LENGTH + 1:
            accept_zstd = self._compression and bool(value[-1] & compression.FLAG_ACCEPT_ZSTD)
            value = value[:_REQUEST_LENGTH]
        try:
            task_id, number = native.decode_download_piece(value)
            task = storage.get_task(task_id)
        except (VortexError, InvalidTaskId) as exc:
            await self._refuse(conn, frame_id, str(exc))
            return False
        piece = task.pieces.get(number) if task is not None else None
        if task is not None and piece is not None and storage.is_finished(task) and not storage.content_intact(task):
            # Its file changed after the task finished: an output hard-linked to it was edited in place
            # (docs/output-and-cache.md). Those bytes are never sent; the task is dropped, to be downloaded again.
            log.warning("stored task changed since it finished: dropped, not served", extra={"task_id": task_id})
            if storage is self._storage:
                storage.delete_task(task_id)
            elif self._on_corrupt is not None:
                self._on_corrupt(task_id)
            piece = None
        if task is None or piece is None:
            await self._send_error(conn, frame_id, ERROR_NOT_FOUND, f"piece {number} of task {task_id} not found")
            return True
        frame = _piece_frame(piece, frame_id, content_tag)
        try:
            if accept_zstd and await self._send_compressed(
                conn, storage, (task_id, piece.number, piece.digest), frame, piece.offset, piece.length
            ):
                return True
        except CorruptPiece as exc:
            log.warning("stored piece failed its CRC-32: not served", extra={"task_id": task_id, "error": str(exc)})
            if self._on_corrupt is not None:
                self._on_corrupt(task_id)
            await self._send_error(conn, frame_id, ERROR_NOT_FOUND, f"piece {number} of task {task_id} not found")
            return True
        wait_tokens = self._bucket.reserve(piece.length)
        if wait_tokens > 0:
            await asyncio.sleep(wait_tokens)
        with storage.content_fd(task_id) as fd:
            run = _PieceRun(
                conn,
                storage=storage,
                task=task,
                request_tag=tag,
                content_tag=content_tag,
                fd=fd,
                head=frame,
                piece=piece,
                bucket=self._bucket,
                carry=carry,
                stop=self._stop_runs,
                waiting=self._waiting_runs,
            )
            try:
                await self._send_run(loop, run)
            finally:
                run.close()
                if run.served:
                    storage.touch(task_id)
                    if self._on_served is not None:
                        for served in run.served:
                            self._on_served(task_id, served)
        return True

    async def _send_compressed(
        self, conn: Conn, storage: Storage, key: tuple[str, int, str], frame: bytes, offset: int, length: int
    ) -> bool:
        """Send the piece zstd-compressed if it compresses; return False (nothing sent) when it does not."""
        task_id = key[0]
        with storage.content_fd(task_id) as fd:
            compressed = await run_blocking(self._executor, self.compressed_pieces.compress, key, fd, offset, length)
        if compressed is None:
            return False
        data = compression.compressed_frame(frame[0], frame[native.HEADER_SIZE :], len(compressed)) + compressed
        wait_tokens = self._bucket.reserve(len(compressed))
        if wait_tokens > 0:
            await asyncio.sleep(wait_tokens)
        loop = asyncio.get_running_loop()
        if isinstance(conn, (ssl.SSLSocket, vortex_tls.NativeTlsSocket)):
            await self._send_tls(loop, vortex_tls.sender(conn, data, -1, 0, 0))
        else:
            async with asyncio.timeout(self._timeout + len(data) / (1 << 20)):
                await loop.sock_sendall(conn, data)
        storage.touch(task_id)
        if self._on_served is not None:
            self._on_served(task_id, len(compressed))
        return True

    async def _send_run(self, loop: asyncio.AbstractEventLoop, run: _PieceRun) -> None:
        """Step ``run`` on executor threads, never holding one for a slow reader (each step returns when the
        socket stays full; the loop then waits for it, for at most the write timeout)."""
        while (blocked := await run_blocking(self._executor, run.step, on_cancel=run.cancel)) is not None:
            async with asyncio.timeout(self._timeout):
                await vortex_tls.wait_ready(loop, run.sock, write=blocked == "write")

    async def _send_tls(self, loop: asyncio.AbstractEventLoop, sender: Sender) -> None:
        """Write a head and a file range through TLS the way _send_piece does: never holding a thread for a slow
        reader (each step on an executor thread returns when the socket is full; the loop waits for it)."""
        while (blocked := await run_blocking(self._executor, _send_patiently, sender)) is not None:
            async with asyncio.timeout(self._timeout):
                await vortex_tls.wait_ready(loop, sender.sock, write=blocked == "write")

"""Pure-Python twin of ``_dragonfly_piece_io``: same functions, results, exceptions and messages.

The contract is in ``dragonfly.common.native``. Argument checks run in the order the native glue runs them, so
that both raise the same exception for the same bad call.
"""

from __future__ import annotations

import errno
import math
import operator
import os
import select
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from dragonfly.common.errors import ShortRead, VortexError

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Buffer

__all__ = [
    "HEADER_SIZE",
    "MAX_VALUE_LENGTH",
    "TAG_CACHE_PIECE_CONTENT",
    "TAG_CLOSE",
    "TAG_DOWNLOAD_CACHE_PIECE",
    "TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE",
    "TAG_DOWNLOAD_PERSISTENT_PIECE",
    "TAG_DOWNLOAD_PIECE",
    "TAG_ERROR",
    "TAG_PERSISTENT_CACHE_PIECE_CONTENT",
    "TAG_PERSISTENT_PIECE_CONTENT",
    "TAG_PIECE_CONTENT",
    "PieceMetadata",
    "TlsClientConfig",
    "TlsClientStream",
    "TlsServerConfig",
    "TlsServerStream",
    "TokenBucket",
    "decode_download_piece",
    "decode_error",
    "decode_header",
    "decode_piece_content",
    "encode_close",
    "encode_download_piece",
    "encode_error",
    "encode_piece_content",
    "read_piece",
    "recv_to_file",
    "recv_to_file_blake3",
    "sendfile",
    "write_piece",
]

# Linux caps one read/write/sendfile at MAX_RW_COUNT bytes.
_MAX_RW_COUNT: Final = 0x7FFF_F000
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
# The formats pyo3's PyBuffer<u8> accepts on a little-endian machine.
_U8_FORMATS: Final = frozenset({"B", "c", "@B", "@c", "=B", "=c", "<B", "<c"})


# -- argument checks (the wording matches python.rs) --------------------------------------------------------------


def _i64(value: int) -> int:
    value = operator.index(value)
    if not _I64_MIN <= value <= _I64_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return value


def _non_negative(name: str, value: int) -> int:
    value = _i64(value)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def _timeout(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("timeout must be None or a finite number >= 0")
    return value


def _u8_view(obj: Buffer) -> memoryview:
    view = memoryview(obj)
    if view.itemsize != 1 or view.format not in _U8_FORMATS:
        view.release()
        raise BufferError("buffer contents are not compatible with u8")
    return view


def _contiguous(view: memoryview) -> memoryview:
    if not view.c_contiguous:
        view.release()
        raise BufferError("buffer must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _writable(view: memoryview) -> memoryview:
    if view.readonly:
        view.release()
        raise TypeError("buffer must be writable")
    return _contiguous(view)


def _bytes_of(obj: Buffer) -> bytes:
    if isinstance(obj, bytes):
        return obj
    with _u8_view(obj) as raw, _contiguous(raw) as view:
        return view.tobytes()


# -- piece I/O ----------------------------------------------------------------------------------------------------


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    written = 0
    while written < len(view):
        n = os.pwrite(fd, view[written:], offset + written)
        if n == 0:
            raise OSError("write zero")
        written += n


def write_piece(fd: int, offset: int, data: Buffer) -> int:
    """Write all of ``data`` at ``offset`` and return its CRC-32."""
    with _u8_view(data) as raw:
        offset = _non_negative("offset", offset)
        with _contiguous(raw) as view:
            crc = zlib.crc32(view)
            _pwrite_all(fd, view, offset)
    return crc


def read_piece(fd: int, offset: int, buffer: Buffer) -> int:
    """Read at ``offset`` until ``buffer`` is full or the file ends; return the count read."""
    with _u8_view(buffer) as raw:
        offset = _non_negative("offset", offset)
        with _writable(raw) as view:
            filled = 0
            while filled < len(view):
                n = os.preadv(fd, [view[filled:]], offset + filled)
                if n == 0:
                    break
                filled += n
    return filled


class _Waiter:
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
    offset = _non_negative("offset", offset)
    count = _non_negative("count", count)
    waiter = _Waiter(sock_fd, select.POLLOUT, _timeout(timeout))
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
    with _u8_view(buffer) as raw:
        offset = _non_negative("offset", offset)
        count = _non_negative("count", count)
        waiter = _Waiter(sock_fd, select.POLLIN, _timeout(timeout))
        with _writable(raw) as view:
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
                        _pwrite_all(file_fd, view[:filled], offset + received)
                        raise ShortRead(count, received + filled)
                    crc = zlib.crc32(view[filled : filled + n], crc)
                    filled += n
                    waiter.progress()
                if observe is not None:
                    observe(view[:filled])
                _pwrite_all(file_fd, view[:filled], offset + received)
                received += filled
    return crc


# -- Vortex over mutual TLS, client side ---------------------------------------------------------------------------

#: Ciphertext bytes asked of the socket per read, as the native side does.
_TLS_READ_CHUNK = 256 * 1024


class TlsClientConfig:
    """The client side of mutual TLS for Vortex, from the PEM files of the cluster CA, this host's chain and key."""

    __slots__ = ("context",)

    def __init__(self, ca_cert: str, cert: str, key: str) -> None:
        import ssl

        for path in (ca_cert, cert, key):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise OSError(f"cannot read {path}: {exc.strerror}") from None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cafile=ca_cert)
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context


class TlsClientStream:
    """One TLS client connection over a connected socket that the caller keeps open (Python's ssl, memory BIOs)."""

    __slots__ = ("_fd", "_in", "_out", "_tls")

    def __init__(self, config: TlsClientConfig, sock_fd: int, server_ip: str, timeout: float | None = None) -> None:
        import ipaddress
        import ssl

        timeout = _timeout(timeout)
        try:
            ipaddress.ip_address(server_ip)
        except ValueError:
            raise ValueError(f"server_ip must be an IP address, got {server_ip!r}") from None
        self._fd = sock_fd
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = config.context.wrap_bio(self._in, self._out, server_hostname=server_ip)
        waiter = _Waiter(sock_fd, select.POLLIN, timeout)
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
        waiter = _Waiter(self._fd, select.POLLOUT, timeout)
        while view:
            waiter.wait()
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                continue
            waiter.progress()

    def _feed(self, waiter: _Waiter) -> bool:
        waiter.wait()
        try:
            data = os.read(self._fd, _TLS_READ_CHUNK)
        except BlockingIOError:
            return True
        if not data:
            return False
        self._in.write(data)
        waiter.progress()
        return True

    def _read_some(self, out: memoryview, waiter: _Waiter) -> int:
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
        timeout = _timeout(timeout)
        self._tls.write(data)
        self._flush(timeout)

    def recv_exact(self, count: int, timeout: float | None = None) -> bytes:
        if count > MAX_VALUE_LENGTH + HEADER_SIZE:
            raise ValueError(f"count {count} is larger than a Vortex frame")
        waiter = _Waiter(self._fd, select.POLLIN, _timeout(timeout))
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

        with _u8_view(buffer) as raw:
            offset = _non_negative("offset", offset)
            count = _non_negative("count", count)
            waiter = _Waiter(self._fd, select.POLLIN, _timeout(timeout))
            with _writable(raw) as view:
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
                            _pwrite_all(file_fd, view[:filled], offset + received)
                            raise ShortRead(count, received + filled)
                        filled += n
                    crc = zlib.crc32(view[:filled], crc)
                    if hasher is not None:
                        hasher.update(view[:filled])
                    _pwrite_all(file_fd, view[:filled], offset + received)
                    received += filled
        return crc, None if hasher is None else hasher.digest()


# -- Vortex over mutual TLS, server side ---------------------------------------------------------------------------

#: Plaintext bytes read from the content file and encrypted per step, as the native side does.
_TLS_SEND_CHUNK = 128 * 1024


class TlsServerConfig:
    """The server side of mutual TLS for Vortex, from the PEM files of the cluster CA, this host's chain and key."""

    __slots__ = ("context",)

    def __init__(self, ca_cert: str, cert: str, key: str) -> None:
        import ssl

        for path in (ca_cert, cert, key):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise OSError(f"cannot read {path}: {exc.strerror}") from None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cafile=ca_cert)
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context


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
            data = os.read(self._fd, _TLS_READ_CHUNK)
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
        with _u8_view(head) as raw:
            file_fd = operator.index(file_fd)
            offset = _non_negative("offset", offset)
            length = _non_negative("length", length)
            view = _contiguous(raw).toreadonly()
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


# -- token bucket -------------------------------------------------------------------------------------------------


def _rate_and_burst(rate: float, burst: float | None) -> tuple[float, float]:
    rate = float(rate)
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError("rate must be a finite number >= 0")
    burst = rate if burst is None else float(burst)
    if not (math.isfinite(burst) and burst >= 0):
        raise ValueError("burst must be a finite number >= 0")
    return rate, burst


class TokenBucket:
    """Token bucket for host-level rate limits (bytes/s, 0 = unlimited), shared by threads.

    Tokens may go negative: a reservation succeeds at once and returns how long to wait for the debt to be repaid.
    """

    __slots__ = ("_burst", "_last", "_lock", "_origin", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate, self._burst = _rate_and_burst(rate, burst)
        self._tokens = self._burst
        self._origin = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def reserve(self, n: int) -> float:
        """Take ``n`` tokens now and return the seconds the caller must wait before using them."""
        n = _non_negative("n", n)
        now = time.monotonic() - self._origin
        with self._lock:
            if self._rate == 0:
                return 0.0
            self._refill(now)
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def acquire(self, n: int) -> None:
        """Take ``n`` tokens, blocking until they are covered."""
        wait = self.reserve(n)
        if wait > 0:
            time.sleep(wait)

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` tokens only if they are available now."""
        n = _non_negative("n", n)
        now = time.monotonic() - self._origin
        with self._lock:
            if self._rate == 0:
                return True
            self._refill(now)
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate and burst; tokens accrued so far count at the old rate, and debt is kept."""
        rate, burst = _rate_and_burst(rate, burst)
        now = time.monotonic() - self._origin
        with self._lock:
            self._refill(now)
            if self._rate == 0:
                self._tokens = burst
            self._rate = rate
            self._burst = burst
            self._tokens = min(self._tokens, burst)
            self._last = max(self._last, now)


# -- Vortex codec -------------------------------------------------------------------------------------------------

HEADER_SIZE: Final = 6
#: Upper bound of a frame value: values carry only control data (piece bytes follow unframed).
MAX_VALUE_LENGTH: Final = 64 * 1024

TAG_DOWNLOAD_PIECE: Final = 0
TAG_PIECE_CONTENT: Final = 1
TAG_DOWNLOAD_PERSISTENT_PIECE: Final = 2
TAG_PERSISTENT_PIECE_CONTENT: Final = 3
TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE: Final = 4
TAG_PERSISTENT_CACHE_PIECE_CONTENT: Final = 5
TAG_DOWNLOAD_CACHE_PIECE: Final = 6
TAG_CACHE_PIECE_CONTENT: Final = 7
TAG_CLOSE: Final = 254
TAG_ERROR: Final = 255

_TASK_ID_LENGTH: Final = 64
_DOWNLOAD_PIECE_LENGTH: Final = _TASK_ID_LENGTH + 4
_MIN_METADATA_LENGTH: Final = 4 + 8 + 8 + 4 + 4 + 1 + 8 + 8
_HEX: Final = frozenset(b"0123456789abcdef")
_RANGES: Final = {"u8": (0, 2**8 - 1), "u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "i64": (_I64_MIN, _I64_MAX)}
_HEADER: Final = struct.Struct(">BBI")
_U32: Final = struct.Struct(">I")
_FIXED_HEAD: Final = struct.Struct(">IQQ")  # number, offset, length
_FIXED_TAIL: Final = struct.Struct(">BQq")  # traffic_type, cost_secs, created_at


def _is_download_tag(tag: int) -> bool:
    return tag <= TAG_CACHE_PIECE_CONTENT and tag % 2 == 0


def _is_content_tag(tag: int) -> bool:
    return tag <= TAG_CACHE_PIECE_CONTENT and tag % 2 == 1


def _wire_int(name: str, value: int, kind: str) -> int:
    low, high = _RANGES[kind]
    if not low <= value <= high:
        raise VortexError(f"{name} {value} out of range for {kind}")
    return value


def _check_value_length(length: int) -> None:
    if length > MAX_VALUE_LENGTH:
        raise VortexError(f"value length {length} exceeds MAX_VALUE_LENGTH {MAX_VALUE_LENGTH}")


def _check_task_id(task_id: bytes) -> None:
    if len(task_id) != _TASK_ID_LENGTH or not _HEX.issuperset(task_id):
        raise VortexError(f"task_id must be {_TASK_ID_LENGTH} lowercase hex characters")


_METADATA_INTS: Final = (
    ("number", "u32"),
    ("offset", "u64"),
    ("length", "u64"),
    ("traffic_type", "u8"),
    ("cost_secs", "u64"),
    ("created_at", "i64"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PieceMetadata:
    """Metadata of one piece, as a Vortex PieceContent frame carries it."""

    number: int
    offset: int
    length: int
    digest: str
    parent_id: str
    traffic_type: int
    cost_secs: int
    created_at: int

    def __post_init__(self) -> None:
        for name in ("number", "offset", "length", "digest", "parent_id", "traffic_type", "cost_secs", "created_at"):
            value = getattr(self, name)
            if name in ("digest", "parent_id"):
                if not isinstance(value, str):
                    raise TypeError(f"argument '{name}': '{type(value).__name__}' object cannot be converted to 'str'")
                value.encode()
            else:
                object.__setattr__(self, name, operator.index(value))
        for name, kind in _METADATA_INTS:
            _wire_int(name, getattr(self, name), kind)


def _header(frame_id: int, tag: int, length: int) -> bytes:
    return _HEADER.pack(frame_id, tag, length)


def decode_header(buf: Buffer) -> tuple[int, int, int]:
    """Decode a header into ``(frame_id, tag, length)``, checking the tag and that the length suits it."""
    data = _bytes_of(buf)
    if len(data) != HEADER_SIZE:
        raise VortexError(f"header must be {HEADER_SIZE} bytes, got {len(data)}")
    frame_id, tag, length = _HEADER.unpack(data)
    if _is_download_tag(tag):
        fits = length == _DOWNLOAD_PIECE_LENGTH
    elif _is_content_tag(tag):
        fits = 4 + _MIN_METADATA_LENGTH <= length <= MAX_VALUE_LENGTH
    elif tag == TAG_CLOSE:
        fits = length == 0
    elif tag == TAG_ERROR:
        fits = 1 <= length <= MAX_VALUE_LENGTH
    else:
        raise VortexError(f"unknown tag {tag}")
    if not fits:
        _check_value_length(length)
        raise VortexError(f"value length {length} is invalid for tag {tag}")
    return frame_id, tag, length


def encode_download_piece(task_id: str, piece_number: int, frame_id: int = 0, tag: int = TAG_DOWNLOAD_PIECE) -> bytes:
    """Encode a request frame for one piece."""
    if not isinstance(task_id, str):
        raise TypeError(f"argument 'task_id': '{type(task_id).__name__}' object cannot be converted to 'str'")
    task_bytes = task_id.encode()
    piece_number, frame_id, tag = operator.index(piece_number), operator.index(frame_id), operator.index(tag)
    _wire_int("piece_number", piece_number, "u32")
    _wire_int("frame_id", frame_id, "u8")
    _wire_int("tag", tag, "u8")
    if not _is_download_tag(tag):
        raise VortexError(f"tag {tag} is not a download piece tag")
    _check_task_id(task_bytes)
    return _header(frame_id, tag, _DOWNLOAD_PIECE_LENGTH) + task_bytes + _U32.pack(piece_number)


def decode_download_piece(value: Buffer) -> tuple[str, int]:
    """Decode a request value into ``(task_id, piece_number)``."""
    data = _bytes_of(value)
    if len(data) != _DOWNLOAD_PIECE_LENGTH:
        raise VortexError(f"download piece value must be {_DOWNLOAD_PIECE_LENGTH} bytes, got {len(data)}")
    _check_task_id(data[:_TASK_ID_LENGTH])
    return data[:_TASK_ID_LENGTH].decode("ascii"), _U32.unpack_from(data, _TASK_ID_LENGTH)[0]


def encode_piece_content(meta: PieceMetadata, frame_id: int = 0, tag: int = TAG_PIECE_CONTENT) -> bytes:
    """Encode the header and value of a piece content frame (the piece bytes are sent after it)."""
    if not isinstance(meta, PieceMetadata):
        raise TypeError(f"argument 'meta': '{type(meta).__name__}' object is not an instance of 'PieceMetadata'")
    frame_id, tag = operator.index(frame_id), operator.index(tag)
    _wire_int("frame_id", frame_id, "u8")
    _wire_int("tag", tag, "u8")
    if not _is_content_tag(tag):
        raise VortexError(f"tag {tag} is not a piece content tag")
    digest = meta.digest.encode()
    parent_id = meta.parent_id.encode()
    metadata_len = _MIN_METADATA_LENGTH + len(digest) + len(parent_id)
    _check_value_length(4 + metadata_len)
    return b"".join(
        (
            _header(frame_id, tag, 4 + metadata_len),
            _U32.pack(metadata_len),
            _FIXED_HEAD.pack(meta.number, meta.offset, meta.length),
            _U32.pack(len(digest)),
            digest,
            _U32.pack(len(parent_id)),
            parent_id,
            _FIXED_TAIL.pack(meta.traffic_type, meta.cost_secs, meta.created_at),
        )
    )


class _Reader:
    """Read big-endian fields off a value, naming the field when it runs out."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._pos

    def take(self, field: str, n: int) -> bytes:
        if n > self.left:
            raise VortexError(f"truncated {field}: need {n} bytes, {self.left} left")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def integer(self, field: str, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.take(field, size), "big", signed=signed)

    def text(self, field: str, n: int) -> str:
        raw = self.take(field, n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise VortexError(f"{field} is not valid UTF-8") from None

    def finish(self, last_field: str) -> None:
        if self.left:
            raise VortexError(f"{self.left} trailing bytes after {last_field}")


def decode_piece_content(value: Buffer) -> PieceMetadata:
    """Decode a piece content value (``metadata_len:u32`` + metadata) into its metadata."""
    data = _bytes_of(value)
    _check_value_length(len(data))
    r = _Reader(data)
    metadata_len = r.integer("metadata_len", 4)
    if metadata_len != r.left:
        raise VortexError(f"metadata_len {metadata_len} does not match the {r.left} bytes that follow")
    number = r.integer("number", 4)
    offset = r.integer("offset", 8)
    length = r.integer("length", 8)
    digest = r.text("digest", r.integer("digest_len", 4))
    parent_id = r.text("parent_id", r.integer("parent_id_len", 4))
    traffic_type = r.integer("traffic_type", 1)
    cost_secs = r.integer("cost_secs", 8)
    created_at = r.integer("created_at", 8, signed=True)
    r.finish("created_at")
    return PieceMetadata(
        number=number,
        offset=offset,
        length=length,
        digest=digest,
        parent_id=parent_id,
        traffic_type=traffic_type,
        cost_secs=cost_secs,
        created_at=created_at,
    )


def encode_error(code: int, message: str, frame_id: int = 0) -> bytes:
    """Encode an error frame."""
    code = operator.index(code)
    if not isinstance(message, str):
        raise TypeError(f"argument 'message': '{type(message).__name__}' object cannot be converted to 'str'")
    text = message.encode()
    frame_id = operator.index(frame_id)
    _wire_int("code", code, "u8")
    _wire_int("frame_id", frame_id, "u8")
    _check_value_length(1 + len(text))
    return _header(frame_id, TAG_ERROR, 1 + len(text)) + bytes((code,)) + text


def decode_error(value: Buffer) -> tuple[int, str]:
    """Decode an error value into ``(code, message)``."""
    data = _bytes_of(value)
    _check_value_length(len(data))
    r = _Reader(data)
    code = r.integer("code", 1)
    return code, r.text("message", r.left)


def encode_close(frame_id: int = 0) -> bytes:
    """Encode a close frame (empty value)."""
    frame_id = operator.index(frame_id)
    _wire_int("frame_id", frame_id, "u8")
    return _header(frame_id, TAG_CLOSE, 0)

"""A gRPC client over HTTP/2 on the daemon's unix socket, without grpcio: the calls dfget and dfcache make.

``import grpc`` costs more than the whole local hit it serves (bench/RESULTS.md §3), and dfget makes one call per
download: a server-streaming DownloadTask (or a unary ListTaskEntries); dfcache one unary or server-streaming call
per command. This is the client side of gRPC's HTTP/2
mapping for exactly that: one connection, one stream, no TLS, no compression. Every wait is bounded: the connect
and the server's first frame by ``HANDSHAKE_TIMEOUT`` (and the call's deadline), everything else by the call's
deadline, which the daemon also gets as ``grpc-timeout``. Flow control gives the daemon a large window and
returns what is consumed, so a stream of any length never stalls. A peer that breaks the protocol, resets the
stream or closes the connection ends the call with an ``RpcError`` whose code is the one grpcio would report.
"""

from __future__ import annotations

# _socket, not socket: socket.py imports selectors, enum and array, which dfget does not use.
import _socket
import struct
import time
from collections.abc import Generator, Iterator

from dragonfly.cli.dfget import hpack

# gRPC status codes (grpc/status.h) that this client reports itself or dfget tells apart.
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED = 0, 1, 2, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14
PERMISSION_DENIED, UNAUTHENTICATED = 7, 16
STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)

# The connect and the server's SETTINGS: a live daemon answers both at once; a socket whose owner hangs does not.
HANDSHAKE_TIMEOUT = 10.0
# grpcio's default limit on a received message.
MAX_MESSAGE = 4 * 1024 * 1024

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types.
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PUSH_PROMISE = 0, 1, 3, 4, 5
_PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 6, 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
# Length (24 bits) and type packed in one word, flags, stream id.
_FRAME_HEADER = struct.Struct(">IBI")
# SETTINGS identifiers.
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = 1, 2, 4, 5
_DEFAULT_MAX_FRAME = 16384
_DEFAULT_WINDOW = 65535
# What dfget lets the daemon send before it hears back: the stream's and the connection's window.
_RECEIVE_WINDOW = 16 * 1024 * 1024
_MAX_WINDOW = 2**31 - 1
_STREAM = 1
# RFC 7540 §7 error codes that gRPC's HTTP/2 mapping turns into status codes (others: INTERNAL).
_RST_CODES = {0x7: UNAVAILABLE, 0x8: CANCELLED, 0xB: RESOURCE_EXHAUSTED, 0xC: PERMISSION_DENIED}
# gRPC's mapping of an HTTP status without grpc-status.
_HTTP_CODES = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED, 429: UNAVAILABLE}


class RpcError(Exception):
    """A call that ended with a status other than OK: its code, message and trailers (``-bin`` values decoded).

    ``connection_lost``: the connection itself ended (end of stream or a socket error after it was made), as opposed
    to a status the daemon sent.
    """

    def __init__(
        self, code: int, details: str, trailers: dict[str, bytes] | None = None, *, connection_lost: bool = False
    ) -> None:
        super().__init__(f"{STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else code}: {details}")
        self.code = code
        self.details = details
        self.trailers = trailers or {}
        self.connection_lost = connection_lost

    @property
    def code_name(self) -> str:
        return STATUS_NAMES[self.code] if 0 <= self.code < len(STATUS_NAMES) else f"status {self.code}"


class _ProtocolError(Exception):
    """The daemon broke HTTP/2 or gRPC framing."""


def grpc_timeout(seconds: float) -> str:
    """Return ``seconds`` as a grpc-timeout header value (at most 8 digits, the finest unit that fits)."""
    for unit, scale in (("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = max(int(seconds * scale + 0.999), 1 if seconds > 0 else 0)
        if value < 10**8:
            return f"{value}{unit}"
    return "99999999H"


def _shown(text: str) -> str:
    """Return a header value as an error message quotes it: at most 40 characters of it."""
    return text if len(text) <= 40 else f"{text[:40]}..."


def _status_code(text: str) -> int | None:
    """Return an HTTP or gRPC status header's value as a number, None unless it is 1-10 ASCII digits.

    str.isdigit() alone also takes other scripts' digits (latin-1's superscripts, which int() refuses) and any
    length (int() refuses more than 4,300 digits): a daemon's header must not end dfget with a ValueError.
    """
    return int(text) if 0 < len(text) <= 10 and text.isascii() and text.isdigit() else None


def _percent_decode(text: str) -> str:
    if "%" not in text:
        return text
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(text).decode("utf-8", "replace")


def _decode_bin(value: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except binascii.Error:
        return b""


class _Connection:
    def __init__(self, path: str, deadline: float) -> None:
        self.deadline = deadline
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.buffer = bytearray()
        self.decoder = hpack.Decoder()
        self.send_window = _DEFAULT_WINDOW
        self.stream_send_window = _DEFAULT_WINDOW
        self.peer_initial_window = _DEFAULT_WINDOW
        self.peer_max_frame = _DEFAULT_MAX_FRAME
        self.unacked = 0
        self.stream_unacked = 0
        try:
            self.sock.settimeout(self._remaining(HANDSHAKE_TIMEOUT))
            self.sock.connect(path)
        except TimeoutError:
            self.sock.close()
            raise RpcError(UNAVAILABLE, f"connect to unix:{path} timed out") from None
        except OSError as exc:
            self.sock.close()
            raise RpcError(UNAVAILABLE, f"unix:{path}: {exc.strerror or exc}") from None

    def _remaining(self, cap: float | None = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded")
        return left if cap is None else min(left, cap)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self._remaining())
            self.sock.sendall(data)
        except TimeoutError:
            raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except OSError as exc:
            raise RpcError(UNAVAILABLE, f"Socket closed ({exc.strerror or exc})", connection_lost=True) from None

    @staticmethod
    def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        return _FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream) + payload

    def read_frame(self, cap: float | None = None) -> tuple[int, int, int, bytes]:
        """Return the next frame (type, flags, stream id, payload), waiting at most ``cap`` or the deadline."""
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[0:3], "big")
                if length > _DEFAULT_MAX_FRAME:
                    raise _ProtocolError(f"frame of {length} bytes, above the {_DEFAULT_MAX_FRAME} dfget allows")
                if len(self.buffer) >= 9 + length:
                    kind, flags = self.buffer[3], self.buffer[4]
                    stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                    payload = bytes(self.buffer[9 : 9 + length])
                    del self.buffer[: 9 + length]
                    return kind, flags, stream, payload
            try:
                self.sock.settimeout(self._remaining(cap))
                chunk = self.sock.recv(65536)
            except TimeoutError:
                if cap is not None and self.deadline - time.monotonic() > 0:
                    raise _ProtocolError(f"no HTTP/2 answer within {cap:g}s") from None
                raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            except OSError as exc:
                raise RpcError(UNAVAILABLE, f"Connection lost ({exc.strerror or exc})", connection_lost=True) from None
            if not chunk:
                raise RpcError(UNAVAILABLE, "Socket closed", connection_lost=True)
            self.buffer += chunk

    def settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ProtocolError("SETTINGS of a length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == _INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ProtocolError("initial window above 2^31-1")
                self.stream_send_window += value - self.peer_initial_window
                self.peer_initial_window = value
                # RFC 9113 §6.9.2: a change that takes the open stream's window past the limit is an error.
                self.check_window(self.stream_send_window)
            elif key == _MAX_FRAME_SIZE:
                if not _DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise _ProtocolError(f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
        self.send(self.frame(_SETTINGS, _ACK, 0))

    @staticmethod
    def check_window(window: int) -> None:
        """RFC 9113 §6.9.1: a peer that takes a send window past 2^31-1 breaks flow control (FLOW_CONTROL_ERROR)."""
        if window > _MAX_WINDOW:
            raise _ProtocolError(f"the daemon took a send window past 2^31-1 ({window})")

    def consumed(self, length: int) -> None:
        """Return ``length`` bytes of DATA to the daemon's windows once half of a window is used."""
        self.unacked += length
        self.stream_unacked += length
        updates = b""
        if self.unacked >= _RECEIVE_WINDOW // 2:
            updates += self.frame(_WINDOW_UPDATE, 0, 0, self.unacked.to_bytes(4, "big"))
            self.unacked = 0
        if self.stream_unacked >= _RECEIVE_WINDOW // 2:
            updates += self.frame(_WINDOW_UPDATE, 0, _STREAM, self.stream_unacked.to_bytes(4, "big"))
            self.stream_unacked = 0
        if updates:
            self.send(updates)


class _Call:
    """One gRPC call on its own connection: request sent, then the response's frames read as they are asked for."""

    def __init__(
        self,
        path: str,
        method: str,
        request: bytes,
        timeout: float,
        metadata: tuple[tuple[str, str], ...],
        max_message: int,
    ) -> None:
        self.conn = _Connection(path, time.monotonic() + timeout)
        self.max_message = max_message
        self.headers: dict[str, str] | None = None
        self.trailers: dict[str, str] | None = None
        self.messages = bytearray()
        self.header_block = bytearray()
        # A HEADERS frame without END_HEADERS opens a block that only CONTINUATION frames may follow.
        self.block_open = False
        self.block_ends_stream = False
        self.ended = False
        conn = self.conn
        settings = struct.pack(
            ">HIHIHI",
            _ENABLE_PUSH,
            0,
            _INITIAL_WINDOW_SIZE,
            _RECEIVE_WINDOW,
            _HEADER_TABLE_SIZE,
            hpack.DEFAULT_TABLE_SIZE,
        )
        block = hpack.encode(
            (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                # Not the socket path: Dragonfly's Rust dfdaemon (hyper) rejects a malformed authority.
                (":authority", "localhost"),
                ("te", "trailers"),
                ("content-type", "application/grpc"),
                ("user-agent", "dfget"),
                ("grpc-timeout", grpc_timeout(timeout)),
                *metadata,
            )
        )
        out = bytearray(_PREFACE)
        out += conn.frame(_SETTINGS, 0, 0, settings)
        out += conn.frame(_WINDOW_UPDATE, 0, 0, (_RECEIVE_WINDOW - _DEFAULT_WINDOW).to_bytes(4, "big"))
        chunks = [block[i : i + _DEFAULT_MAX_FRAME] for i in range(0, len(block), _DEFAULT_MAX_FRAME)] or [b""]
        out += conn.frame(_HEADERS, _END_HEADERS if len(chunks) == 1 else 0, _STREAM, chunks[0])
        for index, chunk in enumerate(chunks[1:], 2):
            out += conn.frame(_CONTINUATION, _END_HEADERS if index == len(chunks) else 0, _STREAM, chunk)
        try:
            conn.send(bytes(out))
            self._first_frame()
            self._send_message(request)
        except BaseException:
            conn.close()
            raise

    def _first_frame(self) -> None:
        """Wait (bounded) for the server's SETTINGS, which HTTP/2 requires as its first frame."""
        kind, flags, stream, payload = self.conn.read_frame(HANDSHAKE_TIMEOUT)
        if kind != _SETTINGS or flags & _ACK or stream:
            raise _ProtocolError("the server's first frame is not SETTINGS")
        self.conn.settings(payload)

    def _send_message(self, message: bytes) -> None:
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        conn = self.conn
        while True:
            size = max(0, min(len(data), conn.send_window, conn.stream_send_window, conn.peer_max_frame))
            last = size == len(data)
            if size > 0 or last:
                conn.send(conn.frame(_DATA, _END_STREAM if last else 0, _STREAM, data[:size]))
                conn.send_window -= size
                conn.stream_send_window -= size
                data = data[size:]
                if last:
                    return
            # The daemon's windows are used up: read until it opens them (or answers without reading the rest).
            self._step()
            if self.ended:
                return
            # Nothing takes answers off self.messages until the request is out, and every DATA frame returns its
            # window: a daemon that keeps the request's window shut could fill memory until the deadline.
            if len(self.messages) > 5 + self.max_message:
                raise _ProtocolError(
                    "the daemon sent more than a message's worth of answers before its request was sent"
                )

    def _step(self) -> None:
        """Read and handle one frame."""
        conn = self.conn
        kind, flags, stream, payload = conn.read_frame()
        if self.block_open and kind != _CONTINUATION:
            raise _ProtocolError("a frame inside an unfinished header block")
        if stream not in (0, _STREAM) and kind != _GOAWAY:
            if kind in (_HEADERS, _PUSH_PROMISE, _DATA):
                raise _ProtocolError(f"frame type {kind} on stream {stream}, which dfget never opened")
            return
        if kind == _DATA:
            if stream != _STREAM:
                raise _ProtocolError("DATA on stream 0")
            if self.headers is None or self.trailers is not None:
                raise _ProtocolError("DATA outside the response body")
            # Flow control counts the whole payload, padding included.
            conn.consumed(len(payload))
            self.messages += self._unpad(payload) if flags & _PADDED else payload
            if flags & _END_STREAM:
                raise _ProtocolError("the response ended without trailers")
        elif kind in (_HEADERS, _CONTINUATION):
            if stream != _STREAM:
                raise _ProtocolError("HEADERS on stream 0")
            if kind == _HEADERS:
                if flags & _PADDED:
                    payload = self._unpad(payload)
                if flags & _PRIORITY:
                    if len(payload) < 5:
                        raise _ProtocolError("HEADERS shorter than its priority fields")
                    payload = payload[5:]
                self.block_ends_stream = bool(flags & _END_STREAM)
                self.block_open = True
            elif not self.block_open:
                raise _ProtocolError("CONTINUATION without HEADERS")
            self.header_block += payload
            # A block that never ends (CONTINUATION after CONTINUATION) must not grow without bound; no block
            # the decoder would accept is larger than the header list it decodes to.
            if len(self.header_block) > hpack.MAX_HEADER_LIST_SIZE:
                raise _ProtocolError(f"header block larger than {hpack.MAX_HEADER_LIST_SIZE} bytes")
            if flags & _END_HEADERS:
                self.block_open = False
                self._headers(bytes(self.header_block))
                self.header_block.clear()
        elif kind == _SETTINGS:
            if not flags & _ACK:
                conn.settings(payload)
        elif kind == _PING:
            if len(payload) != 8:
                raise _ProtocolError("PING of a length other than 8")
            if not flags & _ACK:
                conn.send(conn.frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW_UPDATE:
            if len(payload) != 4:
                raise _ProtocolError("WINDOW_UPDATE of a length other than 4")
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if not increment:
                raise _ProtocolError("WINDOW_UPDATE of 0")
            if stream:
                conn.stream_send_window += increment
                conn.check_window(conn.stream_send_window)
            else:
                conn.send_window += increment
                conn.check_window(conn.send_window)
        elif kind == _RST_STREAM:
            code = int.from_bytes(payload[:4], "big") if len(payload) == 4 else 0
            # The daemon cancels a call whose grpc-timeout ran out; that is the deadline, as grpcio reports it.
            conn._remaining()
            raise RpcError(_RST_CODES.get(code, INTERNAL), f"Received RST_STREAM with error code {code}")
        elif kind == _GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF if len(payload) >= 8 else 0
            if last < _STREAM:
                code = int.from_bytes(payload[4:8], "big") if len(payload) >= 8 else 0
                raise RpcError(UNAVAILABLE, f"the daemon closed the connection (GOAWAY, error code {code})")
        elif kind == _PUSH_PROMISE:
            raise _ProtocolError("PUSH_PROMISE, which dfget disabled")

    @staticmethod
    def _unpad(payload: bytes) -> bytes:
        if not payload or payload[0] >= len(payload):
            raise _ProtocolError("padding longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _headers(self, block: bytes) -> None:
        try:
            fields = self.conn.decoder.decode(block)
        except hpack.HpackError as exc:
            raise _ProtocolError(f"bad header block: {exc}") from None
        headers: dict[str, str] = {}
        for name, value in fields:
            # Repeated trailers are not something gRPC sends; the first one wins.
            headers.setdefault(name, value)
        if self.headers is None:
            self.headers = headers
            status = headers.get(":status")
            if status != "200":
                number = _status_code(status or "")
                code = INTERNAL if number is None else _HTTP_CODES.get(number, UNKNOWN)
                if status in ("502", "503", "504"):
                    code = UNAVAILABLE
                raise RpcError(code, f"Received http2 header with status: {_shown(status) if status else status}")
            if "grpc-status" not in headers:
                if not headers.get("content-type", "").startswith("application/grpc"):
                    raise RpcError(UNKNOWN, f"the daemon answered content-type {headers.get('content-type')!r}")
                if self.block_ends_stream:
                    raise _ProtocolError("the response ended without grpc-status")
                return
            # A trailers-only answer: the status comes in the headers.
        elif not self.block_ends_stream:
            raise _ProtocolError("trailers without END_STREAM")
        self.trailers = headers
        self.ended = True
        if not self.block_ends_stream:
            raise _ProtocolError("grpc-status before the end of the stream")

    def _message(self) -> bytes | None:
        """Return the next complete gRPC message received, or None."""
        if len(self.messages) < 5:
            return None
        if self.messages[0] != 0:
            raise RpcError(INTERNAL, "the daemon sent a compressed message, which dfget did not ask for")
        length = int.from_bytes(self.messages[1:5], "big")
        if length > self.max_message:
            raise RpcError(RESOURCE_EXHAUSTED, f"message of {length} bytes, above the {self.max_message} dfget accepts")
        if len(self.messages) < 5 + length:
            return None
        message = bytes(self.messages[5 : 5 + length])
        del self.messages[: 5 + length]
        return message

    def _status(self) -> None:
        trailers = self.trailers or {}
        if self.messages:
            raise _ProtocolError("the response ended inside a message")
        status = trailers.get("grpc-status", "")
        code = _status_code(status)
        if code is None:
            raise _ProtocolError(f"grpc-status {_shown(status)!r} is not a status code")
        if code != OK:
            binary = {key: _decode_bin(value) for key, value in trailers.items() if key.endswith("-bin")}
            raise RpcError(code, _percent_decode(trailers.get("grpc-message", "")), binary)

    def responses(self) -> Iterator[bytes]:
        try:
            while True:
                message = self._message()
                if message is not None:
                    yield message
                elif self.ended:
                    self._status()
                    return
                else:
                    self._step()
        except _ProtocolError as exc:
            raise RpcError(INTERNAL, f"HTTP/2 protocol error from the daemon: {exc}") from None

    def close(self) -> None:
        self.conn.close()


def call(
    path: str,
    method: str,
    request: bytes,
    *,
    timeout: float,
    metadata: tuple[tuple[str, str], ...] = (),
    max_message: int = MAX_MESSAGE,
) -> Generator[bytes, None, None]:
    """Run ``method`` (``/package.Service/Method``) on the daemon at unix socket ``path``; yield each response.

    Raises ``RpcError`` for a status other than OK and for every transport failure (the connection closes when
    the iteration ends, early or not). A response larger than ``max_message`` bytes is refused
    (RESOURCE_EXHAUSTED), as grpcio's receive limit does.
    """
    try:
        rpc = _Call(path, method, request, timeout, metadata, max_message)
    except _ProtocolError as exc:
        raise RpcError(INTERNAL, f"HTTP/2 protocol error from the daemon: {exc}") from None
    try:
        yield from rpc.responses()
    finally:
        rpc.close()

"""The one place that imports the compiled extensions (or, on request, their Python twins).

Everything else imports data-plane functions from here. ``DRAGONFLY_NO_EXTENSIONS=1`` selects the pure-Python
twins in ``dragonfly.common._pyimpl`` explicitly; without it a missing or stale extension is an error that says
how to build it, never a silent fallback.

The contract each implementation (native and twin) provides, with identical behaviour and exceptions:

hashing (``_dragonfly_hashing`` / ``_pyimpl.hashing``)
    ``ALGORITHMS``: tuple of names: "crc32", "crc32c", "sha256", "sha512", "blake3".
    ``crc32(data, value=0) -> int`` and ``crc32c(data, value=0) -> int``: like ``zlib.crc32``; data is any
    C-contiguous buffer.
    ``Hasher(algorithm, data=None)``: streaming; ``update(data)``, ``digest() -> bytes``, ``hexdigest() -> str``,
    ``copy() -> Hasher``, attributes ``name`` and ``digest_size``. CRC digests are 4 bytes big-endian.
    ``file_digest(algorithm, file, offset=0, length=None) -> bytes``: ``file`` is an int fd or a path;
    ``length=None`` means to end of file; a range past EOF raises ``EOFError``.

piece_io (``_dragonfly_piece_io`` / ``_pyimpl.piece_io``)
    ``write_piece(fd, offset, data) -> int``: pwrite all of ``data`` at ``offset``, return its CRC-32 (IEEE).
    ``read_piece(fd, offset, buffer) -> int``: pread into the writable buffer until full or EOF; return count.
    ``sendfile(sock_fd, file_fd, offset, count, timeout=None) -> int``: send exactly ``count`` bytes of the
    file range to a connected (possibly non-blocking) socket; ``TimeoutError`` when no progress within
    ``timeout`` seconds; ``EOFError`` if the file is shorter; peer resets raise ``ConnectionResetError`` /
    ``BrokenPipeError``.
    ``recv_to_file(sock_fd, file_fd, offset, count, buffer, timeout=None) -> int``: receive exactly ``count``
    bytes from the socket into the file at ``offset`` through the caller's reusable ``buffer``; return CRC-32;
    ``errors.ShortRead`` when the peer closes early, ``TimeoutError`` when a read waits longer than ``timeout``.
    ``recv_to_file_blake3(...) -> (crc32, blake3)``: the same, also returning the 32-byte BLAKE3 digest of the bytes
    (hashed from the buffer before each write, so the piece is not read back to be verified).
    ``fetch_piece(sock_fd, task_id, number, offset, length, file_fd, buffer, timeout=None, *, tag=TAG_DOWNLOAD_PIECE,
    blake3=False, reused=False) -> (digest, crc32, blake3 | None) | None``: one piece from a parent in one call:
    the request (``tag``), the answer's header and metadata checked (``errors.VortexError``: malformed, not the
    content frame of ``tag``, another piece number, offset or length; ``errors.VortexRemoteError``: an error
    frame), then ``recv_to_file`` (``blake3``: also its BLAKE3 digest); ``digest`` is the one the parent
    announced. With ``reused``, None when the connection turned out closed before any answer byte (the end of the
    stream, a reset, a broken pipe): the caller asks again on a fresh connection.
    ``TlsClientConfig(ca_cert, cert, key)``: mutual TLS for Vortex from PEM file paths (TLS 1.2+, the server's
    chain must lead to ``ca_cert``, this host's chain and key are presented); an unreadable file is ``OSError``.
    ``TlsClientStream(config, sock_fd, server_ip, timeout=None)``: handshake on a connected socket the caller keeps
    open (the server's certificate must name ``server_ip``; failures are ``ssl.SSLError``); ``send_all(data,
    timeout=None)``; ``recv_exact(count, timeout=None) -> bytes`` (at most one Vortex frame);
    ``recv_to_file(file_fd, offset, count, buffer, timeout=None, blake3=False) -> (crc32, blake3 | None)``: as
    ``recv_to_file`` through the TLS connection; ``fetch_piece(task_id, number, offset, length, file_fd, buffer,
    timeout=None, *, tag=..., blake3=False, reused=False)``: as the module's ``fetch_piece`` over this connection.
    Native: rustls, several records per read system call.
    ``TlsServerConfig(ca_cert, cert, key)``: the server side (TLS 1.2+, a client certificate whose chain leads to
    ``ca_cert`` is required, this host's chain and key are presented). ``TlsServerStream(config, sock_fd)``: one
    connection over an accepted non-blocking socket the caller keeps open, in steps that never wait: each returns
    "read" or "write" when the socket must become ready first. ``handshake() -> None | "read" | "write"``
    (failures are ``ssl.SSLError``); ``recv(count) -> bytes | "read" | "write"`` (b"" once the client closed);
    ``start_send(head, file_fd, offset, length)`` then ``send_some() -> None | "read" | "write"`` until None:
    the head buffer (held, not copied) then the file range (``EOFError`` if the file is shorter). Native:
    rustls, pread into a per-send chunk, several records per ``sendmsg``, GIL released.
    ``TokenBucket(rate, burst=None)``: bytes/s (0 = unlimited) and burst bytes (default: one second of rate);
    ``acquire(n)`` blocks (GIL released); ``reserve(n) -> float`` seconds the caller must wait (tokens are
    taken now); ``try_acquire(n) -> bool``; ``set_rate(rate, burst=None)``; properties ``rate``, ``burst``.
    Vortex codec (``docs/reference/protocol.md#vortex``):
    ``HEADER_SIZE`` (6), ``MAX_VALUE_LENGTH``, tag constants ``TAG_DOWNLOAD_PIECE`` .. ``TAG_ERROR``;
    ``encode_download_piece(task_id, piece_number, frame_id=0, tag=TAG_DOWNLOAD_PIECE) -> bytes``;
    ``decode_header(buf) -> (frame_id, tag, length)``;
    ``decode_download_piece(value) -> (task_id, piece_number)``;
    ``encode_piece_content(meta: PieceMetadata, frame_id=0, tag=TAG_PIECE_CONTENT) -> bytes`` (header+metadata);
    ``decode_piece_content(value) -> PieceMetadata``;
    ``encode_error(code, message, frame_id=0) -> bytes``; ``decode_error(value) -> (code, message)``;
    ``encode_close(frame_id=0) -> bytes``.
    ``PieceMetadata``: number, offset, length, digest, parent_id, traffic_type, cost_secs, created_at.
    Malformed frames raise ``errors.VortexError``.

bitmap (``dragonfly._bitmap`` / ``_pyimpl.bitmap``)
    ``PieceBitmap(size)``; ``set(i)``, ``clear(i)``, ``test(i)``, ``count()``, ``first_missing() -> int`` (-1 when
    full), ``iter_missing()``, ``missing_from(parent) -> list[int]`` (parent has, we lack), ``present() -> list[int]``
    (the pieces set, ascending), ``to_bytes()``,
    ``PieceBitmap.from_bytes(size, data)``, ``size``; ``rarest_first(want, parents) -> list[int]``: the pieces
    missing in ``want`` that at least one parent has, rarest first, ties by piece number.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

from dragonfly import __version__
from dragonfly.common.errors import NativeExtensionError

#: The version every compiled module must report: this package's, which is the Cargo workspace version (setup.py).
NATIVE_VERSION = __version__

BUILD_HINT = (
    "build and install the extensions with `scripts/install.sh` (or `pip install ./ext/hashing ./ext/piece_io .`), "
    "or set DRAGONFLY_NO_EXTENSIONS=1 to use the slower pure-Python twins"
)

USING_EXTENSIONS = os.environ.get("DRAGONFLY_NO_EXTENSIONS", "") not in ("1", "true", "yes")


def _import_native(name: str) -> ModuleType:
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise NativeExtensionError(f"native extension {name} is not importable ({exc}); {BUILD_HINT}") from exc
    version = getattr(module, "__version__", None)
    if version != NATIVE_VERSION:
        raise NativeExtensionError(
            f"native extension {name} has version {version!r}, this package needs {NATIVE_VERSION}; {BUILD_HINT}"
        )
    return module


if TYPE_CHECKING or not USING_EXTENSIONS:
    from dragonfly.common._pyimpl import bitmap as _bitmap
    from dragonfly.common._pyimpl import hashing as _hashing
    from dragonfly.common._pyimpl import piece_io as _piece_io
else:
    _hashing = _import_native("_dragonfly_hashing")
    _piece_io = _import_native("_dragonfly_piece_io")
    _bitmap = _import_native("dragonfly._bitmap")


_NATIVE_NAMES = {"hashing": "_dragonfly_hashing", "piece_io": "_dragonfly_piece_io", "bitmap": "dragonfly._bitmap"}


def implementations(part: str) -> dict[str, ModuleType]:
    """Return both implementations of one part ({"native": ..., "python": ...}) for differential tests."""
    import importlib

    twin = importlib.import_module(f"dragonfly.common._pyimpl.{part}")
    return {"native": _import_native(_NATIVE_NAMES[part]), "python": twin}


def build_profiles() -> dict[str, str]:
    """Return each implementation's build profile ("release", "debug" or "python")."""
    return {
        "hashing": getattr(_hashing, "BUILD_PROFILE", "python"),
        "piece_io": getattr(_piece_io, "BUILD_PROFILE", "python"),
        "bitmap": getattr(_bitmap, "BUILD_PROFILE", "python"),
    }


# hashing
ALGORITHMS = _hashing.ALGORITHMS
crc32 = _hashing.crc32
crc32c = _hashing.crc32c
Hasher = _hashing.Hasher
file_digest = _hashing.file_digest

# piece I/O
write_piece = _piece_io.write_piece
read_piece = _piece_io.read_piece
sendfile = _piece_io.sendfile
recv_to_file = _piece_io.recv_to_file
recv_to_file_blake3 = _piece_io.recv_to_file_blake3
fetch_piece = _piece_io.fetch_piece
TokenBucket = _piece_io.TokenBucket
# Vortex over mutual TLS, client side (docs/security.md#vortex-over-tls)
TlsClientConfig = _piece_io.TlsClientConfig
TlsClientStream = _piece_io.TlsClientStream
# Vortex over mutual TLS, server side
TlsServerConfig = _piece_io.TlsServerConfig
TlsServerStream = _piece_io.TlsServerStream

# Vortex codec
HEADER_SIZE = _piece_io.HEADER_SIZE
MAX_VALUE_LENGTH = _piece_io.MAX_VALUE_LENGTH
TAG_DOWNLOAD_PIECE = _piece_io.TAG_DOWNLOAD_PIECE
TAG_PIECE_CONTENT = _piece_io.TAG_PIECE_CONTENT
TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE = _piece_io.TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE
TAG_PERSISTENT_CACHE_PIECE_CONTENT = _piece_io.TAG_PERSISTENT_CACHE_PIECE_CONTENT
TAG_CLOSE = _piece_io.TAG_CLOSE
TAG_ERROR = _piece_io.TAG_ERROR
PieceMetadata = _piece_io.PieceMetadata
encode_download_piece = _piece_io.encode_download_piece
decode_header = _piece_io.decode_header
decode_download_piece = _piece_io.decode_download_piece
encode_piece_content = _piece_io.encode_piece_content
decode_piece_content = _piece_io.decode_piece_content
encode_error = _piece_io.encode_error
decode_error = _piece_io.decode_error
encode_close = _piece_io.encode_close

# piece maps
PieceBitmap = _bitmap.PieceBitmap
rarest_first = _bitmap.rarest_first

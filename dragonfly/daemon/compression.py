"""zstd compression of persistent cache pieces on the wire between our peers (``docs/dfcache.md#compression``).

Negotiated per transfer, so Dragonfly's peers never see it: a parent of ours announces that it can compress in the
initial metadata of SyncPersistentCachePieces (``dragonfly-vortex-encoding: zstd``); only then does a child add one
flag byte to its Vortex request (``DownloadPersistentCachePiece`` with a 69-byte value, bit 0 = "zstd accepted").
The parent answers a piece that compresses with a frame of tag 200 (in Vortex's reserved range): a u64 compressed
length, then the usual piece-content value (metadata with the CRC-32 of the *uncompressed* bytes), then the
compressed bytes; a piece that does not compress (already compressed data: a sample of it does not shrink by a
tenth) goes out as the usual tag 5 frame with ``sendfile``. The child checks the CRC-32 of what it decompressed.

``zstandard`` is an optional dependency: without it a daemon neither offers nor accepts compression.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import OrderedDict
from typing import Any

ENCODING_KEY = "dragonfly-vortex-encoding"
ZSTD = "zstd"
FLAG_ACCEPT_ZSTD = 0x01
#: Vortex tag of a compressed persistent cache piece (8..253 are reserved by Vortex; this is our extension).
TAG_COMPRESSED_PERSISTENT_CACHE_PIECE_CONTENT = 200
#: zstd level 1: ~0.5 GB/s per core to compress, several GB/s to decompress; it pays on links below ~1 Gbit/s.
LEVEL = 1
#: A piece is sent compressed only if a sample and then the whole piece shrink below this ratio.
MAX_RATIO = 0.9
_SAMPLE = 128 * 1024
_COMPRESSED_LENGTH = struct.Struct(">Q")
_REQUEST_VALUE_LENGTH = 68
_MAX_VALUE_LENGTH = 64 * 1024


def available() -> bool:
    """Return whether zstd can be used here (the optional ``zstandard`` package is installed)."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def _zstd() -> Any:
    import zstandard

    return zstandard


def read_range(fd: int, offset: int, length: int) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` (blocking)."""
    chunks = []
    left = length
    while left:
        chunk = os.pread(fd, left, offset)
        if not chunk:
            raise EOFError(f"content file ends before {offset} + {left}")
        chunks.append(chunk)
        offset += len(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def compress_piece(fd: int, offset: int, length: int) -> bytes | None:
    """Return the piece at ``offset`` compressed, or None when it does not compress enough (blocking)."""
    return compress_piece_bytes(read_range(fd, offset, length))


def compress_piece_bytes(data: bytes) -> bytes | None:
    """Return ``data`` compressed, or None when a sample or the whole does not shrink below MAX_RATIO (blocking)."""
    compressor = _zstd().ZstdCompressor(level=LEVEL)
    sample = data[:_SAMPLE]
    if len(compressor.compress(sample)) > MAX_RATIO * len(sample):
        return None
    compressed: bytes = compressor.compress(data)
    if len(compressed) > MAX_RATIO * len(data):
        return None
    return compressed


def decompress_piece(data: bytes | bytearray | memoryview, length: int) -> bytes:
    """Return the decompressed piece; ValueError unless it is exactly ``length`` bytes (blocking)."""
    zstandard = _zstd()
    try:
        out: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=length)
    except zstandard.ZstdError as exc:
        raise ValueError(f"compressed piece does not decompress: {exc}") from exc
    if len(out) != length:
        raise ValueError(f"compressed piece decompresses to {len(out)} bytes, expected {length}")
    return out


def compressed_frame(frame_id: int, content_value: bytes, compressed_length: int) -> bytes:
    """Return the header and value of a tag-200 frame around a piece-content value (metadata)."""
    value = _COMPRESSED_LENGTH.pack(compressed_length) + content_value
    return struct.pack(">BBI", frame_id, TAG_COMPRESSED_PERSISTENT_CACHE_PIECE_CONTENT, len(value)) + value


def split_compressed_value(value: bytes) -> tuple[int, bytes]:
    """Return (compressed length, piece-content value) of a tag-200 frame's value."""
    if len(value) < _COMPRESSED_LENGTH.size:
        raise ValueError("compressed piece frame is too short")
    (length,) = _COMPRESSED_LENGTH.unpack_from(value)
    return int(length), value[_COMPRESSED_LENGTH.size :]


def extension_header(header: bytes, request_tag: int) -> tuple[int, int, int] | None:
    """Return (frame id, tag, length) of a header that only our peers send (a flagged request of tag
    ``request_tag``, or a tag-200 answer), which the Vortex codec would refuse; None for any other header."""
    frame_id, tag, length = struct.unpack(">BBI", header)
    if tag == request_tag and length == _REQUEST_VALUE_LENGTH + 1:
        return frame_id, tag, length
    if tag == TAG_COMPRESSED_PERSISTENT_CACHE_PIECE_CONTENT and _COMPRESSED_LENGTH.size < length <= _MAX_VALUE_LENGTH:
        return frame_id, tag, length
    return None


def with_accept_flag(request: bytes) -> bytes:
    """Return a Vortex download request frame with the zstd flag byte appended (and its length fixed)."""
    (length,) = struct.unpack_from(">I", request, 2)
    return request[:2] + struct.pack(">I", length + 1) + request[6:] + bytes([FLAG_ACCEPT_ZSTD])


class CorruptPiece(Exception):
    """A stored piece's bytes no longer match the CRC-32 recorded when it was verified."""


class PieceCache:
    """The last compressed pieces a parent sent, up to ``max_bytes`` (least recently used out first), so that many
    children of one parent cost one compression per piece; ``None`` entries remember pieces that do not compress.

    Keyed by task id, piece number and the piece's CRC-32, so a piece whose content changed is never served from
    here. Safe for the executor threads that compress."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._max = max_bytes
        self._size = 0
        self._entries: OrderedDict[tuple[str, int, str], bytes | None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def compress(self, key: tuple[str, int, str], fd: int, offset: int, length: int) -> bytes | None:
        """Return the compressed piece (None: send it raw), compressing it only if it is not cached (blocking)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        data = read_range(fd, offset, length)
        # The bytes are read anyway: a piece that no longer matches its recorded CRC-32 is not served at all.
        if key[2].startswith("crc32:") and f"crc32:{zlib.crc32(data)}" != key[2]:
            raise CorruptPiece(f"piece {key[1]} of {key[0]} no longer matches its {key[2]}")
        compressed = compress_piece_bytes(data)
        size = len(compressed) if compressed is not None else 0
        if size > self._max:
            return compressed
        with self._lock:
            if key not in self._entries:
                self._entries[key] = compressed
                self._size += size
                while self._size > self._max:
                    _old, dropped = self._entries.popitem(last=False)
                    self._size -= len(dropped) if dropped is not None else 0
        return compressed

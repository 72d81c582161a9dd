"""Pure-Python twin of ``_dragonfly_hashing``: same functions, same results, same exceptions (stdlib only).

CRC-32 and SHA-2 come from ``zlib`` and ``hashlib``; CRC-32C and BLAKE3 are written out here, correct but slow
(CRC-32C about 10 MB/s, BLAKE3 about 1 MB/s): this module is the test oracle and the DRAGONFLY_NO_EXTENSIONS=1
fallback, not a fast path.
"""

from __future__ import annotations

import hashlib
import operator
import os
import struct
import threading
import zlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["ALGORITHMS", "BUILD_PROFILE", "Hasher", "crc32", "crc32c", "file_digest"]

ALGORITHMS = ("crc32", "crc32c", "sha256", "sha512", "blake3")
BUILD_PROFILE = "python"

_DIGEST_SIZES = {"crc32": 4, "crc32c": 4, "sha256": 32, "sha512": 64, "blake3": 32}
_MASK32 = 0xFFFFFFFF
_I64_MAX = 2**63 - 1
# The native module reads files in 1 MiB pread calls; reading the same way keeps the EOF errors identical.
_READ_SIZE = 1 << 20


def _bytes_view(data: Buffer) -> memoryview:
    """Return a flat unsigned-byte view of ``data``, rejecting what a PyBUF_SIMPLE request would reject."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view.cast("B")


def _u32(value: int) -> int:
    value = operator.index(value)
    if not 0 <= value <= _MASK32:
        raise OverflowError(f"value {value} does not fit in an unsigned 32-bit integer")
    return value


def _i64(value: int) -> int:
    value = operator.index(value)
    if not -_I64_MAX - 1 <= value <= _I64_MAX:
        raise OverflowError(f"{value} does not fit in a signed 64-bit integer")
    return value


def _check_algorithm(algorithm: str) -> str:
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be str, not {type(algorithm).__name__}")
    if algorithm not in _DIGEST_SIZES:
        raise ValueError(f"unknown hash algorithm '{algorithm}', expected one of: {', '.join(ALGORITHMS)}")
    return algorithm


# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, one table lookup per byte.
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _crc32c_update(view: memoryview, value: int) -> int:
    table = _CRC32C_TABLE
    crc = value ^ _MASK32
    for byte in view:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _MASK32


def crc32(data: Buffer, value: int = 0) -> int:
    """Return CRC-32/IEEE of ``data`` continuing from ``value``, like ``zlib.crc32``."""
    value = _u32(value)
    return zlib.crc32(_bytes_view(data), value)


def crc32c(data: Buffer, value: int = 0) -> int:
    """Return CRC-32C (Castagnoli) of ``data`` continuing from ``value``."""
    value = _u32(value)
    return _crc32c_update(_bytes_view(data), value)


# BLAKE3, from the specification (https://github.com/BLAKE3-team/BLAKE3-specs): unkeyed hashing, 32-byte output.
_BLAKE3_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_CHUNK_START, _CHUNK_END, _PARENT, _ROOT = 1, 2, 4, 8
_BLOCK_LEN = 64
_CHUNK_LEN = 1024


def _blake3_schedules() -> tuple[tuple[int, ...], ...]:
    """Return, per round, which original message word feeds each position (the permutation applied r times)."""
    permutation = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
    schedule = tuple(range(16))
    schedules = []
    for _ in range(7):
        schedules.append(schedule)
        schedule = tuple(schedule[i] for i in permutation)
    return tuple(schedules)


_BLAKE3_SCHEDULES = _blake3_schedules()


def _blake3_g(state: list[int], a: int, b: int, c: int, d: int, x: int, y: int) -> None:
    """Mix two message words into one column or diagonal of the state."""
    state[a] = (state[a] + state[b] + x) & _MASK32
    t = state[d] ^ state[a]
    state[d] = (t >> 16 | t << 16) & _MASK32
    state[c] = (state[c] + state[d]) & _MASK32
    t = state[b] ^ state[c]
    state[b] = (t >> 12 | t << 20) & _MASK32
    state[a] = (state[a] + state[b] + y) & _MASK32
    t = state[d] ^ state[a]
    state[d] = (t >> 8 | t << 24) & _MASK32
    state[c] = (state[c] + state[d]) & _MASK32
    t = state[b] ^ state[c]
    state[b] = (t >> 7 | t << 25) & _MASK32


def _blake3_compress(cv: list[int], block: list[int], counter: int, block_len: int, flags: int) -> list[int]:
    """Return the chaining value (the first 8 output words; only extended output would need the other 8)."""
    state = [*cv, *_BLAKE3_IV[:4], counter & _MASK32, (counter >> 32) & _MASK32, block_len, flags]
    g = _blake3_g
    for schedule in _BLAKE3_SCHEDULES:
        m = [block[i] for i in schedule]
        g(state, 0, 4, 8, 12, m[0], m[1])
        g(state, 1, 5, 9, 13, m[2], m[3])
        g(state, 2, 6, 10, 14, m[4], m[5])
        g(state, 3, 7, 11, 15, m[6], m[7])
        g(state, 0, 5, 10, 15, m[8], m[9])
        g(state, 1, 6, 11, 12, m[10], m[11])
        g(state, 2, 7, 8, 13, m[12], m[13])
        g(state, 3, 4, 9, 14, m[14], m[15])
    return [state[i] ^ state[i + 8] for i in range(8)]


def _blake3_words(block: bytes) -> list[int]:
    return list(_BLOCK_WORDS.unpack(block.ljust(_BLOCK_LEN, b"\0")))


_BLOCK_WORDS = struct.Struct("<16I")


class _Blake3:
    """Incremental BLAKE3: a chunk in progress plus the stack of completed subtree chaining values."""

    __slots__ = ("_block", "_blocks_compressed", "_chunk_counter", "_chunk_cv", "_cv_stack")

    def __init__(self) -> None:
        self._cv_stack: list[list[int]] = []
        self._chunk_counter = 0
        self._start_chunk()

    def _start_chunk(self) -> None:
        self._chunk_cv = list(_BLAKE3_IV)
        self._block = b""
        self._blocks_compressed = 0

    def _chunk_flags(self) -> int:
        return _CHUNK_START if self._blocks_compressed == 0 else 0

    def update(self, view: memoryview) -> None:
        position = 0
        while position < len(view):
            if self._blocks_compressed * _BLOCK_LEN + len(self._block) == _CHUNK_LEN:
                self._finish_chunk()
            # A full block is compressed only once more input arrives: the last block needs the CHUNK_END flag.
            if len(self._block) == _BLOCK_LEN:
                flags = self._chunk_flags()
                words = _blake3_words(self._block)
                self._chunk_cv = _blake3_compress(self._chunk_cv, words, self._chunk_counter, _BLOCK_LEN, flags)
                self._blocks_compressed += 1
                self._block = b""
            take = min(_BLOCK_LEN - len(self._block), len(view) - position)
            self._block += view[position : position + take]
            position += take

    def _finish_chunk(self) -> None:
        flags = self._chunk_flags() | _CHUNK_END
        words = _blake3_words(self._block)
        cv = _blake3_compress(self._chunk_cv, words, self._chunk_counter, len(self._block), flags)
        self._chunk_counter += 1
        # Merge completed subtrees: one merge per trailing zero bit of the chunk count.
        total_chunks = self._chunk_counter
        while total_chunks & 1 == 0:
            cv = _blake3_compress(list(_BLAKE3_IV), self._cv_stack.pop() + cv, 0, _BLOCK_LEN, _PARENT)
            total_chunks >>= 1
        self._cv_stack.append(cv)
        self._start_chunk()

    def digest(self) -> bytes:
        # The root node is compressed last, with the ROOT flag; nothing here mutates the hasher.
        cv, words, counter = self._chunk_cv, _blake3_words(self._block), self._chunk_counter
        block_len, flags = len(self._block), self._chunk_flags() | _CHUNK_END
        for left in reversed(self._cv_stack):
            right = _blake3_compress(cv, words, counter, block_len, flags)
            cv, words, counter, block_len, flags = list(_BLAKE3_IV), left + right, 0, _BLOCK_LEN, _PARENT
        output = _blake3_compress(cv, words, counter, block_len, flags | _ROOT)
        return b"".join(word.to_bytes(4, "little") for word in output)

    def copy(self) -> _Blake3:
        other = _Blake3.__new__(_Blake3)
        other._cv_stack = [list(cv) for cv in self._cv_stack]
        other._chunk_counter = self._chunk_counter
        other._chunk_cv = list(self._chunk_cv)
        other._block = self._block
        other._blocks_compressed = self._blocks_compressed
        return other


class _Crc:
    """A running CRC behind the same interface as the hashlib objects."""

    __slots__ = ("_update", "_value")

    def __init__(self, update: _CrcUpdate, value: int = 0) -> None:
        self._update = update
        self._value = value

    def update(self, view: memoryview) -> None:
        self._value = self._update(view, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")

    def copy(self) -> _Crc:
        return _Crc(self._update, self._value)


class _CrcUpdate(Protocol):
    def __call__(self, view: memoryview, value: int, /) -> int: ...


class _State(Protocol):
    def update(self, view: memoryview, /) -> None: ...
    def digest(self) -> bytes: ...
    def copy(self) -> _State: ...


def _new_state(algorithm: str) -> _State:
    if algorithm == "crc32":
        return _Crc(zlib.crc32)
    if algorithm == "crc32c":
        return _Crc(_crc32c_update)
    if algorithm == "blake3":
        return _Blake3()
    return hashlib.new(algorithm)


class Hasher:
    """A streaming hash; safe to share between threads (updates are serialised)."""

    __slots__ = ("_algorithm", "_lock", "_state")

    def __init__(self, algorithm: str, data: Buffer | None = None) -> None:
        self._algorithm = _check_algorithm(algorithm)
        self._lock = threading.Lock()
        self._state = _new_state(algorithm)
        if data is not None:
            self.update(data)

    @property
    def name(self) -> str:
        return self._algorithm

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self._algorithm]

    def update(self, data: Buffer) -> None:
        """Hash more bytes."""
        view = _bytes_view(data)
        with self._lock:
            self._state.update(view)

    def digest(self) -> bytes:
        """Return the digest of the bytes so far; the hasher stays usable."""
        with self._lock:
            return self._state.digest()

    def hexdigest(self) -> str:
        """Return the digest as lower-case hex."""
        return self.digest().hex()

    def copy(self) -> Hasher:
        """Return an independent hasher with the same state."""
        other = type(self).__new__(type(self))
        other._algorithm = self._algorithm
        other._lock = threading.Lock()
        with self._lock:
            other._state = self._state.copy()
        return other


def file_digest(
    algorithm: str, file: int | str | os.PathLike[str], offset: int = 0, length: int | None = None
) -> bytes:
    """Return the digest of ``length`` bytes (None: to the end) of a file, given as an int fd or a path."""
    offset = _i64(offset)
    length = None if length is None else _i64(length)
    algorithm = _check_algorithm(algorithm)
    if isinstance(file, int):
        _check_range(offset, length)
        return _digest_range(algorithm, file, offset, length)
    path = os.fspath(file) if isinstance(file, str | os.PathLike) else None
    if not isinstance(path, str):
        raise TypeError(f"file must be an int fd or a str or os.PathLike path, not {type(file).__name__}")
    _check_range(offset, length)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _digest_range(algorithm, fd, offset, length)
    finally:
        os.close(fd)


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length is not None and length < 0:
        raise ValueError(f"length must be >= 0, got {length}")


def _digest_range(algorithm: str, fd: int, offset: int, length: int | None) -> bytes:
    # fstat even when the range is empty, so a closed fd is always reported.
    size = os.fstat(fd).st_size
    end = max(offset, size) if length is None else offset + length
    if end > size:
        raise EOFError(f"file ends at byte {size}, before the end of the requested range at byte {end}")
    state = _new_state(algorithm)
    position = offset
    while position < end:
        chunk = os.pread(fd, min(_READ_SIZE, end - position), position)
        if not chunk:
            raise EOFError(f"file ends at byte {position}, before the end of the requested range at byte {end}")
        state.update(memoryview(chunk))
        position += len(chunk)
    return state.digest()

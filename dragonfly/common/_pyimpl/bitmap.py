"""Pure-Python twin of ``dragonfly._bitmap``: piece bitsets and rarest-first ordering.

Piece ``i`` is bit ``i % 8`` (least significant first) of byte ``i // 8``; ``to_bytes`` is that layout, with the
padding bits of the last byte zero. It is a storage and wire format, so both implementations must keep it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Self, SupportsIndex

from dragonfly import __version__ as __version__  # the twin reports the package version, as the native module

if TYPE_CHECKING:
    from typing_extensions import Buffer

BUILD_PROFILE = "python"
# Piece numbers are u32 on the wire (Vortex requests, scheduler reports).
MAX_SIZE = 1 << 32


def _check_size(size: SupportsIndex) -> int:
    value = operator.index(size)
    if not 0 <= value <= MAX_SIZE:
        raise ValueError(f"bitmap size must be between 0 and {MAX_SIZE}, got {size}")
    return value


class PieceBitmap:
    """A fixed-size set of piece numbers ``0 .. size-1`` (the pieces a peer has, or wants)."""

    __slots__ = ("_data", "_size")

    # Mutable with value equality, like bytearray.
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, size: SupportsIndex) -> None:
        self._size = _check_size(size)
        self._data = bytearray((self._size + 7) // 8)

    @classmethod
    def from_bytes(cls, size: SupportsIndex, raw: Buffer) -> Self:
        """Rebuild a bitmap of ``size`` pieces from ``to_bytes`` output; reject a wrong length or set padding."""
        view = memoryview(raw)
        if not view.c_contiguous:
            # The error CPython raises when C code asks for a contiguous buffer, as the native module does.
            raise BufferError("memoryview: underlying buffer is not C-contiguous")
        data = view.cast("B")
        bitmap = cls(size)
        if len(data) != len(bitmap._data):
            raise ValueError(f"bitmap of {bitmap._size} pieces needs {len(bitmap._data)} bytes, got {len(data)}")
        tail = bitmap._size & 7
        if tail and data[-1] >> tail:
            raise ValueError("bitmap padding bits must be zero")
        bitmap._data[:] = data
        return bitmap

    @property
    def size(self) -> int:
        """Return the number of pieces."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PieceBitmap):
            return NotImplemented
        return self._size == other._size and self._data == other._data

    def __repr__(self) -> str:
        return f"PieceBitmap(size={self._size}, count={self.count()})"

    def _index(self, piece: SupportsIndex) -> int:
        index = operator.index(piece)
        if not 0 <= index < self._size:
            raise IndexError(f"piece {piece} out of range for a bitmap of {self._size} pieces")
        return index

    def set(self, piece: SupportsIndex) -> None:
        """Mark ``piece`` present."""
        index = self._index(piece)
        self._data[index >> 3] |= 1 << (index & 7)

    def clear(self, piece: SupportsIndex) -> None:
        """Mark ``piece`` missing."""
        index = self._index(piece)
        self._data[index >> 3] &= ~(1 << (index & 7)) & 0xFF

    def test(self, piece: SupportsIndex) -> bool:
        """Return whether ``piece`` is present."""
        index = self._index(piece)
        return bool(self._data[index >> 3] >> (index & 7) & 1)

    def set_all(self) -> None:
        """Mark every piece present."""
        self._data[:] = b"\xff" * len(self._data)
        tail = self._size & 7
        if tail:
            self._data[-1] = (1 << tail) - 1

    def count(self) -> int:
        """Return how many pieces are present."""
        return int.from_bytes(self._data, "little").bit_count()

    def is_full(self) -> bool:
        """Return whether every piece is present (true for an empty bitmap)."""
        return self.count() == self._size

    def _next_missing(self, start: int) -> int:
        data = self._data
        piece = start
        while piece < self._size:
            if piece & 7 == 0 and data[piece >> 3] == 0xFF:
                piece += 8
            elif data[piece >> 3] >> (piece & 7) & 1:
                piece += 1
            else:
                return piece
        return -1

    def first_missing(self) -> int:
        """Return the lowest missing piece, or -1 when none is missing."""
        return self._next_missing(0)

    def iter_missing(self) -> Iterator[int]:
        """Yield the missing pieces in ascending order, each found as of the moment it is asked for."""
        piece = self._next_missing(0)
        while piece != -1:
            yield piece
            piece = self._next_missing(piece + 1)

    def missing_from(self, parent: PieceBitmap) -> list[int]:
        """Return, ascending, the pieces ``parent`` has and this bitmap lacks."""
        _check_same_size(self, parent)
        return _pieces_of(bytes(p & ~w & 0xFF for w, p in zip(self._data, parent._data, strict=True)))

    def present(self) -> list[int]:
        """Return, ascending, the pieces present."""
        return _pieces_of(bytes(self._data))

    def to_bytes(self) -> bytes:
        """Return the bitmap in its storage layout (see the module docstring)."""
        return bytes(self._data)


def _check_same_size(want: PieceBitmap, parent: object) -> None:
    if not isinstance(parent, PieceBitmap):
        raise TypeError(f"expected a PieceBitmap, got {type(parent).__name__}")
    if parent._size != want._size:
        raise ValueError(f"bitmap sizes differ: {want._size} != {parent._size}")


def _pieces_of(data: bytes) -> list[int]:
    return [(index << 3) + bit for index, byte in enumerate(data) if byte for bit in range(8) if byte >> bit & 1]


def rarest_first(want: PieceBitmap, parents: Iterable[PieceBitmap]) -> list[int]:
    """Return the pieces missing in ``want`` that some parent has, held by fewest parents first, then by number."""
    if not isinstance(want, PieceBitmap):
        raise TypeError(f"expected a PieceBitmap, got {type(want).__name__}")
    holders: dict[int, int] = {}
    for parent in parents:
        for piece in want.missing_from(parent):
            holders[piece] = holders.get(piece, 0) + 1
    return sorted(holders, key=lambda piece: (holders[piece], piece))

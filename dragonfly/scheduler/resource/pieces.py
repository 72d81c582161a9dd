"""The set of pieces a peer has finished, on the native piece bitmap."""

from __future__ import annotations

from dragonfly.common import native


class PieceSet:
    """Finished piece numbers of one peer, with an O(1) count.

    When the task's piece count is not known yet the bitmap grows (doubling) up to ``limit`` pieces.
    """

    __slots__ = ("_bitmap", "_fixed", "_limit", "count")

    def __init__(self, piece_count: int, limit: int) -> None:
        self._fixed = piece_count > 0
        self._limit = piece_count if self._fixed else limit
        self._bitmap = native.PieceBitmap(piece_count) if self._fixed else None
        self.count = 0

    @property
    def size(self) -> int:
        """Return the current bitmap size."""
        return self._bitmap.size if self._bitmap is not None else 0

    def __contains__(self, number: int) -> bool:
        bitmap = self._bitmap
        return bitmap is not None and 0 <= number < bitmap.size and bitmap.test(number)

    def add(self, number: int) -> bool:
        """Record a finished piece; return False if it was already recorded.

        Raises ValueError for a piece number outside the task.
        """
        if not 0 <= number < self._limit:
            raise ValueError(f"piece number {number} out of range: the task has {self._limit} pieces")
        bitmap = self._bitmap
        if bitmap is None or number >= bitmap.size:
            bitmap = self._grow(number + 1)
        if bitmap.test(number):
            return False
        bitmap.set(number)
        self.count += 1
        return True

    def _grow(self, needed: int) -> native.PieceBitmap:
        old = self._bitmap
        size = min(max(needed, 2 * (old.size if old is not None else 0), 64), self._limit)
        bitmap = native.PieceBitmap(size)
        if old is not None:
            for number in self.numbers():
                bitmap.set(number)
        self._bitmap = bitmap
        return bitmap

    def numbers(self) -> list[int]:
        """Return the finished piece numbers, ascending."""
        bitmap = self._bitmap
        return [] if bitmap is None else bitmap.present()

    def snapshot(self) -> native.PieceBitmap | None:
        """Return a copy of the bitmap (a memcpy), for work on another thread while this set keeps changing."""
        bitmap = self._bitmap
        return None if bitmap is None else native.PieceBitmap.from_bytes(bitmap.size, bitmap.to_bytes())

    def needed_from(self, parent: PieceSet) -> int:
        """Return how many of ``parent``'s pieces this set lacks."""
        mine, theirs = self._bitmap, parent._bitmap
        if theirs is None:
            return 0
        if mine is None:
            return parent.count
        if mine.size == theirs.size:
            return len(mine.missing_from(theirs))
        return sum(1 for n in parent.numbers() if n not in self)

"""How many pieces a daemon fetches from the origin at once: in order, and only as many as pay off.

A seed peer's children wait for its first pieces, so piece 0 should land as early as the origin link allows and the
rest one piece-time apart, instead of eight finishing together; on a fast origin, though, concurrency is what makes
it fast. The window starts at one piece and doubles while doubling brings more throughput.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Back-to-source window (SourceWindow): the next piece may start when the one before has this fraction of a piece
# left, which hides the request round trip without splitting the origin's link; a doubled window is kept only if
# it brings this much more throughput; each window is measured over this many piece completions (at least). When
# the first piece, or one piece alone on average, takes less than _SOURCE_QUICK seconds, pieces in flight together
# cost too little latency to matter (and such short samples are mostly scheduling noise): the window goes straight
# to the limit.
_SOURCE_LEAD = 0.125
_SOURCE_GAIN = 1.1
_SOURCE_SAMPLE = 4
_SOURCE_QUICK = 0.025


class SourcePiece:
    """A piece in flight from the origin: counts its bytes into its window, once even if a retry reads them again."""

    __slots__ = ("left", "window")

    def __init__(self, window: SourceWindow, length: int) -> None:
        self.window = window
        self.left = length

    def receive(self, count: int) -> None:
        """Count bytes that arrived; the backend calls this per chunk."""
        count = min(count, self.left)
        self.left -= count
        self.window.receive(count)


class SourceWindow:
    """How many pieces of a task are fetched from the origin at once.

    It starts at one piece and doubles, up to ``limit``, while each doubling brings at least ``_SOURCE_GAIN`` times
    the throughput. An origin whose link one connection fills (the usual seed-peer case) so stays at one piece:
    pieces land in order about a piece-time apart, the first one a piece-time after the start, instead of
    ``limit`` pieces sharing the link and landing together. An origin limited per connection (round trips, CPU,
    per-connection throttling) gets more. A piece starts once the bytes still to come for the pieces in flight fit
    in ``size - 1`` pieces plus a lead, so starts stay a piece's bytes apart rather than in batches.
    """

    __slots__ = (
        "_clock",
        "_in_flight",
        "_limit",
        "_mark",
        "_outstanding",
        "_piece_length",
        "_rate",
        "_received",
        "_samples",
        "_settled",
        "_started",
        "_wakeup",
        "size",
    )

    def __init__(self, limit: int, piece_length: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = 1
        self._limit = limit
        self._piece_length = piece_length
        self._clock = clock
        self._started = clock()
        self._in_flight = 0
        self._outstanding = 0
        self._received = 0
        self._wakeup = asyncio.Event()
        # When the current size began to be measured (clock, bytes received), and the completions since.
        self._mark: tuple[float, int] | None = None
        self._samples = 0
        self._rate = 0.0
        self._settled = limit <= 1

    def _room(self) -> float:
        return (self.size - 1 + _SOURCE_LEAD) * self._piece_length

    def admits(self) -> bool:
        """Return whether one more piece may start now."""
        if self._in_flight == 0:
            return True
        if self._in_flight >= min(self.size + 1, self._limit):
            return False
        return self._outstanding <= self._room()

    async def wait(self) -> None:
        """Wait until bytes arrive or a piece ends (then ask ``admits`` again)."""
        self._wakeup.clear()
        await self._wakeup.wait()

    def begin(self, length: int) -> SourcePiece:
        """Count a piece of ``length`` bytes into flight."""
        self._in_flight += 1
        self._outstanding += length
        return SourcePiece(self, length)

    def receive(self, count: int) -> None:
        """Count bytes that arrived for a piece in flight."""
        self._outstanding -= count
        self._received += count
        if self.admits():
            self._wakeup.set()

    def end(self, piece: SourcePiece) -> None:
        """Count a piece out of flight, whole or failed."""
        self._in_flight -= 1
        self._outstanding -= piece.left
        piece.left = 0
        self._wakeup.set()

    def complete(self, piece: SourcePiece) -> None:
        """End a piece that arrived whole; measure the current size and settle or double it."""
        self.end(piece)
        if self._settled:
            return
        now = self._clock()
        if self._mark is None:
            # The first completion after a change: from here on the new size is in flight.
            self._mark = (now, self._received)
            if self.size == 1 and now - self._started < _SOURCE_QUICK:
                self.size = self._limit
                self._settled = True
            return
        self._samples += 1
        if self._samples < max(_SOURCE_SAMPLE, 2 * self.size):
            return
        since, received = self._mark
        rate = (self._received - received) / max(now - since, 1e-9)
        if self.size == 1 and rate * _SOURCE_QUICK > self._piece_length:
            self.size = self._limit
            self._settled = True
        elif self.size > 1 and rate < self._rate * _SOURCE_GAIN:
            self.size //= 2
            self._settled = True
        else:
            self._rate = rate
            self.size = min(2 * self.size, self._limit)
            self._settled = self.size == self._limit
        self._mark = None
        self._samples = 0

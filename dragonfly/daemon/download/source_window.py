"""How many pieces a daemon fetches from the origin at once: in order, and only as many as pay off.

A seed peer's children wait for its first pieces, so piece 0 should land as early as the origin link allows and the
rest one piece-time apart, instead of eight finishing together; on a fast origin, though, concurrency is what makes
it fast. The window starts at one piece and doubles while doubling brings more throughput.

The next piece is asked for before the one in flight ends, by a lead that covers how long a piece takes from being
asked for to its first bytes counted here (connection, request, the origin's answer, the reading thread and the
event loop getting the CPU): on a seed peer that shares its cores with busy daemons that took 0.09 s (median) at 16
peers against 0.02 s at 4, while an eighth of a piece lasts 0.01 s on a 400 Mbit/s link, which then idled between
pieces (bench/RESULTS.md §1, "CPU per piece at 8 and 16 peers").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Back-to-source window (SourceWindow): the next piece may start when the one before has this fraction of a piece
# left, which hides the request round trip without splitting the origin's link, or more: what arrives at the link's
# rate while a piece waits for its first bytes (_SOURCE_LEAD_MAX at most, so pieces still land in order, each
# sharing the link for at most that part of it); a doubled window is kept only if
# it brings this much more throughput; each window is measured over this many piece completions (at least). When
# the first piece, or one piece alone on average, takes less than _SOURCE_QUICK seconds, pieces in flight together
# cost too little latency to matter (and such short samples are mostly scheduling noise): the window goes straight
# to the limit.
_SOURCE_LEAD = 0.125
_SOURCE_LEAD_MAX = 0.5
# Weight of the latest start in the smoothed start time of pieces.
_SOURCE_START_WEIGHT = 0.25
_SOURCE_GAIN = 1.1
_SOURCE_SAMPLE = 4
_SOURCE_QUICK = 0.025


class SourcePiece:
    """A piece in flight from the origin: counts its bytes into its window, once even if a retry reads them again."""

    __slots__ = ("began", "left", "window")

    def __init__(self, window: SourceWindow, length: int, began: float) -> None:
        self.window = window
        self.left = length
        #: When the piece was asked for (the window's clock); None once its first bytes were counted.
        self.began: float | None = began

    def receive(self, count: int) -> None:
        """Count bytes that arrived; the backend calls this per chunk."""
        if self.began is not None:
            self.window.first_bytes(self.began)
            self.began = None
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
        "_first_bytes_at",
        "_in_flight",
        "_lead",
        "_limit",
        "_mark",
        "_outstanding",
        "_piece_length",
        "_rate",
        "_received",
        "_samples",
        "_settled",
        "_start_time",
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
        self._lead = _SOURCE_LEAD * piece_length
        # Smoothed seconds from asking for a piece to its first bytes; when the first bytes of all came.
        self._start_time: float | None = None
        self._first_bytes_at: float | None = None

    def _room(self) -> float:
        return (self.size - 1) * self._piece_length + self._lead

    def first_bytes(self, began: float) -> None:
        """Count the first bytes of a piece asked for at ``began``: how long pieces take to start."""
        now = self._clock()
        if self._first_bytes_at is None:
            self._first_bytes_at = now
        took = now - began
        previous = self._start_time
        self._start_time = took if previous is None else previous + _SOURCE_START_WEIGHT * (took - previous)

    def _adapt_lead(self, now: float) -> None:
        """Make the lead what arrives while a piece starts, at the rate bytes have come so far (the least and the
        most lead in between). Not before the first piece is in: its children wait for it, and a larger lead would
        have the second piece share the link with it."""
        if self._start_time is None or self._first_bytes_at is None or now <= self._first_bytes_at:
            return
        rate = self._received / (now - self._first_bytes_at)
        least, most = _SOURCE_LEAD * self._piece_length, _SOURCE_LEAD_MAX * self._piece_length
        self._lead = min(max(self._start_time * rate, least), most)

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
        return SourcePiece(self, length, self._clock())

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
        now = self._clock()
        self._adapt_lead(now)
        if self._settled:
            return
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

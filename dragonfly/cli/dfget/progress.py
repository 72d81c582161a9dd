"""Progress on stderr and the bytes received per source (origin, seed peer, peers, local cache)."""

from __future__ import annotations

import sys
import time

from dragonfly.cli.dfget.messages import BACK_TO_SOURCE, LOCAL_PEER, REMOTE_PEER, Piece


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60:02d}:{seconds % 60:02d}")
    )


class ProgressBar:
    """A one-line progress bar on stderr: elapsed, bar, percent, rate, ETA (redrawn at most 10 times a second)."""

    WIDTH = 30

    def __init__(self, label: str, started: float) -> None:
        self.label = label
        # The same start as the summary line's, so both show the same rate at the end.
        self.started = started
        self._drawn = 0.0

    def update(self, done: int, total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        fraction = done / total if total else 1.0
        filled = int(fraction * self.WIDTH)
        bar = "=" * filled + (">" if filled < self.WIDTH else "") + "-" * max(self.WIDTH - filled - 1, 0)
        eta = _clock((total - done) / rate) if rate > 0 else "--:--"
        sys.stderr.write(
            f"\r{self.label} [{_clock(elapsed)}] [{bar}] {fraction * 100:3.0f}% ({human(rate)}/s, eta {eta}) "
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class Traffic:
    """Bytes received per source, from the per-piece messages (each piece counted once), and how much of the
    expected range the pieces hold (``covered``).

    ``covered`` is kept as the pieces arrive, so asking for it after every piece (the progress bar does) costs the
    same at the last piece as at the first; summing the pieces again at each one made a download of n pieces cost
    n^2 / 2 steps.
    """

    __slots__ = ("by_parent", "covered", "expected", "local", "origin", "peers", "pieces", "seed", "spans")

    def __init__(self) -> None:
        self.origin = self.seed = self.peers = self.local = 0
        self.pieces: set[int] = set()
        self.spans: list[tuple[int, int]] = []
        # Bytes per parent peer id: which peers served this download (shown with --log-level debug).
        self.by_parent: dict[str, int] = {}
        # The range [start, end) the output must hold, once the daemon said it; bytes of it the pieces hold.
        self.expected: tuple[int, int] | None = None
        self.covered = 0

    @property
    def total(self) -> int:
        return self.origin + self.seed + self.peers + self.local

    def expect(self, start: int, end: int) -> None:
        """Set the range ``[start, end)`` the output must hold; ``covered`` counts the bytes of it received."""
        if self.expected == (start, end):
            return
        # The range comes before the pieces; only a daemon that sends it again, changed, costs a recount.
        self.expected = (start, end)
        self.covered = sum(max(0, min(e, end) - max(s, start)) for s, e in self.spans)

    def hold(self, start: int, end: int) -> None:
        """Count ``[start, end)`` (a piece's span) as received."""
        self.spans.append((start, end))
        if self.expected is not None:
            first, last = self.expected
            self.covered += max(0, min(end, last) - max(start, first))

    def add(self, piece: Piece) -> None:
        if piece.number in self.pieces:
            return
        self.pieces.add(piece.number)
        self.hold(piece.offset, piece.offset + piece.length)
        if piece.traffic_type == BACK_TO_SOURCE:
            self.origin += piece.length
        elif piece.traffic_type == LOCAL_PEER:
            self.local += piece.length
        elif piece.parent_id.endswith("-seed"):
            self.seed += piece.length
        else:
            self.peers += piece.length
        if piece.traffic_type == REMOTE_PEER:
            self.by_parent[piece.parent_id] = self.by_parent.get(piece.parent_id, 0) + piece.length

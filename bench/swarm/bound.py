"""The Kumar–Ross lower bound on the time to distribute one file to N peers (``docs/benchmarks.md#the-lower-bound``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bound:
    """The three terms of max(F/u_s, F/d_min, N·F/(u_s + Σu_i)) in seconds, and which one binds."""

    origin_term: float
    download_term: float
    swarm_term: float

    @property
    def seconds(self) -> float:
        return max(self.origin_term, self.download_term, self.swarm_term)

    @property
    def binding(self) -> str:
        terms = {"F/u_s": self.origin_term, "F/d_min": self.download_term, "N·F/(u_s+Σu_i)": self.swarm_term}
        return max(terms, key=lambda name: terms[name])


def kumar_ross_bound(
    size: int, origin_upload: float, peer_uploads: Sequence[float], peer_downloads: Sequence[float]
) -> Bound:
    """Return the bound for a file of `size` bytes; rates are bytes/s, and 0 means unlimited (infinite)."""
    if size <= 0:
        raise ValueError("size must be positive")
    if not peer_downloads or len(peer_uploads) != len(peer_downloads):
        raise ValueError("need one upload and one download rate per peer")
    if origin_upload < 0 or any(r < 0 for r in (*peer_uploads, *peer_downloads)):
        raise ValueError("rates must not be negative")
    inf = float("inf")
    u_s = origin_upload or inf
    d_min = min(d or inf for d in peer_downloads)
    total_upload = u_s + sum(u or inf for u in peer_uploads)
    n = len(peer_downloads)
    return Bound(origin_term=size / u_s, download_term=size / d_min, swarm_term=n * size / total_upload)


def efficiency(bound_seconds: float, makespan: float) -> float:
    """Return bound / makespan: 1.0 means the system hit the bound."""
    if makespan <= 0:
        raise ValueError("makespan must be positive")
    return bound_seconds / makespan

"""Per-piece timelines of one run of ours, read from every daemon's piece metadata after the run.

Each daemon records every stored piece (``pieces`` table of ``storage/metadata/dfdaemon.db``): the parent it came
from (none: the origin), when its request got its buffer (``created_at``, wall time) and how long its bytes took
(``cost``). That is enough to see where a swarm's time goes without tracing the daemons while they run:

- per peer: when its first piece started and its last one ended, how many pieces it took from whom, how many it
  had in flight at most, and its **idle time**: moments with nothing in flight while one of its parents (the hosts
  it took pieces from) had already stored a piece it lacked (time the dispatch lost; at the swarm's head nothing
  may exist to fetch, which is not idle), and the part of it where only the seed peer held such a piece;
- per parent (the seed included): pieces and F it uploaded, its upload rate while busy (its link's 800 Mbit/s is
  100 MB/s), and the most pieces it served at once;
- the seed's origin phase: first to last byte from the origin, its rate against the origin link, what share of
  the task the peers held when it ended, and how long the swarm took after it (**tail**); the seed's uploads of
  a piece some peer already held (the seed's link spent on what the swarm could trade).

``end`` is ``created_at + cost``: the piece's verification after its bytes arrived is not in ``cost``, so a piece
becomes available to others slightly later than ``end`` says.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

#: The seed peer's host name in the bench's topology.
SEED = "seed"
ORIGIN = "origin"


@dataclass(frozen=True, slots=True)
class PieceEvent:
    """One stored piece: ``start``/``end`` in seconds since the run's start."""

    host: str
    number: int
    source: str
    start: float
    end: float
    length: int


def parent_host(peer_id: str) -> str:
    """Return the host name in a peer id (``{ip}-{hostname}-{uuid}``, with ``-seed`` on a seed peer's)."""
    parts = peer_id.split("-")
    return parts[1] if len(parts) > 1 else peer_id


def read_pieces(db: Path, host: str, t0: float) -> list[PieceEvent]:
    """Return the pieces stored in one daemon's metadata database, times relative to ``t0`` (wall seconds)."""
    if not db.is_file():
        return []
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT number, length, parent_id, cost, created_at FROM pieces").fetchall()
    finally:
        connection.close()
    return [
        PieceEvent(host, number, ORIGIN if parent is None else parent_host(parent), at - t0, at - t0 + cost, length)
        for number, length, parent, cost, at in rows
    ]


def _busy(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the union of ``intervals`` as sorted disjoint intervals."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _peak(intervals: list[tuple[float, float]]) -> int:
    """Return the most intervals that overlap at one moment."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = level = 0
    for _, step in points:
        level += step
        peak = max(peak, level)
    return peak


def _idle(events: list[PieceEvent], ends: dict[str, dict[int, float]]) -> tuple[float, int, float]:
    """Return (seconds, gaps, seed-only seconds) during which this host had nothing in flight while one of its
    parents held a piece it lacked.

    Its parents are the hosts it took pieces from (the scheduler's other candidates are not in the metadata).
    During a gap this host acquires nothing, so what it lacks is fixed and what its parents hold only grows: the
    gap is idle from the first moment a parent stored one of its missing pieces. Seed-only seconds are those where
    only the seed peer held any of them (the dispatch's hold of a feeding seed's pieces for another holder).
    """
    mine = sorted(events, key=lambda e: e.start)
    parents = {e.source for e in mine if e.source != ORIGIN}
    busy = _busy([(e.start, e.end) for e in mine])
    idle, gaps, seed_only = 0.0, 0, 0.0
    for (_, gap_start), (gap_end, _) in pairwise(busy):
        missing = [e.number for e in mine if e.start >= gap_end]
        held = [
            (at, parent)
            for parent in parents
            for number in missing
            if (at := ends.get(parent, {}).get(number)) is not None and at < gap_end
        ]
        if not held:
            continue
        since = max(gap_start, min(at for at, _ in held))
        idle += gap_end - since
        gaps += 1
        # Until another parent got one of them, only the seed held what this host was missing.
        others = [at for at, parent in held if parent != SEED]
        seed_only += max(min(others, default=gap_end), since) - since
    return idle, gaps, seed_only


def analyse(events: list[PieceEvent], peers: list[str], size: int) -> dict[str, Any]:
    """Return the timeline summary of one run (see the module docstring); times in seconds since the start."""
    by_host: dict[str, list[PieceEvent]] = defaultdict(list)
    for event in events:
        by_host[event.host].append(event)
    stored_by: dict[int, list[tuple[float, str]]] = defaultdict(list)
    ends: dict[str, dict[int, float]] = defaultdict(dict)
    for event in events:
        ends[event.host][event.number] = event.end
    for event in events:
        stored_by[event.number].append((event.end, event.host))
    for holders in stored_by.values():
        holders.sort()
    uploads: dict[str, list[PieceEvent]] = defaultdict(list)
    for event in events:
        if event.source != ORIGIN:
            uploads[event.source].append(event)

    origin = [e for e in events if e.source == ORIGIN]
    origin_start = min((e.start for e in origin), default=None)
    origin_end = max((e.end for e in origin), default=None)
    origin_bytes = sum(e.length for e in origin)
    last_end = max((e.end for e in events if e.host in peers), default=None)

    peer_rows: dict[str, Any] = {}
    for host in peers:
        mine = by_host.get(host, [])
        if not mine:
            peer_rows[host] = {"pieces": 0}
            continue
        idle, gaps, seed_only = _idle(mine, ends)
        busy = _busy([(e.start, e.end) for e in mine])
        busy_seconds = sum(b - a for a, b in busy)
        got = sum(e.length for e in mine)
        held_at_origin_end = (
            sum(e.length for e in mine if e.end <= origin_end) / size if origin_end is not None else None
        )
        peer_rows[host] = {
            "pieces": len(mine),
            "first_start": round(min(e.start for e in mine), 3),
            "first_end": round(min(e.end for e in mine), 3),
            "last_end": round(max(e.end for e in mine), 3),
            "from": dict(Counter(e.source for e in mine).most_common()),
            "max_in_flight": _peak([(e.start, e.end) for e in mine]),
            "rate_busy_mb_s": round(got / busy_seconds / 1e6, 1) if busy_seconds else None,
            "idle_s": round(idle, 3),
            "idle_gaps": gaps,
            "idle_seed_only_s": round(seed_only, 3),
            "held_at_origin_end": None if held_at_origin_end is None else round(held_at_origin_end, 3),
        }

    parent_rows: dict[str, Any] = {}
    for host, served in sorted(uploads.items()):
        busy = _busy([(e.start, e.end) for e in served])
        busy_seconds = sum(b - a for a, b in busy)
        sent = sum(e.length for e in served)
        parent_rows[host] = {
            "pieces": len(served),
            "uploaded_f": round(sent / size, 3),
            "rate_busy_mb_s": round(sent / busy_seconds / 1e6, 1) if busy_seconds else None,
            "max_concurrent": _peak([(e.start, e.end) for e in served]),
            "last_end": round(max(e.end for e in served), 3),
        }

    # The seed's link spent on a piece some peer had stored before the transfer began.
    redundant = 0
    for event in uploads.get(SEED, []):
        times = [t for t, h in stored_by[event.number] if h not in (SEED, event.host)]
        if times and times[0] <= event.start:
            redundant += 1
    seed_pieces = len(uploads.get(SEED, []))
    spread = sorted(
        max(t for t, h in holders if h in peers) - min(t for t, h in holders if h in peers)
        for holders in stored_by.values()
        if any(h in peers for _, h in holders)
    )
    return {
        "origin": {
            "first_start": None if origin_start is None else round(origin_start, 3),
            # The seed's first origin piece stored: the earliest a child can have a piece. (Its start is when its
            # fetch began; a request sent earlier, with the seed's stat, is not seen here.)
            "first_end": min((round(e.end, 3) for e in origin), default=None),
            "last_end": None if origin_end is None else round(origin_end, 3),
            "rate_mb_s": (
                round(origin_bytes / (origin_end - origin_start) / 1e6, 1)
                if origin_start is not None and origin_end is not None and origin_end > origin_start
                else None
            ),
            "pieces": len(origin),
        },
        "tail_s": (round(last_end - origin_end, 3) if last_end is not None and origin_end is not None else None),
        "peers_held_at_origin_end": _mean(
            [r["held_at_origin_end"] for r in peer_rows.values() if r.get("held_at_origin_end") is not None]
        ),
        "idle_s_total": round(sum(r.get("idle_s", 0.0) for r in peer_rows.values()), 3),
        "idle_seed_only_s_total": round(sum(r.get("idle_seed_only_s", 0.0) for r in peer_rows.values()), 3),
        "seed_uploads": seed_pieces,
        "seed_uploads_already_at_a_peer": redundant,
        "piece_spread_s_p50": round(spread[len(spread) // 2], 3) if spread else None,
        "piece_spread_s_max": round(spread[-1], 3) if spread else None,
        "peers": peer_rows,
        "parents": parent_rows,
        # Every piece: [host, number, source, start, end] (seconds since the start).
        "pieces": [
            [e.host, e.number, e.source, round(e.start, 4), round(e.end, 4)]
            for e in sorted(events, key=lambda e: (e.host, e.start))
        ],
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def summary_lines(system: str, timeline: dict[str, Any]) -> list[str]:
    """Return a few Markdown lines for the run's report."""
    origin = timeline["origin"]
    peers = timeline["peers"]
    busiest = sorted(timeline["parents"].items(), key=lambda kv: -kv[1]["uploaded_f"])[:4]
    idle = sorted(((r.get("idle_s", 0.0), h) for h, r in peers.items()), reverse=True)[:3]
    return [
        f"- {system} timeline: origin {origin['first_start']}-{origin['last_end']} s at {origin['rate_mb_s']} MB/s; "
        f"peers held {timeline['peers_held_at_origin_end']} of the task when it ended; tail {timeline['tail_s']} s; "
        f"a piece reached every peer within {timeline['piece_spread_s_p50']} s (p50), "
        f"{timeline['piece_spread_s_max']} s (max)",
        f"- {system} timeline: seed uploaded {timeline['seed_uploads']} pieces "
        f"({timeline['seed_uploads_already_at_a_peer']} already at a peer); busiest parents "
        + ", ".join(f"{h} {r['uploaded_f']} F ({r['rate_busy_mb_s']} MB/s busy)" for h, r in busiest)
        + f"; idle while a parent held a missing piece {timeline['idle_s_total']} s in all "
        + f"({timeline['idle_seed_only_s_total']} s of it only at the seed), most "
        + ", ".join(f"{h} {s:.2f} s" for s, h in idle),
    ]

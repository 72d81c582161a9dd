"""Which missing piece to fetch next, and from which parent: the per-piece policy of a download from parents.

Pure policy, no I/O, so it can be tuned and tested on its own. The downloader (``TaskManager``) asks ``plan()``
which fetches to start, runs them, and reports each outcome with ``succeeded()`` or ``failed()``. One dispatcher
lives for one round of candidate parents from the scheduler and keeps:

- the pieces to skip (stored already, or outside a ranged download) or in flight (never requested twice at once),
- the parents that failed each piece (not asked for it again this round),
- strikes per parent (``PARENT_STRIKES`` failures exclude it; one corrupt piece excludes it at once),
- a random rank per piece, so that children seeing the same parents ask for different pieces and then have
  something to trade,
- the fetches in flight, per piece and (through the ``ParentSelector``) per parent.

Order: rarest piece first; among equally rare pieces, the child's own rank; the parent by the selector's weights.
Seed peers are kept to ``SEED_PIECE_SLOTS`` fetches at a time while another parent may still serve, and a piece
only seed peers hold waits ``SEED_PIECE_DELAY`` for another holder: the seed's upload then carries each new piece
to a few children, which pass it on, instead of carrying every piece to every child (the aim of BitTorrent's
super-seeding). Each peer parent gets a share of the slots, so a parent that alone holds the newest pieces sends
each child a few of them and the children trade the rest.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from dragonfly.common import native
from dragonfly.daemon.download.parent_selector import ParentSelector
from dragonfly.daemon.download.piece_collector import COLLECT_WINDOW, ParentState

#: How long a piece only seed peers hold waits for another parent to get it (seconds after COLLECT_WINDOW).
SEED_PIECE_DELAY = 1.0
#: How many pieces a child fetches from seed peers at once while another parent may serve them.
SEED_PIECE_SLOTS = 2
#: A parent that failed this many pieces (for reasons other than corruption) is not asked again this round.
PARENT_STRIKES = 3


@dataclass(frozen=True, slots=True)
class PieceFetch:
    """One piece requested from one parent."""

    number: int
    parent: ParentState
    #: Requests in flight to this parent when this one started, itself included (for throughput estimates).
    concurrent: int
    #: When the fetch was planned (monotonic seconds).
    started: float


class PieceDispatcher:
    """The dispatch state of one round of parents; see the module docstring for the policy."""

    def __init__(
        self,
        piece_count: int,
        *,
        skip: Iterable[int],
        concurrency: int,
        selector: ParentSelector,
        rank: Sequence[int] | None = None,
    ) -> None:
        self.piece_count = piece_count
        self.concurrency = concurrency
        self._selector = selector
        # Pieces skipped or in flight: rarest_first never offers them.
        self._blocked = native.PieceBitmap(piece_count)
        for number in skip:
            self._blocked.set(number)
        if rank is None:
            shuffled = list(range(piece_count))
            random.shuffle(shuffled)
            rank = shuffled
        self._rank = rank
        self.in_flight: dict[int, PieceFetch] = {}
        self.excluded: set[str] = set()
        self._failed_parents: dict[int, set[str]] = collections.defaultdict(set)
        self._strikes: collections.Counter[str] = collections.Counter()

    def usable(self, parents: Iterable[ParentState]) -> list[ParentState]:
        """Return the parents that may be asked for pieces: not excluded, and with a known Vortex address."""
        return [p for p in parents if p.id not in self.excluded and p.vortex_addr]

    def all_excluded(self, parents: Collection[ParentState]) -> bool:
        """Tell whether every parent of the round has been excluded."""
        return all(p.id in self.excluded for p in parents)

    def plan(
        self, parents: Collection[ParentState], first_seen: Mapping[int, float], now: float
    ) -> tuple[list[PieceFetch], float | None]:
        """Return the fetches to start now, and when the next held-back piece becomes dispatchable (or None).

        ``first_seen`` is when any parent first reported each piece (``PieceCollector.first_seen``); a piece is
        dispatchable once every parent still syncing has reported it, or ``COLLECT_WINDOW`` after its first report.
        """
        usable = self.usable(parents)
        if not usable or len(self.in_flight) >= self.concurrency:
            return [], None
        # Another parent may still get what only a seed peer has (even one that has reported nothing yet).
        spare_seeds = any(p.syncing and not p.seed and p.id not in self.excluded for p in parents)
        selector = self._selector
        started: list[PieceFetch] = []
        next_ready: float | None = None
        per_parent = -(-self.concurrency // max(sum(1 for p in usable if not p.seed), 1))
        seed_slots = SEED_PIECE_SLOTS - sum(1 for fetch in self.in_flight.values() if fetch.parent.seed)
        order = native.rarest_first(self._blocked, [p.bitmap for p in usable])
        for group in _rarity_groups(order, usable, self._rank):
            for number, holders in group:
                if len(self.in_flight) >= self.concurrency:
                    return started, next_ready
                failed = self._failed_parents.get(number)
                if failed:
                    holders = [p for p in holders if p.id not in failed]
                    if not holders:
                        continue
                ready_at = first_seen.get(number, now) + COLLECT_WINDOW
                if ready_at > now and any(p.syncing and not p.bitmap.test(number) for p in usable):
                    next_ready = ready_at if next_ready is None else min(next_ready, ready_at)
                    continue
                peers = [p for p in holders if not p.seed]
                candidates = [p for p in peers if selector.in_flight[p.id] < per_parent]
                if spare_seeds and len(peers) < len(holders) and seed_slots > 0:
                    seed_from = ready_at + SEED_PIECE_DELAY if not peers else now
                    if seed_from <= now:
                        candidates += [p for p in holders if p.seed]
                    else:
                        next_ready = seed_from if next_ready is None else min(next_ready, seed_from)
                elif not spare_seeds:
                    candidates += [p for p in holders if p.seed]
                if not candidates:
                    continue
                chosen = selector.choose([p.id for p in candidates])
                parent = next(p for p in candidates if p.id == chosen)
                if parent.seed:
                    seed_slots -= 1
                self._blocked.set(number)
                fetch = PieceFetch(number, parent, selector.begin(parent.id), now)
                self.in_flight[number] = fetch
                started.append(fetch)
        return started, next_ready

    def succeeded(self, number: int, *, length: int, seconds: float) -> PieceFetch:
        """Record piece ``number`` as stored: it took ``seconds`` to receive ``length`` bytes."""
        fetch = self.in_flight.pop(number)
        self._selector.end(fetch.parent.id)
        self._selector.observe(fetch.parent.id, length, seconds, fetch.concurrent)
        return fetch

    def failed(self, number: int, *, corrupt: bool) -> PieceFetch:
        """Record a failed fetch of piece ``number``: it becomes missing again, and its parent takes the blame.

        A parent that sent corrupt bytes is excluded at once; other failures count as strikes.
        """
        fetch = self.in_flight.pop(number)
        parent_id = fetch.parent.id
        self._selector.end(parent_id)
        self._selector.penalize(parent_id)
        self._blocked.clear(number)
        self._failed_parents[number].add(parent_id)
        if corrupt:
            self.excluded.add(parent_id)
        else:
            self._strikes[parent_id] += 1
            if self._strikes[parent_id] >= PARENT_STRIKES:
                self.excluded.add(parent_id)
        return fetch


def _rarity_groups(
    order: list[int], parents: list[ParentState], rank: Sequence[int]
) -> Iterator[list[tuple[int, list[ParentState]]]]:
    """Yield ``order`` (rarest first) as groups of equally rare pieces with their holders, each in ``rank`` order."""
    group: list[tuple[int, list[ParentState]]] = []
    rarity = 0
    for number in order:
        holders = [p for p in parents if p.bitmap.test(number)]
        if len(holders) != rarity and group:
            group.sort(key=lambda item: rank[item[0]])
            yield group
            group = []
        rarity = len(holders)
        group.append((number, holders))
    if group:
        group.sort(key=lambda item: rank[item[0]])
        yield group

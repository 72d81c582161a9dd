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

A transfer slower than ``SlowPiecePolicy.ratio`` of the median piece rate (this round's, or while the round has
too few samples the daemon's recent one, origin pieces included; before any piece at all, ``initial_floor``) is
overdue once it has run ``min_duration``, as is any transfer longer than ``pieceTimeout``: the downloader abandons
it, excludes its parent from the round and asks another parent for the piece. The transfer's rate is what the
kernel counted arriving on its connection (the downloader passes it in), so a trickle is caught after
``min_duration`` whatever the piece length. A trickling parent would otherwise hold a piece,
a receive buffer and a thread for as long as it keeps sending a byte now and then. The relative floor says a
better parent exists, so it applies only while another parent (not excluded, not failed for that piece) holds the
piece or may still get it; a transfer from the only possible parent is held to ``initial_floor`` instead, and only
after ``SOLE_PARENT_PATIENCE`` times ``min_duration``: a seed peer slowed by a loaded CPU was abandoned at 0.56 MB/s
against a median of 9.4 MB/s, and another sent nothing for 2.2 s, each by its first child, which has the seed
alone; the child excluded it and was sent to the origin (1.6-1.8 F from the origin, bench swarm at 8 and 16 peers
on a loaded machine). A trickle from a sole parent is still dropped, after seconds rather than pieceTimeout.

Order: rarest piece first; among equally rare pieces, the child's own rank; the parent by the selector's weights.
Seed peers are kept to ``SEED_PIECE_SLOTS`` fetches at a time while another parent may still serve, and a piece
only seed peers hold waits ``SEED_PIECE_DELAY`` for another holder: the seed's upload then carries each new piece
to a few children, which pass it on, instead of carrying every piece to every child (the aim of BitTorrent's
super-seeding). Each peer parent gets a share of the slots, so a parent that alone holds the newest pieces sends
each child a few of them and the children trade the rest. Neither hold applies to an idle child (nothing in flight,
nothing received this round): it takes its first piece at once from whoever holds it, the seed included, since
waiting would delay the download's first byte by up to ``COLLECT_WINDOW + SEED_PIECE_DELAY``; that costs the seed
at most one extra piece per child, and the child's rank still spreads those first pieces over the task. A child
with nothing in flight (its link idle, typically at the swarm's head or tail) does not wait ``COLLECT_WINDOW`` for
more holders of its next piece either. Both holds are for a seed peer still fetching the task: once it has finished,
it is a parent like any other.

A download whose requester consumes pieces in order as they come (``in_order``: the proxy streaming a response)
takes equally rare pieces in ascending order instead of by rank, and an idle one starts its first piece alone, so
that piece has the parent's whole link rather than an eighth of it.
"""

from __future__ import annotations

import collections
import itertools
import random
import statistics
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from dragonfly.common import native
from dragonfly.common.piece import piece_count, piece_range
from dragonfly.daemon.download.parent_selector import ParentSelector
from dragonfly.daemon.download.piece_collector import COLLECT_WINDOW, ParentState

#: How long a piece only seed peers hold waits for another parent to get it (seconds after COLLECT_WINDOW).
SEED_PIECE_DELAY = 1.0
#: How many pieces a child fetches from seed peers at once while another parent may serve them.
SEED_PIECE_SLOTS = 2
#: A parent that failed this many pieces (for reasons other than corruption) is not asked again this round.
PARENT_STRIKES = 3
#: A transfer from the only parent that could serve its piece is judged after this many times minDuration.
SOLE_PARENT_PATIENCE = 5


#: Samples of this round before its own median is trusted over the daemon's.
_ROUND_SAMPLES = 3
_RATE_WINDOW = 64


@dataclass(frozen=True, slots=True)
class SlowPiecePolicy:
    """When a piece transfer from a parent is given up (see the module docstring)."""

    #: Share of the median piece rate below which a transfer is abandoned; 0 disables the relative floor.
    ratio: float = 0.1
    #: No transfer is abandoned for slowness sooner than this (seconds).
    min_duration: float = 2.0
    #: The floor (bytes/s) while no piece rate is known at all; 0 leaves only the timeout then.
    initial_floor: float = 64 * 1024
    #: No transfer lasts longer than this (seconds; Dragonfly's ``download.pieceTimeout``).
    timeout: float = 360.0


class PieceRates:
    """The recent per-transfer rates (bytes/s) of pieces from parents, and their median."""

    __slots__ = ("_median", "_samples")

    def __init__(self, window: int = _RATE_WINDOW) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=window)
        self._median: float | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, length: int, seconds: float) -> None:
        if length > 0 and seconds > 0:
            self._samples.append(length / seconds)
            self._median = None

    def median(self) -> float | None:
        if self._median is None and self._samples:
            self._median = statistics.median(self._samples)
        return self._median


@dataclass(slots=True)
class PieceFetch:
    """One piece requested from one parent."""

    number: int
    length: int
    parent: ParentState
    #: Requests in flight to this parent when this one started, itself included (for throughput estimates).
    concurrent: int
    #: When the bytes started to flow (monotonic seconds); None while the fetch waits for a buffer or tokens.
    transfer_started: float | None = None
    #: Why the downloader gave up on this fetch, once it has.
    abandoned: str | None = None


class PieceDispatcher:
    """The dispatch state of one round of parents; see the module docstring for the policy."""

    def __init__(
        self,
        content_length: int,
        piece_length: int,
        *,
        skip: Iterable[int],
        concurrency: int,
        selector: ParentSelector,
        slow: SlowPiecePolicy | None = None,
        daemon_rates: PieceRates | None = None,
        rank: Sequence[int] | None = None,
        in_order: bool = False,
    ) -> None:
        self.content_length = content_length
        self.piece_length = piece_length
        self.piece_count = count = piece_count(content_length, piece_length)
        self.concurrency = concurrency
        self._selector = selector
        self._slow = slow or SlowPiecePolicy()
        self._daemon_rates = daemon_rates if daemon_rates is not None else PieceRates()
        self._round_rates = PieceRates()
        # Pieces skipped or in flight: rarest_first never offers them.
        self._blocked = native.PieceBitmap(count)
        for number in skip:
            self._blocked.set(number)
        if rank is None and in_order:
            rank = range(count)
        elif rank is None:
            shuffled = list(range(count))
            random.shuffle(shuffled)
            rank = shuffled
        self._rank = rank
        self._in_order = in_order
        self.in_flight: dict[int, PieceFetch] = {}
        self.excluded: set[str] = set()
        self._failed_parents: dict[int, set[str]] = collections.defaultdict(set)
        # The parents of the last plan(): live states, so exclusions and ends of syncing show at once.
        self._parents: Collection[ParentState] = ()
        self._strikes: collections.Counter[str] = collections.Counter()
        self._received = 0

    @property
    def slow(self) -> SlowPiecePolicy:
        """When this round gives up on a transfer."""
        return self._slow

    def usable(self, parents: Iterable[ParentState]) -> list[ParentState]:
        """Return the parents that may be asked for pieces: not excluded, and with a known Vortex address."""
        return [p for p in parents if p.id not in self.excluded and p.vortex_addr]

    def wants(self, number: int) -> bool:
        """Tell whether piece ``number`` may still be dispatched: not skipped, stored or in flight."""
        return 0 <= number < self.piece_count and not self._blocked.test(number)

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
        self._parents = parents
        usable = self.usable(parents)
        if not usable or len(self.in_flight) >= self.concurrency:
            return [], None
        # Another parent may still get what only a seed peer has (even one that has reported nothing yet).
        spare_seeds = any(p.syncing and not p.seed and p.id not in self.excluded for p in parents)
        selector = self._selector
        started: list[PieceFetch] = []
        next_ready: float | None = None
        per_parent = -(-self.concurrency // max(sum(1 for p in usable if not _feeding(p)), 1))
        seed_slots = SEED_PIECE_SLOTS - sum(1 for fetch in self.in_flight.values() if _feeding(fetch.parent))
        idle = not self.in_flight and not self._received
        # Nothing in flight: this child's link is idle, so its next piece does not wait for more holders.
        starved = not self.in_flight
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
                if not starved and ready_at > now and any(p.syncing and not p.bitmap.test(number) for p in usable):
                    next_ready = ready_at if next_ready is None else min(next_ready, ready_at)
                    continue
                peers = [p for p in holders if not _feeding(p)]
                candidates = [p for p in peers if selector.in_flight[p.id] < per_parent]
                if spare_seeds and len(peers) < len(holders) and seed_slots > 0:
                    seed_from = now if peers or idle else ready_at + SEED_PIECE_DELAY
                    if seed_from <= now:
                        candidates += [p for p in holders if _feeding(p)]
                    else:
                        next_ready = seed_from if next_ready is None else min(next_ready, seed_from)
                elif not spare_seeds:
                    candidates += [p for p in holders if _feeding(p)]
                if not candidates:
                    continue
                chosen = selector.choose([p.id for p in candidates])
                parent = next(p for p in candidates if p.id == chosen)
                if _feeding(parent):
                    seed_slots -= 1
                self._blocked.set(number)
                _offset, length = piece_range(number, self.content_length, self.piece_length)
                fetch = PieceFetch(number, length, parent, selector.begin(parent.id))
                self.in_flight[number] = fetch
                started.append(fetch)
                if idle and self._in_order:
                    return started, next_ready
                idle = starved = False
        return started, next_ready

    def succeeded(self, number: int, *, seconds: float) -> PieceFetch:
        """Record piece ``number`` as stored: its bytes took ``seconds`` to arrive."""
        fetch = self.in_flight.pop(number)
        self._selector.end(fetch.parent.id)
        self._selector.observe(fetch.parent.id, fetch.length, seconds, fetch.concurrent)
        self._received += 1
        self._round_rates.add(fetch.length, seconds)
        self._daemon_rates.add(fetch.length, seconds)
        return fetch

    def rate_floor(self) -> float | None:
        """Return the piece rate (bytes/s) below which a transfer is abandoned, or None while nothing is known."""
        if self._slow.ratio <= 0:
            return None
        rates = self._round_rates if len(self._round_rates) >= _ROUND_SAMPLES else self._daemon_rates
        median = rates.median()
        if median is None:
            return self._slow.initial_floor or None
        return self._slow.ratio * median

    def has_alternative(self, fetch: PieceFetch) -> bool:
        """Tell whether a parent other than ``fetch``'s could serve its piece: holds it or may still get it."""
        failed = self._failed_parents.get(fetch.number, ())
        return any(
            p.id != fetch.parent.id
            and p.id not in self.excluded
            and p.id not in failed
            and (p.syncing or p.bitmap.test(fetch.number))
            for p in self._parents
        )

    def floor_for(self, fetch: PieceFetch) -> tuple[float | None, float]:
        """Return the rate (bytes/s) below which ``fetch`` is abandoned, and after how long (module docstring)."""
        floor = self.rate_floor()
        if floor is None or self.has_alternative(fetch):
            return floor, self._slow.min_duration
        return self._slow.initial_floor or None, SOLE_PARENT_PATIENCE * self._slow.min_duration

    def deadline(self, fetch: PieceFetch) -> float | None:
        """Return when ``fetch`` becomes overdue (monotonic seconds), or None while its bytes have not started."""
        if fetch.transfer_started is None:
            return None
        limit = self._slow.timeout
        floor, min_duration = self.floor_for(fetch)
        if floor is not None:
            limit = min(limit, max(min_duration, fetch.length / floor))
        return fetch.transfer_started + limit

    def first_judgement(self) -> float | None:
        """Return the earliest moment any running transfer can be overdue (monotonic seconds), or None.

        ``overdue`` judges nothing younger than ``min_duration`` or the timeout, so before this moment the round
        need not read the transfers' progress (a socket query each).
        """
        starts = [f.transfer_started for f in self.in_flight.values() if f.abandoned is None]
        started = min((s for s in starts if s is not None), default=None)
        if started is None:
            return None
        return started + min(self._slow.min_duration, self._slow.timeout)

    def next_deadline(self) -> float | None:
        """Return the earliest deadline of the transfers still running, or None."""
        deadlines = [self.deadline(f) for f in self.in_flight.values() if f.abandoned is None]
        return min((d for d in deadlines if d is not None), default=None)

    def overdue(self, now: float, progress: Mapping[int, int] | None = None) -> list[PieceFetch]:
        """Return the transfers to abandon now, each marked with the reason (they stay in flight until they end).

        ``progress`` maps a piece in flight to the bytes received for it so far, where known: a transfer older
        than ``min_duration`` whose rate is below the floor is abandoned at once; without progress, once it has
        run as long as its whole length takes at the floor. A parent one transfer is abandoned for loses the
        others too: they come over the same slow link or from the same trickling sender.
        """
        late: list[PieceFetch] = []
        slow_parents: dict[str, str] = {}
        for fetch in self.in_flight.values():
            if fetch.abandoned is not None or fetch.transfer_started is None:
                continue
            floor, min_duration = self.floor_for(fetch)
            took = now - fetch.transfer_started
            got = progress.get(fetch.number) if progress is not None else None
            if took >= self._slow.timeout:
                fetch.abandoned = f"piece {fetch.number} took longer than the piece timeout ({self._slow.timeout:g}s)"
            elif floor is not None and took >= min_duration:
                rate = got / took if got is not None else None
                if (rate is not None and rate < floor) or (rate is None and took * floor >= fetch.length):
                    shown = "" if got is None else f", {got} bytes in"
                    fetch.abandoned = (
                        f"piece {fetch.number} ({fetch.length} bytes{shown} {took:.1f}s) is slower than "
                        f"{floor / 1e6:.3g} MB/s ({self._floor_basis(fetch)})"
                    )
            if fetch.abandoned is not None:
                late.append(fetch)
                slow_parents.setdefault(fetch.parent.id, fetch.abandoned)
        for parent_id, reason in slow_parents.items():
            late += self.abandon_parent(parent_id, f"parent {parent_id} is too slow: {reason}")
        return late

    def abandon_parent(self, parent_id: str, reason: str) -> list[PieceFetch]:
        """Mark every transfer still running from ``parent_id`` abandoned for ``reason``; return them."""
        marked = []
        for fetch in self.in_flight.values():
            if fetch.parent.id == parent_id and fetch.abandoned is None:
                fetch.abandoned = reason
                marked.append(fetch)
        return marked

    def _floor_basis(self, fetch: PieceFetch) -> str:
        if not (self._round_rates.median() or self._daemon_rates.median()):
            return "no piece rate known yet"
        if not self.has_alternative(fetch):
            return "no other parent could serve it: the absolute floor"
        return f"{self._slow.ratio:g} of the median piece rate"

    def failed(self, number: int, *, corrupt: bool) -> PieceFetch:
        """Record a failed fetch of piece ``number``: it becomes missing again, and its parent takes the blame.

        A parent that sent corrupt bytes, or one a transfer was abandoned for (too slow), is excluded at once;
        other failures count as strikes.
        """
        fetch = self.in_flight.pop(number)
        parent_id = fetch.parent.id
        self._selector.end(parent_id)
        self._selector.penalize(parent_id)
        self._blocked.clear(number)
        self._failed_parents[number].add(parent_id)
        if corrupt or fetch.abandoned is not None:
            self.excluded.add(parent_id)
        else:
            self._strikes[parent_id] += 1
            if self._strikes[parent_id] >= PARENT_STRIKES:
                self.excluded.add(parent_id)
        return fetch


def _feeding(parent: ParentState) -> bool:
    """Tell whether ``parent`` is a seed peer still fetching the task: its upload carries new pieces into the swarm.

    A seed peer that has finished (its SyncPieces stream ended) has no new pieces left to carry: it is a parent like
    any other, so the swarm's last pieces come from it at once instead of waiting for a peer to relay them.
    """
    return parent.seed and parent.syncing


def _rarity_groups(
    order: list[int], parents: list[ParentState], rank: Sequence[int]
) -> Iterator[Iterable[tuple[int, list[ParentState]]]]:
    """Yield ``order`` (rarest first) as groups of equally rare pieces with their holders, each in ``rank`` order.

    With one parent every piece offered is held by it alone: one group, sorted at C speed and paired lazily, since
    ``plan`` takes a piece or two from it (a pair's child planned ~256 holder lists and a sort by a Python key for
    each piece it stored).
    """
    if len(parents) == 1:
        order.sort(key=rank.__getitem__)
        yield zip(order, itertools.repeat(parents))
        return
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

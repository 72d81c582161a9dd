"""Which parent a piece comes from: peers before seed peers, shares per parent, observed figures, rarity ties."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Iterable

import pytest
from dragonfly_api import common_pb2

from dragonfly.daemon.download import piece_dispatcher as pd
from dragonfly.daemon.download.parent_selector import ParentSelector, is_seed_peer
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.piece_collector import COLLECT_WINDOW, ParentState
from dragonfly.daemon.download.piece_dispatcher import PieceDispatcher, PieceFetch

PIECES = 16
PIECE_LENGTH = 4 << 20


def _peer(name: str, *, seed: bool = False) -> common_pb2.Peer:
    return common_pb2.Peer(
        id=f"10.0.0.1-{name}" + ("-seed" if seed else ""),
        host=common_pb2.Host(id=name, type=1 if seed else 0, ip="127.0.0.1", port=4000),
    )


class Round:
    """A PieceDispatcher over fake parents whose bitmaps the test fills in; records the fetches it plans."""

    def __init__(self, *peers: common_pb2.Peer, concurrency: int = 8, rank: list[int] | None = None) -> None:
        self.parents = [ParentState(peer, PIECES) for peer in peers]
        for parent in self.parents:
            parent.vortex_addr = ("127.0.0.1", 4005)
        self.first_seen: dict[int, float] = {}
        self.selector = ParentSelector(ParentChannels(), host_id="h", peer_id="child", parents=list(peers))
        self.dispatcher = PieceDispatcher(
            PIECES * PIECE_LENGTH,
            PIECE_LENGTH,
            skip=[],
            concurrency=concurrency,
            selector=self.selector,
            rank=rank or list(range(PIECES)),
        )
        self.started: list[tuple[int, str]] = []

    def has(self, name_index: int, numbers: Iterable[int], *, seen: float | None = None) -> None:
        for number in numbers:
            self.parents[name_index].bitmap.set(number)
            self.first_seen.setdefault(number, time.monotonic() - 10 if seen is None else seen)

    def run(self, now: float | None = None) -> float | None:
        fetches, next_ready = self.dispatcher.plan(
            self.parents, self.first_seen, time.monotonic() if now is None else now
        )
        self.started += [(fetch.number, fetch.parent.id) for fetch in fetches]
        return next_ready


def test_seed_peers_are_recognised_by_host_type_or_id():
    assert is_seed_peer(_peer("s", seed=True))
    assert is_seed_peer(common_pb2.Peer(id="1.2.3.4-h-seed"))
    assert not is_seed_peer(_peer("n"))


def test_a_peer_that_has_the_piece_is_preferred_to_the_seed():
    run = Round(_peer("seed", seed=True), _peer("peer"))
    run.has(0, range(PIECES))
    run.has(1, range(PIECES))
    run.run()
    by_parent = collections.Counter(parent for _number, parent in run.started)
    assert len(run.started) == 8
    assert by_parent[run.parents[0].id] <= pd.SEED_PIECE_SLOTS
    assert by_parent[run.parents[1].id] >= 8 - pd.SEED_PIECE_SLOTS


def test_a_piece_only_the_seed_has_waits_for_the_other_parents_then_comes_from_the_seed():
    run = Round(_peer("seed", seed=True), _peer("peer"))
    now = time.monotonic()
    # The child is busy with a piece from the other peer: the seed's pieces are held back for it.
    run.has(1, [3])
    run.run()
    assert run.started == [(3, run.parents[1].id)]
    run.started = []
    run.has(0, [0, 1, 2], seen=now)
    assert run.run() == pytest.approx(now + COLLECT_WINDOW)
    seen = now - COLLECT_WINDOW - 0.01
    run.first_seen = dict.fromkeys(range(3), seen)
    next_ready = run.run()
    assert run.started == []
    assert next_ready == pytest.approx(seen + COLLECT_WINDOW + pd.SEED_PIECE_DELAY)
    run.first_seen = dict.fromkeys(range(3), now - 10)
    run.run()
    assert len(run.started) == pd.SEED_PIECE_SLOTS
    assert {parent for _number, parent in run.started} == {run.parents[0].id}


def test_an_idle_child_takes_its_first_piece_from_the_seed_at_once_and_holds_back_the_rest():
    run = Round(_peer("seed", seed=True), _peer("peer"), rank=[5, 0, 9, *range(10, 10 + PIECES - 3)])
    now = time.monotonic()
    run.has(0, [0, 1, 2], seen=now)
    # Nothing in flight, nothing received: the first piece (by this child's rank) comes from the seed now, the
    # other pieces only the seed has wait for the other peer as before.
    assert run.run(now) == pytest.approx(now + COLLECT_WINDOW)
    assert run.started == [(1, run.parents[0].id)]
    assert run.run(now) == pytest.approx(now + COLLECT_WINDOW)
    assert len(run.started) == 1
    # Once that piece is in, the child is no longer idle: the holds apply.
    run.dispatcher.succeeded(1, seconds=0.1)
    run.run(now)
    assert len(run.started) == 1


def test_a_child_that_failed_its_first_piece_is_idle_again_and_asks_at_once():
    run = Round(_peer("seed", seed=True), _peer("peer"), rank=list(range(PIECES)))
    now = time.monotonic()
    run.has(0, [0, 1, 2], seen=now)
    run.run(now)
    assert run.started == [(0, run.parents[0].id)]
    run.dispatcher.failed(0, corrupt=False)
    run.run(now)
    assert run.started[1] == (1, run.parents[0].id)


def test_without_other_parents_the_seed_gets_every_slot():
    run = Round(_peer("seed", seed=True), _peer("gone"))
    run.parents[1].syncing = False
    run.has(0, range(PIECES))
    run.run()
    assert len(run.started) == 8
    assert {parent for _number, parent in run.started} == {run.parents[0].id}


def test_an_in_order_download_starts_with_its_first_piece_alone_then_goes_in_order():
    run = Round(_peer("seed", seed=True))
    run.dispatcher = PieceDispatcher(
        PIECES * PIECE_LENGTH, PIECE_LENGTH, skip=[2], concurrency=4, selector=run.selector, in_order=True
    )
    run.has(0, range(PIECES))
    run.run()
    assert run.started == [(0, run.parents[0].id)]
    run.run()
    assert [number for number, _parent in run.started] == [0, 1, 3, 4]
    # Not idle any more (a piece is in flight or in): the next pieces follow in order, as many as the slots allow.
    run.dispatcher.succeeded(0, seconds=0.1)
    run.run()
    assert [number for number, _parent in run.started] == [0, 1, 3, 4, 5]


def test_each_peer_parent_gets_a_share_of_the_slots():
    run = Round(_peer("a"), _peer("b"), _peer("c"), _peer("d"))
    run.has(0, range(PIECES))
    run.run()
    # Only "a" holds anything: it gets its share (8 / 4 parents), the rest wait for the others to report pieces.
    assert len(run.started) == 2
    run.has(1, range(PIECES))
    run.run()
    by_parent = collections.Counter(parent for _number, parent in run.started)
    assert by_parent == {run.parents[0].id: 2, run.parents[1].id: 2}


def test_equally_rare_pieces_follow_the_child_s_own_random_rank():
    orders = set()
    for seed in range(4):
        rank = list(range(PIECES))
        random.Random(seed).shuffle(rank)
        run = Round(_peer("a"), concurrency=4, rank=rank)
        run.has(0, range(PIECES))
        run.run()
        expected = sorted(range(PIECES), key=lambda number: rank[number])[:4]
        assert [number for number, _parent in run.started] == expected
        orders.add(tuple(expected))
    assert len(orders) > 1


def test_rarer_pieces_come_first_whatever_the_rank():
    run = Round(_peer("a"), _peer("b"), concurrency=4, rank=list(reversed(range(PIECES))))
    run.has(0, range(PIECES))
    run.has(1, range(2, PIECES))
    run.run()
    a, b = (parent.id for parent in run.parents)
    assert run.started == [(1, a), (0, a), (15, b), (14, b)]


def test_a_failed_piece_is_asked_again_from_another_parent_never_the_one_that_failed():
    run = Round(_peer("a"), _peer("b"), concurrency=1)
    run.has(0, [0])
    run.has(1, [0])
    run.run()
    [(number, first)] = run.started
    run.dispatcher.failed(number, corrupt=False)
    run.run()
    assert run.started[1][0] == 0
    assert run.started[1][1] != first
    run.dispatcher.failed(number, corrupt=False)
    # Both holders failed piece 0: nothing left to ask this round.
    assert run.run() is None
    assert len(run.started) == 2


def test_strikes_exclude_a_parent_and_a_corrupt_piece_excludes_it_at_once():
    run = Round(_peer("a"), _peer("b"), concurrency=1)
    a, b = (parent.id for parent in run.parents)
    run.has(0, range(PIECES))
    for _ in range(pd.PARENT_STRIKES):
        run.dispatcher.in_flight.clear()
        fetches, _ = run.dispatcher.plan([run.parents[0]], run.first_seen, time.monotonic())
        run.dispatcher.failed(fetches[0].number, corrupt=False)
    assert run.dispatcher.excluded == {a}
    assert run.dispatcher.usable(run.parents) == [run.parents[1]]
    assert not run.dispatcher.all_excluded(run.parents)
    run.has(1, range(PIECES))
    fetches, _ = run.dispatcher.plan(run.parents, run.first_seen, time.monotonic())
    assert [fetch.parent.id for fetch in fetches] == [b]
    run.dispatcher.failed(fetches[0].number, corrupt=True)
    assert run.dispatcher.all_excluded(run.parents)
    assert run.dispatcher.plan(run.parents, run.first_seen, time.monotonic()) == ([], None)


def test_a_stored_or_in_flight_piece_is_never_requested_twice():
    run = Round(_peer("a"), _peer("b"), concurrency=8)
    run.dispatcher = PieceDispatcher(
        PIECES * PIECE_LENGTH,
        PIECE_LENGTH,
        skip=range(4),
        concurrency=8,
        selector=run.selector,
        rank=list(range(PIECES)),
    )
    run.has(0, range(PIECES))
    run.has(1, range(PIECES))
    run.run()
    run.run()
    numbers = [number for number, _parent in run.started]
    assert len(numbers) == 8
    assert len(set(numbers)) == 8
    assert not set(numbers) & set(range(4))
    fetch = run.dispatcher.succeeded(numbers[0], seconds=0.5)
    assert run.selector.rates[fetch.parent.id] > 0
    assert numbers[0] not in run.dispatcher.in_flight
    run.run()
    assert len(set(number for number, _parent in run.started)) == 9


def test_the_weight_follows_observed_throughput_and_in_flight_pieces():
    selector = ParentSelector(ParentChannels(), host_id="h", peer_id="c", parents=[_peer("a"), _peer("b")])
    a, b = "10.0.0.1-a", "10.0.0.1-b"
    selector.observe(a, 4 << 20, 0.1, 1)
    selector.observe(b, 4 << 20, 0.4, 1)
    best = max(selector.rates.values())
    assert selector.weight(a, selector.weights[a], best) == pytest.approx(
        4 * selector.weight(b, selector.weights[b], best)
    )
    assert selector.begin(a) == 1
    assert selector.begin(a) == 2
    assert selector.weight(a, selector.weights[a], best) == pytest.approx(
        selector.weight(b, selector.weights[b], best) * 4 / 3
    )
    selector.end(a)
    selector.end(a)
    assert selector.in_flight[a] == 0
    before = selector.rates[b]
    selector.penalize(b)
    assert selector.rates[b] == before / 2
    # A parent never tried is credited with the best throughput seen, so it gets tried.
    assert selector.weight("new", 1.0, best) == pytest.approx(best * selector.weights.get("new", 1e10) / 1.0)


def test_choice_is_random_in_proportion_to_weight():
    selector = ParentSelector(ParentChannels(), host_id="h", peer_id="c", parents=[_peer("a"), _peer("b")])
    selector.observe("10.0.0.1-a", 9, 1.0, 1)
    selector.observe("10.0.0.1-b", 1, 1.0, 1)
    random.seed(7)
    picks = collections.Counter(selector.choose(["10.0.0.1-a", "10.0.0.1-b"]) for _ in range(2000))
    assert 0.85 <= picks["10.0.0.1-a"] / 2000 <= 0.95


def _started(run: Round, now: float) -> PieceFetch:
    run.has(0, range(PIECES), seen=now - 10)  # reported long before: dispatchable whoever else is syncing
    [fetch], _ = run.dispatcher.plan(run.parents, run.first_seen, now)
    fetch.transfer_started = now
    return fetch


def test_a_transfer_far_below_the_median_rate_is_overdue_and_abandoned_once():
    run = Round(_peer("a"), _peer("b"), concurrency=1)  # b may still get the piece: a better parent may exist
    now = 1000.0
    for _ in range(3):  # three pieces of 4 MiB in 0.1 s each: a median of ~42 MB/s
        fetch = _started(run, now)
        run.dispatcher.succeeded(fetch.number, seconds=0.1)
    fetch = _started(run, now)
    # Floor: 0.1 x median -> 4 MiB may take 1 s, but never less than minDuration (2 s) before it is abandoned.
    assert run.dispatcher.deadline(fetch) == pytest.approx(now + pd.SlowPiecePolicy().min_duration)
    assert run.dispatcher.overdue(now + 1.9) == []
    [late] = run.dispatcher.overdue(now + 2.1)
    assert late is fetch
    assert late.abandoned is not None
    assert "slower than" in late.abandoned
    assert "0.1 of the median piece rate" in late.abandoned
    assert run.dispatcher.overdue(now + 5) == []  # already abandoned: not aborted twice
    assert run.dispatcher.next_deadline() is None


def test_with_a_slow_median_the_floor_follows_it():
    run = Round(_peer("a"), _peer("b"), concurrency=1)
    now = 1000.0
    for _ in range(3):  # 4 MiB in 4 s each: ~1 MB/s
        fetch = _started(run, now)
        run.dispatcher.succeeded(fetch.number, seconds=4.0)
    fetch = _started(run, now)
    assert run.dispatcher.deadline(fetch) == pytest.approx(now + 40.0)


def test_before_any_sample_the_initial_floor_applies_and_the_piece_timeout_always_does():
    selector = ParentSelector(ParentChannels(), host_id="h", peer_id="c", parents=[_peer("a"), _peer("b")])
    run = Round(_peer("a"), _peer("b"), concurrency=1)
    policy = pd.SlowPiecePolicy(ratio=0.1, min_duration=2.0, initial_floor=1 << 20, timeout=30.0)
    run.dispatcher = PieceDispatcher(
        PIECES * PIECE_LENGTH, PIECE_LENGTH, skip=[], concurrency=1, selector=selector, slow=policy
    )
    fetch = _started(run, 1000.0)
    assert run.dispatcher.deadline(fetch) == pytest.approx(1004.0)  # 4 MiB at 1 MiB/s
    [late] = run.dispatcher.overdue(1004.5)
    assert "no piece rate known yet" in (late.abandoned or "")

    policy = pd.SlowPiecePolicy(ratio=0.1, min_duration=2.0, initial_floor=0, timeout=30.0)
    run = Round(_peer("a"), concurrency=1)
    run.dispatcher = PieceDispatcher(
        PIECES * PIECE_LENGTH, PIECE_LENGTH, skip=[], concurrency=1, selector=run.selector, slow=policy
    )
    fetch = _started(run, 1000.0)
    assert run.dispatcher.deadline(fetch) == pytest.approx(1030.0)
    [late] = run.dispatcher.overdue(1031.0)
    assert "piece timeout (30s)" in (late.abandoned or "")


def test_a_round_with_few_samples_uses_the_daemon_s_recent_rates():
    daemon_rates = pd.PieceRates()
    for _ in range(5):
        daemon_rates.add(PIECE_LENGTH, 0.01)  # ~420 MB/s
    selector = ParentSelector(ParentChannels(), host_id="h", peer_id="c", parents=[_peer("a"), _peer("b")])
    run = Round(_peer("a"), _peer("b"), concurrency=1)
    run.dispatcher = PieceDispatcher(
        PIECES * PIECE_LENGTH, PIECE_LENGTH, skip=[], concurrency=1, selector=selector, daemon_rates=daemon_rates
    )
    fetch = _started(run, 1000.0)
    assert run.dispatcher.deadline(fetch) == pytest.approx(1002.0)  # the floor of minDuration
    run.dispatcher.succeeded(fetch.number, seconds=20.0)
    # One slow sample of its own does not override the daemon's figure; the daemon's median moved a little.
    fetch = _started(run, 1000.0)
    assert run.dispatcher.deadline(fetch) == pytest.approx(1002.0)


def test_a_fetch_waiting_for_its_turn_is_never_overdue():
    run = Round(_peer("a"), concurrency=1)
    run.has(0, range(PIECES))
    [fetch], _ = run.dispatcher.plan(run.parents, run.first_seen, 1000.0)
    assert fetch.transfer_started is None
    assert run.dispatcher.deadline(fetch) is None
    assert run.dispatcher.overdue(1e9) == []


def test_a_trickle_is_caught_by_its_progress_after_min_duration_and_its_parent_loses_every_transfer():
    run = Round(_peer("a"), _peer("b"), concurrency=4)
    a, b = (parent.id for parent in run.parents)
    now = 1000.0
    daemon_rates = pd.PieceRates()
    for _ in range(3):
        daemon_rates.add(PIECE_LENGTH, 0.1)  # a median of ~42 MB/s: the floor is ~4 MB/s
    run.dispatcher = PieceDispatcher(
        PIECES * PIECE_LENGTH, PIECE_LENGTH, skip=[], concurrency=4, selector=run.selector, daemon_rates=daemon_rates
    )
    run.has(0, range(PIECES))
    run.has(1, range(PIECES))
    fetches, _ = run.dispatcher.plan(run.parents, run.first_seen, now)
    for fetch in fetches:
        fetch.transfer_started = now
    from_a = [f for f in fetches if f.parent.id == a]
    from_b = [f for f in fetches if f.parent.id == b]
    assert from_a
    assert from_b
    healthy = {f.number: 10 << 20 for f in fetches}  # 5 MB/s at 2 s: above the floor
    trickle = healthy | {from_a[0].number: 20_000}  # 10 kB/s
    assert run.dispatcher.overdue(now + 1.9, trickle) == []  # never before minDuration
    late = run.dispatcher.overdue(now + 2.0, trickle)
    # The trickling transfer, and every other transfer from the same parent, however they are doing.
    assert sorted(f.number for f in late) == sorted(f.number for f in from_a)
    assert "20000 bytes in 2.0s" in (from_a[0].abandoned or "")
    assert all(f.abandoned is None for f in from_b)
    for fetch in late:
        run.dispatcher.failed(fetch.number, corrupt=False)
    assert a in run.dispatcher.excluded
    assert b not in run.dispatcher.excluded


def test_without_progress_a_transfer_is_given_its_length_at_the_floor():
    run = Round(_peer("a"), concurrency=1)
    now = 1000.0
    fetch = _started(run, now)  # no samples: the initial floor, 64 KiB/s
    floor = pd.SlowPiecePolicy().initial_floor
    assert run.dispatcher.overdue(now + PIECE_LENGTH / floor - 0.5, {}) == []
    assert run.dispatcher.overdue(now + PIECE_LENGTH / floor + 0.5, {}) == [fetch]


def _fast_median(run: Round, now: float) -> None:
    for _ in range(3):  # three pieces of 4 MiB in 0.1 s each: a median of ~42 MB/s, a relative floor of ~4 MB/s
        fetch = _started(run, now)
        run.dispatcher.succeeded(fetch.number, seconds=0.1)


def test_the_only_parent_that_could_serve_a_piece_is_held_to_the_absolute_floor_only():
    # The DAG's first child has the seed peer alone: abandoning it for being slower than the others were gains
    # nothing (and cost a child its only parent, then a trip to the origin).
    run = Round(_peer("seed", seed=True), concurrency=1)
    now = 1000.0
    _fast_median(run, now)
    fetch = _started(run, now)
    floor = pd.SlowPiecePolicy().initial_floor
    assert run.dispatcher.deadline(fetch) == pytest.approx(now + PIECE_LENGTH / floor)
    slow = {fetch.number: 1 << 20}  # 0.5 MB/s after 2 s: an eighth of the relative floor, far above the absolute
    assert run.dispatcher.overdue(now + 2.0, slow) == []
    # Nothing at all for longer than minDuration (a loaded seed stalled so for 2.2 s): still not given up on.
    patience = pd.SOLE_PARENT_PATIENCE * pd.SlowPiecePolicy().min_duration
    assert run.dispatcher.overdue(now + patience - 0.1, {fetch.number: 0}) == []
    trickle = {fetch.number: int(10_000 * patience)}  # 10 kB/s: below any floor
    [late] = run.dispatcher.overdue(now + patience, trickle)
    assert late is fetch
    assert "no other parent could serve it: the absolute floor" in (late.abandoned or "")


def test_the_relative_floor_applies_while_another_parent_holds_the_piece_or_may_still_get_it():
    run = Round(_peer("seed", seed=True), _peer("peer"), concurrency=1)
    seed, peer = run.parents
    now = 1000.0
    _fast_median(run, now)
    fetch = _started(run, now)
    assert fetch.parent is seed
    slow = {fetch.number: 1 << 20}
    relative = now + pd.SlowPiecePolicy().min_duration
    assert run.dispatcher.deadline(fetch) == pytest.approx(relative)  # the peer is syncing: it may get the piece
    peer.syncing = False
    assert run.dispatcher.deadline(fetch) > relative  # it ended without the piece: nobody else could serve it
    assert run.dispatcher.overdue(now + 2.0, slow) == []
    assert run.dispatcher.overdue(now + 2.0, {fetch.number: 0}) == []
    peer.bitmap.set(fetch.number)
    assert run.dispatcher.deadline(fetch) == pytest.approx(relative)  # it holds the piece
    run.dispatcher.excluded.add(peer.id)
    assert run.dispatcher.overdue(now + 2.0, slow) == []  # excluded: not an alternative
    run.dispatcher.excluded.discard(peer.id)
    [late] = run.dispatcher.overdue(now + 2.0, slow)
    assert "0.1 of the median piece rate" in (late.abandoned or "")


def test_a_child_with_nothing_in_flight_takes_its_next_piece_without_waiting_for_more_holders():
    run = Round(_peer("a"), _peer("b"), rank=list(range(PIECES)))
    a = run.parents[0]
    now = time.monotonic()
    run.has(0, [0], seen=now - 10)
    run.run(now)
    run.dispatcher.succeeded(0, seconds=0.1)  # not idle any more: it has received a piece this round
    # "a" has just reported two new pieces, "b" is still syncing without them: with its link idle, the child
    # takes the first at once; the second waits COLLECT_WINDOW for "b" as before.
    run.has(0, [1, 2], seen=now)
    assert run.run(now) == pytest.approx(now + COLLECT_WINDOW)
    assert run.started[1:] == [(1, a.id)]
    # Busy again (piece 1 in flight): a newly reported piece waits for the window.
    run.has(0, [3], seen=now)
    run.run(now)
    assert run.started[1:] == [(1, a.id)]


def test_a_seed_peer_that_has_finished_is_a_parent_like_any_other():
    run = Round(_peer("seed", seed=True), _peer("peer"))
    seed, peer = run.parents
    now = time.monotonic()
    run.has(1, [15], seen=now - 10)
    run.run(now)  # busy with a piece from the peer: the holds on the seed apply
    run.has(0, range(15), seen=now - COLLECT_WINDOW - 0.01)
    assert run.run(now) == pytest.approx(now - 0.01 + pd.SEED_PIECE_DELAY)
    assert run.started == [(15, peer.id)]
    # Its download done, the seed ended its SyncPieces stream: no slot cap and no wait for a peer to relay.
    seed.syncing = False
    run.run(now)
    from_seed = [number for number, parent in run.started if parent == seed.id]
    assert len(from_seed) == -(-8 // 2)  # the seed's share of the slots, as the peer's
    assert len(from_seed) > pd.SEED_PIECE_SLOTS


def test_only_a_piece_neither_skipped_stored_nor_in_flight_is_wanted():
    run = Round(_peer("a"), concurrency=2)
    run.dispatcher = PieceDispatcher(
        PIECES * PIECE_LENGTH, PIECE_LENGTH, skip=[0], concurrency=2, selector=run.selector, rank=list(range(PIECES))
    )
    run.has(0, range(PIECES))
    run.run()
    assert [number for number, _parent in run.started] == [1, 2]
    run.dispatcher.succeeded(1, seconds=0.1)
    run.dispatcher.failed(2, corrupt=False)
    wanted = [n for n in range(-1, PIECES + 1) if run.dispatcher.wants(n)]
    # 0 skipped, 1 stored; 2 failed and is missing again; numbers outside the task never are.
    assert wanted == list(range(2, PIECES))


def test_no_transfer_is_judged_before_min_duration_from_the_oldest_start():
    # b may still get the pieces: the relative floor and minDuration apply, not the sole parent's patience.
    run = Round(_peer("a"), _peer("b"), concurrency=6)
    assert run.dispatcher.first_judgement() is None
    now = time.monotonic()
    run.has(0, range(PIECES), seen=now - 10)
    first, second, waiting = run.dispatcher.plan(run.parents, run.first_seen, now)[0]
    first.transfer_started, second.transfer_started = now + 1, now + 0.5
    # A transfer still waiting for its buffer (no start) is not judged at all.
    assert waiting.transfer_started is None
    judged = now + 0.5 + pd.SlowPiecePolicy().min_duration
    assert run.dispatcher.first_judgement() == judged
    # Nothing is overdue before that moment, even without a byte received and at any floor.
    nothing = {first.number: 0, second.number: 0}
    assert run.dispatcher.overdue(judged - 0.01, nothing) == []
    late = run.dispatcher.overdue(judged, nothing)
    assert late[0] is second  # the oldest; its parent's other transfers go with it
    assert {fetch.number for fetch in late} == {first.number, second.number, waiting.number}
    # Abandoned transfers are not judged again.
    assert run.dispatcher.first_judgement() is None


def test_one_parent_plans_its_pieces_in_the_order_the_general_path_gives():
    # A child with one usable parent takes a shortcut (one group, no holder list per piece): the same pieces, in the
    # same order, as with a second parent that holds nothing (the general path, which gives each parent half the
    # slots).
    for seed in range(4):
        rank = list(range(PIECES))
        random.Random(seed).shuffle(rank)
        held = random.Random(seed + 10).sample(range(PIECES), 10)
        alone = Round(_peer("a"), concurrency=4, rank=rank)
        alone.has(0, held)
        alone.dispatcher.plan(alone.parents, alone.first_seen, time.monotonic())  # 4 in flight, then one stored
        first = next(iter(alone.dispatcher.in_flight))
        alone.dispatcher.succeeded(first, seconds=0.1)
        alone.run()
        beside = Round(_peer("a"), _peer("b"), concurrency=4, rank=rank)
        beside.has(0, held)
        beside.run()
        order = sorted(held, key=lambda number: rank[number])
        assert [number for number, _parent in beside.started] == order[:2]
        assert [number for number, _parent in alone.started] == [order[4]]

"""Which parent a piece comes from: peers before seed peers, shares per parent, observed figures, rarity ties."""

from __future__ import annotations

import asyncio
import collections
import random
import time

import pytest
from dragonfly_api import common_pb2

from dragonfly.common import native
from dragonfly.daemon.download import task_manager as tm
from dragonfly.daemon.download.parent_selector import ParentSelector, is_seed_peer
from dragonfly.daemon.download.piece_collector import ParentState

PIECES = 16


def _peer(name: str, *, seed: bool = False) -> common_pb2.Peer:
    return common_pb2.Peer(
        id=f"10.0.0.1-{name}" + ("-seed" if seed else ""),
        host=common_pb2.Host(id=name, type=1 if seed else 0, ip="127.0.0.1", port=4000),
    )


class Collector:
    """What _dispatch reads of a PieceCollector."""

    def __init__(self, parents: list[ParentState]) -> None:
        self.parents = {parent.id: parent for parent in parents}
        self.first_seen: dict[int, float] = {}


class Dispatch:
    """Run TaskManager._dispatch against fake parents and record the fetches it starts."""

    def __init__(self, *peers: common_pb2.Peer, concurrency: int = 8) -> None:
        self.manager = tm.TaskManager.__new__(tm.TaskManager)
        self.manager._concurrency = concurrency
        self.started: list[tuple[int, str]] = []
        self.gate = asyncio.Event()

        async def fetch(_td, _task, _stream, number, parent, _selector, _concurrent):
            self.started.append((number, parent.id))
            await self.gate.wait()

        self.manager._fetch_from_parent = fetch  # type: ignore[method-assign]
        self.parents = [ParentState(peer, PIECES) for peer in peers]
        for parent in self.parents:
            parent.vortex_addr = ("127.0.0.1", 4005)
        self.collector = Collector(self.parents)
        self.selector = ParentSelector(None, host_id="h", peer_id="child", parents=list(peers))  # type: ignore[arg-type]
        self.blocked = native.PieceBitmap(PIECES)
        self.in_flight: dict[asyncio.Task[None], tuple[int, str]] = {}
        self.rank = list(range(PIECES))

    def has(self, name_index: int, numbers, *, seen: float | None = None) -> None:
        for number in numbers:
            self.parents[name_index].bitmap.set(number)
            self.collector.first_seen.setdefault(number, time.monotonic() - 10 if seen is None else seen)

    async def run(self) -> float | None:
        spare = any(p.syncing and not p.seed for p in self.parents)
        next_ready = self.manager._dispatch(
            None, None, None, self.collector, self.parents, self.blocked, {}, self.in_flight,
            self.selector, self.rank, spare,
        )  # fmt: skip
        await asyncio.sleep(0)
        return next_ready

    async def close(self) -> None:
        self.gate.set()
        await asyncio.gather(*self.in_flight)


def test_seed_peers_are_recognised_by_host_type_or_id():
    assert is_seed_peer(_peer("s", seed=True))
    assert is_seed_peer(common_pb2.Peer(id="1.2.3.4-h-seed"))
    assert not is_seed_peer(_peer("n"))


async def test_a_peer_that_has_the_piece_is_preferred_to_the_seed():
    run = Dispatch(_peer("seed", seed=True), _peer("peer"))
    run.has(0, range(PIECES))
    run.has(1, range(PIECES))
    await run.run()
    by_parent = collections.Counter(parent for _number, parent in run.started)
    assert len(run.started) == 8
    assert by_parent[run.parents[0].id] <= tm.SEED_PIECE_SLOTS
    assert by_parent[run.parents[1].id] >= 8 - tm.SEED_PIECE_SLOTS
    await run.close()


async def test_a_piece_only_the_seed_has_waits_for_the_other_parents_then_comes_from_the_seed():
    run = Dispatch(_peer("seed", seed=True), _peer("peer"))
    now = time.monotonic()
    run.has(0, [0, 1, 2], seen=now)
    assert await run.run() == pytest.approx(now + tm.COLLECT_WINDOW)
    seen = now - tm.COLLECT_WINDOW - 0.01
    run.collector.first_seen = dict.fromkeys(range(3), seen)
    next_ready = await run.run()
    assert run.started == []
    assert next_ready == pytest.approx(seen + tm.COLLECT_WINDOW + tm.SEED_PIECE_DELAY)
    run.collector.first_seen = dict.fromkeys(range(3), now - 10)
    await run.run()
    assert len(run.started) == tm.SEED_PIECE_SLOTS
    assert {parent for _number, parent in run.started} == {run.parents[0].id}
    await run.close()


async def test_without_other_parents_the_seed_gets_every_slot():
    run = Dispatch(_peer("seed", seed=True), _peer("gone"))
    run.parents[1].syncing = False
    run.has(0, range(PIECES))
    await run.run()
    assert len(run.started) == 8
    assert {parent for _number, parent in run.started} == {run.parents[0].id}
    await run.close()


async def test_each_peer_parent_gets_a_share_of_the_slots():
    run = Dispatch(_peer("a"), _peer("b"), _peer("c"), _peer("d"))
    run.has(0, range(PIECES))
    await run.run()
    # Only "a" holds anything: it gets its share (8 / 4 parents), the rest wait for the others to report pieces.
    assert len(run.started) == 2
    run.has(1, range(PIECES))
    await run.run()
    by_parent = collections.Counter(parent for _number, parent in run.started)
    assert by_parent == {run.parents[0].id: 2, run.parents[1].id: 2}
    await run.close()


async def test_equally_rare_pieces_follow_the_child_s_own_random_rank():
    orders = set()
    for seed in range(4):
        run = Dispatch(_peer("a"), concurrency=4)
        run.has(0, range(PIECES))
        run.rank = list(range(PIECES))
        random.Random(seed).shuffle(run.rank)
        await run.run()
        expected = sorted(range(PIECES), key=lambda number: run.rank[number])[:4]
        assert [number for number, _parent in run.started] == expected
        orders.add(tuple(expected))
        await run.close()
    assert len(orders) > 1


async def test_rarer_pieces_come_first_whatever_the_rank():
    run = Dispatch(_peer("a"), _peer("b"), concurrency=4)
    run.has(0, range(PIECES))
    run.has(1, range(2, PIECES))
    run.rank = list(reversed(range(PIECES)))
    await run.run()
    a, b = (parent.id for parent in run.parents)
    assert run.started == [(1, a), (0, a), (15, b), (14, b)]
    await run.close()


def test_the_weight_follows_observed_throughput_and_in_flight_pieces():
    selector = ParentSelector(None, host_id="h", peer_id="c", parents=[_peer("a"), _peer("b")])  # type: ignore[arg-type]
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
    selector = ParentSelector(None, host_id="h", peer_id="c", parents=[_peer("a"), _peer("b")])  # type: ignore[arg-type]
    selector.observe("10.0.0.1-a", 9, 1.0, 1)
    selector.observe("10.0.0.1-b", 1, 1.0, 1)
    random.seed(7)
    picks = collections.Counter(selector.choose(["10.0.0.1-a", "10.0.0.1-b"]) for _ in range(2000))
    assert 0.85 <= picks["10.0.0.1-a"] / 2000 <= 0.95

"""Peers feed each other: relays (peers given parents) are candidates, and the seed peer feeds only a few."""

from __future__ import annotations

import asyncio

import pytest

from dragonfly.scheduler.config import UploadBlockRule
from dragonfly.scheduler.resource import dag
from dragonfly.scheduler.resource import peer as p
from dragonfly.scheduler.resource.task import is_relay
from dragonfly.scheduler.scheduling import scheduling as s
from tests.waiting import eventually


@pytest.fixture
def fast(make_world):
    world = make_world(retryInterval=0.05, seedPeerWaitTimeout=5, candidateParentLimit=4)
    world.scheduling = s.Scheduling(world.config, UploadBlockRule(), world.metrics)
    return world


def _acyclic(peers) -> bool:
    return all(peer.id not in dag.descendants(peer) for peer in peers)


@pytest.mark.parametrize(("state", "relay"), [(p.RECEIVED_NORMAL, True), (p.RUNNING, True), (p.SUCCEEDED, False)])
def test_a_peer_with_a_parent_but_no_piece_is_a_relay_and_passes_the_filter(fast, state, relay):
    source = fast.peer("source", state=p.RUNNING, pieces=[0])
    parent = fast.peer("parent", state=state)
    dag.add_edge(source, parent)
    fast.resource.tasks[parent.task.id].refresh_pool(parent)
    assert is_relay(parent) is relay
    assert parent in parent.task.parent_pool
    assert fast.scheduling.filter_parents([parent], fast.peer("child"), fast.now) == [parent]


def test_a_relay_leaves_the_pool_when_its_parents_go(fast):
    source = fast.peer("source", state=p.RUNNING, pieces=[0])
    relay = fast.peer("relay", state=p.RUNNING)
    dag.add_edge(source, relay)
    relay.task.refresh_pool(relay)
    dag.delete_in_edges(relay)
    relay.task.refresh_pool(relay)
    assert relay not in relay.task.parent_pool
    assert fast.scheduling.filter_parents([relay], fast.peer("child"), fast.now) == []


async def test_peers_released_together_get_each_other_and_only_the_first_ones_get_the_seed(fast):
    seed_host = fast.host("seed", seed=True)
    children = [fast.peer(f"child-{i}") for i in range(5)]
    task = children[0].task
    task.seed_trigger_active = True
    decisions = [asyncio.ensure_future(fast.scheduling.schedule(child)) for child in children]
    await asyncio.sleep(0.05)
    assert not any(decision.done() for decision in decisions)
    seed = fast.peer("seed-peer", seed_host, state=p.BACK_TO_SOURCE, pieces=[0])
    task.notify()
    results = [await asyncio.wait_for(decision, 1) for decision in decisions]

    assert all(result.kind == s.NORMAL for result in results)
    first, second, *rest = results
    assert first.parents == [seed]
    assert set(second.parents) == {seed, children[0]}
    for index, result in enumerate(rest, start=2):
        assert seed not in result.parents, "a child with two other peers does not need the seed"
        assert len(result.parents) == min(index, 4)
        assert set(result.parents) <= set(children[:index])
    assert _acyclic([seed, *children])


def test_the_seed_is_offered_while_fewer_than_two_other_peers_qualify(fast):
    seed = fast.peer("seed-peer", fast.host("seed", seed=True), state=p.BACK_TO_SOURCE, pieces=[0, 1])
    one = fast.peer("one", state=p.RUNNING, pieces=[0])
    child = fast.peer("child")
    assert set(fast.scheduling.find_candidate_parents(child, fast.now)) == {seed, one}
    two = fast.peer("two", state=p.RUNNING, pieces=[1])
    assert set(fast.scheduling.find_candidate_parents(child, fast.now)) == {one, two}


async def test_a_rescheduled_child_never_takes_its_own_descendant(fast):
    source = fast.peer("source", state=p.RUNNING, pieces=[0])
    upper = fast.peer("upper", state=p.RUNNING)
    lower = fast.peer("lower", state=p.RUNNING)
    assert (await fast.scheduling.schedule(upper)).parents == [source]
    assert set((await fast.scheduling.schedule(lower)).parents) == {source, upper}
    upper.block_parents.add(source.id)
    decision = await fast.scheduling.schedule(upper)
    assert lower not in decision.parents
    assert _acyclic([source, upper, lower])


async def test_waiters_are_woken_in_registration_order_not_in_the_order_they_waited(fast):
    task = fast.peer("any").task
    woken: list[float] = []

    async def wait(order: float) -> None:
        assert await task.wait_changed(1, order)
        woken.append(order)

    waiters = [asyncio.ensure_future(wait(order)) for order in (3.0, 1.0, 2.0)]
    await asyncio.sleep(0)
    task.notify()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert woken == [1.0, 2.0, 3.0]
    assert not await task.wait_changed(0.01, 0.0), "nothing changed since"


ONE_PIECE = "b" * 64


def _one_piece_peer(fast, name, host=None, *, state=p.RECEIVED_NORMAL, pieces=()):
    """A peer of a task of one piece (ONE_PIECE)."""
    fast.resource.load_or_create_task(ONE_PIECE, fast.download(pieces=1), fast.now)
    return fast.peer(name, host, state=state, pieces=pieces, task_id=ONE_PIECE)


async def test_a_one_piece_child_is_offered_holders_only_never_a_relay_beside_them(fast):
    seed = _one_piece_peer(fast, "seed-peer", fast.host("seed", seed=True), state=p.BACK_TO_SOURCE, pieces=[0])
    relay = _one_piece_peer(fast, "relay", state=p.RUNNING)
    dag.add_edge(seed, relay)
    relay.task.refresh_pool(relay)
    assert relay.task.piece_count == 1
    decision = await asyncio.wait_for(fast.scheduling.schedule(_one_piece_peer(fast, "child")), 1)
    assert decision.kind == s.NORMAL
    assert decision.parents == [seed]


async def test_a_one_piece_child_with_only_relays_waits_for_one_to_hold_the_piece(fast):
    seed = _one_piece_peer(fast, "seed-peer", fast.host("seed", seed=True), state=p.BACK_TO_SOURCE, pieces=[0])
    relays = [_one_piece_peer(fast, f"relay-{i}", state=p.RUNNING) for i in range(2)]
    for relay in relays:
        dag.add_edge(seed, relay)
        relay.task.refresh_pool(relay)
    child = _one_piece_peer(fast, "child")
    decision = asyncio.ensure_future(fast.scheduling.schedule(child))
    # The scheduler parks the child on the task (waiting for a piece report) instead of answering.
    await eventually(lambda: child.task._waiters or decision.done(), 1, "the child's decision to wait", 0.005)
    assert not decision.done(), "two other peers: no seed, and neither holds the piece yet"
    relays[1].pieces.add(0)
    relays[1].task.refresh_pool(relays[1])
    relays[1].task.notify()
    result = await asyncio.wait_for(decision, 1)
    assert result.kind == s.NORMAL
    assert result.parents == [relays[1]]


async def test_a_one_piece_child_is_offered_the_relays_once_the_back_to_source_budget_is_spent(make_world):
    world = make_world(retryInterval=0.05, retryBackToSourceLimit=2, seedPeerWaitTimeout=5, candidateParentLimit=4)
    world.scheduling = s.Scheduling(world.config, UploadBlockRule(), world.metrics)
    seed = _one_piece_peer(world, "seed-peer", world.host("seed", seed=True), state=p.BACK_TO_SOURCE, pieces=[0])
    relays = [_one_piece_peer(world, f"relay-{i}", state=p.RUNNING) for i in range(2)]
    for relay in relays:
        dag.add_edge(seed, relay)
        relay.task.refresh_pool(relay)
    result = await asyncio.wait_for(world.scheduling.schedule(_one_piece_peer(world, "child")), 2)
    assert result.kind == s.NORMAL
    assert set(result.parents) == set(relays)


async def test_a_task_of_several_pieces_still_offers_relays_at_once(fast):
    seed = fast.peer("seed-peer", fast.host("seed", seed=True), state=p.BACK_TO_SOURCE, pieces=[0])
    relays = [fast.peer(f"relay-{i}", state=p.RUNNING) for i in range(2)]
    for relay in relays:
        dag.add_edge(seed, relay)
        relay.task.refresh_pool(relay)
    result = await asyncio.wait_for(fast.scheduling.schedule(fast.peer("child")), 1)
    assert set(result.parents) == set(relays)

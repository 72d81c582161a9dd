"""Peer and task state machines: every legal and illegal transition, and the side effects of peer events."""

from __future__ import annotations

import itertools

import pytest

from dragonfly.scheduler.resource import dag
from dragonfly.scheduler.resource import peer as p
from dragonfly.scheduler.resource import task as t
from dragonfly.scheduler.resource.fsm import InvalidTransition, StateMachine

RECEIVED = {p.RECEIVED_EMPTY, p.RECEIVED_TINY, p.RECEIVED_SMALL, p.RECEIVED_NORMAL}
# ``docs/reference/scheduler.md#peer-state-machine``, written out independently of the implementation's table.
PEER_LEGAL = {
    p.REGISTER_EMPTY: ({p.PENDING}, p.RECEIVED_EMPTY),
    p.REGISTER_TINY: ({p.PENDING}, p.RECEIVED_TINY),
    p.REGISTER_SMALL: ({p.PENDING}, p.RECEIVED_SMALL),
    p.REGISTER_NORMAL: ({p.PENDING}, p.RECEIVED_NORMAL),
    p.DOWNLOAD: (RECEIVED, p.RUNNING),
    p.DOWNLOAD_BACK_TO_SOURCE: (RECEIVED | {p.RUNNING}, p.BACK_TO_SOURCE),
    p.DOWNLOAD_SUCCEEDED: (RECEIVED | {p.RUNNING, p.BACK_TO_SOURCE}, p.SUCCEEDED),
    p.DOWNLOAD_FAILED: (RECEIVED | {p.PENDING, p.RUNNING, p.BACK_TO_SOURCE, p.SUCCEEDED}, p.FAILED),
    p.EVENT_LEAVE: (set(p.STATES) - {p.LEAVE}, p.LEAVE),
}
TASK_LEGAL = {
    t.DOWNLOAD: ({t.PENDING, t.SUCCEEDED, t.FAILED, t.LEAVE}, t.RUNNING),
    t.DOWNLOAD_SUCCEEDED: ({t.LEAVE, t.RUNNING, t.FAILED}, t.SUCCEEDED),
    t.DOWNLOAD_FAILED: ({t.RUNNING}, t.FAILED),
    t.EVENT_LEAVE: ({t.PENDING, t.RUNNING, t.SUCCEEDED, t.FAILED}, t.LEAVE),
}


@pytest.mark.parametrize(("event", "state"), list(itertools.product(PEER_LEGAL, p.STATES)))
def test_peer_transition_table(event, state):
    sources, target = PEER_LEGAL[event]
    if state in sources:
        assert p.PEER_FSM.target(event, state, "peer x") == target
    else:
        with pytest.raises(InvalidTransition, match=f"^peer x: event {event} is not allowed in state {state}$"):
            p.PEER_FSM.target(event, state, "peer x")


@pytest.mark.parametrize(("event", "state"), list(itertools.product(TASK_LEGAL, t.STATES)))
def test_task_transition_table(event, state):
    sources, target = TASK_LEGAL[event]
    assert t.TASK_FSM.can(event, state) == (state in sources)
    if state in sources:
        assert t.TASK_FSM.target(event, state, "task x") == target
    else:
        with pytest.raises(InvalidTransition):
            t.TASK_FSM.target(event, state, "task x")


def test_tables_name_only_known_states():
    with pytest.raises(ValueError, match=r"event E names unknown states \['Nowhere'\]"):
        StateMachine(("A",), {"E": (("A",), "Nowhere")})
    assert set(p.PEER_FSM.events) == set(PEER_LEGAL)


def test_illegal_peer_event_leaves_state_unchanged(world):
    peer = world.peer("a", state=p.SUCCEEDED)
    with pytest.raises(InvalidTransition):
        peer.fire(p.DOWNLOAD, world.now)
    assert peer.state == p.SUCCEEDED


def test_back_to_source_joins_the_task_set_and_drops_parents(world):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    child = world.peer("child", state=p.RUNNING)
    dag.add_edge(parent, child)
    child.fire(p.DOWNLOAD_BACK_TO_SOURCE, world.now)
    assert child.id in child.task.back_to_source_peers
    assert not child.parents
    assert not parent.children


def test_failing_back_to_source_counts_and_leaves_the_set(world):
    peer = world.peer("a", state=p.BACK_TO_SOURCE)
    peer.fire(p.DOWNLOAD_FAILED, world.now)
    assert peer.task.peer_failed_count == 1
    assert peer.id not in peer.task.back_to_source_peers
    other = world.peer("b", state=p.BACK_TO_SOURCE)
    other.fire(p.DOWNLOAD_SUCCEEDED, world.now)
    assert peer.task.peer_failed_count == 0
    assert not peer.task.back_to_source_peers


def test_children_keep_their_edges_when_a_parent_fails_or_succeeds(world):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    child = world.peer("child", state=p.RUNNING)
    dag.add_edge(parent, child)
    parent.fire(p.DOWNLOAD_FAILED, world.now)
    assert child.parents == {parent.id: parent}
    assert parent not in parent.task.parent_pool


def test_parent_pool_follows_servable_states(world):
    peer = world.peer("a", state=p.RECEIVED_NORMAL)
    pool = peer.task.parent_pool
    assert peer not in pool
    peer.fire(p.DOWNLOAD, world.now)
    assert peer not in pool, "no piece yet"
    peer.pieces.add(0)
    peer.task.refresh_pool(peer)
    assert peer in pool
    peer.fire(p.DOWNLOAD_SUCCEEDED, world.now)
    assert peer in pool
    peer.fire(p.EVENT_LEAVE, world.now)
    assert peer not in pool


def test_peer_state_counts(world):
    world.peer("a", state=p.RUNNING)
    world.peer("b", state=p.FAILED)
    counts = {state: n for state, n in world.resource.peer_state_counts.items() if n}
    assert counts == {p.RUNNING: 1, p.FAILED: 1}

"""Candidate filters (``docs/reference/scheduler.md#candidate-filter`` plus upload slots and the upload block list)."""

from __future__ import annotations

import pytest

from dragonfly.scheduler.config import UploadBlockRule
from dragonfly.scheduler.resource import dag
from dragonfly.scheduler.resource import peer as p
from dragonfly.scheduler.scheduling.scheduling import Scheduling


@pytest.fixture
def scheduling(world):
    return Scheduling(world.config, UploadBlockRule(), world.metrics)


def _kept(scheduling, world, candidates, child):
    return scheduling.filter_parents(candidates, child, world.now)


def test_a_serving_parent_on_another_host_passes(world, scheduling):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    assert _kept(scheduling, world, [parent], world.peer("child")) == [parent]


def test_blocked_parents_are_dropped(world, scheduling):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    child = world.peer("child")
    child.block_parents.add(parent.id)
    assert _kept(scheduling, world, [parent, child], child) == []


def test_hosts_that_do_not_share_or_are_the_childs_are_dropped(world, scheduling):
    shared = world.host("same")
    parent = world.peer("parent", shared, state=p.RUNNING, pieces=[0])
    assert _kept(scheduling, world, [parent], world.peer("child", shared)) == []
    private = world.peer("private", state=p.RUNNING, pieces=[0])
    private.host.disable_shared = True
    assert _kept(scheduling, world, [private], world.peer("child-2")) == []


@pytest.mark.parametrize(
    ("state", "pieces", "kept"),
    [
        (p.RECEIVED_NORMAL, [], False),
        (p.RUNNING, [], False),
        (p.RUNNING, [0], True),
        (p.BACK_TO_SOURCE, [], False),
        (p.BACK_TO_SOURCE, [0], True),
        (p.SUCCEEDED, [], True),
        (p.FAILED, [0], False),
        (p.LEAVE, [0], False),
    ],
)
def test_only_peers_that_can_serve_now_pass(world, scheduling, state, pieces, kept):
    parent = world.peer("parent", state=state, pieces=pieces)
    assert bool(_kept(scheduling, world, [parent], world.peer("child"))) == kept


def test_a_seed_peer_fetching_from_the_origin_passes_before_its_first_piece(world, scheduling):
    seed_host = world.host("seed", seed=True)
    fetching = world.peer("seed-peer", seed_host, state=p.BACK_TO_SOURCE)
    assert _kept(scheduling, world, [fetching], world.peer("child")) == [fetching]
    registered = world.peer("seed-peer-2", seed_host, state=p.RECEIVED_NORMAL)
    assert _kept(scheduling, world, [registered], world.peer("child-2")) == []


def test_bad_parents_are_dropped_until_the_cool_down_ends(world, scheduling):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    child = world.peer("child")
    parent.mark_bad("slow: test", world.now, world.now + 60)
    assert _kept(scheduling, world, [parent], child) == []
    world.now += 61
    assert _kept(scheduling, world, [parent], child) == [parent]


def test_a_parent_whose_own_last_piece_was_abnormally_slow_is_dropped(world, scheduling):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    for cost in (0.01, 0.01, 0.5):
        parent.cost_window.add(cost)
    assert _kept(scheduling, world, [parent], world.peer("child")) == []


def test_full_upload_slots_drop_the_parent(world, scheduling):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    parent.host.concurrent_upload_count = parent.host.concurrent_upload_limit
    assert _kept(scheduling, world, [parent], world.peer("child")) == []


def test_current_parents_and_descendants_are_dropped(world, scheduling):
    a = world.peer("a", state=p.RUNNING, pieces=[0])
    b = world.peer("b", state=p.RUNNING, pieces=[0])
    c = world.peer("c", state=p.RUNNING, pieces=[0])
    dag.add_edge(a, b)
    dag.add_edge(b, c)
    assert _kept(scheduling, world, [a, c], b) == []


@pytest.mark.parametrize(
    ("rule", "blocked"),
    [
        (UploadBlockRule(hosts=["10.0.0.1"]), True),
        (UploadBlockRule(urls=[r"origin\.test"]), True),
        (UploadBlockRule(applications=["app"]), True),
        (UploadBlockRule(tags=["other"]), False),
    ],
)
def test_upload_block_list_by_task_and_by_host(world, rule, blocked):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0], application="app")
    parent.host.ip = "10.0.0.1"
    child = world.peer("child", application="app")
    found = Scheduling(world.config, rule, world.metrics).find_candidate_parents(child, world.now)
    assert found == ([] if blocked else [parent])


def test_candidate_limit_and_wider_sample(make_world):
    world = make_world(candidateParentLimit=2, filterParentLimit=2)
    scheduling = Scheduling(world.config, UploadBlockRule(), world.metrics)
    child = world.peer("child")
    blocked = [world.peer(f"blocked-{i}", state=p.RUNNING, pieces=[0]) for i in range(10)]
    child.block_parents.update(peer.id for peer in blocked)
    good = [world.peer(f"good-{i}", state=p.RUNNING, pieces=[0]) for i in range(3)]
    for _ in range(20):
        found = scheduling.find_candidate_parents(child, world.now)
        assert len(found) == 2
        assert set(found) <= set(good)

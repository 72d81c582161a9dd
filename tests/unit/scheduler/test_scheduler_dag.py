"""The per-task DAG: no self edges, no duplicates, no cycles; parent hosts are charged and released exactly."""

from __future__ import annotations

import pytest

from dragonfly.scheduler.resource import dag
from dragonfly.scheduler.resource import peer as p


def test_self_duplicate_and_cycle_edges_are_refused(world):
    a, b, c = (world.peer(name, state=p.RUNNING, pieces=[0]) for name in "abc")
    with pytest.raises(dag.CycleError, match="cannot be its own parent"):
        dag.add_edge(a, a)
    dag.add_edge(a, b)
    with pytest.raises(dag.CycleError, match="already exists"):
        dag.add_edge(a, b)
    dag.add_edge(b, c)
    with pytest.raises(dag.CycleError, match="would form a cycle"):
        dag.add_edge(c, a)
    with pytest.raises(dag.CycleError, match="would form a cycle"):
        dag.add_edge(b, a)
    assert dag.descendants(a) == {"b", "c"}


def test_batch_add_skips_only_the_edges_that_would_cycle(world):
    a, b, c, d = (world.peer(name, state=p.RUNNING, pieces=[0]) for name in "abcd")
    dag.add_edge(a, b)
    dag.add_edge(b, c)
    assert dag.add_edges([c, d, a], a) == [d]
    assert set(a.parents) == {"d"}


def test_edges_charge_and_release_the_parent_host(world):
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    child = world.peer("child", concurrent_piece_count=4)
    dag.add_edge(parent, child)
    host = parent.host
    expected_bits = 4096 * 4 * 8
    assert (host.upload_count, host.concurrent_upload_count) == (1, 1)
    assert (host.tx_bandwidth, host.concurrent_upload_piece_count, host.upload_content_length) == (
        expected_bits,
        4,
        4096 * 8,
    )
    dag.delete_in_edges(child)
    assert (host.upload_count, host.concurrent_upload_count, host.tx_bandwidth) == (1, 0, 0)
    assert (host.concurrent_upload_piece_count, host.upload_content_length) == (0, 0)


def test_deleting_a_peer_removes_its_edges_both_ways(world):
    a, b, c = (world.peer(name, state=p.RUNNING, pieces=[0]) for name in "abc")
    dag.add_edge(a, b)
    dag.add_edge(b, c)
    orphans = world.resource.delete_peer(b, world.now)
    assert orphans == [c]
    assert not a.children
    assert not c.parents
    assert b.deleted
    assert b.state == p.LEAVE
    assert "b" not in world.resource.peers
    assert a.host.concurrent_upload_count == 0

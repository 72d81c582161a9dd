"""The persistent cache model of the scheduler: sizes, expiry, one copy per host, holders and replica counts."""

from __future__ import annotations

import pytest

from dragonfly.scheduler.resource import persistent_cache as pc

MiB = 1024 * 1024


def make_task(task_id: str = "a" * 64, *, ttl: float = 60.0, created_at: float = 1000.0) -> pc.PersistentCacheTask:
    return pc.PersistentCacheTask(
        id=task_id,
        importer_host_id="h1",
        importer_peer_id="p1",
        persistent_replica_count=2,
        piece_length=4 * MiB,
        content_length=10 * MiB,
        piece_count=3,
        ttl=ttl,
        created_at=created_at,
    )


def test_sizes_must_fit_together() -> None:
    pc.check_sizes(4 * MiB, 10 * MiB, 3)
    pc.check_sizes(4 * MiB, 0, 0)
    with pytest.raises(pc.SizeError, match="piece_count 2"):
        pc.check_sizes(4 * MiB, 10 * MiB, 2)
    with pytest.raises(pc.SizeError, match="must be positive"):
        pc.check_sizes(0, 10, 1)


def test_an_expired_task_is_gone_with_its_peers() -> None:
    resource = pc.PersistentCacheResource()
    task = make_task()
    resource.create_task(task)
    assert resource.get_task(task.id, 1059.0) is task
    assert resource.expired_tasks(1059.0) == []
    assert resource.expired_tasks(1060.0) == [task]
    assert resource.get_task(task.id, 1060.0) is None
    assert resource.tasks == {}
    assert resource.peers == {}


def test_one_copy_per_host_and_the_counts() -> None:
    resource = pc.PersistentCacheResource()
    task = make_task()
    importer = resource.create_task(task)
    importer.state = pc.PEER_SUCCEEDED
    first = resource.create_peer("p2", task, "h2", persistent=False)
    # The same host registering again replaces its earlier peer.
    second = resource.create_peer("p3", task, "h2", persistent=True)
    assert set(task.peers) == {"p1", "p3"}
    assert "p2" not in resource.peers
    assert first is not second
    assert (task.persistent_replicas(), task.replicas()) == (1, 0)
    second.state = pc.PEER_SUCCEEDED
    assert (task.persistent_replicas(), task.replicas()) == (2, 0)
    assert {peer.id for peer in task.holders()} == {"p1", "p3"}
    assert [peer.id for peer in resource.peers_of_host("h2")] == ["p3"]


def test_deleting_a_task_returns_the_peers_holding_content() -> None:
    resource = pc.PersistentCacheResource()
    task = make_task()
    importer = resource.create_task(task)
    importer.state = pc.PEER_SUCCEEDED
    partial = resource.create_peer("p2", task, "h2", persistent=False)
    partial.pieces.add(0)
    resource.create_peer("p3", task, "h3", persistent=False)  # registered, nothing fetched yet
    holders = resource.delete_task(task)
    assert {peer.id for peer in holders} == {"p1", "p2"}
    assert resource.peers == {}


def test_a_bad_parent_cools_down() -> None:
    resource = pc.PersistentCacheResource()
    peer = resource.create_task(make_task())
    peer.mark_bad("served a bad piece", 100.0)
    assert peer.is_bad(100.0 + pc.BAD_PARENT_COOL_DOWN - 1)
    assert not peer.is_bad(100.0 + pc.BAD_PARENT_COOL_DOWN)

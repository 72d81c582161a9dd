"""Garbage collection of peers, tasks and hosts by the reference's rules, on a controlled clock."""

from __future__ import annotations

import asyncio

import pytest

from dragonfly.scheduler import gc as gc_module
from dragonfly.scheduler.gc import GarbageCollector
from dragonfly.scheduler.resource import peer as p
from dragonfly.scheduler.resource.task import PEER_COUNT_LIMIT_FOR_TASK


@pytest.fixture
def gc(world):
    return GarbageCollector(world.config.gc, world.resource, clock=lambda: world.now)


def test_failed_and_left_peers_are_removed(world, gc):
    failed = world.peer("failed", state=p.FAILED)
    running = world.peer("running", state=p.RUNNING)
    assert gc.collect_peers() == 1
    assert failed.deleted
    assert not running.deleted


async def test_the_periodic_pass_yields_between_slices_and_skips_peers_deleted_meanwhile(world, gc, monkeypatch):
    monkeypatch.setattr(gc_module, "PEER_SLICE", 2)
    failed = [world.peer(f"failed-{i}", state=p.FAILED) for i in range(5)]
    running = world.peer("running", state=p.RUNNING)
    collection = asyncio.ensure_future(gc.collect_peers_sliced())
    await asyncio.sleep(0)  # the pass runs its first slice and yields back here
    assert [peer.deleted for peer in failed] == [True, True, False, False, False]
    world.resource.delete_peer(failed[-1], world.now)  # say, by DeletePeer between two slices
    assert await asyncio.wait_for(collection, 10) == 4  # failed-0..3; failed-4 was gone when its slice came
    assert all(peer.deleted for peer in failed)
    assert not running.deleted
    assert set(world.resource.peers) == {"running"}


def test_stalled_downloads_and_idle_peers_are_removed(world, gc):
    config = world.config.gc
    stalled = world.peer("stalled", state=p.RUNNING)
    idle = world.peer("idle", state=p.SUCCEEDED)
    world.now += config.piece_download_timeout + 1
    for peer in (stalled, idle):
        peer.host.touch(world.now)
    idle.touch(world.now)
    assert gc.collect_peers() == 1
    assert stalled.deleted
    world.now += config.peer_ttl + 1
    idle.host.touch(world.now)
    assert gc.collect_peers() == 1
    assert idle.deleted


def test_peers_of_hosts_silent_beyond_host_ttl_are_removed(world, gc):
    peer = world.peer("a", state=p.SUCCEEDED)
    world.now += world.config.gc.host_ttl + 1
    peer.touch(world.now)
    assert gc.collect_peers() == 1


def test_disable_shared_peers_wait_for_their_stream_to_close(world, gc):
    peer = world.peer("a", state=p.RUNNING)
    peer.host.disable_shared = True
    peer.stream_open = True
    assert gc.collect_peers() == 0
    peer.stream_open = False
    assert gc.collect_peers() == 1


def test_finished_leaves_of_crowded_tasks_are_removed_down_to_the_limit(world, gc):
    host = world.host("crowd")
    peers = [world.peer(f"p{index}", host, state=p.SUCCEEDED) for index in range(PEER_COUNT_LIMIT_FOR_TASK + 5)]
    assert gc.collect_peers() == 5
    assert len(peers[0].task.peers) == PEER_COUNT_LIMIT_FOR_TASK


def test_tasks_without_peers_are_removed(world, gc):
    peer = world.peer("a", state=p.FAILED)
    assert gc.collect_tasks() == 0
    gc.collect_peers()
    assert gc.collect_tasks() == 1
    assert peer.task.id not in world.resource.tasks


def test_hosts_silent_for_two_intervals_are_removed_with_their_peers(world, gc):
    peer = world.peer("a", state=p.RUNNING)
    peer.host.announce_interval = 10
    no_interval = world.host("no-interval")
    world.now += 20
    assert gc.collect_hosts() == 0
    world.now += 0.5
    assert gc.collect_hosts() == 1
    assert peer.deleted
    assert list(world.resource.hosts) == [no_interval.id]


def test_a_host_announced_without_an_interval_expires_after_host_ttl(world, gc):
    """Issue 8 item 6: such hosts were never collected, so announcements alone could fill the scheduler."""
    host = world.host("no-interval")
    assert host.announce_interval == 0
    world.now += gc._config.host_ttl
    assert gc.collect_hosts() == 0
    world.now += 1
    assert gc.collect_hosts() == 1
    assert host.id not in world.resource.hosts

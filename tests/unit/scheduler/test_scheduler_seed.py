"""Seed-peer selection: consistent hashing over healthy seed hosts, and what a seed is asked to download."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import pytest
from dragonfly_api import common_pb2

from dragonfly.scheduler.config import SeedPeerConfig
from dragonfly.scheduler.seed import SeedPeers, seed_download

TASKS = [f"{i:064x}" for i in range(10_000)]


@pytest.fixture
def seeds(world):
    return SeedPeers(SeedPeerConfig(), world.metrics)


def _owners(seeds):
    return {task: seeds.select(task).id for task in TASKS}


def test_no_seed_hosts_means_none_available(seeds):
    assert not seeds.available()
    assert seeds.select(TASKS[0]) is None


async def test_tasks_spread_evenly_and_stay_put_when_a_seed_joins(world, seeds):
    hosts = [world.host(f"seed-{i}", seed=True) for i in range(4)]
    seeds.set_hosts(hosts)
    before = _owners(seeds)
    shares = Counter(before.values())
    assert set(shares) == {host.id for host in hosts}
    assert all(1500 <= count <= 3500 for count in shares.values()), shares
    newcomer = world.host("seed-4", seed=True)
    seeds.set_hosts([*hosts, newcomer])
    after = _owners(seeds)
    moved = [task for task in TASKS if before[task] != after[task]]
    assert all(after[task] == newcomer.id for task in moved)
    assert 1000 <= len(moved) <= 3000


async def test_a_seed_leaving_or_failing_moves_only_its_tasks(world, seeds):
    hosts = [world.host(f"seed-{i}", seed=True) for i in range(4)]
    seeds.set_hosts(hosts)
    before = _owners(seeds)
    seeds._set_health(hosts[0].id, False)
    after = _owners(seeds)
    assert {task for task in TASKS if before[task] != after[task]} == {
        task for task in TASKS if before[task] == hosts[0].id
    }
    seeds._set_health(hosts[0].id, True)
    assert _owners(seeds) == before
    seeds.set_hosts(hosts[1:])
    assert _owners(seeds) == after


async def test_disabled_seed_peers_are_never_available(world):
    seeds = SeedPeers(SeedPeerConfig(enable=False), world.metrics)
    seeds.set_hosts([world.host("seed", seed=True)])
    assert not seeds.available()


def test_seed_download_is_the_childs_without_output_path(world):
    download = world.download(output_path="/home/u/out", tag="t", metadata_only=True)
    forwarded = seed_download(download)
    assert forwarded.need_back_to_source
    assert not forwarded.HasField("output_path")
    assert not forwarded.metadata_only
    assert (forwarded.url, forwarded.tag, forwarded.actual_piece_count) == (download.url, "t", 8)
    assert download.output_path == "/home/u/out", "the child's request is not modified"


async def test_a_started_scheduler_connects_to_a_seed_host_before_any_trigger(world, seeds):
    # The first trigger would otherwise wait for the connection's handshakes.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    host = world.resource.announce_host(
        common_pb2.Host(id="127.0.0.1-seed-9-seed", type=1, hostname="seed-9", ip="127.0.0.1", port=port,
                        download_port=port),
        0.0, world.now,
    )  # fmt: skip
    seeds.start()
    try:
        seeds.set_hosts([host])
        async with asyncio.timeout(10):
            conn, _ = await asyncio.get_running_loop().sock_accept(listener)
        conn.close()
    finally:
        await seeds.close()
        listener.close()

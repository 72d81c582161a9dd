"""The Redis job queue against a real redis-server: each id claimed once, leases, take-over, fencing, cancel."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dragonfly.cli.services import RedisProcess
from dragonfly.manager.jobs.queue import Claim, RedisQueue
from tests.waiting import eventually


def make_queue(server: RedisProcess, prefix: str, **options: float) -> RedisQueue:
    return RedisQueue.from_url(server.url, prefix=prefix, **options)


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_each_id_is_claimed_by_one_of_several_managers(redis_server: RedisProcess, prefix: str) -> None:
    queues = [make_queue(redis_server, prefix, poll_interval=0.01) for _ in range(3)]
    for job_id in range(1, 41):
        await queues[0].put(job_id)
    claimed: list[tuple[int, int]] = []

    async def drain(index: int, queue: RedisQueue) -> None:
        while (claim := await queue.claim(0.2)) is not None:
            claimed.append((index, claim.job_id))
            assert await queue.complete(claim)

    await asyncio.gather(*(drain(i, q) for i, q in enumerate(queues)))
    assert sorted(job_id for _, job_id in claimed) == list(range(1, 41))
    for queue in queues:
        await queue.close()


async def test_put_is_idempotent_while_queued_or_held(redis_server: RedisProcess, prefix: str) -> None:
    queue = make_queue(redis_server, prefix)
    await queue.put(7)
    await queue.put(7)
    assert await queue.pending() == [7]
    claim = await queue.claim(1)
    assert claim is not None
    assert claim.job_id == 7
    await queue.put(7)  # a manager starting re-queues what its store has unfinished: no second run
    assert await queue.pending() == []
    assert await queue.claim(0.1) is None
    assert await queue.complete(claim)
    await queue.close()


async def test_a_lease_that_is_not_renewed_is_taken_over_and_the_first_holder_is_fenced(
    redis_server: RedisProcess, prefix: str
) -> None:
    dead = make_queue(redis_server, prefix, lease=0.5, renew_interval=0.1)
    alive = make_queue(redis_server, prefix, lease=0.5, renew_interval=0.1)
    await dead.put(1)
    first = await dead.claim(1)
    assert first is not None
    assert first.attempt == 1
    assert await alive.reap() == 0  # the lease is live
    # Reaping polls until the 0.5 s lease lapses: nothing to wait on but the clock in Redis.
    assert await eventually(alive.reap, 10, "the unrenewed lease to lapse") == 1
    second = await alive.claim(1)
    assert second is not None
    assert second.job_id == 1
    assert second.attempt == 2
    # The first holder woke up: it can neither renew nor complete what is no longer its job.
    assert not await dead.renew(first)
    assert not await dead.complete(first)
    assert await alive.renew(second)
    assert await alive.complete(second)
    assert await alive.pending() == []
    await dead.close()
    await alive.close()


async def test_renewal_keeps_a_long_job_and_release_gives_it_back(redis_server: RedisProcess, prefix: str) -> None:
    queue = make_queue(redis_server, prefix, lease=0.5, renew_interval=0.1)
    other = make_queue(redis_server, prefix, lease=0.5, renew_interval=0.1)
    await queue.put(3)
    claim = await queue.claim(1)
    assert claim is not None
    for _ in range(8):
        await asyncio.sleep(0.1)
        assert await queue.renew(claim)
        assert await other.reap() == 0
    await queue.release(claim)
    again = await other.claim(1)
    assert again is not None
    assert again.job_id == 3
    assert await other.complete(again)
    await queue.close()
    await other.close()


async def test_cancel_flag_is_seen_by_every_manager(redis_server: RedisProcess, prefix: str) -> None:
    one, two = make_queue(redis_server, prefix), make_queue(redis_server, prefix)
    assert not await two.cancelled(5)
    await one.cancel(5)
    assert await two.cancelled(5)
    await one.close()
    await two.close()


async def test_a_foreign_token_cannot_complete(redis_server: RedisProcess, prefix: str) -> None:
    queue = make_queue(redis_server, prefix)
    await queue.put(9)
    claim = await queue.claim(1)
    assert claim is not None
    assert not await queue.complete(Claim(9, "forged"))
    assert await queue.complete(claim)
    await queue.close()


async def test_jobs_submitted_while_redis_is_down_run_once_it_is_back(tmp_path: Path) -> None:
    from dragonfly.cli.cluster import free_ports
    from dragonfly.manager.jobs.engine import JobEngine
    from dragonfly.manager.jobs.model import FAILURE, MemoryJobStore

    port = free_ports(1)[0]
    queue = RedisQueue.from_url(f"redis://127.0.0.1:{port}/0", prefix=f"test:{uuid.uuid4().hex}")

    async def no_schedulers(ids: Any) -> dict[int, list[Any]]:
        return {}

    engine = JobEngine(
        MemoryJobStore(), queue, no_schedulers, lambda address: None, reap_interval=0.2, requeue_interval=0.5
    )
    await engine.start()  # Redis is down: the manager starts all the same
    try:
        job = await engine.submit_preheat({"type": "file", "url": "http://origin.invalid/a"})
        assert job.state == "PENDING"
        with RedisProcess(tmp_path / "redis", port=port):
            done = await engine.wait(job.id, 60)
            await engine.stop()  # while Redis still answers
    finally:
        await engine.stop()
        await queue.close()
    # It ran: nothing to preheat in, but it reached a worker through the queue and ended.
    assert done.state == FAILURE
    assert done.result["job_states"][0]["error"] == "no scheduler cluster to preheat in"
    assert done.progress["attempt"] == 1


async def test_a_claim_holds_the_lease_job_lease_configures(redis_server: RedisProcess) -> None:
    from dragonfly.manager import config
    from dragonfly.manager.jobs.api import job_queue

    cfg = config.load(
        None,
        overrides={"database": {"redis": {"addrs": [f"127.0.0.1:{redis_server.port}"]}}, "job": {"lease": "10m"}},
    )
    queue = job_queue(SimpleNamespace(config=cfg))
    assert isinstance(queue, RedisQueue)
    assert queue.renew_interval == 100.0  # a sixth of the lease
    await queue.put(4242)
    claim = await queue.claim(5)
    assert claim is not None
    try:
        # The lease's deadline is on Redis's clock, in ms: ten minutes out, not the default thirty seconds.
        deadline = await queue._redis.zscore("dragonfly:manager:jobs:leases", "4242")
        seconds, micros = await queue._redis.time()
        remaining = deadline - (seconds * 1000 + micros // 1000)
        assert 9 * 60_000 < remaining <= 10 * 60_000
        assert await queue.renew(claim)
    finally:
        assert await queue.complete(claim)
        await queue.close()

"""Job queues: which manager runs which job, once.

The queue carries job ids only; the job itself (arguments, secrets, state) is in the ``JobStore``.

- ``MemoryQueue`` (the default): an asyncio queue in this process. A lone manager re-queues the jobs its store
  still has ``PENDING`` when it starts, so they survive a restart when the store is a database.
- ``RedisQueue`` (``redis`` configured): several managers share it. A claim moves an id from the ``pending`` list
  into a lease (a sorted set scored by the lease's deadline, on Redis's clock) owned by a random claim token, in
  one Lua script, so two managers never claim the same id. The runner renews its lease every few seconds; a
  manager that dies stops renewing, and any manager's reaper puts ids whose lease ran out back at the head of the
  queue, where another manager picks them up. Completion is fenced by the token: a manager that lost its lease
  (paused past the deadline) cannot complete the job, and its runner is told to stop. Together with the store's
  conditional ``finish`` a job ends exactly once.
- Cancellation is a flag per job id, seen by whichever manager runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """A job id this manager holds, with the token that proves it (``attempt`` counts claims of the id)."""

    job_id: int
    token: str
    attempt: int = 1


class JobQueue(Protocol):
    """How jobs reach the managers that run them."""

    #: How often a runner must call ``renew`` (seconds).
    renew_interval: float

    async def put(self, job_id: int) -> None:
        """Queue a job id; a no-op when it is already queued or held."""

    async def claim(self, timeout: float) -> Claim | None:  # noqa: ASYNC109 (a poll's bound, not a deadline)
        """Take the next job id, waiting up to ``timeout`` seconds; None if there is none."""

    async def renew(self, claim: Claim) -> bool:
        """Extend the claim; False if it was lost (the job is someone else's now)."""

    async def complete(self, claim: Claim) -> bool:
        """Drop a finished job from the queue; False if the claim was lost."""

    async def release(self, claim: Claim) -> None:
        """Give a job back unfinished (this manager is stopping)."""

    async def cancel(self, job_id: int) -> None: ...

    async def cancelled(self, job_id: int) -> bool: ...

    async def reap(self) -> int:
        """Re-queue jobs whose holder stopped renewing; return how many."""

    async def close(self) -> None: ...


class MemoryQueue:
    """Job ids in an asyncio queue of this process."""

    renew_interval = 5.0

    def __init__(self) -> None:
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._cancelled: set[int] = set()
        self._attempts: dict[int, int] = {}
        self._queued: set[int] = set()
        self._held: set[int] = set()

    async def put(self, job_id: int) -> None:
        if job_id not in self._queued and job_id not in self._held:
            self._queued.add(job_id)
            self._queue.put_nowait(job_id)

    async def claim(self, timeout: float) -> Claim | None:  # noqa: ASYNC109
        try:
            job_id = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        self._queued.discard(job_id)
        self._held.add(job_id)
        attempt = self._attempts[job_id] = self._attempts.get(job_id, 0) + 1
        return Claim(job_id, "local", attempt)

    async def renew(self, claim: Claim) -> bool:
        return True

    async def complete(self, claim: Claim) -> bool:
        self._held.discard(claim.job_id)
        self._attempts.pop(claim.job_id, None)
        self._cancelled.discard(claim.job_id)
        return True

    async def release(self, claim: Claim) -> None:
        self._held.discard(claim.job_id)
        await self.put(claim.job_id)

    async def cancel(self, job_id: int) -> None:
        self._cancelled.add(job_id)

    async def cancelled(self, job_id: int) -> bool:
        return job_id in self._cancelled

    async def reap(self) -> int:
        return 0

    async def close(self) -> None:
        return None


# KEYS[1] pending list, KEYS[2] lease zset; ARGV[1] lease ms, ARGV[2] token, ARGV[3] key prefix.
# An id whose lease is live is someone's already (a duplicate put): dropped, the next one is tried.
_CLAIM = """
local id
repeat
  id = redis.call('RPOP', KEYS[1])
  if not id then return nil end
until not redis.call('ZSCORE', KEYS[2], id)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), id)
redis.call('SET', ARGV[3] .. ':owner:' .. id, ARGV[2])
local attempt = redis.call('INCR', ARGV[3] .. ':attempts:' .. id)
redis.call('EXPIRE', ARGV[3] .. ':attempts:' .. id, 604800)
return {id, attempt}
"""
# KEYS[1] pending list, KEYS[2] lease zset; ARGV[1] id. Idempotent: an id queued or held is not queued again.
_PUT = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
if redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1] lease zset; ARGV[1] id, ARGV[2] token, ARGV[3] lease ms, ARGV[4] prefix.
_RENEW = """
if redis.call('GET', ARGV[4] .. ':owner:' .. ARGV[1]) ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
# KEYS[1] lease zset; ARGV[1] id, ARGV[2] token, ARGV[3] prefix.
_COMPLETE = """
if redis.call('GET', ARGV[3] .. ':owner:' .. ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', ARGV[3] .. ':owner:' .. ARGV[1], ARGV[3] .. ':attempts:' .. ARGV[1])
return 1
"""
# KEYS[1] pending list, KEYS[2] lease zset; ARGV[1] id, ARGV[2] token, ARGV[3] prefix.
_RELEASE = """
if redis.call('GET', ARGV[3] .. ':owner:' .. ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', ARGV[3] .. ':owner:' .. ARGV[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1] pending list, KEYS[2] lease zset; ARGV[1] prefix.
_REAP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('DEL', ARGV[1] .. ':owner:' .. id)
  redis.call('RPUSH', KEYS[1], id)
end
return #expired
"""


class QueueUnavailable(ConnectionError):
    """Redis cannot be reached."""


class RedisQueue:
    """Job ids in Redis, shared by every manager that uses the same ``prefix``."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "dragonfly:manager:jobs",
        lease: float = 30.0,
        renew_interval: float = 5.0,
        poll_interval: float = 0.2,
    ) -> None:
        if renew_interval * 2 >= lease:
            raise ValueError("the lease must outlast at least two renewals")
        self._redis = client
        self._prefix = prefix
        self._pending = f"{prefix}:pending"
        self._leases = f"{prefix}:leases"
        self._lease_ms = int(lease * 1000)
        self.renew_interval = renew_interval
        self._poll = poll_interval
        self._put = client.register_script(_PUT)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)
        self._reap = client.register_script(_REAP)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisQueue:
        """Connect (lazily) to ``redis://[user:password@]host:port/db``."""
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        return cls(client, **options)

    async def put(self, job_id: int) -> None:
        await self._put(keys=[self._pending, self._leases], args=[job_id])

    async def claim(self, timeout: float) -> Claim | None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        token = secrets.token_hex(16)
        while True:
            answer = await self._claim(keys=[self._pending, self._leases], args=[self._lease_ms, token, self._prefix])
            if answer:
                job_id, attempt = answer
                return Claim(int(job_id), token, int(attempt))
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(self._poll, remaining))

    async def renew(self, claim: Claim) -> bool:
        answer = await self._renew(keys=[self._leases], args=[claim.job_id, claim.token, self._lease_ms, self._prefix])
        return bool(answer)

    async def complete(self, claim: Claim) -> bool:
        answer = await self._complete(keys=[self._leases], args=[claim.job_id, claim.token, self._prefix])
        return bool(answer)

    async def release(self, claim: Claim) -> None:
        await self._release(keys=[self._pending, self._leases], args=[claim.job_id, claim.token, self._prefix])

    async def cancel(self, job_id: int) -> None:
        await self._redis.set(f"{self._prefix}:cancel:{job_id}", 1, ex=7 * 86400)

    async def cancelled(self, job_id: int) -> bool:
        return bool(await self._redis.exists(f"{self._prefix}:cancel:{job_id}"))

    async def reap(self) -> int:
        return int(await self._reap(keys=[self._pending, self._leases], args=[self._prefix]))

    async def pending(self) -> list[int]:
        """Return the queued ids, next first (tests, operators)."""
        ids: list[Any] = await self._redis.lrange(self._pending, 0, -1)
        return [int(x) for x in reversed(ids)]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()

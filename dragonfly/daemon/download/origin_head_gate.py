"""Whether a download's stat of the origin also reads the origin's head (``proxy.originHead``, docs/proxy.md).

The head makes a proxied pull's first byte as early as a direct pull's, at the price of up to ``originHead`` bytes of
origin egress per peer and blob. Once the swarm holds piece 0 (or enough peers are on the task to serve it soon)
that price buys nothing: the answer can start with piece 0 from a parent. So before its stat a peer asks the task's
scheduler (StatTask, one round trip of at most ``STAT_TIMEOUT``) and reads the head only while the task is unknown,
or piece 0 is not among its trusted pieces and fewer than ``proxy.originHeadMaxPeers`` peers are on it. The origin's
extra egress per blob is then bounded by the peers that arrive before piece 0 is in the swarm, at most that many.

That round trip sits between the client's request and the origin's: the proxy starts it early when an image
manifest it forwards names the blob (``prepare``, proxy/manifest_blobs.py), and the blob's gate takes that answer if
it was asked for at most ``STAT_TIMEOUT`` before: no staler than an answer the gate could wait for itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import grpc
from dragonfly_api import common_pb2

from dragonfly.daemon.download.scheduler_client import SchedulerClient, describe_error

log = logging.getLogger(__name__)

#: How long the StatTask before the stat may take: it delays the stat (and so the first byte) by that much at most.
STAT_TIMEOUT = 0.5
#: The most answers being prepared at once (``prepare``); more evict the oldest.
MAX_PREPARED = 256


def head_wanted(task: common_pb2.Task | None, max_peers: int) -> bool:
    """Return whether to read the origin's head, given the scheduler's task (None: it does not know the task).

    ``max_peers`` 0: any number of peers on a task without piece 0 still read the head.
    """
    if task is None:
        return True
    if any(piece.number == 0 for piece in task.pieces):
        return False
    return max_peers == 0 or task.peer_count < max_peers


class OriginHeadGate:
    """Asks a task's scheduler whether the swarm can serve its piece 0 soon (see the module docstring)."""

    def __init__(
        self,
        scheduler: SchedulerClient,
        *,
        host_id: str,
        max_peers: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scheduler = scheduler
        self._host_id = host_id
        self._max_peers = max_peers
        self._clock = clock
        # task id -> (when it was asked, the answer on its way); oldest first.
        self._prepared: OrderedDict[str, tuple[float, asyncio.Task[bool]]] = OrderedDict()

    def prepare(self, task_id: str) -> None:
        """Ask now for a download of ``task_id`` expected within ``STAT_TIMEOUT`` (its ``head_wanted`` takes it)."""
        self._expire()
        if task_id in self._prepared:
            return
        if len(self._prepared) >= MAX_PREPARED:
            _asked, answer = self._prepared.popitem(last=False)[1]
            answer.cancel()
        answer = asyncio.ensure_future(self._ask(task_id))
        # An answer nobody takes must not leave an unretrieved exception behind.
        answer.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._prepared[task_id] = (self._clock(), answer)

    async def head_wanted(self, task_id: str) -> bool:
        """Return whether this peer's stat of the task's origin should read the head.

        A scheduler that cannot answer in time gets no head read: the origin's egress stays bounded whatever the
        scheduler's state, and the download goes on as without ``originHead`` (its own stat says the same).
        """
        self._expire()
        prepared = self._prepared.pop(task_id, None)
        if prepared is None:
            return await self._ask(task_id)
        # Asked at most STAT_TIMEOUT ago with that timeout: the answer is in or due.
        return await prepared[1]

    def close(self) -> None:
        """Drop the answers nobody took."""
        for _asked, answer in self._prepared.values():
            answer.cancel()
        self._prepared.clear()

    def _expire(self) -> None:
        oldest = self._clock() - STAT_TIMEOUT
        while self._prepared:
            task_id, (asked, answer) = next(iter(self._prepared.items()))
            if asked >= oldest:
                break
            del self._prepared[task_id]
            answer.cancel()

    async def _ask(self, task_id: str) -> bool:
        try:
            task = await self._scheduler.stat_task(self._host_id, task_id, max_wait=STAT_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return head_wanted(None, self._max_peers)
            reason = describe_error(exc)
        except (ConnectionError, TimeoutError, OSError) as exc:
            reason = describe_error(exc)
        else:
            return head_wanted(task, self._max_peers)
        log.info("origin head not read: the scheduler did not say", extra={"task_id": task_id, "error": reason})
        return False

"""Who holds a task: ``DfdaemonUpload.StatLocalTask`` on every announced host (StatFile, StatImage).

The daemons are asked rather than the scheduler's memory: a daemon may have evicted a task, or kept one across
a scheduler restart. A host that does not have the task (NOT_FOUND) or does not answer in time is left out; a host
with a partial copy is listed with ``is_finished`` false.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc

if TYPE_CHECKING:
    from dragonfly.scheduler.preheat.run import HostChannels
    from dragonfly.scheduler.resource.host import Host

log = logging.getLogger(__name__)

#: One daemon's answer is a lookup in its metadata store; more than this means it is stuck or gone.
STAT_CALL_TIMEOUT = 10.0


@dataclass(slots=True)
class HostHoldings:
    """What one host holds of the URLs asked about: (url, finished) in the order asked."""

    host: Host
    files: list[tuple[str, bool]] = field(default_factory=list)


async def stat_hosts(
    hosts: Sequence[Host],
    tasks: Sequence[tuple[str, str]],
    channels: HostChannels,
    *,
    concurrent_task_count: int,
    concurrent_peer_count: int,
    timeout: float,  # noqa: ASYNC109 (a budget shared by many calls, each with its own deadline)
    remote_ip: str = "",
) -> list[HostHoldings]:
    """Ask every host about every (url, task id); return the hosts holding at least one, in ``hosts`` order."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, bool]] = {host.id: {} for host in hosts}
    task_slots = asyncio.Semaphore(concurrent_task_count)

    async def ask(host: Host, url: str, task_id: str, peers: asyncio.Semaphore) -> None:
        async with peers:
            remaining = min(deadline - time.monotonic(), STAT_CALL_TIMEOUT)
            if remaining <= 0:
                return
            stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channels.get(host))  # type: ignore[no-untyped-call]
            request = dfdaemon_pb2.StatLocalTaskRequest(task_id=task_id)
            if remote_ip:
                request.remote_ip = remote_ip
            try:
                answer = await stub.StatLocalTask(request, timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    log.info(
                        "stat of a task failed", extra={"host_id": host.id, "task_id": task_id, "code": exc.code().name}
                    )
                return
        found[host.id][url] = answer.HasField("finished_at")

    async def one_task(url: str, task_id: str) -> None:
        async with task_slots:
            peers = asyncio.Semaphore(concurrent_peer_count)
            await asyncio.gather(*(ask(host, url, task_id, peers) for host in hosts))

    await asyncio.gather(*(one_task(url, task_id) for url, task_id in tasks))
    result = []
    for host in hosts:
        held = found[host.id]
        if held:
            result.append(HostHoldings(host, [(url, held[url]) for url, _ in tasks if url in held]))
    return result

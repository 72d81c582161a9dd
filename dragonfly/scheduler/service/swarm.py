"""The scheduler's side of the console's swarm call (``dragonfly.common.swarm``): one task's peers and where their
bytes came from. Under mutual TLS only the manager role may call it: the answer names hosts and addresses."""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc

from dragonfly.common.identity import ROLE_MANAGER
from dragonfly.common.ids import is_task_id
from dragonfly.common.redact import redact_url
from dragonfly.common.swarm import SERVICE, decode_request, decode_stats_request, encode
from dragonfly.scheduler.resource import peer as peer_states

if TYPE_CHECKING:
    from dragonfly.scheduler.resource.manager import ResourceManager
    from dragonfly.scheduler.resource.task import Task
    from dragonfly.scheduler.server import SchedulerContext

# The answer lists at most this many peers (the scheduler's own limit per task is 300 in Dragonfly's defaults).
MAX_PEERS = 1000
# Peers whose download is under way (registered and not ended).
IN_FLIGHT = frozenset((*peer_states.RECEIVED, peer_states.RUNNING, peer_states.BACK_TO_SOURCE))
BUCKET_SECONDS = 60
DAY_BUCKETS = 24 * 60


class TrafficHistory:
    """Bytes the peers reported, from origins and from other peers, per minute over the last day.

    O(1) per piece report: the newest minute's bucket is added to; buckets older than a day fall off the deque.
    """

    __slots__ = ("_buckets", "_clock")

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        # [minute, bytes from origins, bytes from peers], oldest first.
        self._buckets: deque[list[int]] = deque()

    def add(self, length: int, *, from_source: bool) -> None:
        """Count one finished piece."""
        minute = int(self._clock() // BUCKET_SECONDS)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != minute:
            buckets.append([minute, 0, 0])
            while buckets[0][0] <= minute - DAY_BUCKETS:
                buckets.popleft()
        buckets[-1][1 if from_source else 2] += length

    def totals(self, seconds: float) -> dict[str, int]:
        """Return the bytes from origins and from peers of the last ``seconds`` (whole minutes)."""
        first = int(self._clock() // BUCKET_SECONDS) - int(seconds // BUCKET_SECONDS) + 1
        source = peers = 0
        for minute, from_source, from_peers in reversed(self._buckets):
            if minute < first:
                break
            source += from_source
            peers += from_peers
        return {"source": source, "peers": peers}


# The answer lists at most this many hosts (the manager pages them for the console).
MAX_HOSTS = 10_000


def hosts(resource: ResourceManager) -> dict[str, Any]:
    """Return the hosts this scheduler knows, with their upload load; O(hosts)."""
    listed = []
    for host in list(resource.hosts.values())[:MAX_HOSTS]:
        message = host.message
        listed.append(
            {
                "id": host.id,
                "hostname": host.hostname,
                "ip": host.ip,
                "port": host.port,
                "download_port": host.download_port,
                "type": "super" if host.is_seed else "normal",
                "idc": host.idc,
                "location": host.location,
                "os": message.os,
                "platform": message.platform,
                "version": message.build.git_version,
                "concurrent_upload_count": host.concurrent_upload_count,
                "concurrent_upload_limit": host.concurrent_upload_limit,
                "upload_count": host.upload_count,
                "upload_failed_count": host.upload_failed_count,
                "peer_count": len(host.peers),
                "updated_at": host.created_wall + (host.updated_at - host.created_at),
            }
        )
    return {"hosts": listed, "truncated": len(resource.hosts) > MAX_HOSTS}


# The task list holds the most recently active tasks, at most this many.
MAX_TASKS = 100


def tasks(resource: ResourceManager) -> dict[str, Any]:
    """Return the most recently active tasks (id, redacted URL, state, size, peers); O(tasks log MAX_TASKS)."""
    recent = heapq.nlargest(MAX_TASKS, resource.tasks.values(), key=lambda task: task.updated_at)
    listed = []
    for task in recent:
        in_flight = sum(1 for peer in task.peers.values() if peer.state in IN_FLIGHT)
        listed.append(
            {
                "task_id": task.id,
                "url": redact_url(task.url),
                "state": task.state,
                "content_length": task.content_length,
                "peers": len(task.peers),
                "peers_in_flight": in_flight,
                "updated_at": task.created_wall + (task.updated_at - task.created_at),
            }
        )
    return {"tasks": listed, "total": len(resource.tasks)}


def stats(resource: ResourceManager, traffic: TrafficHistory) -> dict[str, Any]:
    """Return the overview figures of this scheduler; O(peers) for the tasks in flight."""
    in_flight = [peer for peer in resource.peers.values() if peer.state in IN_FLIGHT]
    seeds = sum(1 for host in resource.hosts.values() if host.is_seed)
    return {
        "hosts": len(resource.hosts) - seeds,
        "seed_hosts": seeds,
        "tasks": len(resource.tasks),
        "tasks_in_flight": len({peer.task.id for peer in in_flight}),
        "peers_in_flight": len(in_flight),
        "traffic": {"hour": traffic.totals(3600), "day": traffic.totals(86400)},
    }


def snapshot(resource: ResourceManager, task_id: str) -> dict[str, Any]:
    """Return the task's peers and parent → child edges, or ``{"task_id", "found": False}``; O(peers + edges)."""
    task = resource.tasks.get(task_id)
    if task is None:
        return {"task_id": task_id, "found": False, "peers": [], "edges": []}
    return describe_task(task)


def describe_task(task: Task) -> dict[str, Any]:
    """Return the JSON form of one task's swarm."""
    peers: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for peer in list(task.peers.values())[:MAX_PEERS]:
        host = peer.host
        peers.append(
            {
                "id": peer.id,
                "host_id": host.id,
                "hostname": host.hostname,
                "ip": host.ip,
                "is_seed": host.is_seed,
                "state": peer.state,
                "finished_pieces": peer.pieces.count,
                "total_pieces": max(task.piece_count, 0),
                "bytes_from_parents": sum(peer.bytes_from_parents.values()),
                "bytes_from_source": peer.bytes_from_source,
                "created_at": peer.created_wall,
                "updated_at": peer.updated_wall(),
            }
        )
        # Edges: every parent the peer got bytes from, and the parents it is scheduled on now (perhaps no bytes yet).
        for parent_id in {*peer.bytes_from_parents, *peer.parents}:
            edges.append(
                {
                    "parent": parent_id,
                    "child": peer.id,
                    "bytes": peer.bytes_from_parents.get(parent_id, 0),
                    "pieces": peer.pieces_from_parents.get(parent_id, 0),
                    "active": parent_id in peer.parents,
                }
            )
    return {
        "task_id": task.id,
        "found": True,
        # The console shows it to every reader: no credentials (docs/security.md).
        "url": redact_url(task.url),
        "state": task.state,
        "content_length": task.content_length,
        "piece_length": task.piece_length,
        "total_pieces": max(task.piece_count, 0),
        "peers": peers,
        "edges": edges,
    }


def handler(ctx: SchedulerContext) -> grpc.GenericRpcHandler:
    """Return the generic handler that serves the console's calls from ``ctx``'s resources."""

    async def get_task(task_id: str, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        await ctx.authz.require_role(context, (ROLE_MANAGER,), "Swarm.GetTask")
        if not is_task_id(task_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "task_id is not a task id (64 hex digits)")
        return snapshot(ctx.resource, task_id)

    async def get_stats(_request: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
        await ctx.authz.require_role(context, (ROLE_MANAGER,), "Swarm.GetStats")
        return stats(ctx.resource, ctx.traffic)

    async def get_hosts(_request: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
        await ctx.authz.require_role(context, (ROLE_MANAGER,), "Swarm.GetHosts")
        return hosts(ctx.resource)

    async def get_tasks(_request: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
        await ctx.authz.require_role(context, (ROLE_MANAGER,), "Swarm.GetTasks")
        return tasks(ctx.resource)

    methods = {
        "GetTasks": grpc.unary_unary_rpc_method_handler(
            get_tasks, request_deserializer=decode_stats_request, response_serializer=encode
        ),
        "GetHosts": grpc.unary_unary_rpc_method_handler(
            get_hosts, request_deserializer=decode_stats_request, response_serializer=encode
        ),
        "GetTask": grpc.unary_unary_rpc_method_handler(
            get_task, request_deserializer=decode_request, response_serializer=encode
        ),
        "GetStats": grpc.unary_unary_rpc_method_handler(
            get_stats, request_deserializer=decode_stats_request, response_serializer=encode
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)

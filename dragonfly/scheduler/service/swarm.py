"""The scheduler's side of the console's swarm call (``dragonfly.common.swarm``): one task's peers and where their
bytes came from. Under mutual TLS only the manager role may call it: the answer names hosts and addresses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from dragonfly.common.identity import ROLE_MANAGER
from dragonfly.common.ids import is_task_id
from dragonfly.common.swarm import SERVICE, decode_request, encode

if TYPE_CHECKING:
    from dragonfly.scheduler.resource.manager import ResourceManager
    from dragonfly.scheduler.resource.task import Task
    from dragonfly.scheduler.server import SchedulerContext

# The answer lists at most this many peers (the scheduler's own limit per task is 300 in Dragonfly's defaults).
MAX_PEERS = 1000


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
        "url": task.url,
        "state": task.state,
        "content_length": task.content_length,
        "piece_length": task.piece_length,
        "total_pieces": max(task.piece_count, 0),
        "peers": peers,
        "edges": edges,
    }


def handler(ctx: SchedulerContext) -> grpc.GenericRpcHandler:
    """Return the generic handler that serves ``GetTask`` from ``ctx``'s resource model."""

    async def get_task(task_id: str, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        await ctx.authz.require_role(context, (ROLE_MANAGER,), "Swarm.GetTask")
        if not is_task_id(task_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "task_id is not a task id (64 hex digits)")
        return snapshot(ctx.resource, task_id)

    method = grpc.unary_unary_rpc_method_handler(
        get_task, request_deserializer=decode_request, response_serializer=encode
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"GetTask": method})

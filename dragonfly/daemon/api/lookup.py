"""Task lookups shared by the local and the peer-facing gRPC services."""

from __future__ import annotations

import grpc

from dragonfly.daemon.errors import InvalidTaskId
from dragonfly.daemon.storage import Storage, TaskRecord


async def get_task_or_abort(storage: Storage, task_id: str, context: grpc.aio.ServicerContext) -> TaskRecord:
    """Return the stored task, or end the call with INVALID_ARGUMENT (malformed id) or NOT_FOUND."""
    try:
        task = storage.get_task(task_id)
    except InvalidTaskId as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if task is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id} not found")
    assert task is not None  # abort raised otherwise
    return task

"""The console's swarm call: one extra unary gRPC method on the scheduler, JSON in and out
(``docs/console.md#swarm-view``). Not part of Dragonfly's API.

``/dragonfly.console.v1.Swarm/GetTask`` takes ``{"task_id": "<task id>"}`` and answers the task's peers and parent →
child edges with the bytes each edge carried (the scheduler's ``dragonfly.scheduler.service.swarm``). The manager
calls it (:func:`fetch`) when the console asks; nothing is pushed, so a swarm nobody looks at costs nothing.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

SERVICE = "dragonfly.console.v1.Swarm"
METHOD = f"/{SERVICE}/GetTask"
# A request is one task id; anything longer is not one.
MAX_REQUEST_BYTES = 1024


def decode_request(data: bytes) -> str:
    """Return the task id of a request, or raise ValueError."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    request = json.loads(data)
    task_id = request.get("task_id") if isinstance(request, dict) else None
    if not isinstance(task_id, str):
        raise ValueError('expected {"task_id": "<task id>"}')
    return task_id


def encode(message: dict[str, Any]) -> bytes:
    """Serialize a request or an answer."""
    return json.dumps(message, separators=(",", ":")).encode()


async def fetch(channel: grpc.aio.Channel, task_id: str, *, deadline: float = 5.0) -> dict[str, Any]:
    """Ask the scheduler behind ``channel`` for a task's swarm, within ``deadline`` seconds (the gRPC deadline)."""
    call = channel.unary_unary(METHOD, request_serializer=encode, response_deserializer=json.loads)
    answer: dict[str, Any] = await call({"task_id": task_id}, timeout=deadline)
    return answer

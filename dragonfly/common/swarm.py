"""The console's swarm call: one extra unary gRPC method on the scheduler, JSON in and out
(``docs/console.md#swarm-view``). Not part of Dragonfly's API.

``/dragonfly.console.v1.Swarm/GetTask`` takes ``{"task_id": "<task id>"}`` and answers the task's peers and parent →
child edges with the bytes each edge carried (the scheduler's ``dragonfly.scheduler.service.swarm``);
``/dragonfly.console.v1.Swarm/GetStats`` takes ``{}`` and answers the scheduler's hosts, downloads in flight and
the bytes its peers got from other peers and from origins in the last hour and day; ``GetHosts`` takes ``{}`` and
answers the hosts it knows with their upload load; ``GetTasks`` takes ``{}`` and answers its most recently active
tasks. The manager
calls it (:func:`fetch`) when the console asks; nothing is pushed, so a swarm nobody looks at costs nothing.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

SERVICE = "dragonfly.console.v1.Swarm"
METHOD = f"/{SERVICE}/GetTask"
# The scheduler's figures for the console's overview: hosts, downloads in flight, bytes by source lately.
STATS_METHOD = f"/{SERVICE}/GetStats"
# The hosts the scheduler knows (announced and not yet gone), with their upload load.
HOSTS_METHOD = f"/{SERVICE}/GetHosts"
# The most recently active tasks, for picking one in the swarm view.
TASKS_METHOD = f"/{SERVICE}/GetTasks"
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


def decode_stats_request(data: bytes) -> dict[str, Any]:
    """Return a GetStats request (an empty object), or raise ValueError."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    request = json.loads(data) if data else {}
    if not isinstance(request, dict):
        raise ValueError("expected {}")
    return request


def encode(message: dict[str, Any]) -> bytes:
    """Serialize a request or an answer."""
    return json.dumps(message, separators=(",", ":")).encode()


async def fetch(channel: grpc.aio.Channel, task_id: str, *, deadline: float = 5.0) -> dict[str, Any]:
    """Ask the scheduler behind ``channel`` for a task's swarm, within ``deadline`` seconds (the gRPC deadline)."""
    call = channel.unary_unary(METHOD, request_serializer=encode, response_deserializer=json.loads)
    answer: dict[str, Any] = await call({"task_id": task_id}, timeout=deadline)
    return answer


async def fetch_stats(channel: grpc.aio.Channel, *, deadline: float = 5.0) -> dict[str, Any]:
    """Ask the scheduler behind ``channel`` for its overview figures, within ``deadline`` seconds."""
    call = channel.unary_unary(STATS_METHOD, request_serializer=encode, response_deserializer=json.loads)
    answer: dict[str, Any] = await call({}, timeout=deadline)
    return answer


async def fetch_hosts(channel: grpc.aio.Channel, *, deadline: float = 5.0) -> dict[str, Any]:
    """Ask the scheduler behind ``channel`` for the hosts it knows, within ``deadline`` seconds."""
    call = channel.unary_unary(HOSTS_METHOD, request_serializer=encode, response_deserializer=json.loads)
    answer: dict[str, Any] = await call({}, timeout=deadline)
    return answer


async def fetch_tasks(channel: grpc.aio.Channel, *, deadline: float = 5.0) -> dict[str, Any]:
    """Ask the scheduler behind ``channel`` for its most recently active tasks, within ``deadline`` seconds."""
    call = channel.unary_unary(TASKS_METHOD, request_serializer=encode, response_deserializer=json.loads)
    answer: dict[str, Any] = await call({}, timeout=deadline)
    return answer

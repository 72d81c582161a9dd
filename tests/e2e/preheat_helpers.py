"""Calling a scheduler's preheat RPCs as the manager does (mutual TLS with a manager certificate, wait mode)."""

from __future__ import annotations

import json
from typing import Any

import grpc
from dragonfly_api import scheduler_pb2_grpc

from dragonfly.cli.cluster import LocalCluster
from dragonfly.common import tls
from dragonfly.scheduler.preheat.run import decode_result
from dragonfly.scheduler.preheat.service import PLAN_KEY, RESULT_KEY, WAIT_KEY

# Results of big clusters come back in trailing metadata; the manager's channels allow as much.
CHANNEL_OPTIONS = [("grpc.max_metadata_size", 64 << 20), ("grpc.absolute_max_metadata_size", 64 << 20)]


def scheduler_channel(cluster: LocalCluster, name: str = "test-manager", roles: tuple[str, ...] | None = None) -> Any:
    """Return an aio channel to the cluster's scheduler with a client certificate (default: manager role)."""
    files = cluster.client_files(name) if roles is None else cluster.client_files(name, roles)
    return tls.aio_channel(cluster.scheduler_addr, files, CHANNEL_OPTIONS)


async def preheat(stub: scheduler_pb2_grpc.SchedulerStub, method: str, request: Any) -> Any:
    """Run PreheatFile/PreheatImage in wait mode; return (plan, result) decoded from the metadata."""
    call = getattr(stub, method)(request, metadata=((WAIT_KEY, "true"),), timeout=120)
    await call
    initial = dict(await call.initial_metadata())
    trailing = dict(await call.trailing_metadata())
    return json.loads(initial[PLAN_KEY]), decode_result(trailing[RESULT_KEY])


def hosts_of(tasks: list[dict[str, Any]]) -> list[str]:
    return sorted(task["hostname"] for task in tasks)


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    """Await a call that must fail; return its error."""
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")

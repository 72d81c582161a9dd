"""gRPC ``dfdaemon.v2.DfdaemonDownload`` on a unix socket: the local API of dfget and other local clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from google.protobuf import empty_pb2

from dragonfly.common.redact import redact_url
from dragonfly.daemon.api.callers import CallerRelay
from dragonfly.daemon.api.convert import (
    download_response,
    error_trailers,
    local_task_message,
    status_of,
    task_message,
)
from dragonfly.daemon.api.lookup import get_task_or_abort
from dragonfly.daemon.api.metadata import INSECURE_ORIGIN_METADATA
from dragonfly.daemon.download.scheduler_client import SchedulerClient
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.output import Caller
from dragonfly.daemon.storage import Storage

log = logging.getLogger(__name__)


def wants_insecure_origin(context: grpc.aio.ServicerContext) -> bool:
    """Tell whether the caller asked to skip the origin's certificate verification (logged as a warning)."""
    for key, value in context.invocation_metadata() or ():
        if key == INSECURE_ORIGIN_METADATA and str(value).lower() in ("1", "true"):
            log.warning("a local caller asked to skip the verification of the origin's TLS certificate")
            return True
    return False


class DfdaemonDownloadService(dfdaemon_pb2_grpc.DfdaemonDownloadServicer):
    """The local API."""

    def __init__(
        self, *, storage: Storage, tasks: TaskManager, scheduler: SchedulerClient | None, callers: CallerRelay | None
    ) -> None:
        self._storage = storage
        self._tasks = tasks
        self._scheduler = scheduler
        self._callers = callers

    async def _caller(self, context: grpc.aio.ServicerContext) -> Caller | None:
        """Return who called (SO_PEERCRED); refuse a connection that did not come through the public socket."""
        if self._callers is None:
            return None
        caller = self._callers.lookup(context.peer())
        if caller is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "the local API takes requests only through its unix socket"
            )
        return caller

    async def DownloadTask(
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        caller = await self._caller(context)
        try:
            async for event in self._tasks.download(
                request.download, caller=caller, remote=False, insecure=wants_insecure_origin(context)
            ):
                yield download_response(event, host_id=self._tasks.host_id)
        except Exception as exc:
            code, message = status_of(exc)
            log.info(
                "download failed", extra={"url": redact_url(request.download.url), "code": code.name, "error": message}
            )
            await context.abort(code, message, trailing_metadata=error_trailers(exc))

    async def StatTask(
        self, request: dfdaemon_pb2.StatTaskRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.Task:
        await self._caller(context)
        task = await get_task_or_abort(self._storage, request.task_id, context)
        return task_message(task, active=self._tasks.is_active(task.id))

    async def StatLocalTask(
        self, request: dfdaemon_pb2.StatLocalTaskRequest, context: grpc.aio.ServicerContext
    ) -> dfdaemon_pb2.StatLocalTaskResponse:
        await self._caller(context)
        return local_task_message(await get_task_or_abort(self._storage, request.task_id, context))

    async def ListLocalTasks(
        self, request: dfdaemon_pb2.ListLocalTasksRequest, context: grpc.aio.ServicerContext
    ) -> dfdaemon_pb2.ListLocalTasksResponse:
        await self._caller(context)
        # A failed task is not here in any useful sense (its content is partial and will be fetched again), so it
        # is not listed; downloads in progress are, without finished_at.
        tasks = [t for t in self._storage.tasks() if t.failed_at is None or t.finished_at is not None]
        return dfdaemon_pb2.ListLocalTasksResponse(tasks=[local_task_message(t) for t in tasks])

    async def _delete(self, task_id: str, context: grpc.aio.ServicerContext) -> None:
        task = await get_task_or_abort(self._storage, task_id, context)
        if self._tasks.is_active(task.id):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"task {task.id} is being downloaded")
        self._storage.delete_task(task.id)

    async def DeleteTask(
        self, request: dfdaemon_pb2.DeleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._caller(context)
        await self._delete(request.task_id, context)
        if self._scheduler is not None:
            try:
                await self._scheduler.delete_task(self._tasks.host_id, request.task_id)
            except grpc.aio.AioRpcError as exc:
                log.info("scheduler delete task failed", extra={"task_id": request.task_id, "code": exc.code().name})
        return empty_pb2.Empty()

    async def DeleteLocalTask(
        self, request: dfdaemon_pb2.DeleteLocalTaskRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._caller(context)
        await self._delete(request.task_id, context)
        return empty_pb2.Empty()

    async def DeleteHost(self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self._caller(context)
        if self._scheduler is not None:
            await self._scheduler.delete_host(self._tasks.host_id)
        return empty_pb2.Empty()

"""gRPC ``dfdaemon.v2.DfdaemonDownload`` on a unix socket: the local API of dfget and other local clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2
from google.protobuf import duration_pb2, empty_pb2

from dragonfly.common.ids import is_task_id
from dragonfly.common.redact import redact_url
from dragonfly.daemon.api.callers import CallerRelay
from dragonfly.daemon.api.convert import (
    download_response,
    error_trailers,
    local_task_message,
    status_of,
    task_message,
    wants_insecure_origin,
    wants_output_copy,
)
from dragonfly.daemon.api.lookup import get_task_or_abort
from dragonfly.daemon.download.scheduler_client import SchedulerClient
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.output import Caller, check_output_path
from dragonfly.daemon.persistent_cache import PersistentCacheManager
from dragonfly.daemon.storage import Storage
from dragonfly.daemon.upload.grpc_server import persistent_cache_response

log = logging.getLogger(__name__)


class DfdaemonDownloadService(dfdaemon_pb2_grpc.DfdaemonDownloadServicer):
    """The local API."""

    def __init__(
        self,
        *,
        storage: Storage,
        tasks: TaskManager,
        scheduler: SchedulerClient | None,
        callers: CallerRelay | None,
        persistent_cache: PersistentCacheManager | None = None,
    ) -> None:
        self._pcache = persistent_cache
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
                request.download,
                caller=caller,
                remote=False,
                insecure=wants_insecure_origin(context, "a local caller"),
                copy_output=wants_output_copy(context),
            ):
                yield download_response(event, host_id=self._tasks.host_id)
        except Exception as exc:
            code, message = status_of(exc)
            log.info(
                "download failed", extra={"url": redact_url(request.download.url), "code": code.name, "error": message}
            )
            await context.abort(code, message, trailing_metadata=error_trailers(exc))

    async def ListTaskEntries(
        self, request: dfdaemon_pb2.ListTaskEntriesRequest, context: grpc.aio.ServicerContext
    ) -> dfdaemon_pb2.ListTaskEntriesResponse:
        await self._caller(context)
        try:
            entries = await self._tasks.list_entries(request)
        except Exception as exc:
            code, message = status_of(exc)
            if isinstance(exc, TimeoutError):
                code, message = grpc.StatusCode.DEADLINE_EXCEEDED, f"listing {redact_url(request.url)} timed out"
            log.info("listing failed", extra={"url": redact_url(request.url), "code": code.name, "error": message})
            await context.abort(code, message, trailing_metadata=error_trailers(exc))
        return dfdaemon_pb2.ListTaskEntriesResponse(
            entries=[
                dfdaemon_pb2.Entry(url=entry.url, content_length=entry.content_length, is_dir=entry.is_dir)
                for entry in entries
            ]
        )

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
        if _task_type(context) == PERSISTENT_CACHE_TYPE:
            await self._delete_persistent_cache(request.task_id, context)
            return empty_pb2.Empty()
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

    # persistent cache tasks (docs/dfcache.md)

    async def _persistent_cache(self, context: grpc.aio.ServicerContext) -> PersistentCacheManager:
        if self._pcache is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "persistent cache tasks are not enabled on this daemon")
            raise AssertionError("abort returned")
        return self._pcache

    async def UploadPersistentCacheTask(
        self, request: dfdaemon_pb2.UploadPersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.PersistentCacheTask:
        """Import the caller's file (read with the caller's rights) into the cache and the swarm."""
        caller = await self._caller(context)
        pcache = await self._persistent_cache(context)
        timeout = _seconds(request.timeout) if request.HasField("timeout") else None
        try:
            async with asyncio.timeout(timeout):
                return await pcache.import_file(request, caller)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"scheduler: {exc.details()}")
        except Exception as exc:
            code, message = status_of(exc)
            log.info("persistent cache import failed", extra={"code": code.name, "error": message})
            await context.abort(code, message)
        raise AssertionError("abort returned")

    async def DownloadPersistentCacheTask(
        self, request: dfdaemon_pb2.DownloadPersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.DownloadPersistentCacheTaskResponse]:
        """Export a persistent cache task: fetch it if it is not here, verify it, write the output."""
        caller = await self._caller(context)
        pcache = await self._persistent_cache(context)
        if not is_task_id(request.task_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.task_id[:80]!r} is not a task id")
        timeout = _seconds(request.timeout) if request.HasField("timeout") else None
        try:
            if request.HasField("output_path"):
                as_daemon = caller is None or caller.is_daemon_user
                check_output_path(request.output_path, overwrite=request.overwrite, as_daemon=as_daemon)
            async with asyncio.timeout(timeout):
                async for content_length, piece in pcache.download(
                    request.task_id, persistent=request.persistent, tag=request.tag, application=request.application
                ):
                    response = persistent_cache_response(pcache.host_id, request.task_id, content_length, piece)
                    if request.need_piece_content and piece is not None:
                        # Pieces come only once the whole content matched its digest: these bytes are checked.
                        content = await pcache.read_piece(request.task_id, piece.offset, piece.length)
                        response.download_piece_finished_response.piece.content = content
                    yield response
                if request.HasField("output_path"):
                    await pcache.write_output(
                        request.task_id,
                        request.output_path,
                        overwrite=request.overwrite,
                        force_hard_link=request.force_hard_link,
                        caller=caller,
                    )
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"scheduler: {exc.details()}")
        except Exception as exc:
            code, message = status_of(exc)
            log.info(
                "persistent cache export failed",
                extra={"task_id": request.task_id, "code": code.name, "error": message},
            )
            await context.abort(code, message)

    async def StatPersistentCacheTask(
        self, request: dfdaemon_pb2.StatPersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.PersistentCacheTask:
        """Return the task as the scheduler knows it (as this host knows it without a scheduler)."""
        await self._caller(context)
        pcache = await self._persistent_cache(context)
        if not is_task_id(request.task_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.task_id[:80]!r} is not a task id")
        if self._scheduler is not None:
            try:
                task: common_pb2.PersistentCacheTask = await self._scheduler.task_stub(
                    request.task_id
                ).StatPersistentCacheTask(
                    scheduler_pb2.StatPersistentCacheTaskRequest(host_id=pcache.host_id, task_id=request.task_id),
                    timeout=10.0,
                )
                return task
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), f"scheduler: {exc.details()}")
        entry = pcache.get(request.task_id)
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
            raise AssertionError("abort returned")
        return pcache.task_message(entry)

    async def StatLocalPersistentCacheTask(
        self, request: dfdaemon_pb2.StatLocalPersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> dfdaemon_pb2.StatLocalPersistentCacheTaskResponse:
        await self._caller(context)
        pcache = await self._persistent_cache(context)
        entry = pcache.get(request.task_id) if is_task_id(request.task_id) else None
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
            raise AssertionError("abort returned")
        return pcache.local_message(entry)

    async def ListLocalPersistentCacheTasks(
        self, request: dfdaemon_pb2.ListLocalPersistentCacheTasksRequest, context: grpc.aio.ServicerContext
    ) -> dfdaemon_pb2.ListLocalPersistentCacheTasksResponse:
        await self._caller(context)
        pcache = await self._persistent_cache(context)
        entries = [entry for entry in (pcache.get(task_id) for task_id in list(pcache.entries)) if entry is not None]
        return dfdaemon_pb2.ListLocalPersistentCacheTasksResponse(tasks=[pcache.local_message(e) for e in entries])

    async def _delete_persistent_cache(self, task_id: str, context: grpc.aio.ServicerContext) -> None:
        """Drop the local copy and tell the scheduler (everywhere when this host imported the task)."""
        pcache = await self._persistent_cache(context)
        if not is_task_id(task_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{task_id[:80]!r} is not a task id")
        found = pcache.delete_local(task_id)
        if self._scheduler is not None:
            try:
                await self._scheduler.task_stub(task_id).DeletePersistentCacheTask(
                    scheduler_pb2.DeletePersistentCacheTaskRequest(host_id=pcache.host_id, task_id=task_id),
                    timeout=10.0,
                )
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or not found:
                    await context.abort(exc.code(), f"scheduler: {exc.details()}")
        if not found:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"persistent cache task {task_id} not found")


PERSISTENT_CACHE_TYPE = "persistent-cache"
TASK_TYPE_KEY = "dragonfly-task-type"


def _task_type(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TASK_TYPE_KEY:
            return str(value)
    return ""


def _seconds(value: duration_pb2.Duration) -> float:
    return float(value.seconds + value.nanos * 1e-9)

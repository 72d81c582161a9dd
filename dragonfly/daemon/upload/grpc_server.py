"""gRPC ``dfdaemon.v2.DfdaemonUpload``: what other peers and the scheduler ask of this daemon.

SyncPieces tells a child which pieces are here (and keeps telling while this daemon's own download goes on);
SyncHost streams bandwidth figures for the child's parent selector; DownloadTask is how the scheduler makes a
seed peer fetch a task. A request from the network never chooses a path on this host: output_path is dropped.

With mutual TLS every caller holds a cluster certificate; DownloadTask (it makes this host fetch a URL) and
DeleteTask are further limited to the roles that have a reason to ask (``docs/security.md#who-may-call-what``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from google.protobuf import empty_pb2

from dragonfly.common.authz import Authorizer
from dragonfly.common.identity import ROLE_MANAGER, ROLE_SCHEDULER
from dragonfly.common.ids import is_task_id
from dragonfly.daemon import compression
from dragonfly.daemon.api.convert import (
    download_response,
    error_trailers,
    local_task_message,
    status_of,
    task_message,
    wants_insecure_origin,
)
from dragonfly.daemon.api.lookup import get_task_or_abort
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.host_info import HostInfo
from dragonfly.daemon.persistent_cache import PersistentCacheManager
from dragonfly.daemon.storage import PieceRecord, Storage

SYNC_HOST_INTERVAL = 1.0
# A piece finishing wakes SyncPieces at once; this is only the fallback poll.
_SYNC_PIECES_POLL = 1.0
# Seed triggering and preheat come from the scheduler (the manager's jobs go through it, or straight to peers).
_DOWNLOAD_ROLES = (ROLE_SCHEDULER, ROLE_MANAGER)
_DELETE_ROLES = (ROLE_SCHEDULER, ROLE_MANAGER)


class DfdaemonUploadService(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    """The peer-facing API."""

    def __init__(
        self,
        *,
        storage: Storage,
        tasks: TaskManager,
        host: HostInfo,
        vortex_port: int,
        authorizer: Authorizer | None = None,
        persistent_cache: PersistentCacheManager | None = None,
    ) -> None:
        self._authz = authorizer or Authorizer(secure=False)
        self._pcache = persistent_cache
        self._storage = storage
        self._tasks = tasks
        self._host = host
        self._vortex_port = vortex_port

    async def SyncPieces(
        self, request: dfdaemon_pb2.SyncPiecesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        task = await get_task_or_abort(self._storage, request.task_id, context)
        count = -(-task.content_length // task.piece_length) if task.piece_length else 0
        interested = {n for n in request.interested_piece_numbers if n < count} or set(range(count))
        while interested:
            # Read before the pieces are listed: a task finishes (or stops being downloaded) only after its last
            # piece is stored, so when it had by now every piece there will be is in the list below. Read after the
            # yields (each one lets the download store pieces and finish meanwhile), it ended the stream without the
            # pieces stored during them, and a child left with no other parent went back to the source
            # (test_daemon_file_urls, ~1 run in 18).
            finished = task.finished_at is not None
            # A partial task nobody is downloading any more: what is here is all there will be.
            abandoned = not finished and not self._tasks.is_active(task.id)
            for number in sorted(n for n in interested if n in task.pieces):
                piece = task.pieces[number]
                interested.discard(number)
                yield dfdaemon_pb2.SyncPiecesResponse(
                    number=piece.number,
                    offset=piece.offset,
                    length=piece.length,
                    ip=self._host.ip,
                    tcp_port=self._vortex_port,
                )
            if not interested or finished:
                return
            if self._storage.get_task(task.id) is not task or task.failed_at is not None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"task {task.id} failed on this peer")
            if abandoned:
                return
            await self._storage.wait_for_change(task.id, _SYNC_PIECES_POLL)

    async def SyncHost(
        self, request: dfdaemon_pb2.SyncHostRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.Host]:
        while True:
            yield self._host.sync_host()
            await asyncio.sleep(SYNC_HOST_INTERVAL)

    async def DownloadTask(
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        await self._authz.require_role(context, _DOWNLOAD_ROLES, "DownloadTask")
        download = common_pb2.Download()
        download.CopyFrom(request.download)
        download.ClearField("output_path")
        if self._tasks.seed:
            # A seed peer fetches from the origin for the swarm, whatever the child that caused it may not do.
            download.disable_back_to_source = False
        try:
            insecure = wants_insecure_origin(context, "the scheduler (a preheat)")
            async for event in self._tasks.download(download, from_scheduler=True, insecure=insecure):
                yield download_response(event, host_id=self._tasks.host_id)
        except Exception as exc:
            code, message = status_of(exc)
            # The origin's error goes along (errordetails.v2.Backend), so the scheduler can tell this seed failed
            # to fetch, which is no reason to stop using it, from this seed being unreachable.
            await context.abort(code, message, trailing_metadata=error_trailers(exc))

    async def StatTask(
        self, request: dfdaemon_pb2.StatTaskRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.Task:
        task = await get_task_or_abort(self._storage, request.task_id, context)
        return task_message(task, active=self._tasks.is_active(task.id))

    async def StatLocalTask(
        self, request: dfdaemon_pb2.StatLocalTaskRequest, context: grpc.aio.ServicerContext
    ) -> dfdaemon_pb2.StatLocalTaskResponse:
        return local_task_message(await get_task_or_abort(self._storage, request.task_id, context))

    async def DeleteTask(
        self, request: dfdaemon_pb2.DeleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._authz.require_role(context, _DELETE_ROLES, "DeleteTask")
        task = await get_task_or_abort(self._storage, request.task_id, context)
        if self._tasks.is_active(task.id):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"task {task.id} is being downloaded")
        self._storage.delete_task(task.id)
        return empty_pb2.Empty()

    # persistent cache tasks (``dragonfly.daemon.persistent_cache``)

    async def _persistent_cache(self, context: grpc.aio.ServicerContext) -> PersistentCacheManager:
        if self._pcache is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "persistent cache tasks are not enabled on this daemon")
            raise AssertionError("abort returned")
        return self._pcache

    async def SyncPersistentCachePieces(
        self, request: dfdaemon_pb2.SyncPersistentCachePiecesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.SyncPersistentCachePiecesResponse]:
        """List the pieces of a persistent cache task held here (only whole, verified copies are offered)."""
        pcache = await self._persistent_cache(context)
        entry = pcache.get(request.task_id) if is_task_id(request.task_id) else None
        task = pcache.storage.get_task(request.task_id) if entry is not None else None
        if task is None or task.finished_at is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
            return
        count = -(-task.content_length // task.piece_length) if task.piece_length else 0
        interested = {n for n in request.interested_piece_numbers if n < count} or set(range(count))
        if pcache.compression:
            # The offer of zstd on Vortex (dragonfly.daemon.compression); Dragonfly's children ignore it.
            await context.send_initial_metadata(((compression.ENCODING_KEY, compression.ZSTD),))
        for number in sorted(interested):
            piece = task.pieces.get(number)
            if piece is None:
                continue
            yield dfdaemon_pb2.SyncPersistentCachePiecesResponse(
                number=piece.number,
                offset=piece.offset,
                length=piece.length,
                ip=self._host.ip,
                tcp_port=self._vortex_port,
            )

    async def DownloadPersistentCacheTask(
        self, request: dfdaemon_pb2.DownloadPersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.DownloadPersistentCacheTaskResponse]:
        """Fetch a persistent cache task into this host's cache (the scheduler's replication); no output path."""
        await self._authz.require_role(context, _DOWNLOAD_ROLES, "DownloadPersistentCacheTask")
        pcache = await self._persistent_cache(context)
        if not is_task_id(request.task_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.task_id[:80]!r} is not a task id")
        try:
            async for content_length, piece in pcache.download(request.task_id, persistent=request.persistent):
                yield persistent_cache_response(pcache.host_id, request.task_id, content_length, piece)
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    async def StatPersistentCacheTask(
        self, request: dfdaemon_pb2.StatPersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.PersistentCacheTask:
        pcache = await self._persistent_cache(context)
        entry = pcache.get(request.task_id) if is_task_id(request.task_id) else None
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
            raise AssertionError("abort returned")
        return pcache.task_message(entry)

    async def UpdatePersistentCacheTask(
        self, request: dfdaemon_pb2.UpdatePersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._authz.require_role(context, _DELETE_ROLES, "UpdatePersistentCacheTask")
        pcache = await self._persistent_cache(context)
        if not pcache.set_persistent(request.task_id, request.persistent):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
        return empty_pb2.Empty()

    async def DeletePersistentCacheTask(
        self, request: dfdaemon_pb2.DeletePersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        """Drop the local copy (the scheduler tells holders when a task is deleted or expires)."""
        await self._authz.require_role(context, _DELETE_ROLES, "DeletePersistentCacheTask")
        pcache = await self._persistent_cache(context)
        if not is_task_id(request.task_id) or not pcache.delete_local(request.task_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
        return empty_pb2.Empty()


def persistent_cache_response(
    host_id: str, task_id: str, content_length: int, piece: PieceRecord | None
) -> dfdaemon_pb2.DownloadPersistentCacheTaskResponse:
    """Return the stream message for the start (``piece`` None) or one piece of a persistent cache download."""
    response = dfdaemon_pb2.DownloadPersistentCacheTaskResponse(host_id=host_id, task_id=task_id, peer_id=host_id)
    if piece is None:
        response.download_persistent_cache_task_started_response.content_length = content_length
        return response
    message = response.download_piece_finished_response.piece
    message.number = piece.number
    message.offset = piece.offset
    message.length = piece.length
    message.digest = piece.digest
    message.traffic_type = common_pb2.TrafficType.ValueType(piece.traffic_type)
    if piece.parent_id:
        message.parent_id = piece.parent_id
    return response

"""Import of a local file (``dfcache import``): read with the caller's rights, copied into the cache while hashed
once (the importer's digest, the task id, CRC-32 per piece), then declared to the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.common.errors import DragonflyError
from dragonfly.common.piece import calculate_piece_length, piece_range
from dragonfly.daemon.errors import DownloadFailed, OutputError
from dragonfly.daemon.output import Caller
from dragonfly.daemon.persistent_cache.announcer import SchedulerAnnouncer
from dragonfly.daemon.persistent_cache.content import (
    as_caller_open,
    copy_and_hash,
    finish_task_id,
    open_input,
)
from dragonfly.daemon.persistent_cache.entries import Entry
from dragonfly.daemon.persistent_cache.metrics import PersistentCacheMetrics
from dragonfly.daemon.storage import PieceRecord

if TYPE_CHECKING:
    from dragonfly.daemon.persistent_cache.copies import LocalCopies
    from dragonfly.daemon.persistent_cache.reconcile import Reconciler

log = logging.getLogger(__name__)

#: ``common.v2.TrafficType`` of a piece this host holds itself.
_LOCAL_PEER = 0


class Importer:
    """Imports files into the persistent cache."""

    def __init__(
        self,
        copies: LocalCopies,
        announcer: SchedulerAnnouncer,
        reconciler: Reconciler,
        metrics: PersistentCacheMetrics,
        *,
        executor: Executor,
        host_id: str,
    ) -> None:
        self._copies = copies
        self._announcer = announcer
        self._reconciler = reconciler
        self._metrics = metrics
        self._executor = executor
        self.host_id = host_id

    async def import_file(
        self, request: dfdaemon_pb2.UploadPersistentCacheTaskRequest, caller: Caller | None
    ) -> common_pb2.PersistentCacheTask:
        """Copy the caller's file into the cache and record it with the scheduler."""
        try:
            task = await self._import_file(request, caller)
        except BaseException:
            self._metrics.imports.labels("failed").inc()
            raise
        self._metrics.imports.labels("ok").inc()
        return task

    async def _import_file(
        self, request: dfdaemon_pb2.UploadPersistentCacheTaskRequest, caller: Caller | None
    ) -> common_pb2.PersistentCacheTask:
        path = request.path
        if not os.path.isabs(path):
            raise ValueError(f"path {path!r} must be absolute")
        ttl = request.ttl.seconds + request.ttl.nanos * 1e-9
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        replicas = request.persistent_replica_count or 1
        loop = asyncio.get_running_loop()
        fd = await self._open_as(caller, path)
        try:
            content_length = os.fstat(fd).st_size
            piece_length = request.piece_length if request.HasField("piece_length") else 0
            piece_length = piece_length or calculate_piece_length(content_length)
            temp = os.path.join(self._copies.storage.content_dir, "tmp", f"{uuid.uuid4().hex}.new")
            # Not run_blocking: a cancelled import stops its copy at the next chunk (the thread owns the
            # descriptors and the temporary file until it returns).
            stop = threading.Event()
            copying = loop.run_in_executor(self._executor, copy_and_hash, fd, temp, content_length, piece_length, stop)
            try:
                crcs, hasher = await asyncio.shield(copying)
            except asyncio.CancelledError:
                stop.set()
                with contextlib.suppress(Exception):
                    await copying
                raise
        finally:
            os.close(fd)
        content = (
            request.content_for_calculating_task_id if request.HasField("content_for_calculating_task_id") else None
        )
        task_id, digest = finish_task_id(
            hasher, tag=request.tag, application=request.application, piece_length=piece_length, content=content
        )
        if task_id in self._copies.active:
            self._copies.storage.discard_content_file(temp)
            raise DownloadFailed(f"persistent cache task {task_id} is being exported on this host")
        peer_id = f"{self.host_id}-{uuid.uuid4()}"
        entry = Entry(
            id=task_id,
            persistent=True,
            persistent_replica_count=replicas,
            ttl=ttl,
            created_at=time.time(),
            tag=request.tag,
            application=request.application,
            content_digest=digest,
            importer=True,
            peer_id=peer_id,
        )
        existing: common_pb2.PersistentCacheTask | None = None
        if self._announcer.scheduler is not None:
            try:
                await self._announcer.upload_started(entry, peer_id, piece_length, content_length, ttl)
            except grpc.aio.AioRpcError as exc:
                existing = (
                    await self._announcer.same_content(exc, entry)
                    if exc.code() == grpc.StatusCode.ALREADY_EXISTS
                    else None
                )
                if existing is None:
                    self._copies.storage.discard_content_file(temp)
                    raise
                # Another host imported the very same content under this id: this host keeps a persistent copy
                # of it (its TTL is the task's), as a holder rather than a second importer.
                entry.importer = False
                entry.ttl = existing.ttl.seconds + existing.ttl.nanos * 1e-9
                entry.created_at = existing.created_at.seconds + existing.created_at.nanos * 1e-9
        await self._copies.replace_content(task_id, temp, piece_length, content_length)
        now = time.time()
        for number, crc in enumerate(crcs):
            offset, length = piece_range(number, content_length, piece_length)
            self._copies.storage.finish_piece(
                task_id,
                PieceRecord(
                    number=number,
                    offset=offset,
                    length=length,
                    digest=f"crc32:{crc}",
                    parent_id=None,
                    traffic_type=_LOCAL_PEER,
                    cost=0.0,
                    created_at=now,
                ),
            )
        self._copies.storage.finish_task(task_id)
        self._copies.put(entry)
        log.info(
            "persistent cache task imported",
            extra={"task_id": task_id, "content_length": content_length, "replicas": replicas},
        )
        if self._announcer.scheduler is None:
            return self._copies.task_message(entry)
        try:
            if existing is not None:
                await self._reconciler.announce_again(entry, piece_length, content_length, time.time())
                return existing
            return await self._announcer.upload_finished(task_id, peer_id)
        except grpc.aio.AioRpcError:
            self._copies.delete(task_id)
            raise

    async def _open_as(self, caller: Caller | None, path: str) -> int:
        """Open ``path`` for reading with the caller's rights (the daemon's own for its own user)."""
        if caller is None or caller.is_daemon_user:
            opening = asyncio.get_running_loop().run_in_executor(self._executor, open_input, path)
        else:
            # _as_caller gives the thread its own identity back before it returns (or aborts the process).
            opening = asyncio.get_running_loop().run_in_executor(None, lambda: as_caller_open(caller, path))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The open may still succeed: its descriptor must not leak.
            with contextlib.suppress(Exception):
                os.close(await opening)
            raise
        except OSError as exc:
            if isinstance(exc, DragonflyError):
                raise
            raise OutputError(f"cannot read {path}: {exc.strerror or exc}") from exc

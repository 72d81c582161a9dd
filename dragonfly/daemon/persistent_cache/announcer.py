"""What a daemon tells the scheduler about its persistent cache copies, and what it asks it (scheduler.v2 RPCs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import grpc
from dragonfly_api import common_pb2, scheduler_pb2

from dragonfly.common.pbtime import duration
from dragonfly.common.piece import piece_count
from dragonfly.daemon.errors import DownloadFailed
from dragonfly.daemon.persistent_cache.entries import Entry

if TYPE_CHECKING:
    from dragonfly.daemon.download.scheduler_client import SchedulerClient

log = logging.getLogger(__name__)

#: Metadata key of the importer's digest of the content (``sha256:<hex>``), sent and answered with the task.
CONTENT_DIGEST_KEY = "dragonfly-content-digest"
REQUEST_TIMEOUT = 10.0


class SchedulerAnnouncer:
    """The scheduler side of one daemon's persistent cache (``scheduler`` is None until the daemon has one)."""

    def __init__(self, host_id: str, scheduler: SchedulerClient | None) -> None:
        self.host_id = host_id
        self.scheduler = scheduler

    def stub(self, task_id: str) -> Any:
        """Return the stub of the scheduler that owns ``task_id`` (its answers are typed loosely)."""
        assert self.scheduler is not None
        return self.scheduler.task_stub(task_id)

    def request(self, task_id: str, peer_id: str, **kwargs: Any) -> scheduler_pb2.AnnouncePersistentCachePeerRequest:
        """Return one message of an AnnouncePersistentCachePeer stream."""
        return scheduler_pb2.AnnouncePersistentCachePeerRequest(
            host_id=self.host_id, task_id=task_id, peer_id=peer_id, **kwargs
        )

    @staticmethod
    async def read(call: Any) -> scheduler_pb2.AnnouncePersistentCachePeerResponse:
        """Read the next answer of an AnnouncePersistentCachePeer stream (bounded)."""
        async with asyncio.timeout(REQUEST_TIMEOUT):
            response = await call.read()
        if response is grpc.aio.EOF:
            raise DownloadFailed("the scheduler ended the persistent cache stream")
        return response  # type: ignore[no-any-return]

    async def peer_known(self, entry: Entry) -> bool:
        """Tell whether the scheduler knows this host's copy under its peer id."""
        try:
            await self.stub(entry.id).StatPersistentCachePeer(
                scheduler_pb2.StatPersistentCachePeerRequest(
                    host_id=self.host_id, task_id=entry.id, peer_id=entry.peer_id
                ),
                timeout=REQUEST_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def task_known(self, task_id: str) -> bool:
        """Tell whether the scheduler knows the task."""
        try:
            await self.stub(task_id).StatPersistentCacheTask(
                scheduler_pb2.StatPersistentCacheTaskRequest(host_id=self.host_id, task_id=task_id),
                timeout=REQUEST_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return True

    async def stat_task(self, task_id: str) -> tuple[Any, str]:
        """Return the scheduler's ``PersistentCacheTask`` and the importer's digest it holds ('' when none)."""
        call = self.stub(task_id).StatPersistentCacheTask(
            scheduler_pb2.StatPersistentCacheTaskRequest(host_id=self.host_id, task_id=task_id),
            timeout=REQUEST_TIMEOUT,
        )
        info = await call
        trailers = await call.trailing_metadata()
        return info, next((str(v) for k, v in (trailers or ()) if k == CONTENT_DIGEST_KEY), "")

    async def upload_started(
        self, entry: Entry, peer_id: str, piece_length: int, content_length: int, ttl: float
    ) -> None:
        """Declare an import to the scheduler, with the importer's digest of the content (docs/dfcache.md)."""
        started = scheduler_pb2.UploadPersistentCacheTaskStartedRequest(
            host_id=self.host_id,
            task_id=entry.id,
            peer_id=peer_id,
            persistent_replica_count=entry.persistent_replica_count,
            piece_length=piece_length,
            content_length=content_length,
            piece_count=piece_count(content_length, piece_length),
            ttl=duration(ttl),
        )
        if entry.tag:
            started.tag = entry.tag
        if entry.application:
            started.application = entry.application
        metadata = ((CONTENT_DIGEST_KEY, entry.content_digest),) if entry.content_digest else ()
        await self.stub(entry.id).UploadPersistentCacheTaskStarted(started, metadata=metadata, timeout=REQUEST_TIMEOUT)

    async def upload_finished(self, task_id: str, peer_id: str) -> common_pb2.PersistentCacheTask:
        request = scheduler_pb2.UploadPersistentCacheTaskFinishedRequest(
            host_id=self.host_id, task_id=task_id, peer_id=peer_id
        )
        stub = self.stub(task_id)
        finished: common_pb2.PersistentCacheTask = await stub.UploadPersistentCacheTaskFinished(
            request, timeout=REQUEST_TIMEOUT
        )
        return finished

    async def register_finished_copy(self, entry: Entry, peer_id: str, piece_length: int, count: int) -> None:
        """Register a copy this host holds for a task the scheduler knows, and report it finished at once."""
        register = scheduler_pb2.RegisterPersistentCachePeerRequest(
            persistent=entry.persistent, piece_length=piece_length, piece_count=count
        )
        call = self.stub(entry.id).AnnouncePersistentCachePeer()
        try:
            await call.write(self.request(entry.id, peer_id, register_persistent_cache_peer_request=register))
            await self.read(call)
            await call.write(
                self.request(
                    entry.id,
                    peer_id,
                    download_persistent_cache_peer_finished_request=(
                        scheduler_pb2.DownloadPersistentCachePeerFinishedRequest()
                    ),
                )
            )
            await call.done_writing()
            async with asyncio.timeout(REQUEST_TIMEOUT):
                while await call.read() is not grpc.aio.EOF:
                    pass
        finally:
            call.cancel()

    async def same_content(self, refusal: grpc.aio.AioRpcError, entry: Entry) -> common_pb2.PersistentCacheTask | None:
        """Return the task another host imported under ``entry``'s id if its digest is this import's, else None."""
        try:
            task, digest = await self.stat_task(entry.id)
        except grpc.aio.AioRpcError:
            return None
        if digest != entry.content_digest:
            log.info(
                "persistent cache import refused: the id is another host's, with other content",
                extra={"task_id": entry.id, "error": refusal.details()},
            )
            return None
        return task  # type: ignore[no-any-return]

    async def tell_dropped(self, task_id: str) -> None:
        """Tell the scheduler this host no longer holds the task (nothing to tell without a scheduler)."""
        if self.scheduler is None:
            return
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub(task_id).DeletePersistentCacheTask(
                scheduler_pb2.DeletePersistentCacheTaskRequest(host_id=self.host_id, task_id=task_id),
                timeout=REQUEST_TIMEOUT,
            )

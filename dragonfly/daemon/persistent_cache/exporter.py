"""Export (and replication, which the scheduler asks for): a local copy checked against its digest, or the content
fetched from the parents the scheduler names and verified against the importer's digest; a mismatch discards
everything, and the next attempts take each parent alone so that the one that lied is found and reported."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import grpc
from dragonfly_api import common_pb2, scheduler_pb2

from dragonfly.common.piece import piece_count
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.errors import DownloadFailed, TaskNotFound
from dragonfly.daemon.persistent_cache.announcer import REQUEST_TIMEOUT, SchedulerAnnouncer
from dragonfly.daemon.persistent_cache.content import hash_content, is_importers_content
from dragonfly.daemon.persistent_cache.entries import Entry
from dragonfly.daemon.persistent_cache.metrics import PersistentCacheMetrics
from dragonfly.daemon.persistent_cache.piece_fetcher import PieceFetcher, report_liars
from dragonfly.daemon.storage import PieceRecord

if TYPE_CHECKING:
    from dragonfly.daemon.persistent_cache.copies import LocalCopies

log = logging.getLogger(__name__)

#: Attempts of one export: all parents together first, then each parent alone.
MAX_ATTEMPTS = 4


class DigestMismatch(DownloadFailed):
    """The exported content does not match the importer's digest (or its content-derived id)."""


class Exporter:
    """Makes a persistent cache task's verified content present on this host."""

    def __init__(
        self,
        copies: LocalCopies,
        announcer: SchedulerAnnouncer,
        fetcher: PieceFetcher,
        metrics: PersistentCacheMetrics,
        *,
        executor: Executor,
        host_id: str,
        concurrent_piece_count: int,
    ) -> None:
        self._copies = copies
        self._announcer = announcer
        self._fetcher = fetcher
        self._metrics = metrics
        self._executor = executor
        self.host_id = host_id
        self._concurrency = concurrent_piece_count

    async def download(
        self,
        task_id: str,
        *,
        persistent: bool,
        tag: str = "",
        application: str = "",
    ) -> AsyncIterator[tuple[int, PieceRecord | None]]:
        """Make the task's verified content present here; yield (content_length, None) then each piece.

        A local entry is checked against its digest first: one that no longer matches is evicted and fetched
        again. Concurrent calls for one task share one fetch.
        """
        while (running := self._copies.active.get(task_id)) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        entry = self._copies.get(task_id)
        task = self._copies.storage.get_task(task_id)
        if entry is not None and task is not None and task.finished_at is not None:
            if await self._copies.content_matches(task_id, entry.content_digest, task.content_length):
                if persistent and not entry.persistent:
                    entry.persistent = True
                    self._copies.put(entry)
                self._metrics.exports.labels("local").inc()
                yield task.content_length, None
                for number in sorted(task.pieces):
                    yield task.content_length, task.pieces[number]
                return
            log.warning(
                "persistent cache content no longer matches its digest: evicted, fetching it again",
                extra={"task_id": task_id},
            )
            self._copies.delete(task_id)
            self._metrics.evictions.labels("digest").inc()
            await self._announcer.tell_dropped(task_id)
        if self._announcer.scheduler is None:
            raise TaskNotFound(task_id)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._copies.active[task_id] = done
        try:
            async for item in self._fetch(task_id, persistent=persistent):
                yield item
            done.set_result(None)
            self._metrics.exports.labels("swarm").inc()
        except BaseException as exc:
            self._metrics.exports.labels("failed").inc()
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else DownloadFailed("cancelled"))
                done.exception()  # retrieved: waiters only need to know it ended
            raise
        finally:
            self._copies.active.pop(task_id, None)

    async def _fetch(self, task_id: str, *, persistent: bool) -> AsyncIterator[tuple[int, PieceRecord | None]]:
        try:
            info, digest = await self._announcer.stat_task(task_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise TaskNotFound(task_id) from None
            raise
        content_length, piece_length = info.content_length, info.piece_length
        count = piece_count(content_length, piece_length)
        if count != info.piece_count:
            raise DownloadFailed(f"the scheduler's sizes of {task_id} do not fit together")
        ttl = info.ttl.seconds + info.ttl.nanos * 1e-9
        created_at = info.created_at.seconds + info.created_at.nanos * 1e-9
        peer_id = f"{self.host_id}-{uuid.uuid4()}"
        requests: asyncio.Queue[scheduler_pb2.AnnouncePersistentCachePeerRequest | None] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[scheduler_pb2.AnnouncePersistentCachePeerRequest]:
            while (item := await requests.get()) is not None:
                yield item

        def send(**kwargs: Any) -> None:
            requests.put_nowait(self._announcer.request(task_id, peer_id, **kwargs))

        announce = self._announcer.stub(task_id).AnnouncePersistentCachePeer(outgoing())
        self._copies.delete(task_id)
        content = await run_blocking(self._executor, self._copies.storage.create_content_file, task_id, content_length)
        await self._copies.replace_content(task_id, content, piece_length, content_length)
        finished = False
        wire_before = self._fetcher.wire_bytes
        try:
            send(
                register_persistent_cache_peer_request=scheduler_pb2.RegisterPersistentCachePeerRequest(
                    persistent=persistent,
                    tag=info.tag,
                    application=info.application,
                    piece_length=piece_length,
                    piece_count=count,
                    concurrent_piece_count=self._concurrency,
                )
            )
            response = await self._announcer.read(announce)
            parents = list(response.normal_persistent_cache_task_response.candidate_cache_parents)
            send(
                download_persistent_cache_peer_started_request=scheduler_pb2.DownloadPersistentCachePeerStartedRequest()
            )
            yield content_length, None
            # Parents whose content was checked on its own: after a mismatch, each parent is tried alone so that
            # the one that lied is found (and reported) and the content comes from one that did not.
            tried_alone: set[str] = set()
            suspect: list[PieceRecord] = []
            for attempt in range(MAX_ATTEMPTS):
                if attempt == 0:
                    using = parents
                else:
                    fresh = [p for p in parents if p.id not in tried_alone]
                    if not fresh:
                        send(
                            reschedule_persistent_cache_peer_request=scheduler_pb2.ReschedulePersistentCachePeerRequest(
                                candidate_parents=[common_pb2.PersistentCachePeer(id=i) for i in tried_alone],
                                description="content failed the importer's digest",
                            )
                        )
                        try:
                            response = await self._announcer.read(announce)
                        except grpc.aio.AioRpcError:
                            break  # no other parent
                        parents = list(response.normal_persistent_cache_task_response.candidate_cache_parents)
                        fresh = [p for p in parents if p.id not in tried_alone]
                        if not fresh:
                            break
                    using = fresh[:1]
                if len(using) == 1:
                    tried_alone.add(using[0].id)
                pieces = await self._fetcher.fetch_pieces(task_id, using, content_length, piece_length, send)
                with self._copies.storage.content_fd(task_id) as fd:
                    hasher = await run_blocking(self._executor, hash_content, fd, content_length)
                if is_importers_content(task_id, hasher, digest, info, piece_length):
                    report_liars(suspect, pieces, send)
                    for piece in pieces:
                        yield content_length, piece
                    break
                if len(using) > 1:
                    suspect = pieces
                log.warning(
                    "exported content failed the importer's digest; fetching it again",
                    extra={"task_id": task_id, "parents": ",".join(p.id for p in using)},
                )
                if len(using) == 1:
                    # temporary=false: the parent served bytes that failed verification (the scheduler stops
                    # handing it out for this task).
                    send(
                        download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                            piece_number=0, parent_id=using[0].id, temporary=False
                        )
                    )
                self._copies.storage.reset_pieces(task_id)
            else:
                raise DigestMismatch(f"persistent cache task {task_id}: no parent served content matching its digest")
            task = self._copies.storage.get_task(task_id)
            if task is None or len(task.pieces) != count:
                raise DigestMismatch(f"persistent cache task {task_id}: no parent served content matching its digest")
            self._copies.storage.finish_task(task_id)
            self._copies.put(
                Entry(
                    id=task_id,
                    persistent=persistent,
                    persistent_replica_count=info.persistent_replica_count,
                    ttl=ttl,
                    created_at=created_at or time.time(),
                    tag=info.tag,
                    application=info.application,
                    content_digest=f"sha256:{hasher.hexdigest()}",
                    peer_id=peer_id,
                )
            )
            send(
                download_persistent_cache_peer_finished_request=scheduler_pb2.DownloadPersistentCachePeerFinishedRequest()
            )
            finished = True
            log.info(
                "persistent cache task exported",
                extra={
                    "task_id": task_id,
                    "content_length": content_length,
                    "wire_bytes": self._fetcher.wire_bytes - wire_before,
                },
            )
        except BaseException as exc:
            if not finished:
                with contextlib.suppress(Exception):
                    send(
                        download_persistent_cache_peer_failed_request=scheduler_pb2.DownloadPersistentCachePeerFailedRequest(
                            description=str(exc)[:1024]
                        )
                    )
                self._copies.delete(task_id)
            raise
        finally:
            requests.put_nowait(None)
            # The last messages reach the scheduler before the stream ends (read(), not async for: the call was
            # read with read() already and grpc refuses to mix the two).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    while await announce.read() is not grpc.aio.EOF:
                        pass
            announce.cancel()

"""The persistent cache of one daemon: its copies' lifecycle (open, expiry, space, scrub), re-announcing them to a
restarted scheduler, import of a local file, export from the swarm, and writing content out (overview in the
package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, scheduler_pb2
from prometheus_client import CollectorRegistry

from dragonfly.common.background import BackgroundJobs
from dragonfly.common.errors import DragonflyError
from dragonfly.common.pbtime import duration, timestamp
from dragonfly.common.piece import calculate_piece_length, piece_count, piece_range
from dragonfly.daemon import compression
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.errors import DownloadFailed, OutputError, TaskNotFound
from dragonfly.daemon.output import Caller, write_output, write_output_as
from dragonfly.daemon.persistent_cache.announcer import REQUEST_TIMEOUT, SchedulerAnnouncer
from dragonfly.daemon.persistent_cache.content import (
    as_caller_open,
    copy_and_hash,
    finish_task_id,
    hash_content,
    is_importers_content,
    open_input,
)
from dragonfly.daemon.persistent_cache.entries import Entry, EntryIndex
from dragonfly.daemon.persistent_cache.metrics import PersistentCacheMetrics
from dragonfly.daemon.persistent_cache.piece_fetcher import PieceFetcher, report_liars
from dragonfly.daemon.storage import PieceRecord, Storage

if TYPE_CHECKING:
    import ssl

    from dragonfly.daemon.config import GCPolicyConfig
    from dragonfly.daemon.download.scheduler_client import SchedulerClient

log = logging.getLogger(__name__)

#: Attempts of one export: all parents together first, then each parent alone.
MAX_ATTEMPTS = 4
#: How often expired entries are looked for.
EXPIRY_INTERVAL = 1.0
_LOCAL_PEER = 0


class DigestMismatch(DownloadFailed):
    """The exported content does not match the importer's digest (or its content-derived id)."""


class PersistentCacheManager:
    """Persistent cache tasks of one daemon."""

    def __init__(
        self,
        directory: str,
        *,
        scheduler: SchedulerClient | None,
        channels: ParentChannels,
        executor: Executor,
        host_id: str,
        ip: str,
        vortex_tls: ssl.SSLContext | None,
        concurrent_piece_count: int,
        piece_timeout: float,
        storage_executor: Executor | None = None,
        on_fetched: Callable[[int], None] | None = None,
        compression: bool = False,
        reconcile_interval: float = 60.0,
        gc_policy: GCPolicyConfig | None = None,
        gc_interval: float = 900.0,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.storage = Storage(directory, keep=True, executor=storage_executor)
        self._index_path = os.path.join(self.storage.metadata_dir, "entries.db")
        self._index: EntryIndex | None = None
        self.entries: dict[str, Entry] = {}
        self._announcer = SchedulerAnnouncer(host_id, scheduler)
        self._executor = executor
        self.host_id = host_id
        self._concurrency = concurrent_piece_count
        #: Whether pieces go zstd-compressed between our peers (both ways: offered as a parent, asked as a child).
        self.compression = compression
        self._reconcile_interval = reconcile_interval
        self._gc_policy = gc_policy
        self._gc_interval = gc_interval
        self._last_gc = time.monotonic()
        self._reconciler: asyncio.Task[None] | None = None
        # Task id -> reconciliation rounds in a row the scheduler did not know a held copy's task.
        self._unknown_rounds: dict[str, int] = {}
        self._jobs = BackgroundJobs()
        self.metrics = PersistentCacheMetrics(metrics_registry)
        self.metrics.copies.set_function(lambda: len(self.entries))
        self._fetcher = PieceFetcher(
            self.storage,
            channels=channels,
            executor=executor,
            host_id=host_id,
            vortex_tls=vortex_tls,
            concurrent_piece_count=concurrent_piece_count,
            piece_timeout=piece_timeout,
            compression=compression,
            metrics=self.metrics,
            on_fetched=on_fetched,
        )
        self._active: dict[str, asyncio.Future[None]] = {}
        self._expiry: asyncio.Task[None] | None = None

    @property
    def scheduler(self) -> SchedulerClient | None:
        """The scheduler client (the daemon sets it once it has one); None: no scheduler, local copies only."""
        return self._announcer.scheduler

    @scheduler.setter
    def scheduler(self, scheduler: SchedulerClient | None) -> None:
        self._announcer.scheduler = scheduler

    # lifecycle

    def open(self) -> None:
        """Open the storage and the entries; drop whatever is half there (no entry, no finished content)."""
        self.storage.open()
        self._index = EntryIndex(self._index_path)
        self.entries = self._index.load()
        for task in self.storage.tasks():
            if task.id not in self.entries or task.finished_at is None:
                self.storage.delete_task(task.id)
        for task_id in list(self.entries):
            if self.storage.get_task(task_id) is None:
                self._index.delete(task_id)
                del self.entries[task_id]
        log.info("persistent cache opened", extra={"tasks": len(self.entries)})

    def start(self) -> None:
        self._expiry = asyncio.create_task(self._expiry_loop(), name="persistent-cache-expiry")
        if self.scheduler is not None:
            self._reconciler = asyncio.create_task(self._reconcile_loop(), name="persistent-cache-reconcile")
        if self.entries:
            self._jobs.spawn(self.scrub())

    async def close(self) -> None:
        await self._jobs.close(self._expiry, self._reconciler)
        self._fetcher.close()
        if self._index is not None:
            self._index.close()
            self._index = None
        self.storage.close()

    @property
    def _entries_db(self) -> EntryIndex:
        if self._index is None:
            raise RuntimeError("persistent cache is not open")
        return self._index

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            try:
                if time.monotonic() - self._last_gc >= self._gc_interval:
                    self._last_gc = time.monotonic()
                    await self.collect()
                else:
                    self.drop_expired(time.time())
            except Exception:
                log.exception("persistent cache expiry failed")

    async def collect(self) -> list[str]:
        """Drop expired copies; when the disk is above the GC's high threshold, evict copies that are not
        persistent replicas (least recently used first) down to the low threshold. Return the evicted ids."""
        evicted = self.drop_expired(time.time())
        policy = self._gc_policy
        if policy is None:
            return evicted
        if policy.disk_threshold > 0:
            total, used = int(policy.disk_threshold), self.storage.usage()
        else:
            usage = shutil.disk_usage(self.storage.dir)
            total, used = usage.total, usage.used
        for task_id in self.evict_for_space(
            total, used, policy.disk_high_threshold_percent, policy.disk_low_threshold_percent
        ):
            await self._announcer.tell_dropped(task_id)
            evicted.append(task_id)
        return evicted

    def evict_for_space(self, total: int, used: int, high_percent: float, low_percent: float) -> list[str]:
        """Evict non-persistent copies, least recently used first, while usage is above ``high_percent`` of
        ``total``, until ``low_percent`` is reached; persistent replicas and imports are never evicted for space."""
        if total <= 0 or used * 100 / total < high_percent:
            return []
        to_free = total * (used * 100 / total - low_percent) / 100
        candidates = []
        for entry in self.entries.values():
            task = self.storage.get_task(entry.id)
            if entry.persistent or entry.importer or task is None or entry.id in self._active:
                continue
            candidates.append((task.updated_at, entry.id, task.content_length))
        evicted = []
        freed = 0
        for _updated, task_id, length in sorted(candidates):
            if freed >= to_free:
                break
            log.info("evicting a persistent cache copy", extra={"task_id": task_id, "reason": "disk usage"})
            self.delete_local(task_id)
            self.metrics.evictions.labels("space").inc()
            freed += length
            evicted.append(task_id)
        return evicted

    def evict_corrupt(self, task_id: str) -> None:
        """Evict a copy whose stored bytes were found not to match (by the Vortex server); tell the scheduler."""
        if self.delete_local(task_id):
            log.warning("persistent cache content no longer matches its digest: evicted", extra={"task_id": task_id})
            self.metrics.evictions.labels("digest").inc()
            self._jobs.spawn(self._announcer.tell_dropped(task_id))

    async def scrub(self) -> list[str]:
        """Hash every copy once against its digest and evict those that no longer match (after a restart: a crash
        or a disk fault may have changed them); one copy at a time, on the executor. Return the evicted ids."""
        evicted = []
        for entry in list(self.entries.values()):
            task = self.storage.get_task(entry.id)
            if task is None or entry.id in self._active or not entry.content_digest:
                continue
            if await self._content_matches(entry.id, entry.content_digest, task.content_length):
                continue
            if self.entries.get(entry.id) is entry:
                self.evict_corrupt(entry.id)
                evicted.append(entry.id)
        if evicted:
            log.warning("persistent cache copies evicted by the scrub", extra={"tasks": len(evicted)})
        return evicted

    def drop_expired(self, now: float) -> list[str]:
        """Delete the entries whose TTL has run out (the scheduler forgets them on its own); return their ids."""
        expired = [e.id for e in self.entries.values() if e.expired(now) and e.id not in self._active]
        for task_id in expired:
            log.info("persistent cache task expired", extra={"task_id": task_id})
            self.delete_local(task_id)
            self.metrics.evictions.labels("ttl").inc()
        return expired

    # re-announcing copies to a scheduler that forgot them

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_interval)
            try:
                count = await self.reconcile()
            except Exception:
                log.exception("persistent cache reconciliation failed")
                continue
            if count:
                log.info("persistent cache copies announced to the scheduler again", extra={"tasks": count})

    async def reconcile(self) -> int:
        """Make the scheduler know every live local copy (it keeps them in memory only, so a restarted scheduler
        has forgotten them): the importer declares its task again, other holders register their copy. Return how
        many copies were announced again."""
        count = 0
        now = time.time()
        for entry in list(self.entries.values()):
            task = self.storage.get_task(entry.id)
            if entry.expired(now) or entry.id in self._active or task is None or task.finished_at is None:
                continue
            try:
                if entry.peer_id and await self._announcer.peer_known(entry):
                    continue
                if await self._announce_again(entry, task.piece_length, task.content_length, now):
                    count += 1
            except grpc.aio.AioRpcError as exc:
                log.debug(
                    "persistent cache copy not announced again",
                    extra={"task_id": entry.id, "code": exc.code().name},
                )
        return count

    async def _announce_again(self, entry: Entry, piece_length: int, content_length: int, now: float) -> bool:
        peer_id = entry.peer_id or f"{self.host_id}-{uuid.uuid4()}"
        known = await self._announcer.task_known(entry.id)
        count = piece_count(content_length, piece_length)
        if not known:
            if not entry.importer:
                # The importer declares a forgotten task. A persistent holder waits one round for it (it may be
                # restarting too), then declares the task itself, with the importer's digest it verified: the
                # content stays in the swarm when its importer is gone.
                missed = self._unknown_rounds.get(entry.id, 0) + 1
                self._unknown_rounds[entry.id] = missed
                if not entry.persistent or missed < 2:
                    return False
            self._unknown_rounds.pop(entry.id, None)
            # The task expires when it would have: the scheduler counts the TTL from now.
            await self._announcer.upload_started(
                entry, peer_id, piece_length, content_length, max(entry.expires_at() - now, 1.0)
            )
            await self._announcer.upload_finished(entry.id, peer_id)
        else:
            # A holder registers its copy and reports it finished at once.
            await self._announcer.register_finished_copy(entry, peer_id, piece_length, count)
        if entry.peer_id != peer_id:
            entry.peer_id = peer_id
            self._put(entry)
        return True

    # local records

    def get(self, task_id: str) -> Entry | None:
        entry = self.entries.get(task_id)
        if entry is None or entry.expired(time.time()):
            return None
        return entry

    def delete_local(self, task_id: str) -> bool:
        """Forget the local copy; return whether there was one."""
        entry = self.entries.pop(task_id, None)
        if entry is not None:
            self._entries_db.delete(task_id)
        found = self.storage.get_task(task_id) is not None
        if found:
            self.storage.delete_task(task_id)
        return entry is not None or found

    def set_persistent(self, task_id: str, persistent: bool) -> bool:
        """Change whether the local copy counts as a persistent replica; return whether it is here."""
        entry = self.get(task_id)
        if entry is None:
            return False
        entry.persistent = persistent
        self._put(entry)
        return True

    def _put(self, entry: Entry) -> None:
        self.entries[entry.id] = entry
        self._entries_db.put(entry)

    def task_message(self, entry: Entry) -> common_pb2.PersistentCacheTask:
        task = self.storage.get_task(entry.id)
        content_length = task.content_length if task else 0
        piece_length = task.piece_length if task else 0
        message = common_pb2.PersistentCacheTask(
            id=entry.id,
            persistent_replica_count=entry.persistent_replica_count,
            current_persistent_replica_count=1 if entry.persistent else 0,
            current_replica_count=0 if entry.persistent else 1,
            piece_length=piece_length,
            content_length=content_length,
            piece_count=piece_count(content_length, piece_length) if piece_length else 0,
            state="Succeeded",
            ttl=duration(entry.ttl),
            created_at=timestamp(entry.created_at),
            updated_at=timestamp(task.updated_at if task else entry.created_at),
        )
        if entry.tag:
            message.tag = entry.tag
        if entry.application:
            message.application = entry.application
        return message

    def local_message(self, entry: Entry) -> dfdaemon_pb2.StatLocalPersistentCacheTaskResponse:
        task = self.storage.get_task(entry.id)
        message = dfdaemon_pb2.StatLocalPersistentCacheTaskResponse(
            task_id=entry.id,
            persistent=entry.persistent,
            ttl=duration(entry.ttl),
            uploaded_count=entry.uploaded,
            created_at=timestamp(entry.created_at),
            updated_at=timestamp(task.updated_at if task else entry.created_at),
        )
        if task is not None:
            message.piece_length = task.piece_length
            message.content_length = task.content_length
            if task.finished_at is not None:
                message.finished_at.CopyFrom(timestamp(task.finished_at))
        return message

    # import

    async def import_file(
        self, request: dfdaemon_pb2.UploadPersistentCacheTaskRequest, caller: Caller | None
    ) -> common_pb2.PersistentCacheTask:
        """Copy the caller's file into the cache and record it with the scheduler."""
        try:
            task = await self._import_file(request, caller)
        except BaseException:
            self.metrics.imports.labels("failed").inc()
            raise
        self.metrics.imports.labels("ok").inc()
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
            temp = os.path.join(self.storage.content_dir, "tmp", f"{uuid.uuid4().hex}.new")
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
        if task_id in self._active:
            self.storage.discard_content_file(temp)
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
        if self.scheduler is not None:
            try:
                await self._announcer.upload_started(entry, peer_id, piece_length, content_length, ttl)
            except grpc.aio.AioRpcError as exc:
                existing = (
                    await self._announcer.same_content(exc, entry)
                    if exc.code() == grpc.StatusCode.ALREADY_EXISTS
                    else None
                )
                if existing is None:
                    self.storage.discard_content_file(temp)
                    raise
                # Another host imported the very same content under this id: this host keeps a persistent copy
                # of it (its TTL is the task's), as a holder rather than a second importer.
                entry.importer = False
                entry.ttl = existing.ttl.seconds + existing.ttl.nanos * 1e-9
                entry.created_at = existing.created_at.seconds + existing.created_at.nanos * 1e-9
        await self._replace_content(task_id, temp, piece_length, content_length)
        now = time.time()
        for number, crc in enumerate(crcs):
            offset, length = piece_range(number, content_length, piece_length)
            self.storage.finish_piece(
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
        self.storage.finish_task(task_id)
        self._put(entry)
        log.info(
            "persistent cache task imported",
            extra={"task_id": task_id, "content_length": content_length, "replicas": replicas},
        )
        if self.scheduler is None:
            return self.task_message(entry)
        try:
            if existing is not None:
                await self._announce_again(entry, piece_length, content_length, time.time())
                return existing
            return await self._announcer.upload_finished(task_id, peer_id)
        except grpc.aio.AioRpcError:
            self.delete_local(task_id)
            raise

    async def _replace_content(self, task_id: str, content: str, piece_length: int, content_length: int) -> None:
        """Drop any copy of ``task_id`` and make the file ``content`` its (empty of pieces) content."""
        self.delete_local(task_id)
        shard = os.path.dirname(self.storage.content_path(task_id))
        await run_blocking(self._executor, functools.partial(os.makedirs, shard, exist_ok=True))
        self.storage.prepare_task(
            task_id,
            url=f"persistent-cache://{task_id}",
            piece_length=piece_length,
            content_length=content_length,
            response_header={},
            content=content,
        )

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

    # export

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
        while (running := self._active.get(task_id)) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        entry = self.get(task_id)
        task = self.storage.get_task(task_id)
        if entry is not None and task is not None and task.finished_at is not None:
            if await self._content_matches(task_id, entry.content_digest, task.content_length):
                if persistent and not entry.persistent:
                    entry.persistent = True
                    self._put(entry)
                self.metrics.exports.labels("local").inc()
                yield task.content_length, None
                for number in sorted(task.pieces):
                    yield task.content_length, task.pieces[number]
                return
            log.warning(
                "persistent cache content no longer matches its digest: evicted, fetching it again",
                extra={"task_id": task_id},
            )
            self.delete_local(task_id)
            self.metrics.evictions.labels("digest").inc()
            await self._announcer.tell_dropped(task_id)
        if self.scheduler is None:
            raise TaskNotFound(task_id)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._active[task_id] = done
        try:
            async for item in self._fetch(task_id, persistent=persistent):
                yield item
            done.set_result(None)
            self.metrics.exports.labels("swarm").inc()
        except BaseException as exc:
            self.metrics.exports.labels("failed").inc()
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else DownloadFailed("cancelled"))
                done.exception()  # retrieved: waiters only need to know it ended
            raise
        finally:
            self._active.pop(task_id, None)

    async def _content_matches(self, task_id: str, digest: str, content_length: int) -> bool:
        if not digest:
            return self.storage.content_intact(self.storage.get_task(task_id))  # type: ignore[arg-type]
        with self.storage.content_fd(task_id) as fd:
            hasher = await run_blocking(self._executor, hash_content, fd, content_length)
        return f"sha256:{hasher.hexdigest()}" == digest

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
        self.delete_local(task_id)
        content = await run_blocking(self._executor, self.storage.create_content_file, task_id, content_length)
        await self._replace_content(task_id, content, piece_length, content_length)
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
                with self.storage.content_fd(task_id) as fd:
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
                self.storage.reset_pieces(task_id)
            else:
                raise DigestMismatch(f"persistent cache task {task_id}: no parent served content matching its digest")
            task = self.storage.get_task(task_id)
            if task is None or len(task.pieces) != count:
                raise DigestMismatch(f"persistent cache task {task_id}: no parent served content matching its digest")
            self.storage.finish_task(task_id)
            self._put(
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
                self.delete_local(task_id)
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

    # writing out

    async def read_piece(self, task_id: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of the content at ``offset`` (read on the executor)."""
        with self.storage.content_fd(task_id) as fd:
            return await run_blocking(self._executor, compression.read_range, fd, offset, length)

    async def write_output(
        self, task_id: str, output_path: str, *, overwrite: bool, force_hard_link: bool, caller: Caller | None
    ) -> None:
        """Place the content at ``output_path`` (a hard link when asked and allowed, else a copy)."""
        with self.storage.content_fd(task_id) as fd:
            if caller is not None and not caller.is_daemon_user:
                if force_hard_link:
                    raise OutputError("force_hard_link is refused for another user: the cache is not theirs")
                await write_output_as(caller, fd, output_path, overwrite=overwrite)
                return
            path = self.storage.content_path(task_id)
            await run_blocking(
                self._executor,
                functools.partial(write_output, fd, path, output_path, overwrite=overwrite, link=force_hard_link),
            )

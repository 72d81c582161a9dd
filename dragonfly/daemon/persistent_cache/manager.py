"""The persistent cache of one daemon, as the daemon's servers see it: one object that starts and stops the parts
(copies, expiry, re-announcing, import, export) and writes content out."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from dragonfly_api import common_pb2, dfdaemon_pb2
from prometheus_client import CollectorRegistry

from dragonfly.common.background import BackgroundJobs
from dragonfly.daemon import compression
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.errors import OutputError
from dragonfly.daemon.output import Caller, write_output, write_output_as
from dragonfly.daemon.persistent_cache.announcer import SchedulerAnnouncer
from dragonfly.daemon.persistent_cache.copies import LocalCopies
from dragonfly.daemon.persistent_cache.entries import Entry
from dragonfly.daemon.persistent_cache.expiry import CopyExpiry
from dragonfly.daemon.persistent_cache.exporter import Exporter
from dragonfly.daemon.persistent_cache.importer import Importer
from dragonfly.daemon.persistent_cache.metrics import PersistentCacheMetrics
from dragonfly.daemon.persistent_cache.piece_fetcher import PieceFetcher
from dragonfly.daemon.persistent_cache.reconcile import Reconciler
from dragonfly.daemon.storage import PieceRecord

if TYPE_CHECKING:
    import ssl

    from dragonfly.daemon.config import GCPolicyConfig
    from dragonfly.daemon.download.scheduler_client import SchedulerClient


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
        self._copies = LocalCopies(directory, executor=executor, storage_executor=storage_executor)
        self.storage = self._copies.storage
        self._announcer = SchedulerAnnouncer(host_id, scheduler)
        self._executor = executor
        self.host_id = host_id
        #: Whether pieces go zstd-compressed between our peers (both ways: offered as a parent, asked as a child).
        self.compression = compression
        self._jobs = BackgroundJobs()
        self.metrics = PersistentCacheMetrics(metrics_registry)
        self.metrics.copies.set_function(lambda: len(self._copies.entries))
        fetcher = PieceFetcher(
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
        self._fetcher = fetcher
        self._expiry = CopyExpiry(
            self._copies, self._announcer, self.metrics, self._jobs, gc_policy=gc_policy, gc_interval=gc_interval
        )
        self._reconciler = Reconciler(self._copies, self._announcer, host_id=host_id, interval=reconcile_interval)
        self._importer = Importer(
            self._copies, self._announcer, self._reconciler, self.metrics, executor=executor, host_id=host_id
        )
        self._exporter = Exporter(
            self._copies,
            self._announcer,
            fetcher,
            self.metrics,
            executor=executor,
            host_id=host_id,
            concurrent_piece_count=concurrent_piece_count,
        )
        self._expiry_task: asyncio.Task[None] | None = None
        self._reconcile_task: asyncio.Task[None] | None = None

    @property
    def scheduler(self) -> SchedulerClient | None:
        """The scheduler client (the daemon sets it once it has one); None: no scheduler, local copies only."""
        return self._announcer.scheduler

    @scheduler.setter
    def scheduler(self, scheduler: SchedulerClient | None) -> None:
        self._announcer.scheduler = scheduler

    @property
    def entries(self) -> dict[str, Entry]:
        """The records of the copies held here, by task id."""
        return self._copies.entries

    # lifecycle

    def open(self) -> None:
        """Open the storage and the entries; drop whatever is half there (no entry, no finished content)."""
        self._copies.open()

    def start(self) -> None:
        self._expiry_task = asyncio.create_task(self._expiry.run(), name="persistent-cache-expiry")
        if self.scheduler is not None:
            self._reconcile_task = asyncio.create_task(self._reconciler.run(), name="persistent-cache-reconcile")
        if self._copies.entries:
            self._jobs.spawn(self.scrub())

    async def close(self) -> None:
        await self._jobs.close(self._expiry_task, self._reconcile_task)
        self._fetcher.close()
        self._copies.close()

    # the copies

    def get(self, task_id: str) -> Entry | None:
        return self._copies.get(task_id)

    def delete_local(self, task_id: str) -> bool:
        """Forget the local copy; return whether there was one."""
        return self._copies.delete(task_id)

    def set_persistent(self, task_id: str, persistent: bool) -> bool:
        """Change whether the local copy counts as a persistent replica; return whether it is here."""
        return self._copies.set_persistent(task_id, persistent)

    def task_message(self, entry: Entry) -> common_pb2.PersistentCacheTask:
        return self._copies.task_message(entry)

    def local_message(self, entry: Entry) -> dfdaemon_pb2.StatLocalPersistentCacheTaskResponse:
        return self._copies.local_message(entry)

    # expiry, space and the scrub

    async def collect(self) -> list[str]:
        """Drop expired copies and, above the GC's high threshold, surplus ones; return the evicted ids."""
        return await self._expiry.collect()

    def evict_for_space(self, total: int, used: int, high_percent: float, low_percent: float) -> list[str]:
        """Evict non-persistent copies, least recently used first, from ``high_percent`` down to ``low_percent``."""
        return self._expiry.evict_for_space(total, used, high_percent, low_percent)

    def evict_corrupt(self, task_id: str) -> None:
        """Evict a copy whose stored bytes were found not to match (by the Vortex server); tell the scheduler."""
        self._expiry.evict_corrupt(task_id)

    async def scrub(self) -> list[str]:
        """Hash every copy against its digest and evict those that no longer match; return the evicted ids."""
        return await self._expiry.scrub()

    def drop_expired(self, now: float) -> list[str]:
        """Delete the entries whose TTL has run out; return their ids."""
        return self._expiry.drop_expired(now)

    async def reconcile(self) -> int:
        """Announce every live local copy the scheduler forgot; return how many were announced again."""
        return await self._reconciler.reconcile()

    # import and export

    async def import_file(
        self, request: dfdaemon_pb2.UploadPersistentCacheTaskRequest, caller: Caller | None
    ) -> common_pb2.PersistentCacheTask:
        """Copy the caller's file into the cache and record it with the scheduler."""
        return await self._importer.import_file(request, caller)

    def download(
        self, task_id: str, *, persistent: bool, tag: str = "", application: str = ""
    ) -> AsyncIterator[tuple[int, PieceRecord | None]]:
        """Make the task's verified content present here; yield (content_length, None) then each piece."""
        return self._exporter.download(task_id, persistent=persistent, tag=tag, application=application)

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

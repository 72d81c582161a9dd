"""Persistent cache tasks on the daemon: import a local file, export one from the swarm (``docs/dfcache.md``).

Persistent cache content lives in a storage of its own, ``<storage.dir>/persistent-cache/`` (content files and
piece metadata as for URL tasks, plus ``metadata/entries.db`` for what the importer declared). It is kept across
restarts whatever ``storage.keep`` says, and the standard GC never evicts it: an entry leaves when its TTL runs
out, when its task is deleted, or when its content no longer matches its digest.

Import reads the caller's file with the caller's rights, copies it into the cache while hashing it once (SHA-256
of the content: the importer's digest; the task id follows Dragonfly's rule from the same hash state; CRC-32 per
piece for Vortex), then records the task with the scheduler.

A scheduler keeps persistent cache tasks in memory; after it restarts, each daemon declares its copies again
(``reconcile``): the importer its task, other holders their copies.

Export (and replication, which the scheduler asks for) gets the sizes and the importer's digest from
StatPersistentCacheTask, registers on AnnouncePersistentCachePeer, learns from each candidate parent where its
Vortex port is (SyncPersistentCachePieces), fetches the pieces (CRC-32 checked against the parent's), then hashes
the whole content and compares it with the importer's digest, and for an id derived from the content, with the
id. A mismatch discards everything; the next attempt takes each parent alone so the one that lied is found and
reported. Content is kept, served and written out only once it has matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, scheduler_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from dragonfly.common.background import BackgroundJobs
from dragonfly.common.errors import DragonflyError
from dragonfly.common.pbtime import duration, timestamp
from dragonfly.common.piece import calculate_piece_length, piece_count, piece_range
from dragonfly.daemon import compression
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.download import vortex_client
from dragonfly.daemon.download.parents import ParentChannels, upload_addr
from dragonfly.daemon.errors import DownloadFailed, OutputError, TaskNotFound
from dragonfly.daemon.output import Caller, _as_caller, write_output, write_output_as
from dragonfly.daemon.storage import PieceRecord, Storage

if TYPE_CHECKING:
    import ssl

    from dragonfly.daemon.config import GCPolicyConfig
    from dragonfly.daemon.download.scheduler_client import SchedulerClient

log = logging.getLogger(__name__)

CONTENT_DIGEST_KEY = "dragonfly-content-digest"
TASK_TYPE = b"PERSISTENT_CACHE"
#: Attempts of one export: all parents together first, then each parent alone.
MAX_ATTEMPTS = 4
#: How often expired entries are looked for.
EXPIRY_INTERVAL = 1.0
_READ_CHUNK = 4 * 1024 * 1024
_RECV_BUFFER = 1024 * 1024
_REQUEST_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 2.0
_REMOTE_PEER = 1
_LOCAL_PEER = 0


class DigestMismatch(DownloadFailed):
    """The exported content does not match the importer's digest (or its content-derived id)."""


@dataclass(slots=True)
class Entry:
    """What is known of one persistent cache task besides its content: kept in ``entries.db``."""

    id: str
    persistent: bool
    persistent_replica_count: int
    ttl: float
    created_at: float
    tag: str = ""
    application: str = ""
    #: ``sha256:<hex>`` of the content, verified when the entry was made.
    content_digest: str = ""
    importer: bool = False
    uploaded: int = field(default=0)
    #: The peer id this host's copy has at the scheduler (re-announced under it after a scheduler restart).
    peer_id: str = ""

    def expires_at(self) -> float:
        return self.created_at + self.ttl

    def expired(self, now: float) -> bool:
        return now >= self.expires_at()


class EntryIndex:
    """The entries in a small SQLite table (one JSON row each)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def load(self) -> dict[str, Entry]:
        entries = {}
        for task_id, body in self._db.execute("SELECT id, body FROM entries"):
            try:
                entries[task_id] = Entry(**json.loads(body))
            except (TypeError, ValueError):
                log.warning("dropping an unreadable persistent cache entry", extra={"task_id": task_id})
        return entries

    def put(self, entry: Entry) -> None:
        self._db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?)", (entry.id, json.dumps(asdict(entry))))

    def delete(self, task_id: str) -> None:
        self._db.execute("DELETE FROM entries WHERE id = ?", (task_id,))

    def close(self) -> None:
        self._db.close()


def task_id_hasher() -> Any:
    """Return the hash state the task id and the content digest both start from (SHA-256 of the content)."""
    return hashlib.sha256()


def finish_task_id(
    content_hash: Any, *, tag: str, application: str, piece_length: int, content: str | None = None
) -> tuple[str, str]:
    """Return (task id, content digest) from the SHA-256 state of the content.

    Dragonfly's rule: sha256(content ‖ tag ‖ application ‖ piece_length as decimal ‖ "PERSISTENT_CACHE"), or
    sha256(content_for_calculating_task_id) when one is given.
    """
    digest = f"sha256:{content_hash.hexdigest()}"
    if content is not None:
        return hashlib.sha256(content.encode()).hexdigest(), digest
    h = content_hash.copy()
    for part in (tag, application):
        if part:
            h.update(part.encode())
    h.update(str(piece_length).encode())
    h.update(TASK_TYPE)
    return h.hexdigest(), digest


def _open_input(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{path} is not a regular file")
    return fd


def _as_caller_open(caller: Caller, path: str) -> int:
    """Open ``path`` with the caller's file-system identity (blocking, on a thread of its own)."""
    opened: list[int] = []
    _as_caller(caller, lambda: opened.append(_open_input(path)))
    return opened[0]


def _copy_and_hash(
    source: int, temp: str, content_length: int, piece_length: int, stop: threading.Event
) -> tuple[list[int], Any]:
    """Copy ``source`` into a new file ``temp`` in one pass, hashing the content and each piece (blocking; ``stop``
    ends it early). On failure the new file is removed."""
    os.makedirs(os.path.dirname(temp), exist_ok=True)
    target = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        return _copy_into(source, target, content_length, piece_length, stop)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(target)


def _copy_into(
    source: int, target: int, content_length: int, piece_length: int, stop: threading.Event
) -> tuple[list[int], Any]:
    hasher = task_id_hasher()
    crcs = []
    buffer = bytearray(min(_READ_CHUNK, piece_length) or 1)
    view = memoryview(buffer)
    offset = 0
    while offset < content_length:
        end = min(offset + piece_length, content_length)
        crc = 0
        while offset < end:
            if stop.is_set():
                raise DownloadFailed("the import was cancelled")
            n = os.preadv(source, [view[: min(len(buffer), end - offset)]], offset)
            if n == 0:
                raise OutputError(f"the file shrank while it was imported (at byte {offset})")
            chunk = view[:n]
            hasher.update(chunk)
            crc = zlib.crc32(chunk, crc)
            written = 0
            while written < n:
                written += os.pwrite(target, chunk[written:], offset + written)
            offset += n
        crcs.append(crc)
    if os.pread(source, 1, content_length):
        raise OutputError("the file grew while it was imported")
    return crcs, hasher


def _hash_content(fd: int, content_length: int) -> Any:
    """Return the SHA-256 state of a content file's first ``content_length`` bytes (blocking)."""
    hasher = task_id_hasher()
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while offset < content_length:
        n = os.preadv(fd, [view[: min(len(buffer), content_length - offset)]], offset)
        if n == 0:
            break
        hasher.update(view[:n])
        offset += n
    return hasher


class PersistentCacheMetrics:
    """The persistent cache's figures, in the daemon's registry (``dragonfly_dfdaemon_persistent_cache_*``)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        ns = "dragonfly_dfdaemon"
        self.imports = Counter(
            "persistent_cache_imports", "dfcache imports by result.", ["result"], namespace=ns, registry=registry
        )
        self.exports = Counter(
            "persistent_cache_exports",
            "Exports (and replications) by where the content came from: local, swarm, or failed.",
            ["source"],
            namespace=ns,
            registry=registry,
        )
        self.piece_bytes = Counter(
            "persistent_cache_piece_bytes",
            "Bytes of persistent cache pieces fetched from parents: content, and wire (what crossed the network).",
            ["kind"],
            namespace=ns,
            registry=registry,
        )
        self.evictions = Counter(
            "persistent_cache_evictions",
            "Copies dropped by reason: ttl, digest (content no longer matched), space.",
            ["reason"],
            namespace=ns,
            registry=registry,
        )
        self.copies = Gauge("persistent_cache_copies", "Persistent cache copies held.", namespace=ns, registry=registry)


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
        self.scheduler = scheduler
        self._channels = channels
        self._executor = executor
        self.host_id = host_id
        self._ip = ip
        self._pool = vortex_client.ConnectionPool(ssl_context=vortex_tls)
        self._concurrency = concurrent_piece_count
        self._piece_timeout = piece_timeout
        self._on_fetched = on_fetched
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
        #: Bytes of piece content received, and how many of them crossed the wire (less when compressed).
        self.received_bytes = 0
        self.metrics = PersistentCacheMetrics(metrics_registry)
        self.metrics.copies.set_function(lambda: len(self.entries))
        self.wire_bytes = 0
        self._active: dict[str, asyncio.Future[None]] = {}
        self._expiry: asyncio.Task[None] | None = None

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
        self._pool.close()
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
            await self._tell_scheduler_dropped(task_id)
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
            self._jobs.spawn(self._tell_scheduler_dropped(task_id))

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
                if entry.peer_id and await self._peer_known(entry):
                    continue
                if await self._announce_again(entry, task.piece_length, task.content_length, now):
                    count += 1
            except grpc.aio.AioRpcError as exc:
                log.debug(
                    "persistent cache copy not announced again",
                    extra={"task_id": entry.id, "code": exc.code().name},
                )
        return count

    async def _peer_known(self, entry: Entry) -> bool:
        try:
            await self._scheduler_stub(entry.id).StatPersistentCachePeer(
                scheduler_pb2.StatPersistentCachePeerRequest(
                    host_id=self.host_id, task_id=entry.id, peer_id=entry.peer_id
                ),
                timeout=_REQUEST_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def _announce_again(self, entry: Entry, piece_length: int, content_length: int, now: float) -> bool:
        stub = self._scheduler_stub(entry.id)
        peer_id = entry.peer_id or f"{self.host_id}-{uuid.uuid4()}"
        try:
            await stub.StatPersistentCacheTask(
                scheduler_pb2.StatPersistentCacheTaskRequest(host_id=self.host_id, task_id=entry.id),
                timeout=_REQUEST_TIMEOUT,
            )
            known = True
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            known = False
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
            await self._upload_started(entry, peer_id, piece_length, content_length, max(entry.expires_at() - now, 1.0))
            await self._upload_finished(entry.id, peer_id)
        else:
            # A holder registers its copy and reports it finished at once.
            message = functools.partial(self._announce_request, entry.id, peer_id)
            register = scheduler_pb2.RegisterPersistentCachePeerRequest(
                persistent=entry.persistent, piece_length=piece_length, piece_count=count
            )
            call = stub.AnnouncePersistentCachePeer()
            try:
                await call.write(message(register_persistent_cache_peer_request=register))
                await self._read(call)
                await call.write(
                    message(
                        download_persistent_cache_peer_finished_request=(
                            scheduler_pb2.DownloadPersistentCachePeerFinishedRequest()
                        )
                    )
                )
                await call.done_writing()
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    while await call.read() is not grpc.aio.EOF:
                        pass
            finally:
                call.cancel()
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
            copying = loop.run_in_executor(self._executor, _copy_and_hash, fd, temp, content_length, piece_length, stop)
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
                await self._upload_started(entry, peer_id, piece_length, content_length, ttl)
            except grpc.aio.AioRpcError as exc:
                existing = (
                    await self._same_content(exc, entry) if exc.code() == grpc.StatusCode.ALREADY_EXISTS else None
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
            return await self._upload_finished(task_id, peer_id)
        except grpc.aio.AioRpcError:
            self.delete_local(task_id)
            raise

    async def _same_content(self, refusal: grpc.aio.AioRpcError, entry: Entry) -> common_pb2.PersistentCacheTask | None:
        """Return the task another host imported under ``entry``'s id if its digest is this import's, else None."""
        call = self._scheduler_stub(entry.id).StatPersistentCacheTask(
            scheduler_pb2.StatPersistentCacheTaskRequest(host_id=self.host_id, task_id=entry.id),
            timeout=_REQUEST_TIMEOUT,
        )
        try:
            task: common_pb2.PersistentCacheTask = await call
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError:
            return None
        digest = next((str(v) for k, v in (trailers or ()) if k == CONTENT_DIGEST_KEY), "")
        if digest != entry.content_digest:
            log.info(
                "persistent cache import refused: the id is another host's, with other content",
                extra={"task_id": entry.id, "error": refusal.details()},
            )
            return None
        return task

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

    async def _upload_started(
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
        await self._scheduler_stub(entry.id).UploadPersistentCacheTaskStarted(
            started, metadata=metadata, timeout=_REQUEST_TIMEOUT
        )

    async def _upload_finished(self, task_id: str, peer_id: str) -> common_pb2.PersistentCacheTask:
        request = scheduler_pb2.UploadPersistentCacheTaskFinishedRequest(
            host_id=self.host_id, task_id=task_id, peer_id=peer_id
        )
        stub = self._scheduler_stub(task_id)
        finished: common_pb2.PersistentCacheTask = await stub.UploadPersistentCacheTaskFinished(
            request, timeout=_REQUEST_TIMEOUT
        )
        return finished

    def _announce_request(
        self, task_id: str, peer_id: str, **kwargs: Any
    ) -> scheduler_pb2.AnnouncePersistentCachePeerRequest:
        return scheduler_pb2.AnnouncePersistentCachePeerRequest(
            host_id=self.host_id, task_id=task_id, peer_id=peer_id, **kwargs
        )

    async def _open_as(self, caller: Caller | None, path: str) -> int:
        """Open ``path`` for reading with the caller's rights (the daemon's own for its own user)."""
        if caller is None or caller.is_daemon_user:
            opening = asyncio.get_running_loop().run_in_executor(self._executor, _open_input, path)
        else:
            # _as_caller gives the thread its own identity back before it returns (or aborts the process).
            opening = asyncio.get_running_loop().run_in_executor(None, lambda: _as_caller_open(caller, path))
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

    def _scheduler_stub(self, task_id: str) -> Any:
        """Return the stub of the scheduler that owns ``task_id`` (its answers are typed loosely)."""
        assert self.scheduler is not None
        return self.scheduler.task_stub(task_id)

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
            await self._tell_scheduler_dropped(task_id)
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
            hasher = await run_blocking(self._executor, _hash_content, fd, content_length)
        return f"sha256:{hasher.hexdigest()}" == digest

    async def _tell_scheduler_dropped(self, task_id: str) -> None:
        if self.scheduler is None:
            return
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._scheduler_stub(task_id).DeletePersistentCacheTask(
                scheduler_pb2.DeletePersistentCacheTaskRequest(host_id=self.host_id, task_id=task_id),
                timeout=_REQUEST_TIMEOUT,
            )

    async def _fetch(self, task_id: str, *, persistent: bool) -> AsyncIterator[tuple[int, PieceRecord | None]]:
        stub = self._scheduler_stub(task_id)
        try:
            call = stub.StatPersistentCacheTask(
                scheduler_pb2.StatPersistentCacheTaskRequest(host_id=self.host_id, task_id=task_id),
                timeout=_REQUEST_TIMEOUT,
            )
            info = await call
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise TaskNotFound(task_id) from None
            raise
        digest = next((str(v) for k, v in (trailers or ()) if k == CONTENT_DIGEST_KEY), "")
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
            requests.put_nowait(self._announce_request(task_id, peer_id, **kwargs))

        announce = stub.AnnouncePersistentCachePeer(outgoing())
        self.delete_local(task_id)
        content = await run_blocking(self._executor, self.storage.create_content_file, task_id, content_length)
        await self._replace_content(task_id, content, piece_length, content_length)
        finished = False
        wire_before = self.wire_bytes
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
            response = await self._read(announce)
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
                            response = await self._read(announce)
                        except grpc.aio.AioRpcError:
                            break  # no other parent
                        parents = list(response.normal_persistent_cache_task_response.candidate_cache_parents)
                        fresh = [p for p in parents if p.id not in tried_alone]
                        if not fresh:
                            break
                    using = fresh[:1]
                if len(using) == 1:
                    tried_alone.add(using[0].id)
                pieces = await self._fetch_pieces(task_id, using, content_length, piece_length, send)
                with self.storage.content_fd(task_id) as fd:
                    hasher = await run_blocking(self._executor, _hash_content, fd, content_length)
                if self._verified(task_id, hasher, digest, info, piece_length):
                    self._report_liars(suspect, pieces, send)
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
                    "wire_bytes": self.wire_bytes - wire_before,
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
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    while await announce.read() is not grpc.aio.EOF:
                        pass
            announce.cancel()

    @staticmethod
    def _report_liars(suspect: list[PieceRecord], good: list[PieceRecord], send: Callable[..., None]) -> None:
        """Report the parents whose pieces of a failed mixed attempt differ from the verified content's."""
        digests = {piece.number: piece.digest for piece in good}
        liars: dict[str, int] = {}
        for piece in suspect:
            if piece.parent_id and digests.get(piece.number) != piece.digest:
                liars.setdefault(piece.parent_id, piece.number)
        for parent_id, number in liars.items():
            log.warning("a parent served a piece that is not the importer's", extra={"peer_id": parent_id})
            send(
                download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                    piece_number=number, parent_id=parent_id, temporary=False
                )
            )

    @staticmethod
    def _verified(task_id: str, hasher: Any, digest: str, info: Any, piece_length: int) -> bool:
        """Tell whether the content is the importer's: its digest, or else the id derived from the content."""
        derived, actual = finish_task_id(hasher, tag=info.tag, application=info.application, piece_length=piece_length)
        if digest:
            return actual == digest
        if derived != task_id:
            # An importer that declared no digest (Dragonfly's daemons) with a chosen id
            # (content_for_calculating_task_id): nothing but the parents' CRC-32s vouches for the bytes.
            log.info("persistent cache task has no digest to check against", extra={"task_id": task_id})
        return True

    @staticmethod
    async def _read(call: Any) -> scheduler_pb2.AnnouncePersistentCachePeerResponse:
        async with asyncio.timeout(_REQUEST_TIMEOUT):
            response = await call.read()
        if response is grpc.aio.EOF:
            raise DownloadFailed("the scheduler ended the persistent cache stream")
        return response  # type: ignore[no-any-return]

    async def _fetch_pieces(
        self,
        task_id: str,
        parents: list[common_pb2.PersistentCachePeer],
        content_length: int,
        piece_length: int,
        send: Callable[..., None],
    ) -> list[PieceRecord]:
        """Fetch every piece from ``parents`` (CRC-32 checked); return the pieces recorded."""
        addrs: list[tuple[str, tuple[str, int], bool]] = []
        for parent in parents:
            found = await self._vortex_addr(parent, task_id)
            if found is not None:
                addrs.append((parent.id, *found))
        if not addrs:
            raise DownloadFailed(f"persistent cache task {task_id}: no parent could be reached")
        count = piece_count(content_length, piece_length)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(count):
            queue.put_nowait(number)
        recorded: list[PieceRecord] = []
        failures: dict[int, int] = {}

        async def worker(index: int) -> None:
            buffer = bytearray(_RECV_BUFFER)
            while True:
                try:
                    number = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                parent_id, addr, zstd = addrs[(number + failures.get(number, 0)) % len(addrs)]
                offset, length = piece_range(number, content_length, piece_length)
                started = time.monotonic()
                try:
                    with self.storage.content_fd(task_id) as fd:
                        fetched = await run_blocking(
                            self._executor,
                            functools.partial(
                                vortex_client.fetch_piece,
                                addr,
                                task_id,
                                number,
                                fd=fd,
                                offset=offset,
                                length=length,
                                buffer=buffer,
                                connect_timeout=_CONNECT_TIMEOUT,
                                timeout=self._piece_timeout,
                                pool=self._pool,
                                persistent_cache=True,
                                accept_zstd=zstd,
                            ),
                        )
                    if fetched.digest != f"crc32:{fetched.crc}":
                        raise DownloadFailed(f"piece {number} from {parent_id} failed its CRC-32")
                except (OSError, DragonflyError) as exc:
                    failures[number] = failures.get(number, 0) + 1
                    if failures[number] > 2 * len(addrs) + 1:
                        raise DownloadFailed(f"piece {number} of {task_id} could not be fetched: {exc}") from exc
                    send(
                        download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                            piece_number=number, parent_id=parent_id, temporary=True
                        )
                    )
                    queue.put_nowait(number)
                    continue
                cost = time.monotonic() - started
                piece = PieceRecord(
                    number=number,
                    offset=offset,
                    length=length,
                    digest=fetched.digest,
                    parent_id=parent_id,
                    traffic_type=_REMOTE_PEER,
                    cost=cost,
                    created_at=time.time(),
                )
                self.storage.finish_piece(task_id, piece)
                recorded.append(piece)
                wire = fetched.wire_length if fetched.wire_length >= 0 else length
                self.received_bytes += length
                self.wire_bytes += wire
                self.metrics.piece_bytes.labels("content").inc(length)
                self.metrics.piece_bytes.labels("wire").inc(wire)
                if self._on_fetched is not None:
                    self._on_fetched(length)
                send(
                    download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(
                        piece=common_pb2.Piece(
                            number=number,
                            parent_id=parent_id,
                            offset=offset,
                            length=length,
                            digest=fetched.digest,
                            traffic_type=common_pb2.REMOTE_PEER,
                            cost=duration(cost),
                            created_at=timestamp(piece.created_at),
                        )
                    )
                )

        workers = [asyncio.create_task(worker(i)) for i in range(min(self._concurrency, max(count, 1)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for job in workers:
                job.cancel()
        recorded.sort(key=lambda p: p.number)
        return recorded

    async def _vortex_addr(
        self, parent: common_pb2.PersistentCachePeer, task_id: str
    ) -> tuple[tuple[str, int], bool] | None:
        """Ask a parent's upload server where its Vortex port is (SyncPersistentCachePieces, first answer) and
        whether it offers zstd (its initial metadata; Dragonfly's parents send none)."""
        host = parent.host
        stub = self._channels.stub(upload_addr(host.ip, host.port))
        call = stub.SyncPersistentCachePieces(
            # Piece 0 is enough for the first answer, and Dragonfly's rules want at least one number.
            dfdaemon_pb2.SyncPersistentCachePiecesRequest(
                host_id=self.host_id, task_id=task_id, interested_piece_numbers=[0]
            ),
            timeout=_REQUEST_TIMEOUT,
        )
        try:
            metadata = await call.initial_metadata()
            zstd = self.compression and any(
                key == compression.ENCODING_KEY and str(value) == compression.ZSTD for key, value in metadata or ()
            )
            async for response in call:
                if response.HasField("tcp_port"):
                    return (response.ip or host.ip, response.tcp_port), zstd
        except grpc.aio.AioRpcError as exc:
            log.info(
                "persistent cache parent unreachable",
                extra={"task_id": task_id, "peer_id": parent.id, "code": exc.code().name},
            )
            return None
        finally:
            call.cancel()
        return None

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

"""This host's persistent cache copies: their content (a storage of its own), their records (``entries.db``),
and which of them an export is fetching right now."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from concurrent.futures import Executor

from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.common.pbtime import duration, timestamp
from dragonfly.common.piece import piece_count
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.persistent_cache.content import hash_content
from dragonfly.daemon.persistent_cache.entries import Entry, EntryIndex
from dragonfly.daemon.storage import Storage

log = logging.getLogger(__name__)


class LocalCopies:
    """The copies this host holds; the one place that adds, changes and removes them."""

    def __init__(self, directory: str, *, executor: Executor, storage_executor: Executor | None = None) -> None:
        self.storage = Storage(directory, keep=True, executor=storage_executor)
        self._index_path = os.path.join(self.storage.metadata_dir, "entries.db")
        self._index: EntryIndex | None = None
        self.entries: dict[str, Entry] = {}
        #: Task id -> the export fetching it (expiry, eviction, the scrub and re-announcing leave these alone).
        self.active: dict[str, asyncio.Future[None]] = {}
        self._executor = executor

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        self.storage.close()

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

    @property
    def _entries_db(self) -> EntryIndex:
        if self._index is None:
            raise RuntimeError("persistent cache is not open")
        return self._index

    def get(self, task_id: str) -> Entry | None:
        entry = self.entries.get(task_id)
        if entry is None or entry.expired(time.time()):
            return None
        return entry

    def delete(self, task_id: str) -> bool:
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
        self.put(entry)
        return True

    def put(self, entry: Entry) -> None:
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

    async def replace_content(self, task_id: str, content: str, piece_length: int, content_length: int) -> None:
        """Drop any copy of ``task_id`` and make the file ``content`` its (empty of pieces) content."""
        self.delete(task_id)
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

    async def content_matches(self, task_id: str, digest: str, content_length: int) -> bool:
        if not digest:
            return self.storage.content_intact(self.storage.get_task(task_id))  # type: ignore[arg-type]
        with self.storage.content_fd(task_id) as fd:
            hasher = await run_blocking(self._executor, hash_content, fd, content_length)
        return f"sha256:{hasher.hexdigest()}" == digest

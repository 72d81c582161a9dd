"""Task content files and their metadata (``docs/reference/protocol.md#storage-layout``).

Layout: ``<dir>/content/tasks/<first 3 hex of task id>/<task id>`` — one preallocated file per task — and
``<dir>/metadata/dfdaemon.db``. Paths are only ever built from validated task ids (64 lower-case hex), so no
request can name a file outside the storage directory.

Every method runs on the event-loop thread (``create_content_file`` may run on an executor thread, and file
removal is handed to the executor when there is one); the file descriptors it hands out are used by executor threads
for positional I/O. A descriptor is closed only when no one holds it any more, because closing an fd another
thread is writing through could let the kernel reuse its number for an unrelated file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor

from dragonfly.common.ids import is_task_id
from dragonfly.daemon.errors import InvalidTaskId, NoSpace, TaskNotFound
from dragonfly.daemon.storage.metadata import MetadataStore, PieceRecord, TaskRecord

log = logging.getLogger(__name__)

# Persisting updated_at on every upload would cost a write per served piece; GC only needs coarse times.
_TOUCH_PERSIST_INTERVAL = 60.0
# A finished task's content file: read-only, and readable by whoever can reach it (the storage directory is 0700;
# an output hard-linked to it is the caller's file, as readable as a copy, 0644, would be).
_FINISHED_MODE = 0o444
# File systems that keep content in memory: preallocating there allocates and zeroes every page before a byte
# arrives (0.25 CPU s and up to 1 s of wall time per GiB on a loaded machine, on the path to the first piece), and
# reserves no disk blocks worth having; their content files are sparse instead.
_MEMORY_FILE_SYSTEMS = frozenset(("tmpfs", "ramfs"))


def _unescape_mount_path(path: str) -> str:
    r"""Undo /proc/self/mountinfo's octal escapes (``\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), path)


def file_system_type(path: str, mountinfo: str | None = None) -> str | None:
    """Return the type of the file system ``path`` is on (``tmpfs``, ``ext4``, ...) from /proc/self/mountinfo."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as file:
                mountinfo = file.read()
        except OSError:
            return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        left, separator, right = line.partition(" - ")
        fields = left.split()
        if not separator or len(fields) < 5 or not right.split():
            continue
        mount_point = _unescape_mount_path(fields[4])
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        # The deepest mount point wins; of equal ones, the later line (mounted over the earlier).
        if inside and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), right.split()[0])
    return best[1] if best is not None else None


class _ContentFile:
    __slots__ = ("closing", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.closing = False


class Storage:
    """All tasks stored under one directory."""

    def __init__(self, directory: str, *, keep: bool, executor: Executor | None = None) -> None:
        self.dir = os.path.abspath(directory)
        # Where slow file-system work (unlinking large files) runs; None: on the calling thread.
        self._executor = executor
        self.content_dir = os.path.join(self.dir, "content", "tasks")
        self.metadata_dir = os.path.join(self.dir, "metadata")
        self.keep = keep
        self._meta: MetadataStore | None = None
        self._tasks: dict[str, TaskRecord] = {}
        self._files: dict[str, _ContentFile] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._persisted_touch: dict[str, float] = {}
        # Content files are preallocated unless they live in memory (see _MEMORY_FILE_SYSTEMS); set by open().
        self.sparse_content = False

    def open(self) -> None:
        """Create the directories (wiping them first unless ``keep``) and load the metadata."""
        if not self.keep:
            for path in (os.path.join(self.dir, "content"), self.metadata_dir):
                shutil.rmtree(path, ignore_errors=True)
        os.makedirs(self.content_dir, exist_ok=True)
        os.makedirs(self.metadata_dir, exist_ok=True)
        self.sparse_content = file_system_type(self.content_dir) in _MEMORY_FILE_SYSTEMS
        # Only the daemon's user reads what it stores: content of private URLs, and the metadata (docs/security.md).
        for directory in (self.dir, os.path.dirname(self.content_dir), self.content_dir, self.metadata_dir):
            os.chmod(directory, 0o700)
        db_path = os.path.join(self.metadata_dir, "dfdaemon.db")
        # SQLite gives its -wal and -shm files the mode of the database file.
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.chmod(db_path, 0o600)
        self._remove_leftovers()
        self._meta = MetadataStore(db_path)
        self._tasks = self._meta.load_tasks()
        for task_id, task in list(self._tasks.items()):
            if is_task_id(task_id) and os.path.exists(self.content_path(task_id)):
                # Files stored by versions that made them 0644, or finished ones 0600.
                os.chmod(self.content_path(task_id), _FINISHED_MODE if self.is_finished(task) else 0o600)
                continue
            log.warning("dropping task whose content file is missing", extra={"task_id": task_id})
            self._meta.delete_task(task_id)
            del self._tasks[task_id]

    def _remove_leftovers(self) -> None:
        """Remove content files a crash left half made (``.new``) or half deleted (``.deleted``)."""
        for shard in os.scandir(self.content_dir):
            if not shard.is_dir():
                continue
            for entry in os.scandir(shard.path):
                if entry.name.endswith((".new", ".deleted")):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def close(self) -> None:
        for entry in self._files.values():
            os.close(entry.fd)
        self._files.clear()
        if self._meta is not None:
            self._meta.close()
            self._meta = None

    @property
    def _db(self) -> MetadataStore:
        if self._meta is None:
            raise RuntimeError("storage is not open")
        return self._meta

    def content_path(self, task_id: str) -> str:
        """Return the content file of ``task_id``; refuse anything that is not a task id."""
        if not is_task_id(task_id):
            raise InvalidTaskId(task_id)
        return os.path.join(self.content_dir, task_id[:3], task_id)

    def get_task(self, task_id: str) -> TaskRecord | None:
        if not is_task_id(task_id):
            raise InvalidTaskId(task_id)
        return self._tasks.get(task_id)

    def tasks(self) -> list[TaskRecord]:
        return list(self._tasks.values())

    @staticmethod
    def is_finished(task: TaskRecord) -> bool:
        return task.finished_at is not None

    def prepare_task(
        self,
        task_id: str,
        *,
        url: str,
        piece_length: int,
        content_length: int,
        response_header: dict[str, str],
        content: str | None = None,
    ) -> TaskRecord:
        """Return the stored task, creating it unless a usable one exists.

        ``content`` is a file from ``create_content_file`` (made on an executor thread: allocating a large file
        can take a while); without it the file is created here, blocking.
        """
        path = self.content_path(task_id)
        existing = self._tasks.get(task_id)
        if existing is not None and self.reusable(existing, piece_length=piece_length, content_length=content_length):
            if content is not None:
                self.discard_content_file(content)
            return existing
        if existing is not None:
            self.delete_task(task_id)
        if content is None:
            content = self.create_content_file(task_id, content_length)
        try:
            # The new file takes the task's name only now, once the old one (and its readers) is out of the way.
            os.rename(content, path)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self.discard_content_file(content)
            raise
        self._files[task_id] = _ContentFile(fd)
        now = time.time()
        task = TaskRecord(
            id=task_id,
            url=url,
            piece_length=piece_length,
            content_length=content_length,
            response_header=dict(response_header),
            created_at=now,
            updated_at=now,
        )
        try:
            self._db.put_task(task)
        except BaseException:
            os.close(self._files.pop(task_id).fd)
            self._unlink(path)
            raise
        self._tasks[task_id] = task
        return task

    @staticmethod
    def reusable(task: TaskRecord, *, piece_length: int, content_length: int) -> bool:
        """Tell whether a stored task can go on with this layout (else it is replaced)."""
        return task.failed_at is None and task.piece_length == piece_length and task.content_length == content_length

    def create_content_file(self, task_id: str, content_length: int) -> str:
        """Create and preallocate a content file for ``task_id`` under a temporary name; return it (blocking).

        Safe on an executor thread: it touches only the file system. ``prepare_task`` gives it the task's name.
        """
        path = self.content_path(task_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        free = shutil.disk_usage(self.content_dir).free
        if content_length > free:
            raise NoSpace(
                f"no space left on device: the task needs {content_length} bytes in {self.dir}, {free} are free"
            )
        temp = f"{path}.{uuid.uuid4().hex[:12]}.new"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if content_length and self.sparse_content:
                os.ftruncate(fd, content_length)
            elif content_length:
                try:
                    os.posix_fallocate(fd, 0, content_length)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    # Filesystems without fallocate get a sparse file; a full disk then shows up on write.
                    os.ftruncate(fd, content_length)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise NoSpace(f"no space left on device: cannot allocate {content_length} bytes in {self.dir}") from exc
        finally:
            os.close(fd)
        return temp

    def discard_content_file(self, content: str) -> None:
        """Remove a file from ``create_content_file`` that is not needed after all."""
        self._unlink(content)

    @contextlib.contextmanager
    def content_fd(self, task_id: str) -> Iterator[int]:
        """Lend the task's one descriptor for positional I/O; it stays open until returned.

        Read-write while the task downloads; opened read-only once it finished (its file is then read-only).
        """
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        entry = self._files.get(task_id)
        if entry is None:
            mode = os.O_RDONLY if self.is_finished(task) else os.O_RDWR
            entry = _ContentFile(os.open(self.content_path(task_id), mode | os.O_CLOEXEC))
            self._files[task_id] = entry
        entry.users += 1
        try:
            yield entry.fd
        finally:
            entry.users -= 1
            if entry.closing and entry.users == 0:
                os.close(entry.fd)

    def finish_piece(self, task_id: str, piece: PieceRecord) -> None:
        """Record a piece whose bytes are written and verified; only now do others see it."""
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        self._db.put_piece(task_id, piece)
        task.pieces[piece.number] = piece
        task.updated_at = time.time()
        self._notify(task_id)

    def reset_pieces(self, task_id: str) -> None:
        """Forget every piece of an unfinished task (its content failed a digest): they are downloaded again."""
        task = self._tasks[task_id]
        task.pieces.clear()
        self._db.delete_pieces(task_id)
        self._notify(task_id)

    def finish_task(self, task_id: str) -> None:
        """Record the task as complete and seal its content file: read-only, stamped so any later write shows.

        The output may be a hard link to this file (docs/output-and-cache.md). Read-only stops an edit in place by
        anyone but root; the stamp makes whatever gets through visible to ``content_intact``: the mtime is set to a
        whole second before now, which no later write can leave (a write sets the current time, to the ns), so an
        edit of the same size within the file system's timestamp tick of the last piece is still seen.
        """
        task = self._tasks[task_id]
        task.finished_at = task.updated_at = time.time()
        task.failed_at = None
        path = self.content_path(task_id)
        os.chmod(path, _FINISHED_MODE)
        stamp = (time.time_ns() // 1_000_000_000 - 1) * 1_000_000_000
        os.utime(path, ns=(stamp, stamp))
        info = os.stat(path)
        task.content_mtime_ns, task.content_inode = info.st_mtime_ns, info.st_ino
        self._db.put_task(task)
        self._notify(task_id)

    def content_intact(self, task: TaskRecord) -> bool:
        """Return whether a finished task's content file is still the one it finished with (size, mtime, inode).

        Cheap enough for every local hit; it catches an output hard-linked into the cache and edited in place
        (docs/output-and-cache.md). Tasks finished before this check existed are trusted once and stamped.
        """
        try:
            info = os.stat(self.content_path(task.id))
        except FileNotFoundError:
            return False
        if task.content_mtime_ns is None:
            task.content_mtime_ns, task.content_inode = info.st_mtime_ns, info.st_ino
            self._db.put_task(task)
            return info.st_size == task.content_length
        return (info.st_size, info.st_mtime_ns, info.st_ino) == (
            task.content_length,
            task.content_mtime_ns,
            task.content_inode,
        )

    def fail_task(self, task_id: str) -> None:
        """Mark the task failed; never raises, since it runs while another error is being reported."""
        task = self._tasks.get(task_id)
        if task is None or task.finished_at is not None:
            return
        task.failed_at = task.updated_at = time.time()
        try:
            self._db.put_task(task)
        except (OSError, sqlite3.Error) as exc:
            # Kept in memory only: a restart then finds the task unfinished, which is just as good.
            log.warning("cannot record a failed task", extra={"task_id": task_id, "error": str(exc)})
        self._notify(task_id)

    def no_space(self, exc: OSError, doing: str) -> OSError:
        """Return ``exc`` as NoSpace naming the storage directory if it is ENOSPC/EDQUOT, else ``exc`` itself."""
        if isinstance(exc, NoSpace) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return exc
        return NoSpace(f"no space left on device: cannot {doing} in {self.dir}")

    def touch(self, task_id: str) -> None:
        """Mark the task as used now (GC evicts by least recent use)."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        task.updated_at = now = time.time()
        if now - self._persisted_touch.get(task_id, 0.0) >= _TOUCH_PERSIST_INTERVAL:
            self._persisted_touch[task_id] = now
            self._db.put_task(task)

    def delete_task(self, task_id: str) -> None:
        """Remove the task's metadata and content file."""
        path = self.content_path(task_id)
        task = self._tasks.pop(task_id, None)
        self._persisted_touch.pop(task_id, None)
        self._db.delete_task(task_id)
        entry = self._files.pop(task_id, None)
        if entry is not None:
            if entry.users:
                entry.closing = True
            else:
                os.close(entry.fd)
        self._unlink(path)
        if task is not None:
            self._notify(task_id)

    def _unlink(self, path: str) -> None:
        """Remove a content file; with an executor, off this thread (freeing a large file's blocks takes a while).

        The file is first renamed to a unique name (cheap), so a new file of the same task can take its name at once
        and the later unlink cannot remove it.
        """
        if self._executor is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        doomed = f"{path}.{uuid.uuid4().hex[:12]}.deleted"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        self._executor.submit(_unlink_quietly, doomed)

    def _notify(self, task_id: str) -> None:
        event = self._changed.pop(task_id, None)
        if event is not None:
            event.set()

    async def wait_for_change(self, task_id: str, max_wait: float) -> bool:
        """Wait until a piece of the task is recorded or its state changes; False on timeout."""
        event = self._changed.get(task_id)
        if event is None:
            event = self._changed[task_id] = asyncio.Event()
        try:
            async with asyncio.timeout(max_wait):
                await event.wait()
        except TimeoutError:
            return False
        return True

    def usage(self) -> int:
        """Return the bytes allocated by task content files."""
        return sum(task.content_length for task in self._tasks.values())


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove a deleted task's content file", extra={"path": path, "error": str(exc)})

"""Persistent cache content: the task id and digest rule, and reading, copying and hashing content files (blocking
functions, run on an executor)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import threading
import zlib
from typing import Any

from dragonfly.daemon.errors import DownloadFailed, OutputError
from dragonfly.daemon.output import Caller, _as_caller

log = logging.getLogger(__name__)

TASK_TYPE = b"PERSISTENT_CACHE"
READ_CHUNK = 4 * 1024 * 1024


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


def open_input(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{path} is not a regular file")
    return fd


def as_caller_open(caller: Caller, path: str) -> int:
    """Open ``path`` with the caller's file-system identity (blocking, on a thread of its own)."""
    opened: list[int] = []
    _as_caller(caller, lambda: opened.append(open_input(path)))
    return opened[0]


def copy_and_hash(
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
    buffer = bytearray(min(READ_CHUNK, piece_length) or 1)
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


def hash_content(fd: int, content_length: int) -> Any:
    """Return the SHA-256 state of a content file's first ``content_length`` bytes (blocking)."""
    hasher = task_id_hasher()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while offset < content_length:
        n = os.preadv(fd, [view[: min(len(buffer), content_length - offset)]], offset)
        if n == 0:
            break
        hasher.update(view[:n])
        offset += n
    return hasher


def is_importers_content(task_id: str, hasher: Any, digest: str, info: Any, piece_length: int) -> bool:
    """Tell whether the content is the importer's: its digest, or else the id derived from the content.

    ``info`` is the scheduler's ``PersistentCacheTask`` (its tag and application are part of the id).
    """
    derived, actual = finish_task_id(hasher, tag=info.tag, application=info.application, piece_length=piece_length)
    if digest:
        return actual == digest
    if derived != task_id:
        # An importer that declared no digest (Dragonfly's daemons) with a chosen id
        # (content_for_calculating_task_id): nothing but the parents' CRC-32s vouches for the bytes.
        log.info("persistent cache task has no digest to check against", extra={"task_id": task_id})
    return True

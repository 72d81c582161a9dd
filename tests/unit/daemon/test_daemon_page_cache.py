"""GC gives the page cache of finished, idle tasks back to the kernel; residency is read with mincore(2)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dragonfly.common import native
from dragonfly.daemon.config import GCConfig, GCPolicyConfig, load_dfdaemon_config
from dragonfly.daemon.storage import Storage
from dragonfly.daemon.storage.gc import GarbageCollector

IDLE = "c1" + "0" * 62
RECENT = "c2" + "0" * 62
BUSY = "c3" + "0" * 62
UNFINISHED = "c4" + "0" * 62
SIZE = 2 * 1024 * 1024
PIECE = 4 * 1024 * 1024
TIMEOUT = 40 * 60.0

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def resident_pages(path: str) -> int:
    """Return how many pages of the file are in the page cache."""
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        vec = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(v & 1 for v in vec)


def fill_and_cache(storage: Storage, task_id: str, *, finished: bool, age: float) -> str:
    """Store a task whose content is written, flushed (clean pages) and read back, so every page is cached."""
    task = storage.prepare_task(task_id, url="http://o/f", piece_length=PIECE, content_length=SIZE, response_header={})
    with storage.content_fd(task_id) as fd:
        native.write_piece(fd, 0, os.urandom(SIZE))
        os.fsync(fd)
    if finished:
        storage.finish_task(task_id)
    task.updated_at = time.time() - age
    path = storage.content_path(task_id)
    read_through(path)
    return path


def read_through(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    opened = Storage(str(tmp_path / "storage"), keep=True)
    opened.open()
    yield opened
    opened.close()


def make_gc(storage: Storage, busy: frozenset[str] = frozenset()) -> GarbageCollector:
    config = GCConfig(policy=GCPolicyConfig(page_cache_idle_timeout=TIMEOUT))  # type: ignore[arg-type]
    return GarbageCollector(storage, config, is_busy=lambda t: t in busy, on_evict=lambda _t: asyncio.sleep(0))


def test_page_cache_idle_timeout_defaults_to_forty_minutes() -> None:
    assert load_dfdaemon_config(None).gc.policy.page_cache_idle_timeout == 2400.0
    config = load_dfdaemon_config(None, overrides={"gc": {"policy": {"pageCacheIdleTimeout": "5m"}}})
    assert config.gc.policy.page_cache_idle_timeout == 300.0


async def test_only_finished_idle_tasks_lose_their_page_cache(storage: Storage) -> None:
    pages = SIZE // mmap.PAGESIZE
    paths = {
        IDLE: fill_and_cache(storage, IDLE, finished=True, age=TIMEOUT + 60),
        RECENT: fill_and_cache(storage, RECENT, finished=True, age=TIMEOUT - 60),
        BUSY: fill_and_cache(storage, BUSY, finished=True, age=TIMEOUT + 60),
        UNFINISHED: fill_and_cache(storage, UNFINISHED, finished=False, age=TIMEOUT + 60),
    }
    assert {task_id: resident_pages(path) for task_id, path in paths.items()} == dict.fromkeys(paths, pages)

    assert await make_gc(storage, frozenset({BUSY})).drop_idle_page_cache() == [IDLE]

    assert {task_id: resident_pages(path) for task_id, path in paths.items()} == {
        IDLE: 0,
        RECENT: pages,
        BUSY: pages,
        UNFINISHED: pages,
    }
    # Dropping evicts nothing: the content is intact on disk.
    assert storage.get_task(IDLE) is not None
    assert os.stat(paths[IDLE]).st_size == SIZE


async def test_a_task_is_dropped_again_only_after_it_was_used_again(storage: Storage) -> None:
    path = fill_and_cache(storage, IDLE, finished=True, age=TIMEOUT + 60)
    gc = make_gc(storage)
    assert await gc.drop_idle_page_cache() == [IDLE]
    assert await gc.drop_idle_page_cache() == []

    # A peer reads it (the upload path touches the task): it is warm and in use, so it is left alone.
    storage.touch(IDLE)
    read_through(path)
    assert await gc.drop_idle_page_cache() == []
    assert resident_pages(path) == SIZE // mmap.PAGESIZE

    task = storage.get_task(IDLE)
    assert task is not None
    task.updated_at = time.time() - TIMEOUT - 1
    assert await gc.drop_idle_page_cache() == [IDLE]
    assert resident_pages(path) == 0


async def test_a_content_file_gone_meanwhile_is_no_error(storage: Storage) -> None:
    fill_and_cache(storage, IDLE, finished=True, age=TIMEOUT + 60)
    os.unlink(storage.content_path(IDLE))
    assert await make_gc(storage).drop_idle_page_cache() == [IDLE]

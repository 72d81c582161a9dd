"""Storage: sharded preallocated content files, SQLite metadata across restarts, visibility, path safety, GC."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import stat
import tempfile
import time
import zlib
from pathlib import Path

import pytest

from dragonfly.common import native
from dragonfly.common.digest import format_piece_digest
from dragonfly.daemon.config import GCConfig, GCPolicyConfig
from dragonfly.daemon.errors import InvalidTaskId, NoSpace, TaskNotFound
from dragonfly.daemon.storage import PieceRecord, Storage
from dragonfly.daemon.storage.gc import GarbageCollector
from dragonfly.daemon.storage.storage import file_system_type

TASK = "a3" + "0" * 62
OTHER = "b7" + "1" * 62
PIECE = 4 * 1024 * 1024


def open_storage(path: Path, *, keep: bool = True) -> Storage:
    storage = Storage(str(path), keep=keep)
    storage.open()
    return storage


def write_piece(storage: Storage, task_id: str, number: int, data: bytes) -> PieceRecord:
    task = storage.get_task(task_id)
    assert task is not None
    offset = number * task.piece_length
    with storage.content_fd(task_id) as fd:
        crc = native.write_piece(fd, offset, data)
    return PieceRecord(number, offset, len(data), format_piece_digest(crc), None, 0, 0.01, time.time())


def test_content_file_is_sharded_and_preallocated(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=PIECE + 10, response_header={})
    path = tmp_path / "content" / "tasks" / TASK[:3] / TASK
    assert storage.content_path(TASK) == str(path)
    assert path.stat().st_size == PIECE + 10
    if not storage.sparse_content:
        assert path.stat().st_blocks * 512 >= PIECE + 10  # fallocate reserved the blocks
    storage.close()


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw
31 22 0:27 / /var/lib/my\\040cache rw shared:5 - tmpfs tmpfs rw,size=1g
32 31 8:2 / /var/lib/my\\040cache/disk rw shared:6 - xfs /dev/vdb rw
33 22 0:28 / /mnt rw shared:7 - ext4 /dev/vdc rw
34 22 0:29 / /mnt rw shared:8 - ramfs ramfs rw
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/tmp/x", "ext4"),
        ("/dev/shm/dragonfly", "tmpfs"),
        ("/dev/shmem", "ext4"),  # a prefix of the name is not a mount point
        ("/var/lib/my cache/content", "tmpfs"),  # \040 is a space
        ("/var/lib/my cache/disk/content", "xfs"),  # the deepest mount point wins
        ("/mnt/a", "ramfs"),  # the later of two mounts on one point
    ],
)
def test_file_system_type_from_mountinfo(path: str, expected: str) -> None:
    assert file_system_type(path, MOUNTINFO) == expected


def test_content_files_in_memory_are_sparse(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.sparse_content = True  # as open() decides on tmpfs
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=PIECE + 10, response_header={})
    info = os.stat(storage.content_path(TASK))
    # Nothing allocated (or zeroed) before a byte arrives; the size is the content's.
    assert (info.st_size, info.st_blocks) == (PIECE + 10, 0)
    storage.close()


@pytest.mark.skipif(file_system_type("/dev/shm") != "tmpfs", reason="/dev/shm is not a tmpfs here")
def test_storage_on_tmpfs_chooses_sparse_content_files(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        storage = open_storage(directory)
        assert storage.sparse_content
        storage.close()
    finally:
        shutil.rmtree(directory)
    on_disk = open_storage(tmp_path_factory.mktemp("disk"))
    assert on_disk.sparse_content == (file_system_type(on_disk.content_dir) in ("tmpfs", "ramfs"))
    on_disk.close()


@pytest.mark.parametrize(
    "task_id",
    ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "g" * 64, TASK[:-1] + "/", "", TASK + "\x00"],
)
def test_a_task_id_that_is_not_64_hex_never_becomes_a_path(tmp_path: Path, task_id: str) -> None:
    storage = open_storage(tmp_path)
    with pytest.raises(InvalidTaskId):
        storage.content_path(task_id)
    with pytest.raises(InvalidTaskId):
        storage.get_task(task_id)
    with pytest.raises(InvalidTaskId):
        storage.prepare_task(task_id, url="http://o/f", piece_length=PIECE, content_length=1, response_header={})
    assert sorted(os.listdir(tmp_path)) == ["content", "metadata"]
    assert os.listdir(tmp_path / "content" / "tasks") == []
    storage.close()


def test_piece_is_visible_only_after_it_is_recorded(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    task = storage.prepare_task(
        TASK, url="http://o/f", piece_length=PIECE, content_length=2 * PIECE, response_header={}
    )
    data = os.urandom(PIECE)
    record = write_piece(storage, TASK, 1, data)
    assert task.pieces == {}  # bytes written, CRC not recorded yet: nobody may serve it
    storage.finish_piece(TASK, record)
    assert task.pieces[1].digest == f"crc32:{zlib.crc32(data)}"
    assert task.finished_at is None
    storage.close()


def test_finished_task_survives_a_restart(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.prepare_task(
        TASK, url="http://o/f", piece_length=PIECE, content_length=PIECE + 3, response_header={"Etag": "x"}
    )
    first, second = os.urandom(PIECE), os.urandom(3)
    storage.finish_piece(TASK, write_piece(storage, TASK, 0, first))
    storage.finish_piece(TASK, write_piece(storage, TASK, 1, second))
    storage.finish_task(TASK)
    storage.close()

    reopened = open_storage(tmp_path)
    task = reopened.get_task(TASK)
    assert task is not None
    assert task.finished_at is not None
    assert task.response_header == {"Etag": "x"}
    assert sorted(task.pieces) == [0, 1]
    assert task.pieces[1].length == 3
    assert Path(reopened.content_path(TASK)).read_bytes() == first + second
    reopened.close()


def test_a_task_s_last_piece_and_its_finished_row_are_one_commit(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=3, response_header={})
    statements: list[str] = []
    storage._db._db.set_trace_callback(statements.append)
    storage.finish_piece(TASK, write_piece(storage, TASK, 0, b"abc"))
    storage.finish_task(TASK)
    storage._db._db.set_trace_callback(None)
    # One transaction: every row is written between its BEGIN and its COMMIT (an INSERT outside one is a commit of
    # its own).
    kinds = [" ".join(sql.split()[:3]).upper() for sql in statements]
    assert kinds == ["BEGIN", "INSERT OR REPLACE", "INSERT OR REPLACE", "COMMIT"], statements
    storage.close()

    reopened = open_storage(tmp_path)
    task = reopened.get_task(TASK)
    assert task is not None
    assert task.finished_at is not None
    assert task.pieces[0].length == 3
    reopened.close()


def test_a_finished_content_file_is_sealed(tmp_path: Path) -> None:
    """Read-only and stamped (docs/output-and-cache.md): an edit in place through a hard-linked output shows."""
    storage = open_storage(tmp_path)
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=3, response_header={})
    storage.finish_piece(TASK, write_piece(storage, TASK, 0, b"abc"))
    before = time.time_ns()
    storage.finish_task(TASK)
    path = storage.content_path(TASK)
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o444
    # A whole second before the end: a write, even one of the same size within the file system's timestamp tick,
    # sets the current time to the ns and so can never leave this mtime.
    assert info.st_mtime_ns < before
    assert info.st_mtime_ns % 1_000_000_000 == 0
    task = storage.get_task(TASK)
    assert task is not None
    assert storage.content_intact(task)
    storage.close()
    reopened = open_storage(tmp_path)
    task = reopened.get_task(TASK)
    assert task is not None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    # Opened read-only: a daemon that is not root may not open its own read-only file for writing.
    with reopened.content_fd(TASK) as fd:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    with open(path, "r+b") as f:  # root writes through the mode, as a root user's edit of the output would
        f.write(b"x")
    assert not reopened.content_intact(task)
    reopened.close()


def test_keep_false_wipes_content_and_metadata(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=5, response_header={})
    storage.close()
    wiped = open_storage(tmp_path, keep=False)
    assert wiped.get_task(TASK) is None
    assert not os.path.exists(tmp_path / "content" / "tasks" / TASK[:3] / TASK)
    wiped.close()


def test_task_with_missing_content_file_is_dropped_at_start(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=5, response_header={})
    storage.close()
    os.unlink(tmp_path / "content" / "tasks" / TASK[:3] / TASK)
    reopened = open_storage(tmp_path)
    assert reopened.get_task(TASK) is None
    reopened.close()


def test_prepare_reuses_a_matching_task_and_resets_a_changed_one(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    task = storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=10, response_header={})
    storage.finish_piece(TASK, write_piece(storage, TASK, 0, b"0123456789"))
    same = storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=10, response_header={})
    assert same is task
    assert 0 in same.pieces
    changed = storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=11, response_header={})
    assert changed.pieces == {}
    assert os.path.getsize(storage.content_path(TASK)) == 11
    storage.close()


def test_no_space_is_a_clear_error(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    with pytest.raises(NoSpace, match="no space left"):
        storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=1 << 60, response_header={})
    assert storage.get_task(TASK) is None
    storage.close()


def test_delete_keeps_a_borrowed_fd_open_until_returned(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=4, response_header={})
    with storage.content_fd(TASK) as fd:
        storage.delete_task(TASK)
        assert native.write_piece(fd, 0, b"abcd") == zlib.crc32(b"abcd")  # still a valid descriptor
    with pytest.raises(OSError, match="Bad file descriptor"):  # closed once returned
        os.fstat(fd)
    assert storage.get_task(TASK) is None
    with pytest.raises(TaskNotFound), storage.content_fd(TASK):
        pass
    storage.close()


async def test_wait_for_change_wakes_on_a_recorded_piece(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.prepare_task(TASK, url="http://o/f", piece_length=PIECE, content_length=4, response_header={})
    waiter = asyncio.create_task(storage.wait_for_change(TASK, 5.0))
    await asyncio.sleep(0)
    storage.finish_piece(TASK, write_piece(storage, TASK, 0, b"abcd"))
    assert await waiter is True
    assert await storage.wait_for_change(TASK, 0.01) is False
    storage.close()


async def test_gc_evicts_by_ttl_and_tells_the_scheduler(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    for task_id in (TASK, OTHER):
        storage.prepare_task(task_id, url="http://o/f", piece_length=PIECE, content_length=4, response_header={})
        storage.finish_task(task_id)
    old = storage.get_task(TASK)
    assert old is not None
    old.updated_at -= 7200
    evicted: list[str] = []

    async def on_evict(task_id: str) -> None:
        evicted.append(task_id)

    config = GCConfig(policy=GCPolicyConfig(task_ttl=3600.0))  # type: ignore[arg-type]
    gc = GarbageCollector(storage, config, is_busy=lambda _t: False, on_evict=on_evict)
    assert await gc.collect() == [TASK]
    assert evicted == [TASK]
    assert storage.get_task(TASK) is None
    assert storage.get_task(OTHER) is not None
    storage.close()


async def test_gc_frees_space_down_to_the_low_threshold_oldest_first(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    ids = [f"{i:x}" * 64 for i in range(1, 6)]
    for age, task_id in enumerate(ids):
        task = storage.prepare_task(
            task_id, url="http://o/f", piece_length=PIECE, content_length=100, response_header={}
        )
        storage.finish_task(task_id)
        task.updated_at = time.time() - 100 + age
    # 500 of 500 bytes used against a 500-byte threshold: 100 % ≥ 80 %, free down to 40 % (300 bytes).
    config = GCConfig(
        policy=GCPolicyConfig(disk_threshold=500, disk_high_threshold_percent=80, disk_low_threshold_percent=40)  # type: ignore[arg-type]
    )
    busy = {ids[0]}
    gc = GarbageCollector(storage, config, is_busy=lambda t: t in busy, on_evict=lambda _t: asyncio.sleep(0))
    assert await gc.collect() == ids[1:4]
    assert [t.id for t in storage.tasks()] == [ids[0], ids[4]]
    storage.close()


def test_slow_file_work_stays_off_the_calling_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 item 19: fallocate and unlink of task files ran on the event loop."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    threads: dict[str, set[str]] = {"fallocate": set(), "unlink": set()}
    real_fallocate, real_unlink = os.posix_fallocate, os.unlink

    def fallocate(fd: int, offset: int, length: int) -> None:
        threads["fallocate"].add(threading.current_thread().name)
        real_fallocate(fd, offset, length)

    def unlink(path: str, *args: object, **kwargs: object) -> None:
        threads["unlink"].add(threading.current_thread().name)
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    monkeypatch.setattr(os, "unlink", unlink)
    with ThreadPoolExecutor(1, thread_name_prefix="storage-test") as executor:
        storage = Storage(str(tmp_path / "s"), keep=True, executor=executor)
        storage.open()
        # What TaskManager does: the file is made on an executor thread, then takes the task's name.
        content = executor.submit(storage.create_content_file, TASK, 2 * PIECE).result()
        task = storage.prepare_task(TASK, url="u", piece_length=PIECE, content_length=2 * PIECE, response_header={},
                                    content=content)  # fmt: skip
        assert os.path.getsize(storage.content_path(TASK)) == 2 * PIECE
        storage.finish_piece(TASK, write_piece(storage, TASK, 0, b"x" * PIECE))
        # A replacement (a failed task started again) never truncates the old file under its readers.
        storage.fail_task(TASK)
        with storage.content_fd(TASK) as old_fd:
            content = executor.submit(storage.create_content_file, TASK, PIECE).result()
            storage.prepare_task(TASK, url="u", piece_length=PIECE, content_length=PIECE, response_header={},
                                 content=content)  # fmt: skip
            assert os.pread(old_fd, 1, 0) == b"x"
        assert storage.get_task(TASK) is not task
        storage.delete_task(TASK)
        executor.submit(lambda: None).result()  # the unlink queued before it has run
        storage.close()
    assert threads["fallocate"]
    assert all(name.startswith("storage-test") for name in threads["fallocate"])
    assert threads["unlink"]
    assert all(name.startswith("storage-test") for name in threads["unlink"])
    assert os.listdir(os.path.dirname(storage.content_path(TASK))) == []


def test_half_made_and_half_deleted_files_are_removed_at_start(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "s")
    shard = os.path.dirname(storage.content_path(TASK))
    os.makedirs(shard)
    for name in (f"{TASK}.0123456789ab.new", f"{TASK}.0123456789ab.deleted"):
        Path(shard, name).write_bytes(b"left over")
    storage.close()
    storage = open_storage(tmp_path / "s")
    assert os.listdir(shard) == []
    storage.close()

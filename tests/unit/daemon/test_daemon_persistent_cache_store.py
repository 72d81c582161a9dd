"""The daemon's persistent cache without a scheduler: import (id, digest, pieces), restart, TTL, eviction for space."""

from __future__ import annotations

import asyncio
import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dragonfly_api import dfdaemon_pb2
from google.protobuf import duration_pb2
from loop_guard import no_blocking_calls

from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.persistent_cache import PersistentCacheManager

MiB = 1024 * 1024


def manager(directory: Path, executor: ThreadPoolExecutor) -> PersistentCacheManager:
    pcache = PersistentCacheManager(
        str(directory),
        scheduler=None,
        channels=ParentChannels(),
        executor=executor,
        host_id="127.0.0.1-test",
        vortex_tls=None,
        concurrent_piece_count=2,
        piece_timeout=5.0,
    )
    pcache.open()
    return pcache


def request(path: Path, ttl: int = 3600, **fields: object) -> dfdaemon_pb2.UploadPersistentCacheTaskRequest:
    return dfdaemon_pb2.UploadPersistentCacheTaskRequest(
        path=str(path), persistent_replica_count=2, ttl=duration_pb2.Duration(seconds=ttl), **fields
    )


async def test_import_records_id_digest_and_pieces_and_survives_a_restart(tmp_path: Path) -> None:
    data = os.urandom(9 * MiB)
    (tmp_path / "f").write_bytes(data)
    with ThreadPoolExecutor(2) as executor:
        pcache = manager(tmp_path / "cache", executor)
        with no_blocking_calls():
            task = await pcache.import_file(request(tmp_path / "f", tag="t"), None)
        assert task.id == hashlib.sha256(data + b"t4194304PERSISTENT_CACHE").hexdigest()
        assert (task.content_length, task.piece_count, task.tag) == (9 * MiB, 3, "t")
        stored = pcache.storage.get_task(task.id)
        assert stored is not None
        assert [stored.pieces[n].digest for n in range(3)] == [
            f"crc32:{zlib.crc32(data[n * 4 * MiB : (n + 1) * 4 * MiB])}" for n in range(3)
        ]
        assert pcache.entries[task.id].content_digest == f"sha256:{hashlib.sha256(data).hexdigest()}"
        await pcache.close()

        again = manager(tmp_path / "cache", executor)
        assert again.get(task.id) is not None
        with again.storage.content_fd(task.id) as fd:
            assert os.pread(fd, 9 * MiB, 0) == data
        chosen = await again.import_file(request(tmp_path / "f", content_for_calculating_task_id="model-v7"), None)
        assert chosen.id == hashlib.sha256(b"model-v7").hexdigest()
        await again.close()


async def test_expiry_and_eviction_for_space(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as executor:
        pcache = manager(tmp_path / "cache", executor)
        ids = []
        for name in ("a", "b", "c"):
            (tmp_path / name).write_bytes(os.urandom(MiB))
            ids.append((await pcache.import_file(request(tmp_path / name, ttl=60), None)).id)
        # Imports are never evicted for space; copies that are not persistent replicas are, oldest first.
        assert pcache.evict_for_space(100 * MiB, 95 * MiB, 80, 60) == []
        for task_id in ids:
            entry = pcache.entries[task_id]
            entry.importer = entry.persistent = False
        assert pcache.evict_for_space(100 * MiB, 79 * MiB, 80, 60) == []
        assert pcache.evict_for_space(10 * MiB, 9 * MiB, 80, 75) == ids[:2]
        assert set(pcache.entries) == {ids[2]}
        # The TTL runs from the import.
        entry = pcache.entries[ids[2]]
        assert pcache.drop_expired(entry.created_at + 59) == []
        assert pcache.drop_expired(entry.created_at + 60) == [ids[2]]
        assert pcache.entries == {}
        assert pcache.storage.tasks() == []
        await pcache.close()


async def test_the_scrub_evicts_a_copy_that_no_longer_matches(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as executor:
        pcache = manager(tmp_path / "cache", executor)
        ids = []
        for name in ("good", "bad"):
            (tmp_path / name).write_bytes(os.urandom(MiB))
            ids.append((await pcache.import_file(request(tmp_path / name), None)).id)
        with pcache.storage.content_fd(ids[1]) as fd:
            os.pwrite(fd, b"\x00\x01", 1000)
        assert await pcache.scrub() == [ids[1]]
        assert set(pcache.entries) == {ids[0]}
        await pcache.close()


async def test_a_cancelled_import_stops_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(64 * MiB))
    with ThreadPoolExecutor(2) as executor:
        pcache = manager(tmp_path / "cache", executor)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pcache.import_file(request(tmp_path / "big"), None), 0.01)
        # The copy stopped and its temporary file is gone once the cancellation returned.
        temp_dir = tmp_path / "cache" / "content" / "tasks" / "tmp"
        assert not temp_dir.exists() or list(temp_dir.iterdir()) == []
        assert pcache.entries == {}
        await pcache.close()

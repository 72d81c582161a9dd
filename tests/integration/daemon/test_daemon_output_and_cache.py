"""The output is a hard link to the sealed cache (a copy on another file system), special files are streamed to,
and a changed cache is not served (docs/output-and-cache.md)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from dragonfly.cli.cluster import LocalCluster, OriginProcess, run_dfget
from dragonfly.common import ids

MiB = 1024 * 1024


def _file(origin: OriginProcess, name: str, size: int) -> str:
    data = os.urandom(size)
    (origin.directory / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(cluster: LocalCluster, peer: str, url: str) -> Path:
    task_id = ids.task_id(url)
    return cluster.storage_dir(peer) / "content" / "tasks" / task_id[:3] / task_id


def test_overwrite_never_replaces_a_device(cluster: LocalCluster, origin: OriginProcess) -> None:
    _file(origin, "to-null.bin", 6 * MiB)
    before = os.stat("/dev/null")
    result = run_dfget(cluster.socket_path("peer-1"), origin.url("to-null.bin"), "/dev/null", "--overwrite")
    assert result.ok, result.stderr
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_stdout_and_a_fifo_receive_the_stream(cluster: LocalCluster, origin: OriginProcess, tmp_path: Path) -> None:
    sha = _file(origin, "stream.bin", 6 * MiB)
    url = origin.url("stream.bin")
    argv = [sys.executable, "-m", "dragonfly.cli.dfget", url, "-O", "-", "-e", cluster.socket_path("peer-1")]
    proc = subprocess.run([*argv, "--no-progress"], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert hashlib.sha256(proc.stdout).hexdigest() == sha
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = run_dfget(cluster.socket_path("peer-2"), url, fifo)
    reader.join(60)
    assert result.ok, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert hashlib.sha256(received[0]).hexdigest() == sha


def test_an_output_edited_in_place_is_detected_and_downloaded_again(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path
) -> None:
    sha = _file(origin, "edit.bin", 6 * MiB)
    url = origin.url("edit.bin")
    first = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "first")
    assert first.ok, first.stderr
    # The default: a hard link to the cached file, sealed read-only.
    assert os.path.samestat((tmp_path / "first").stat(), _cached(cluster, "peer-1", url).stat())
    assert stat.S_IMODE((tmp_path / "first").stat().st_mode) == 0o444
    with open(tmp_path / "first", "r+b") as f:  # root writes through the read-only mode; same size
        f.write(b"edited in place")
    second = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "second")
    assert second.ok, second.stderr
    assert second.traffic is not None
    assert second.traffic["local"] == 0
    assert _sha(tmp_path / "second") == sha
    assert (tmp_path / "first").read_bytes().startswith(b"edited in place")


def test_dfget_copy_gets_a_writable_copy(cluster: LocalCluster, origin: OriginProcess, tmp_path: Path) -> None:
    sha = _file(origin, "copy.bin", 6 * MiB)
    url = origin.url("copy.bin")
    result = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "copy", "--copy")
    assert result.ok, result.stderr
    assert _sha(tmp_path / "copy") == sha
    assert (tmp_path / "copy").stat().st_nlink == 1
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o644
    # Editing the copy leaves the cache as it was: the next download is a local hit.
    with open(tmp_path / "copy", "r+b") as f:
        f.write(b"edited")
    again = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "again")
    assert again.ok, again.stderr
    assert again.traffic is not None
    assert again.traffic["local"] == 6 * MiB
    assert _sha(tmp_path / "again") == sha


def test_an_output_on_another_file_system_is_a_copy(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path
) -> None:
    if os.stat("/dev/shm").st_dev == os.stat(cluster.storage_dir("peer-1")).st_dev:
        pytest.skip("/dev/shm is on the storage's file system here")
    sha = _file(origin, "elsewhere.bin", 6 * MiB)
    out = Path(f"/dev/shm/dragonfly-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        result = run_dfget(cluster.socket_path("peer-1"), origin.url("elsewhere.bin"), out)
        assert result.ok, result.stderr
        assert _sha(out) == sha
        assert out.stat().st_nlink == 1
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
    finally:
        out.unlink(missing_ok=True)


def test_a_changed_cache_file_is_downloaded_again(cluster: LocalCluster, origin: OriginProcess, tmp_path: Path) -> None:
    sha = _file(origin, "changed.bin", 6 * MiB)
    url = origin.url("changed.bin")
    assert run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "first").ok
    cached = _cached(cluster, "peer-1", url)
    # As a hard-linked output edited in place would: same size, new bytes, new mtime.
    with open(cached, "r+b") as f:
        f.write(b"X" * 4096)
    again = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "again")
    assert again.ok, again.stderr
    assert again.traffic is not None
    assert again.traffic["local"] == 0
    assert _sha(tmp_path / "again") == sha


def test_a_cache_hit_failing_its_digest_is_evicted_and_fetched_again(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path
) -> None:
    sha = _file(origin, "digest.bin", 6 * MiB)
    url = origin.url("digest.bin")
    assert run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "first").ok
    cached = _cached(cluster, "peer-1", url)
    info = os.stat(cached)
    # Bit rot the cheap check cannot see: same size, same mtime.
    with open(cached, "r+b") as f:
        f.write(b"rot")
    os.utime(cached, ns=(info.st_atime_ns, info.st_mtime_ns))
    again = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "again", "--digest", f"sha256:{sha}")
    assert again.ok, again.stderr
    assert _sha(tmp_path / "again") == sha
    # And the cache holds the right bytes again.
    third = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "third", "--digest", f"sha256:{sha}")
    assert third.ok, third.stderr
    assert third.traffic is not None
    assert third.traffic["local"] == 6 * MiB


def test_bench_pair_forgets_a_task_so_its_pages_are_freed(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path
) -> None:
    """bench pair deletes each run's task before the next (bench/pair.py forget_task): the content file goes, and a
    task that is not there is an error rather than a run silently measured on cold pages."""
    from bench.pair import forget_task

    _file(origin, "forgotten.bin", 6 * MiB)
    url = origin.url("forgotten.bin")
    assert run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "out").ok
    (tmp_path / "out").unlink()
    assert _cached(cluster, "peer-1", url).exists()
    forget_task(Path(cluster.socket_path("peer-1")), url)
    assert not _cached(cluster, "peer-1", url).exists()
    with pytest.raises(RuntimeError, match="could not delete task"):
        forget_task(Path(cluster.socket_path("peer-1")), url)

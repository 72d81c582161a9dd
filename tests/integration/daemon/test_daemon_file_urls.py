"""Real processes: ``file://`` sources. A path only the seed peer may read (its ``backend.file.allowedDirs``) reaches
every peer through the swarm; a peer allowed to read it reads it with the native piece I/O; paths outside the
allowed directories (also through a symlink) are refused with a clear error."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from daemon_client import download

from dragonfly.cli.cluster import SEED_PEER, LocalCluster, run_dfget
from dragonfly.common import ids

SIZE = 40 * 1024 * 1024 + 12345


@pytest.fixture(scope="module")
def shared_dir(module_dir: Path) -> Path:
    directory = module_dir / "nas"
    directory.mkdir()
    return directory


@pytest.fixture(scope="module")
def file_cluster(module_dir: Path, shared_dir: Path) -> Iterator[LocalCluster]:
    """A scheduler, a seed peer that may read ``shared_dir`` and two peers: peer-1 may read nothing, peer-2 its own
    directory only."""
    daemon_config = {"scheduler": {"announceInterval": "5s"}, "download": {"collectedPieceTimeout": "10s"}}
    own = module_dir / "peer-2-files"
    own.mkdir()
    peer_configs = {
        SEED_PEER: {"backend": {"file": {"allowedDirs": [str(shared_dir)]}}},
        "peer-2": {"backend": {"file": {"allowedDirs": [str(own)]}}},
    }
    with LocalCluster(
        module_dir / "file-cluster",
        peers=2,
        daemon_config=daemon_config,
        peer_configs=peer_configs,
        start_timeout=30,
        stop_timeout=20,
    ) as started:
        yield started


def file_url(path: Path) -> str:
    return "file://" + str(path)


def test_a_path_only_the_seed_may_read_reaches_the_peers(
    file_cluster: LocalCluster, shared_dir: Path, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    source = shared_dir / "model.bin"
    source.write_bytes(data)
    url = file_url(source)

    first = download(file_cluster.socket_path("peer-1"), url, tmp_path / "out-1")
    assert first.content_length == SIZE
    assert (tmp_path / "out-1").read_bytes() == data
    # peer-1 cannot read the path: every byte came from the seed peer, which read it.
    assert first.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    assert all(parent.endswith("-seed") for parent in first.parents)
    # The task id is Dragonfly's, from the URL alone.
    assert first.task_id == ids.task_id(url)

    # dfget takes file:// URLs as well; peer-2 gets them from the swarm too.
    result = run_dfget(file_cluster.socket_path("peer-2"), url, tmp_path / "out-2", timeout=60)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256((tmp_path / "out-2").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_daemon_allowed_to_read_a_path_reads_it_itself(
    file_cluster: LocalCluster, module_dir: Path, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    source = module_dir / "peer-2-files" / "small.bin"
    source.write_bytes(data)
    result = download(file_cluster.socket_path("peer-2"), file_url(source), tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    assert result.bytes_by_traffic == {"BACK_TO_SOURCE": len(data)}


def test_paths_outside_the_allowed_directories_are_refused(
    file_cluster: LocalCluster, shared_dir: Path, module_dir: Path, tmp_path: Path
) -> None:
    secret = module_dir / "secret.txt"
    secret.write_bytes(b"not for peers")
    (shared_dir / "escape").symlink_to(secret)
    for url in (file_url(secret), file_url(shared_dir / "escape"), file_url(shared_dir / ".." / "secret.txt")):
        with pytest.raises(grpc.RpcError) as info:
            download(file_cluster.socket_path("peer-1"), url, tmp_path / "out", timeout=30)
        details = info.value.details() or ""
        # The seed refused it too, so the swarm had nothing to offer.
        assert "allowedDirs" in details, details
        assert not (tmp_path / "out").exists()


def test_a_directory_with_r(file_cluster: LocalCluster, module_dir: Path, tmp_path: Path) -> None:
    own = module_dir / "peer-2-files" / "tree"
    (own / "a" / "b").mkdir(parents=True)
    (own / "empty").mkdir()
    files = {"top.bin": os.urandom(5 * 1024 * 1024), "a/one.txt": b"1", "a/b/two words.txt": b"22"}
    for name, data in files.items():
        (own / name).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    result = run_dfget(file_cluster.socket_path("peer-2"), file_url(own), out, "-r", timeout=60)
    assert result.returncode == 0, result.stderr
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    assert (out / "empty").is_dir()
    # A daemon that may not read the directory cannot list it.
    result = run_dfget(file_cluster.socket_path("peer-1"), file_url(own), out, "-r", "--overwrite", timeout=60)
    assert result.returncode == 1
    assert "allowedDirs" in result.stderr


def test_an_empty_file_only_the_seed_may_read(file_cluster: LocalCluster, shared_dir: Path, tmp_path: Path) -> None:
    (shared_dir / "empty.bin").write_bytes(b"")
    result = download(file_cluster.socket_path("peer-1"), file_url(shared_dir / "empty.bin"), tmp_path / "out")
    assert result.content_length == 0
    assert (tmp_path / "out").read_bytes() == b""


def test_a_tiny_file_only_the_seed_may_read(file_cluster: LocalCluster, shared_dir: Path, tmp_path: Path) -> None:
    (shared_dir / "tiny.txt").write_bytes(b"tiny but only on the NAS")
    result = download(file_cluster.socket_path("peer-1"), file_url(shared_dir / "tiny.txt"), tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"tiny but only on the NAS"
    assert result.bytes_by_traffic == {"REMOTE_PEER": 24}

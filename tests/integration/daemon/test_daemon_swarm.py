"""Real processes: a scheduler, a seed peer and two peers share a file; restarts; an unreachable scheduler."""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from daemon_client import download
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc

from dragonfly.cli.cluster import LocalCluster, OriginProcess, free_ports, run_dfget
from dragonfly.common import native, tls
from dragonfly.common.identity import ROLE_PEER
from dragonfly.daemon.download.vortex_client import fetch_piece

SIZE = 48 * 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_file(origin: OriginProcess, name: str, size: int) -> bytes:
    """Serve ``size`` random bytes as ``name`` and return them."""
    data = os.urandom(size)
    (origin.directory / name).write_bytes(data)
    return data


@pytest.fixture(scope="module")
def shared(origin: OriginProcess) -> bytes:
    """The file most tests share; created once so any test of the module can run alone."""
    return add_file(origin, "shared.bin", SIZE)


def scheduler_host_ids(cluster: LocalCluster) -> set[str]:
    with tls.sync_channel(cluster.scheduler_addr, cluster.client_files()) as channel:
        response = scheduler_pb2_grpc.SchedulerStub(channel).ListHosts(scheduler_pb2.ListHostsRequest(), timeout=5)
    return {host.id for host in response.hosts}


def test_a_file_is_fetched_once_from_the_origin_and_shared(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path, shared: bytes
) -> None:
    expected = hashlib.sha256(shared).hexdigest()
    url = origin.url("shared.bin")

    first = download(cluster.socket_path("peer-1"), url, tmp_path / "out-1")
    assert first.content_length == SIZE
    assert sha256(tmp_path / "out-1") == expected
    # The scheduler had the seed peer fetch the task; peer-1 took every byte from it.
    assert first.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    assert all(parent.endswith("-seed") for parent in first.parents)

    second = download(cluster.socket_path("peer-2"), url, tmp_path / "out-2")
    assert sha256(tmp_path / "out-2") == expected
    assert second.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    assert second.task_id == first.task_id

    assert SIZE <= origin.bytes_served() <= 1.05 * SIZE


def test_a_file_of_one_piece_goes_through_the_swarm_and_a_tiny_one_to_the_origin(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path
) -> None:
    small = add_file(origin, "one-piece.bin", 1024 * 1024)
    url = origin.url("one-piece.bin")
    sent_before = origin.bytes_served()
    for name in ("peer-1", "peer-2"):
        result = download(cluster.socket_path(name), url, tmp_path / f"small-{name}")
        assert (tmp_path / f"small-{name}").read_bytes() == small
        # From the seed peer the scheduler triggered (or the other peer), never from the origin itself.
        assert result.bytes_by_traffic == {"REMOTE_PEER": len(small)}
    # The seed fetched it once for both (each peer's stat is a 1-byte range, the seed's is its piece 0's request).
    assert origin.bytes_served() - sent_before <= len(small) + 16

    tiny = add_file(origin, "tiny.bin", 100)
    result = download(cluster.socket_path("peer-1"), origin.url("tiny.bin"), tmp_path / "tiny")
    assert (tmp_path / "tiny").read_bytes() == tiny
    assert result.bytes_by_traffic == {"BACK_TO_SOURCE": len(tiny)}


@pytest.mark.parametrize("broken", [False, True], ids=["whole", "broken-off"])
def test_the_seeds_stat_is_its_piece_0_request(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path, broken: bool
) -> None:
    name = f"stat-is-piece-0-{broken}.bin"
    data = add_file(origin, name, 3 * 4 * 1024 * 1024)
    if broken:
        # The first answer (the peer's 1-byte stat) is whole; the second, the seed's stat that asks for piece 0,
        # breaks off after 1 MiB: the seed asks for piece 0 again.
        origin.set_fault(name, "short", after=1024 * 1024, count=2)
    result = download(cluster.socket_path("peer-1"), origin.url(name), tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    assert result.bytes_by_traffic == {"REMOTE_PEER": len(data)}
    # The peer's stat, then one request per piece from the seed: its stat was piece 0's request (once more when
    # that broke off).
    assert origin.stats()["requests"]["/" + name] == 1 + 3 + int(broken)
    assert origin.bytes_served(name) <= len(data) + int(broken) * 1024 * 1024 + 16


def test_corrupt_parents_are_detected_and_pieces_refetched(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path, shared: bytes
) -> None:
    url = origin.url("shared.bin")
    expected = sha256(origin.directory / "shared.bin")
    task_id = download(cluster.socket_path("peer-1"), url, None).task_id
    download(cluster.socket_path("peer-2"), url, None)
    original = (origin.directory / "shared.bin").read_bytes()
    stain = b"corrupted by the test"
    # Both normal peers now serve garbage under their recorded CRCs; only the seed is honest.
    contents = [
        cluster.storage_dir(name) / "content" / "tasks" / task_id[:3] / task_id for name in ("peer-1", "peer-2")
    ]
    for content in contents:
        _write_unseen(content, lambda offset: stain)
    try:
        cluster.add_daemon("peer-3")
        sent_before = origin.bytes_served()

        result = download(cluster.socket_path("peer-3"), url, tmp_path / "out-3")
        assert sha256(tmp_path / "out-3") == expected
        assert origin.bytes_served() - sent_before <= 1  # the stat (Range: bytes=0-0) only
        metrics_addr = cluster.process("peer-3").listening["metrics"]
        with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        mismatches = re.search(
            r'^dragonfly_dfdaemon_failures_total\{kind="piece_digest_mismatch"\} (\S+)$', metrics, re.M
        )
        assert mismatches is not None
        assert float(mismatches.group(1)) >= 1
        # Every stored piece came from the honest seed: the corrupt parents were dropped at their first bad piece.
        assert all(parent.endswith("-seed") for parent in result.parents)
    finally:
        for content in contents:
            _write_unseen(content, lambda offset: original[offset + 100 : offset + 100 + len(stain)])


def _write_unseen(content: Path, data: Callable[[int], bytes]) -> None:
    """Write ``data(offset)`` 100 bytes into each piece of a stored file, keeping its mtime: bit rot, which the
    daemon's own check of a finished file (size, mtime, inode; docs/output-and-cache.md) cannot see, so only the
    child's CRC check can."""
    info = content.stat()
    with open(content, "r+b") as file:
        for offset in range(0, SIZE, 4 * 1024 * 1024):
            file.seek(offset + 100)
            file.write(data(offset))
    os.utime(content, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_a_restarted_daemon_still_serves_a_finished_task(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path, shared: bytes
) -> None:
    url = origin.url("shared.bin")
    expected = sha256(origin.directory / "shared.bin")
    download(cluster.socket_path("peer-1"), url, None)  # finished before the restart (a local hit if already there)
    assert "127.0.0.1-peer-1" in scheduler_host_ids(cluster)
    status = cluster.restart("peer-1")
    assert status == 0  # SIGTERM is a clean shutdown
    sent_before = origin.bytes_served()

    again = download(cluster.socket_path("peer-1"), url, tmp_path / "out-1-again")
    assert again.bytes_by_traffic == {"LOCAL_PEER": SIZE}
    assert sha256(tmp_path / "out-1-again") == expected
    assert origin.bytes_served() == sent_before

    # Its Vortex server serves the stored pieces to others (cluster members), verified by CRC.
    host, port = cluster.process("peer-1").listening["vortex"].rsplit(":", 1)
    files = cluster.client_files("vortex-client", roles=(ROLE_PEER,))
    target = tmp_path / "vortex-piece"
    fd = os.open(target, os.O_RDWR | os.O_CREAT)
    try:
        piece = fetch_piece(
            (host, int(port)),
            again.task_id,
            1,
            fd=fd,
            offset=4 * 1024 * 1024,
            length=4 * 1024 * 1024,
            buffer=bytearray(512 * 1024),
            connect_timeout=2.0,
            timeout=10.0,
            ssl_context=tls.client_ssl_context(files) if files else None,
        )
    finally:
        os.close(fd)
    assert piece.digest == f"crc32:{piece.crc}"
    assert (
        target.read_bytes()[4 * 1024 * 1024 :]
        == (origin.directory / "shared.bin").read_bytes()[4 * 1024 * 1024 : 8 * 1024 * 1024]
    )


def test_delete_host_on_sigterm(cluster: LocalCluster) -> None:
    assert "127.0.0.1-peer-2" in scheduler_host_ids(cluster)
    assert cluster.terminate("peer-2") == 0
    assert "127.0.0.1-peer-2" not in scheduler_host_ids(cluster)
    assert not os.path.exists(cluster.socket_path("peer-2"))
    cluster.restart("peer-2")


def test_unreachable_scheduler_falls_back_to_the_origin_in_bounded_time(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path
) -> None:
    cluster.add_daemon("lonely", {"scheduler": {"addrs": [f"127.0.0.1:{free_ports(1)[0]}"]}})
    data = add_file(origin, "lonely.bin", 12 * 1024 * 1024)

    began = time.monotonic()
    result = download(cluster.socket_path("lonely"), origin.url("lonely.bin"), tmp_path / "lonely-out")
    # Bounded, not fast: the regression this guards against waits out scheduleTimeout (hours); `download` itself
    # gives up after 60 s.
    assert time.monotonic() - began < 60
    assert result.bytes_by_traffic == {"BACK_TO_SOURCE": len(data)}
    assert (tmp_path / "lonely-out").read_bytes() == data

    add_file(origin, "lonely-2.bin", 12 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        download(
            cluster.socket_path("lonely"),
            origin.url("lonely-2.bin"),
            tmp_path / "lonely-2-out",
            disable_back_to_source=True,
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "back-to-source is disabled" in (info.value.details() or "")
    assert not (tmp_path / "lonely-2-out").exists()


def test_origin_errors_reach_the_client(cluster: LocalCluster, origin: OriginProcess, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as info:
        download(cluster.socket_path("peer-1"), origin.url("missing.bin"), tmp_path / "missing")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "HTTP 404" in (info.value.details() or "")
    assert not (tmp_path / "missing").exists()


def test_ranged_dfget_fetches_only_the_covering_pieces(
    cluster: LocalCluster, origin: OriginProcess, tmp_path: Path
) -> None:
    piece = 4 * 1024 * 1024
    data = add_file(origin, "ranged.bin", 6 * piece + 1000)
    url = origin.url("ranged.bin")
    origin.reset_stats()
    # Bytes of pieces 1..3 only, given as --range on one peer and as a Range header on the other.
    first, last = piece + 17, 4 * piece - 5
    result = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "part-1", "--range", f"{first}-{last}")
    assert result.ok, result.stderr
    assert (tmp_path / "part-1").read_bytes() == data[first : last + 1]
    assert f"saved {tmp_path / 'part-1'}: {last - first + 1} bytes" in result.stderr
    stats = 8  # every daemon's stat of the origin reads one byte
    # The covering pieces left the origin once (through the seed peer), the others not at all.
    assert 3 * piece <= origin.bytes_served("ranged.bin") <= 3 * piece + stats

    result = run_dfget(cluster.socket_path("peer-2"), url, tmp_path / "part-2", "-H", f"Range: bytes={first}-{last}")
    assert result.ok, result.stderr
    assert (tmp_path / "part-2").read_bytes() == data[first : last + 1]
    assert origin.bytes_served("ranged.bin") <= 3 * piece + stats  # peer-2 took them from the swarm

    # The whole file later reuses the task and its pieces: only the other three pieces come from the origin.
    result = run_dfget(cluster.socket_path("peer-1"), url, tmp_path / "whole")
    assert result.ok, result.stderr
    assert (tmp_path / "whole").read_bytes() == data
    assert origin.bytes_served("ranged.bin") <= len(data) + stats

    result = run_dfget(cluster.socket_path("peer-2"), url, tmp_path / "beyond", "--range", f"{len(data)}-")
    assert result.returncode == 1
    assert f"range bytes={len(data)}- is not satisfiable: the content is {len(data)} bytes long" in result.stderr
    assert not (tmp_path / "beyond").exists()
    result = run_dfget(cluster.socket_path("peer-2"), url, tmp_path / "two", "-H", "Range: bytes=0-1,5-9")
    assert result.returncode == 2
    assert "several ranges in one request are not supported" in result.stderr


def test_native_extensions_in_use_unless_disabled() -> None:
    profiles = native.build_profiles()
    if native.USING_EXTENSIONS:
        assert profiles["piece_io"] != "python"

"""Real processes: a scheduler, a seed peer and two peers share a file; restarts; an unreachable scheduler."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from daemon_swarm import CountingOrigin, Swarm, download
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc

from dragonfly.common import native
from dragonfly.daemon.download.vortex_client import fetch_piece

SIZE = 48 * 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shared(origin: CountingOrigin) -> bytes:
    """The file most tests share; created once so any test of the module can run alone."""
    return origin.add_file("shared.bin", SIZE)


def scheduler_host_ids(swarm: Swarm) -> set[str]:
    with grpc.insecure_channel(swarm.scheduler_addr) as channel:
        response = scheduler_pb2_grpc.SchedulerStub(channel).ListHosts(scheduler_pb2.ListHostsRequest(), timeout=5)
    return {host.id for host in response.hosts}


def test_a_file_is_fetched_once_from_the_origin_and_shared(
    swarm: Swarm, origin: CountingOrigin, short_dir: Path, shared: bytes
) -> None:
    expected = hashlib.sha256(shared).hexdigest()
    url = origin.url("shared.bin")

    first = download(swarm.socket("peer-1"), url, short_dir / "out-1")
    assert first.content_length == SIZE
    assert sha256(short_dir / "out-1") == expected
    # The scheduler had the seed peer fetch the task; peer-1 took every byte from it.
    assert first.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    assert all(parent.endswith("-seed") for parent in first.parents)

    second = download(swarm.socket("peer-2"), url, short_dir / "out-2")
    assert sha256(short_dir / "out-2") == expected
    assert second.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    assert second.task_id == first.task_id

    assert SIZE <= origin.bytes_sent <= 1.05 * SIZE


def test_corrupt_parents_are_detected_and_pieces_refetched(
    swarm: Swarm, origin: CountingOrigin, short_dir: Path, shared: bytes
) -> None:
    url = origin.url("shared.bin")
    expected = sha256(origin.directory / "shared.bin")
    task_id = download(swarm.socket("peer-1"), url, None).task_id
    download(swarm.socket("peer-2"), url, None)
    original = (origin.directory / "shared.bin").read_bytes()
    stain = b"corrupted by the test"
    # Both normal peers now serve garbage under their recorded CRCs; only the seed is honest.
    contents = [swarm.root / name / "content" / "tasks" / task_id[:3] / task_id for name in ("peer-1", "peer-2")]
    for content in contents:
        with open(content, "r+b") as file:
            for offset in range(0, SIZE, 4 * 1024 * 1024):
                file.seek(offset + 100)
                file.write(stain)
    try:
        swarm.start_daemons({"peer-3": swarm.daemon_config("peer-3")})
        sent_before = origin.bytes_sent

        result = download(swarm.socket("peer-3"), url, short_dir / "out-3")
        assert sha256(short_dir / "out-3") == expected
        assert origin.bytes_sent - sent_before <= 1  # the stat (Range: bytes=0-0) only
        metrics_addr = swarm.processes["peer-3"].listening["metrics"]
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
            with open(content, "r+b") as file:
                for offset in range(0, SIZE, 4 * 1024 * 1024):
                    file.seek(offset + 100)
                    file.write(original[offset + 100 : offset + 100 + len(stain)])


def test_a_restarted_daemon_still_serves_a_finished_task(
    swarm: Swarm, origin: CountingOrigin, short_dir: Path, shared: bytes
) -> None:
    url = origin.url("shared.bin")
    expected = sha256(origin.directory / "shared.bin")
    download(swarm.socket("peer-1"), url, None)  # finished before the restart (a local hit if already there)
    assert "127.0.0.1-peer-1" in scheduler_host_ids(swarm)
    status = swarm.restart("peer-1")
    assert status == 0  # SIGTERM is a clean shutdown
    sent_before = origin.bytes_sent

    again = download(swarm.socket("peer-1"), url, short_dir / "out-1-again")
    assert again.bytes_by_traffic == {"LOCAL_PEER": SIZE}
    assert sha256(short_dir / "out-1-again") == expected
    assert origin.bytes_sent == sent_before

    # Its Vortex server serves the stored pieces to others, verified by CRC.
    host, port = swarm.processes["peer-1"].listening["vortex"].rsplit(":", 1)
    target = short_dir / "vortex-piece"
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
        )
    finally:
        os.close(fd)
    assert piece.digest == f"crc32:{piece.crc}"
    assert (
        target.read_bytes()[4 * 1024 * 1024 :]
        == (origin.directory / "shared.bin").read_bytes()[4 * 1024 * 1024 : 8 * 1024 * 1024]
    )


def test_delete_host_on_sigterm(swarm: Swarm) -> None:
    proc = swarm.processes["peer-2"]
    assert "127.0.0.1-peer-2" in scheduler_host_ids(swarm)
    assert proc.stop() == 0
    assert "127.0.0.1-peer-2" not in scheduler_host_ids(swarm)
    assert not os.path.exists(swarm.root / "peer-2.sock")
    proc.start()
    proc.wait_ready()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_scheduler_falls_back_to_the_origin_in_bounded_time(
    swarm: Swarm, origin: CountingOrigin, short_dir: Path
) -> None:
    config = swarm.daemon_config("lonely", scheduler=f"127.0.0.1:{_closed_port()}")
    swarm.start_daemons({"lonely": config})
    data = origin.add_file("lonely.bin", 12 * 1024 * 1024)

    began = time.monotonic()
    result = download(swarm.socket("lonely"), origin.url("lonely.bin"), short_dir / "lonely-out")
    assert time.monotonic() - began < 10
    assert result.bytes_by_traffic == {"BACK_TO_SOURCE": len(data)}
    assert (short_dir / "lonely-out").read_bytes() == data

    origin.add_file("lonely-2.bin", 12 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        download(
            swarm.socket("lonely"), origin.url("lonely-2.bin"), short_dir / "lonely-2-out", disable_back_to_source=True
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "back-to-source is disabled" in (info.value.details() or "")
    assert not (short_dir / "lonely-2-out").exists()


def test_origin_errors_reach_the_client(swarm: Swarm, origin: CountingOrigin, short_dir: Path) -> None:
    with pytest.raises(grpc.RpcError) as info:
        download(swarm.socket("peer-1"), origin.url("missing.bin"), short_dir / "missing")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "HTTP 404" in (info.value.details() or "")
    assert not (short_dir / "missing").exists()


def test_native_extensions_in_use_unless_disabled() -> None:
    profiles = native.build_profiles()
    if native.USING_EXTENSIONS:
        assert profiles["piece_io"] != "python"

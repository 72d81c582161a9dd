"""The launcher pieces the other end-to-end tests stand on: the demo origin and ManagedProcess."""

from __future__ import annotations

import http.client
import sys
import time
from pathlib import Path

import pytest
from swarm_helpers import make_file

from dragonfly.cli.cluster import LocalCluster, ManagedProcess, OriginProcess, ProcessStartError


def get(origin: OriginProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = origin.addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        try:
            body = response.read()
        except http.client.IncompleteRead as exc:
            body = exc.partial
        return response.status, dict(response.getheaders()), body
    finally:
        conn.close()


def test_origin_serves_ranges_and_counts_bytes(origin: OriginProcess) -> None:
    make_file(origin, "r.bin", 100_000)
    content = (origin.directory / "r.bin").read_bytes()
    origin.reset_stats()
    assert get(origin, "/r.bin")[2] == content
    status, headers, body = get(origin, "/r.bin", {"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, content[10:20], "bytes 10-19/100000")
    assert get(origin, "/r.bin", {"Range": "bytes=-5"})[2] == content[-5:]
    assert get(origin, "/r.bin", {"Range": "bytes=200000-"})[0] == 416
    assert get(origin, "/missing.bin")[0] == 404
    assert get(origin, "/../conftest.py")[0] == 404
    stats = origin.stats()
    assert stats["bytes_total"] == 100_000 + 10 + 5
    assert stats["paths"] == {"/r.bin": 100_015}
    assert stats["requests"]["/r.bin"] == 4


@pytest.mark.parametrize(("mode", "status"), [("404", 404), ("500", 500)])
def test_origin_status_faults(origin: OriginProcess, mode: str, status: int) -> None:
    make_file(origin, "s.bin", 1000)
    origin.set_fault("s.bin", mode, count=1)
    assert get(origin, "/s.bin")[0] == status
    assert get(origin, "/s.bin")[0] == 200  # count=1: only the first request fails


def test_origin_short_body(origin: OriginProcess) -> None:
    make_file(origin, "short.bin", 1_000_000)
    origin.set_fault("short.bin", "short", after=1000)
    try:
        status, headers, body = get(origin, "/short.bin")
    finally:
        origin.clear_faults()
    assert (status, headers["Content-Length"], len(body)) == (200, "1000000", 1000)


def test_origin_reset(origin: OriginProcess) -> None:
    make_file(origin, "reset.bin", 4_000_000)
    origin.set_fault("reset.bin", "reset", after=1000)
    host, port = origin.addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/reset.bin")
        response = conn.getresponse()
        with pytest.raises(ConnectionResetError):
            response.read()
    finally:
        conn.close()
        origin.clear_faults()


def test_origin_slow(origin: OriginProcess) -> None:
    make_file(origin, "slow.bin", 400_000)
    origin.set_fault("slow.bin", "slow", rate=1_000_000)
    try:
        began = time.monotonic()
        assert len(get(origin, "/slow.bin")[2]) == 400_000
        # Paced: never faster than the rate (load can only make it slower).
        assert time.monotonic() - began >= 0.35
    finally:
        origin.clear_faults()


def test_process_dying_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "broken", [sys.executable, "-c", "import sys; print('config: bad key'); sys.exit(3)"], tmp_path / "b.log"
    )
    proc.start()
    with pytest.raises(ProcessStartError, match=r"(?s)broken exited with status 3 during start-up.*config: bad key"):
        proc.wait_ready(10)


def test_silent_process_times_out_and_is_stopped(tmp_path: Path) -> None:
    proc = ManagedProcess("mute", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "m.log")
    proc.start()
    try:
        with pytest.raises(ProcessStartError, match=r"mute did not print 'dragonfly: \.\.\. ready' within 1s"):
            proc.wait_ready(1)
    finally:
        proc.stop(timeout=5)
    assert not proc.running


def test_listening_lines_are_recorded(tmp_path: Path) -> None:
    script = (
        "print('dragonfly: upload listening on 127.0.0.1:4000');"
        "print('dragonfly: vortex listening on 127.0.0.1:4005');"
        "print('dragonfly: dfdaemon ready'); import time; time.sleep(60)"
    )
    proc = ManagedProcess("d", [sys.executable, "-c", script], tmp_path / "d.log")
    proc.start()
    try:
        proc.wait_ready(10)
        assert proc.listening == {"upload": "127.0.0.1:4000", "vortex": "127.0.0.1:4005"}
    finally:
        proc.stop(timeout=5)


def test_cluster_configs(tmp_path: Path) -> None:
    import yaml

    cluster = LocalCluster(
        tmp_path / "c",
        peers=2,
        daemon_config={"download": {"concurrentPieceCount": 4}},
        peer_configs={"peer-2": {"download": {"bandwidthLimit": "20MiB/s"}}},
    )
    cluster.write_configs()
    seed = yaml.safe_load(cluster.config_path("seed-peer").read_text())
    peer2 = yaml.safe_load(cluster.config_path("peer-2").read_text())
    assert seed["seedPeer"] == {"enable": True, "type": "super"}
    assert peer2["seedPeer"]["enable"] is False
    assert peer2["host"] == {"hostname": "peer-2", "ip": "127.0.0.1"}
    assert peer2["scheduler"]["addrs"] == [cluster.scheduler_addr]
    assert peer2["download"] == {
        "server": {"socketPath": cluster.socket_path("peer-2")},
        "concurrentPieceCount": 4,
        "bandwidthLimit": "20MiB/s",
    }
    assert peer2["storage"]["keep"] is True
    ports = {
        cluster.scheduler_port,
        *(yaml.safe_load(cluster.config_path(n).read_text())["upload"]["server"]["port"] for n in cluster.daemon_names),
        *(
            yaml.safe_load(cluster.config_path(n).read_text())["storage"]["server"]["tcpPort"]
            for n in cluster.daemon_names
        ),
    }
    assert len(ports) == 1 + 2 * 3
    with pytest.raises(ValueError, match="peer_configs names unknown daemons: peer-9"):
        LocalCluster(tmp_path / "d", peers=1, peer_configs={"peer-9": {}})

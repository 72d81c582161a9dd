"""dfget against a real dfdaemon when the origin fails: the origin's status and headers reach the user.

The daemon puts Dragonfly's ``errordetails.v2.Backend`` JSON in the gRPC status details; dfget prints the
origin's response headers first and its error last (scripts read the last line).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from dragonfly.cli.cluster import LocalCluster, OriginProcess, run_dfget

PEER = "peer-1"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_origin_status_and_headers_are_shown(
    make_cluster: Callable[..., LocalCluster], origin: OriginProcess, tmp_path: Path
) -> None:
    cluster = make_cluster(peers=1, seed_peer=False)
    (origin.directory / "gone.bin").write_bytes(b"x" * 1000)
    origin.set_fault("gone.bin", "404")
    url = origin.url("gone.bin")
    output = tmp_path / "gone.bin"

    result = run_dfget(cluster.socket_path(PEER), url, output, timeout=60)

    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"dfget: error: download failed: origin returned HTTP 404 Not Found for {url}"
    assert lines[0] == "dfget: origin response headers:"
    assert "dfget:   Content-Type: text/plain; charset=utf-8" in lines[1:-1]
    assert "dfget:   Content-Length: 18" in lines[1:-1]  # "not found (fault)\n"
    assert not output.exists()


def test_connection_error_is_shown_without_headers(make_cluster: Callable[..., LocalCluster], tmp_path: Path) -> None:
    cluster = make_cluster(peers=1, seed_peer=False)
    url = f"http://127.0.0.1:{_closed_port()}/f.bin"

    result = run_dfget(cluster.socket_path(PEER), url, tmp_path / "f.bin", "--log-level", "debug", timeout=60)

    assert result.returncode == 1, result.stderr
    assert result.error is not None
    authority = url.split("/")[2]
    cause = f"cannot connect to {authority} (connection refused)"
    expected = f"dfget: error: download failed: stat of {url} failed: {cause}"
    assert result.error == expected, result.stderr
    assert "origin response headers" not in result.stderr

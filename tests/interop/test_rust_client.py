"""a) and c): Dragonfly's Rust client (dfdaemon, dfget) with our scheduler and our peers (issue 10).

a) a Rust seed peer and two Rust peers registered to our scheduler; Rust dfget downloads byte-identical, the origin
   serves the file once;
c) mixed swarms, pieces crossing both ways over Vortex: under our scheduler our seed peer serves a Rust peer (ours
   to Rust), then one of ours downloads after it; under Dragonfly's Go scheduler a Rust peer fetches first and one of
   ours gets its pieces from it (Rust to ours); our dfget against the Rust dfdaemon's socket.
Directions are read from both sides' own figures: our dfget's bytes by source, the Rust daemon's
dragonfly_client_download_traffic{type=...}.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from interop_helpers import (
    GO_MISSING,
    GoScheduler,
    MiB,
    RustDaemon,
    daemon_overrides,
    make_file,
    needs_rust,
    our_dfget,
    rust_dfget,
    sha256,
)

from dragonfly.cli.cluster import LocalCluster, OriginProcess

pytestmark = needs_rust
SIZE = 64 * MiB
TRAFFIC = "dragonfly_client_download_traffic"


def test_a_rust_daemons_on_our_scheduler(tmp_path: Path, our_cluster: LocalCluster, origin: OriginProcess) -> None:
    expected = make_file(origin, "file.bin", SIZE)
    url = origin.url("file.bin")
    addr = our_cluster.scheduler_addr
    with (
        RustDaemon(tmp_path / "rust-seed", "rust-seed", addr, seed=True),
        RustDaemon(tmp_path / "rust-1", "rust-1", addr) as first,
        RustDaemon(tmp_path / "rust-2", "rust-2", addr) as second,
    ):
        for daemon, out in ((first, tmp_path / "out-1"), (second, tmp_path / "out-2")):
            result = rust_dfget(daemon.socket_path, url, out)
            assert result.returncode == 0, result.stdout + result.stderr + daemon.logs()[-3000:]
            assert sha256(out) == expected
        assert SIZE <= origin.bytes_served() <= 1.02 * SIZE + 4096
        from_peers = second.metric(TRAFFIC, 'type="REMOTE_PEER"')
        print(f"crossing a: origin {origin.bytes_served()} B; rust-2 from peers {from_peers} B")
        assert from_peers >= SIZE // 2


def test_c_ours_to_rust_under_our_scheduler(tmp_path: Path, our_cluster: LocalCluster, origin: OriginProcess) -> None:
    expected = make_file(origin, "file.bin", SIZE)
    url = origin.url("file.bin")
    addr = our_cluster.scheduler_addr
    our_cluster.add_daemon("seed-peer", daemon_overrides(addr))
    with RustDaemon(tmp_path / "rust-1", "rust-1", addr) as rust:
        result = rust_dfget(rust.socket_path, url, tmp_path / "rust.out")
        assert result.returncode == 0, result.stdout + result.stderr + rust.logs()[-3000:]
        assert sha256(tmp_path / "rust.out") == expected
        rust_from_ours = rust.metric(TRAFFIC, 'type="REMOTE_PEER"')
        our_cluster.add_daemon("peer-1", daemon_overrides(addr))
        ours, sources = our_dfget(our_cluster.socket_path("peer-1"), url, tmp_path / "ours.out")
        assert ours.returncode == 0, ours.stderr
        assert sha256(tmp_path / "ours.out") == expected
        print(f"crossing c1: origin {origin.bytes_served()} B; rust-1 from our seed {rust_from_ours} B; ours {sources}")
        assert rust_from_ours >= SIZE // 2
        assert SIZE <= origin.bytes_served() <= 1.02 * SIZE + 4096


@pytest.mark.skipif(GO_MISSING is not None, reason=GO_MISSING or "")
def test_c_rust_to_ours_under_the_go_scheduler(
    tmp_path: Path, our_cluster: LocalCluster, origin: OriginProcess
) -> None:
    expected = make_file(origin, "file.bin", SIZE)
    url = origin.url("file.bin")
    with GoScheduler(tmp_path / "go") as go, RustDaemon(tmp_path / "rust-1", "rust-1", go.addr) as rust:
        result = rust_dfget(rust.socket_path, url, tmp_path / "rust.out")
        assert result.returncode == 0, result.stdout + result.stderr + rust.logs()[-3000:]
        our_cluster.add_daemon("peer-1", daemon_overrides(go.addr))
        ours, sources = our_dfget(our_cluster.socket_path("peer-1"), url, tmp_path / "ours.out")
        assert ours.returncode == 0, ours.stderr + go.logs()[-3000:]
        assert sha256(tmp_path / "ours.out") == sha256(tmp_path / "rust.out") == expected
        print(f"crossing c2: origin {origin.bytes_served()} B; ours from rust {sources}")
        assert sources["peers"] + sources["seed"] >= SIZE // 2, sources
        # Our dfget against the Rust dfdaemon's local API (the :authority fix).
        local, _ = our_dfget(rust.socket_path, url, tmp_path / "ours-via-rust.out")
        assert local.returncode == 0, local.stderr
        assert sha256(tmp_path / "ours-via-rust.out") == expected
        assert SIZE <= origin.bytes_served() <= 1.02 * SIZE + 4096

"""a) and c): Dragonfly's Rust client (dfdaemon, dfget) with our scheduler and our peers (issue 10).

a) a Rust seed peer and two Rust peers registered to our scheduler; Rust dfget downloads byte-identical, the origin
   serves the file once; then one of our peers gets the file from them (the Rust seed peer's CRC-32 piece digests
   are the trusted ones, ``pieceVerification: compatible``);
c) mixed swarms, pieces crossing both ways over Vortex: under our scheduler our seed peer serves a Rust peer; under
   each scheduler (ours and Dragonfly's Go one), without seed peers, a Rust peer fetches from the origin, one of ours
   from it (Rust to ours), then, that Rust peer gone, a second Rust peer from ours (ours to Rust); our dfget against
   the Rust dfdaemon's socket.
Directions are read from both sides: the parent peer id of every piece (our dfget's ``--log-level debug`` lines,
the Rust daemon's debug log of its task module) and the byte counters (our dfget's bytes by source, both daemons'
``dragonfly_client_download_traffic{type=...}`` / ``dragonfly_client_upload_traffic``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from interop_helpers import (
    GO_MISSING,
    GoScheduler,
    MiB,
    RustDaemon,
    bytes_from,
    daemon_overrides,
    is_peer_of,
    make_file,
    metric,
    needs_rust,
    our_dfget,
    rust_dfget,
    sha256,
)

from dragonfly.cli.cluster import LocalCluster, OriginProcess
from tests.waiting import wait_for

pytestmark = needs_rust
SIZE = 64 * MiB
DOWNLOADED = "dragonfly_client_download_traffic"
UPLOADED = "dragonfly_client_upload_traffic"
FROM_PEERS = 'type="REMOTE_PEER"'


def served_once(origin: OriginProcess, size: int) -> bool:
    """The origin sent each byte once (plus the few bytes of ranged probes both clients make)."""
    return size <= origin.bytes_served() <= 1.02 * size + 4096


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
        assert served_once(origin, SIZE), origin.bytes_served()
        # Our scheduler triggered the Rust seed peer for rust-1 and handed rust-1 to rust-2.
        first_parents = first.pieces_by_parent()
        assert first_parents, "no piece came from a parent"
        assert all(is_peer_of(p, "rust-seed") for p in first_parents), first_parents
        second_parents = second.pieces_by_parent()
        assert second_parents, "no piece came from a parent"
        assert all(is_peer_of(p, "rust-seed", "rust-1") for p in second_parents), second_parents
        assert second.metric(DOWNLOADED, FROM_PEERS) == SIZE
        # One of ours joins: every byte from the Rust peers, checked against the Rust seed's digests.
        our_cluster.add_daemon("peer-1", daemon_overrides(addr))
        ours, sources = our_dfget(our_cluster.socket_path("peer-1"), url, tmp_path / "ours.out")
        assert ours.returncode == 0, ours.stderr
        assert sha256(tmp_path / "ours.out") == expected
        assert bytes_from(sources, "rust-seed", "rust-1", "rust-2") == SIZE, sources
        assert served_once(origin, SIZE), origin.bytes_served()
        print(
            f"\ncrossing a: {SIZE} B; origin {origin.bytes_served()} B; rust-1 pieces by parent {first_parents}; "
            f"rust-2 {second_parents}; ours from Rust {bytes_from(sources, 'rust-seed', 'rust-1', 'rust-2')} B"
        )


def test_c_our_seed_serves_rust_under_our_scheduler(
    tmp_path: Path, our_cluster: LocalCluster, origin: OriginProcess
) -> None:
    expected = make_file(origin, "file.bin", SIZE)
    url = origin.url("file.bin")
    addr = our_cluster.scheduler_addr
    seed = our_cluster.add_daemon("seed-peer", daemon_overrides(addr))  # the name makes it a seed peer
    with RustDaemon(tmp_path / "rust-1", "rust-1", addr) as rust:
        result = rust_dfget(rust.socket_path, url, tmp_path / "rust.out")
        assert result.returncode == 0, result.stdout + result.stderr + rust.logs()[-3000:]
        assert sha256(tmp_path / "rust.out") == expected
        parents = rust.pieces_by_parent()
        assert parents, "no piece came from a parent"
        assert all(is_peer_of(p, "seed-peer") for p in parents), parents
        assert rust.metric(DOWNLOADED, FROM_PEERS) == SIZE
        # Our upload counters are updated when a serving thread hands its connection back to the event loop, up to
        # a quarter of a second after the last piece went out (91c1851): wait for them, boundedly.
        seed_uploaded = wait_for(
            lambda: (served := metric(seed.listening["metrics"], UPLOADED)) >= SIZE and served,
            5,
            "the seed's upload counter to reach the bytes served",
        )
        assert served_once(origin, SIZE), origin.bytes_served()
        print(f"\ncrossing c1: {SIZE} B; origin {origin.bytes_served()} B; our seed uploaded {seed_uploaded} B; "
              f"rust-1 pieces by parent {parents}")  # fmt: skip


@pytest.mark.parametrize("scheduler", ["ours", pytest.param("go", marks=pytest.mark.skipif(
    GO_MISSING is not None, reason=GO_MISSING or ""))])  # fmt: skip
def test_c_pieces_cross_both_ways(
    tmp_path: Path, our_cluster: LocalCluster, origin: OriginProcess, scheduler: str
) -> None:
    expected = make_file(origin, "file.bin", SIZE)
    other = make_file(origin, "other.bin", 8 * MiB)
    url = origin.url("file.bin")
    with contextlib.ExitStack() as stack:
        addr = (
            our_cluster.scheduler_addr
            if scheduler == "ours"
            else stack.enter_context(GoScheduler(tmp_path / "go")).addr
        )
        first = stack.enter_context(RustDaemon(tmp_path / "rust-1", "rust-1", addr))
        result = rust_dfget(first.socket_path, url, tmp_path / "rust-1.out")
        assert result.returncode == 0, result.stdout + result.stderr + first.logs()[-3000:]
        # Rust to ours: no seed peer, so rust-1 fetched from the origin and is our peer's only possible parent.
        ours = our_cluster.add_daemon("peer-1", daemon_overrides(addr))
        downloaded, sources = our_dfget(our_cluster.socket_path("peer-1"), url, tmp_path / "ours.out")
        assert downloaded.returncode == 0, downloaded.stderr
        assert sha256(tmp_path / "ours.out") == sha256(tmp_path / "rust-1.out") == expected
        rust_to_ours = bytes_from(sources, "rust-1")
        assert rust_to_ours == SIZE, sources
        assert first.metric(UPLOADED) >= rust_to_ours
        # Ours to Rust: rust-1 leaves; rust-2's only possible parent is our peer.
        first.stop()
        second = stack.enter_context(RustDaemon(tmp_path / "rust-2", "rust-2", addr))
        result = rust_dfget(second.socket_path, url, tmp_path / "rust-2.out")
        assert result.returncode == 0, result.stdout + result.stderr + second.logs()[-3000:]
        assert sha256(tmp_path / "rust-2.out") == expected
        parents = second.pieces_by_parent()
        assert parents, "no piece came from a parent"
        assert all(is_peer_of(p, "peer-1") for p in parents), parents
        ours_to_rust = second.metric(DOWNLOADED, FROM_PEERS)
        assert ours_to_rust == SIZE
        wait_for(
            lambda: metric(ours.listening["metrics"], UPLOADED) >= ours_to_rust,
            5,
            "our peer's upload counter to reach the bytes served (counted as its serving thread hands back)",
        )
        assert served_once(origin, SIZE), origin.bytes_served()
        # Our dfget against the Rust dfdaemon's local API (unix socket).
        local, _ = our_dfget(second.socket_path, origin.url("other.bin"), tmp_path / "other.out")
        assert local.returncode == 0, local.stderr
        assert sha256(tmp_path / "other.out") == other
        print(f"\ncrossing c2 ({scheduler} scheduler): {SIZE} B; origin {origin.bytes_served()} B (with 8 MiB "
              f"through the Rust socket); Rust to ours {rust_to_ours} B; ours to Rust {ours_to_rust} B")  # fmt: skip

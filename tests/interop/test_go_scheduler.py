"""b) Our seed peer and peers under Dragonfly's Go scheduler (issue 10): byte-identical, the origin serves the file
once, and the second peer gets its bytes from the first.

The Go scheduler triggers a seed peer only after its seed-peer refresh (about 30 s) has health-checked it; until then
it answers back-to-source, so here the first peer fetches from the origin and the second from the first.
"""

from __future__ import annotations

from pathlib import Path

from interop_helpers import GoScheduler, MiB, daemon_overrides, make_file, needs_go, our_dfget, sha256

from dragonfly.cli.cluster import LocalCluster, OriginProcess

pytestmark = needs_go
SIZE = 64 * MiB


def test_our_daemons_under_the_go_scheduler(tmp_path: Path, our_cluster: LocalCluster, origin: OriginProcess) -> None:
    with GoScheduler(tmp_path / "go-scheduler") as go:
        for name in ("seed-peer", "peer-1", "peer-2"):
            our_cluster.add_daemon(name, daemon_overrides(go.addr))
        expected = make_file(origin, "file.bin", SIZE)
        url = origin.url("file.bin")
        first, first_sources = our_dfget(our_cluster.socket_path("peer-1"), url, tmp_path / "out-1")
        assert first.returncode == 0, first.stderr + go.logs()[-3000:]
        second, second_sources = our_dfget(our_cluster.socket_path("peer-2"), url, tmp_path / "out-2")
        assert second.returncode == 0, second.stderr
        assert sha256(tmp_path / "out-1") == sha256(tmp_path / "out-2") == expected
        assert SIZE <= origin.bytes_served() <= 1.02 * SIZE + 4096  # the stats' ranged probes
        # peer-2 got most of the file from another of our peers, by the Go scheduler's choice of parents.
        assert second_sources["peers"] + second_sources["seed"] >= SIZE // 2, second_sources
        print(f"crossing b: origin {origin.bytes_served()} B; peer-1 {first_sources}; peer-2 {second_sources}")

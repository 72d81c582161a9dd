"""Back-to-source under churn, ours against Dragonfly's Go scheduler, side by side in one run (issue 10).

With no candidate parent Dragonfly's scheduler retries (about 4 × 500 ms) before sending a peer to the origin; ours
decides at once when nothing can produce the task and waits only while another peer is fetching it from the origin
(dragonfly/scheduler/scheduling/scheduling.py). Under churn that could send more peers to the origin. The same
scenario runs under both schedulers with our daemons (no seed peer, so nothing is triggered): peer-1 fetches from a
slow origin, three more peers join and take its pieces, peer-1 is killed half-way. Every surviving download must be
byte-identical; the origin bytes of each run are printed and ours must not exceed the Go scheduler's by more than
one file (one more peer sent to the origin).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from interop_helpers import GoScheduler, MiB, daemon_overrides, make_file, needs_go, sha256

from dragonfly.cli.cluster import LocalCluster, OriginProcess

pytestmark = needs_go
SIZE = 32 * MiB
RATE = 8 * MiB  # origin bytes/s: peer-1 needs about 4 s, long enough to die half-way
CHILDREN = 3


def wait_for(condition: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.05)


def dfget(cluster: LocalCluster, name: str, url: str, output: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "dragonfly.cli.dfget", url, "-O", str(output), "-e", cluster.socket_path(name),
               "--no-progress", "--timeout", "120s"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def churn(cluster: LocalCluster, origin: OriginProcess, scheduler_addr: str, prefix: str, tmp_path: Path) -> int:
    """Run the scenario under one scheduler; return the origin bytes of its file."""
    name = f"{prefix}.bin"
    expected = make_file(origin, name, SIZE)
    origin.set_fault(name, "slow", rate=RATE)
    peers = [f"{prefix}-{n}" for n in range(1, CHILDREN + 2)]
    for peer in peers:
        cluster.add_daemon(peer, daemon_overrides(scheduler_addr))
    url = origin.url(name)
    first = dfget(cluster, peers[0], url, tmp_path / f"{prefix}-first.out")
    wait_for("peer-1's first piece", lambda: origin.bytes_served(name) >= 4 * MiB)
    children = [dfget(cluster, peer, url, tmp_path / f"{peer}.out") for peer in peers[1:]]
    wait_for("peer-1 half-way", lambda: origin.bytes_served(name) >= SIZE // 2)
    cluster.kill(peers[0])
    at_kill = origin.bytes_served(name)
    first.communicate(timeout=30)  # its daemon is gone: it fails
    for peer, child in zip(peers[1:], children, strict=True):
        _, stderr = child.communicate(timeout=180)
        assert child.returncode == 0, f"{peer}: {stderr}"
        assert sha256(tmp_path / f"{peer}.out") == expected
        print(f"{peer}: {stderr.strip().splitlines()[-1]}")
    print(f"{prefix}: origin bytes when peer-1 was killed {at_kill}")
    return origin.bytes_served(name)


def test_origin_bytes_under_churn(tmp_path: Path, our_cluster: LocalCluster, origin: OriginProcess) -> None:
    ours = churn(our_cluster, origin, our_cluster.scheduler_addr, "ours", tmp_path)
    with GoScheduler(tmp_path / "go") as go:
        theirs = churn(our_cluster, origin, go.addr, "go", tmp_path)
    print(f"\nchurn: origin bytes for a {SIZE} B file: ours {ours} ({ours / SIZE:.2f} F), Go {theirs} "
          f"({theirs / SIZE:.2f} F)")  # fmt: skip
    assert ours <= theirs + SIZE

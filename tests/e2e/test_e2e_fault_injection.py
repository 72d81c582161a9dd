"""Fault injection in a running swarm: a parent killed, and a trickling, a silent and a corrupting peer claiming the
file, all while 8 peers download it. Every peer must end with the origin's bytes.

This is the correctness half of issue 8's fault-injection run; the time it costs against a clean swarm is measured
by ``python -m bench swarm --systems ours,ours-faults`` (docs/robustness.md#fault-injection).

The origin is paced so the swarm lasts a few seconds. Peers start in two waves: the second once the misbehaving peers
have claimed the file, so the scheduler certainly offers them as parents. The victim is the first peer seen serving
another one while its own download is still running (waiting for one chosen in advance to become a parent depended
on the scheduler's choice and could time out).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from misbehaving_peer import MisbehavingPeer
from swarm_helpers import MiB, describe, dfget_in_background, make_file, sha256_of, uploaded_bytes

from dragonfly.cli.cluster import LocalCluster, OriginProcess
from dragonfly.common.identity import ROLE_PEER
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

SIZE = 48 * MiB
ORIGIN_RATE = 8 * MiB  # per response
HOSTILE = ("trickle", "silent", "corrupt")


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=9) as running:
        yield running


def test_every_peer_gets_the_right_bytes_despite_a_killed_parent_and_three_hostile_ones(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    name = "faults.bin"
    sha = make_file(origin, name, SIZE)
    origin.set_fault(name, "slow", rate=ORIGIN_RATE)
    url, out = origin.url(name), module_dir / "faults"
    first, second = cluster.peer_names[:5], cluster.peer_names[5:]
    liars = []
    try:
        with dfget_in_background(cluster, first, url, out, timeout=300) as wave_1:
            wait_for(lambda: origin.bytes_served(name) > 0, 60, "the swarm to start")
            for mode in HOSTILE:
                hostname = f"hostile-{mode}"
                files = cluster.issue_cert(hostname, roles=(ROLE_PEER,))
                liar = MisbehavingPeer(
                    cluster.scheduler_addr, url, origin.directory / name, mode=mode, hostname=hostname, files=files
                )
                liar.start()
                liars.append(liar)
            with dfget_in_background(cluster, second, url, out, timeout=300) as wave_2:
                downloads = wave_1 | wave_2

                def serving_parent() -> str | None:
                    running = [peer for peer, f in downloads.items() if not f.done()]
                    return next((peer for peer in running if uploaded_bytes(cluster, peer) > 0), None)

                victim = wait_for(serving_parent, 120, "a downloading peer to serve another one")
                cluster.kill(victim)
                results = {peer: f.result() for peer, f in downloads.items() if peer != victim}
                victim_result = downloads[victim].result()
    finally:
        for liar in liars:
            liar.stop()
        origin.clear_faults()
    assert all(r.ok for r in results.values()), describe(results)
    for peer in results:
        assert sha256_of(out / peer) == sha, peer
    if victim_result.ok:  # it may have finished just before the kill
        assert sha256_of(out / victim) == sha
    else:
        assert not (out / victim).exists()
    # The second wave registered after the misbehaving peers claimed the file: each was tried as a parent.
    for liar in liars:
        assert liar.sync_pieces_calls >= 1, f"{liar.mode} peer was never offered as a parent"
    cluster.restart(victim)
    assert cluster.check_alive() == []

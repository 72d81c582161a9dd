"""Hostile peers cost an honest download seconds, never the protocol's minutes-long timeouts.

Each test first times a clean download of a file of the same size on the same daemon, then lets a misbehaving peer
(tests/e2e/misbehaving_peer.py) claim a second file and be the only parent the scheduler can offer for it. The
honest download must still finish, byte-exact, within the clean time plus an allowance derived from the configured
limits (minDuration of a slow piece, firstCollectedPieceTimeout) and a generous slack for a loaded machine; before
the fixes each of these took 6 minutes or more (pieceTimeout and collectedPieceTimeout are 360 s and stay so here).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from misbehaving_peer import MisbehavingPeer
from swarm_helpers import (
    MiB,
    daemon_metric,
    describe,
    dfget_all,
    dfget_on,
    failures,
    make_file,
    sha256_of,
)

from dragonfly.cli.cluster import SEED_PEER, LocalCluster, OriginProcess
from dragonfly.common import ids, native, tls
from dragonfly.common.identity import ROLE_PEER
from dragonfly.daemon.config import DownloadConfig
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

# Above 4 MiB, so downloads go through the scheduler; 4 pieces of 4 MiB.
SIZE = 16 * MiB
DEFAULTS = DownloadConfig()
# What a loaded 2-core machine may add on top of the configured limits (the protocol's own timeouts are 360 s).
SLACK = 30.0
# dfget gives up well before the 360 s timeouts the attacks used to hit, so a regression fails in minutes.
DFGET_TIMEOUT = 150.0


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=3) as running:
        yield running


def _clean_then_hostile(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path, peer: str, mode: str
) -> tuple[float, float, MisbehavingPeer]:
    """Return the seconds of a clean download and of one whose only parent misbehaves as ``mode``."""
    make_file(origin, f"{mode}-clean.bin", SIZE)
    clean = dfget_on(cluster, peer, origin.url(f"{mode}-clean.bin"), module_dir / f"{mode}-clean.bin")
    assert clean.ok, clean.stderr
    name = f"{mode}.bin"
    sha = make_file(origin, name, SIZE)
    url = origin.url(name)
    hostname = f"liar-{mode}"
    files = cluster.issue_cert(hostname, roles=(ROLE_PEER,))
    liar = MisbehavingPeer(
        cluster.scheduler_addr, url, origin.directory / name, mode=mode, hostname=hostname, files=files
    )
    liar.start()
    try:
        result = dfget_on(cluster, peer, url, module_dir / name, timeout=DFGET_TIMEOUT)
    finally:
        liar.stop()
    assert result.ok, result.stderr
    assert sha256_of(module_dir / name) == sha
    return clean.seconds, result.seconds, liar


@pytest.mark.parametrize("mode", ["trickle", "mute"])
def test_a_parent_too_slow_to_be_useful_is_abandoned_within_seconds(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path, mode: str
) -> None:
    peer = "peer-1" if mode == "trickle" else "peer-2"
    abandoned = failures(cluster, peer, "piece_too_slow")
    clean, hostile, liar = _clean_then_hostile(cluster, origin, module_dir, peer, mode)
    assert liar.vortex_requests >= 1, "the misbehaving peer was never asked for a piece"
    assert failures(cluster, peer, "piece_too_slow") > abandoned, "no piece was abandoned as too slow"
    # The daemon knows its piece rates from the clean download, so a useless transfer is dropped after minDuration.
    allowance = DEFAULTS.slow_piece.min_duration + SLACK
    assert hostile <= clean + allowance, f"clean {clean:.1f}s, with a {mode} parent {hostile:.1f}s"


def test_a_parent_that_never_reports_a_piece_is_dropped_after_the_first_answer_deadline(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    clean, hostile, liar = _clean_then_hostile(cluster, origin, module_dir, "peer-3", "silent")
    assert liar.sync_pieces_calls >= 1, "the misbehaving peer was never asked for its pieces"
    assert liar.vortex_requests == 0
    # It claims to have finished the task, so it must answer within FINISHED_FIRST_ANSWER (2 s), not the 10 s a
    # parent still downloading gets; either bound is far below the 6 minutes it used to cost.
    allowance = DEFAULTS.first_collected_piece_timeout + SLACK
    assert hostile <= clean + allowance, f"clean {clean:.1f}s, with a silent parent {hostile:.1f}s"
    log = cluster.log_path("peer-3").read_text()
    assert "no piece reported within 2s of asking" in log, "the silent parent was dropped without a word in the log"


def test_trickling_parents_of_two_tasks_do_not_starve_an_unrelated_download(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    """Issue 8 item 2: two tasks whose only parent trickles would hold every receive buffer of the daemon (2 x 8
    pieces in flight, 16 buffers), and an honest download of a third file there used to time out waiting for one."""
    peer = "peer-2"
    make_file(origin, "starve-clean.bin", SIZE)
    clean = dfget_on(cluster, peer, origin.url("starve-clean.bin"), module_dir / "starve-clean.bin")
    assert clean.ok, clean.stderr
    liars: list[MisbehavingPeer] = []
    shas: dict[str, str] = {}
    for index in range(2):
        name = f"starve-trickle-{index}.bin"
        shas[name] = make_file(origin, name, 2 * SIZE)  # 8 pieces: a whole task's concurrency
        hostname = f"liar-starve-{index}"
        files = cluster.issue_cert(hostname, roles=(ROLE_PEER,))
        liar = MisbehavingPeer(
            cluster.scheduler_addr, origin.url(name), origin.directory / name, mode="trickle", hostname=hostname,
            files=files,
        )  # fmt: skip
        liar.start()
        liars.append(liar)
    honest = "starve-honest.bin"
    shas[honest] = make_file(origin, honest, SIZE)
    try:
        with ThreadPoolExecutor(3) as pool:
            hostile = {
                name: pool.submit(dfget_on, cluster, peer, origin.url(name), module_dir / name, timeout=DFGET_TIMEOUT)
                for name in shas
                if name != honest
            }
            # The honest download starts once the trickles hold buffers (a bound, not a speed requirement).
            wait_for(lambda: all(liar.vortex_requests >= 1 for liar in liars), DFGET_TIMEOUT, "trickled transfers")
            result = dfget_on(cluster, peer, origin.url(honest), module_dir / honest, timeout=DFGET_TIMEOUT)
            results = {name: future.result() for name, future in hostile.items()}
    finally:
        for liar in liars:
            liar.stop()
    assert result.ok, result.stderr
    assert all(r.ok for r in results.values()), describe(results)
    for name, sha in shas.items():
        assert sha256_of(module_dir / name) == sha, name
    allowance = DEFAULTS.slow_piece.min_duration + SLACK
    assert result.seconds <= clean.seconds + allowance, describe({"clean": clean, "honest": result})


@contextlib.contextmanager
def stalled_readers(cluster: LocalCluster, daemon: str, task_id: str, count: int) -> Iterator[list[socket.socket]]:
    """Open ``count`` Vortex connections to ``daemon`` that each ask for piece 0 and then never read."""
    host, _, port = cluster.process(daemon).listening["vortex"].rpartition(":")
    files = cluster.tls_files("stalled-reader") or cluster.issue_cert("stalled-reader", roles=(ROLE_PEER,))
    context = tls.client_ssl_context(files) if cluster.tls else None
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect((host, int(port)))
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=host)
            sock.sendall(native.encode_download_piece(task_id, 0))
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_readers_that_never_read_do_not_stall_the_seed_or_a_peer(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    """Issue 8 item 1: more stalled readers than upload threads on the seed and a peer; others still get pieces."""
    held = "stalled-held.bin"
    sha_held = make_file(origin, held, SIZE)
    first = dfget_on(cluster, "peer-1", origin.url(held), module_dir / held)
    assert first.ok, first.stderr
    make_file(origin, "stalled-clean.bin", SIZE)
    clean = dfget_on(cluster, "peer-2", origin.url("stalled-clean.bin"), module_dir / "stalled-clean.bin")
    assert clean.ok, clean.stderr
    fresh = "stalled-fresh.bin"
    sha_fresh = make_file(origin, fresh, SIZE)
    task_id = ids.task_id(origin.url(held))
    # 48 > the 32 upload threads a daemon used to block on slow readers, on both daemons that hold the file.
    with stalled_readers(cluster, SEED_PEER, task_id, 48), stalled_readers(cluster, "peer-1", task_id, 48):
        held_copy = dfget_on(cluster, "peer-3", origin.url(held), module_dir / "stalled-held-2.bin")
        fresh_copy = dfget_on(cluster, "peer-2", origin.url(fresh), module_dir / fresh)
        # The attack was still on: the stalled connections were being served (not refused) all along.
        assert daemon_metric(cluster, SEED_PEER, "dragonfly_dfdaemon_upload_connections") >= 48
    assert held_copy.ok, held_copy.stderr
    assert fresh_copy.ok, fresh_copy.stderr
    assert sha256_of(module_dir / "stalled-held-2.bin") == sha_held
    assert sha256_of(module_dir / fresh) == sha_fresh
    assert held_copy.traffic is not None
    assert held_copy.traffic["origin"] == 0, "the stalled daemons were skipped for the origin"
    for result in (held_copy, fresh_copy):
        assert result.seconds <= clean.seconds + SLACK, describe({"clean": clean, "attacked": result})
    # And the swarm is healthy afterwards.
    after = dfget_all(cluster, ["peer-1", "peer-3"], origin.url(fresh), module_dir / "stalled-after")
    assert all(r.ok for r in after.values()), describe(after)

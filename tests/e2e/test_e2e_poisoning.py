"""A hostile peer cannot get its bytes into any output or cache (docs/security.md, "Piece digests").

The attacker announces itself, registers the task as fetched from the origin, claims every piece and serves bytes
of its own with matching CRC-32s; in the second test it also reports BLAKE3 digests of its bytes, trying to make
them the trusted ones. Every download must still produce the origin's bytes, every daemon's cache must hold them
(checked by downloading again: a local hit), and the attacker must be reported to the scheduler.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from misbehaving_peer import MisbehavingPeer
from swarm_helpers import MiB, describe, dfget_all, dfget_on, make_file, sha256_of

from dragonfly.cli.cluster import LocalCluster, OriginProcess
from dragonfly.common.identity import ROLE_PEER

pytestmark = pytest.mark.slow

SIZE = 20 * MiB


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=3) as running:
        yield running


def _bad_parent_marks(cluster: LocalCluster) -> int:
    addr = cluster.process("scheduler").listening["scheduler metrics"]
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(int(float(m)) for m in re.findall(r"^\w*bad_parent_marks_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.mark.parametrize("report_blake3", [False, True], ids=["crc32-reports", "blake3-reports"])
def test_forged_bytes_never_reach_an_output_or_a_cache(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path, report_blake3: bool
) -> None:
    name = f"poison-{report_blake3}.bin"
    sha = make_file(origin, name, SIZE)
    forged = module_dir / f"forged-{report_blake3}.bin"
    forged_sha = make_file(origin, forged.name, SIZE)  # the attacker's own bytes, same size
    url = origin.url(name)
    marks_before = _bad_parent_marks(cluster)
    # A member of the cluster (mutual TLS): a valid peer certificate for its own host name, nothing more.
    hostname = f"attacker-{report_blake3}"
    liar = MisbehavingPeer(
        cluster.scheduler_addr,
        url,
        origin.directory / name,
        forged=origin.directory / forged.name,
        report_blake3=report_blake3,
        hostname=hostname,
        files=cluster.issue_cert(hostname, roles=(ROLE_PEER,)),
    )
    liar.start()
    try:
        # The attacker holds the finished task before anyone asks: the first download is offered it as a parent.
        out = module_dir / f"out-{report_blake3}"
        out.mkdir()
        first = dfget_on(cluster, "peer-1", url, out / "peer-1")
        assert first.ok, first.stderr
        assert sha256_of(out / "peer-1") == sha
        rest = dfget_all(cluster, cluster.peer_names[1:], url, out)
        assert all(r.ok for r in rest.values()), describe(rest)
        for peer in cluster.peer_names:
            assert sha256_of(out / peer) == sha != forged_sha, peer
        assert liar.vortex_requests >= 1, "the attacker was never asked for a piece"
        # Its forged piece was reported as such: the scheduler marked it bad.
        assert _bad_parent_marks(cluster) > marks_before
        # What each daemon cached is the origin's too: a second download is a local hit with the same bytes.
        again = module_dir / f"again-{report_blake3}"
        again.mkdir()
        for peer in cluster.peer_names:
            result = dfget_on(cluster, peer, url, again / peer)
            assert result.ok, result.stderr
            assert sha256_of(again / peer) == sha, peer
    finally:
        liar.stop()

"""The swarm at work: 1 scheduler, 1 seed peer, 4 peers fetch one 256 MiB random file at the same time.

Each byte should leave the origin about once (the seed fetches it) and the peers should feed each other rather
than all pulling from the seed. A second round is served from the daemons' storage, also after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from swarm_helpers import MiB, describe, dfget_all, dfget_on, make_file, sha256_of

from dragonfly.cli.cluster import DfgetResult, LocalCluster, OriginProcess

pytestmark = pytest.mark.slow

SIZE = 256 * MiB
PEERS = 4


class Round(NamedTuple):
    url: str
    sha256: str
    results: dict[str, DfgetResult]
    origin_bytes: int


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=PEERS) as running:
        yield running


@pytest.fixture(scope="module")
def first_round(cluster: LocalCluster, origin: OriginProcess, module_dir: Path) -> Round:
    sha = make_file(origin, "big.bin", SIZE)
    origin.reset_stats()
    results = dfget_all(cluster, cluster.peer_names, origin.url("big.bin"), module_dir / "round1")
    return Round(origin.url("big.bin"), sha, results, origin.bytes_served("big.bin"))


def test_every_peer_gets_the_origin_bytes(first_round: Round, module_dir: Path) -> None:
    assert all(r.ok for r in first_round.results.values()), describe(first_round.results)
    for peer in first_round.results:
        assert sha256_of(module_dir / "round1" / peer) == first_round.sha256, peer


def test_origin_serves_each_byte_about_once(first_round: Round) -> None:
    assert first_round.origin_bytes <= 1.05 * SIZE, describe(first_round.results)


def test_peers_feed_each_other(first_round: Round) -> None:
    traffic = [r.traffic for r in first_round.results.values()]
    assert all(t is not None for t in traffic), describe(first_round.results)
    received = sum(sum(t.values()) for t in traffic if t)
    from_other_peers = sum(t["peers"] for t in traffic if t)
    assert received == PEERS * SIZE
    assert from_other_peers >= 0.5 * received, describe(first_round.results)


def test_second_round_needs_no_origin(
    first_round: Round, cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    origin.reset_stats()
    results = dfget_all(cluster, cluster.peer_names, first_round.url, module_dir / "round2")
    assert all(r.ok for r in results.values()), describe(results)
    assert origin.bytes_served() == 0
    for peer, result in results.items():
        assert sha256_of(module_dir / "round2" / peer) == first_round.sha256, peer
        assert result.traffic == {"origin": 0, "seed": 0, "peers": 0, "local": SIZE}, describe(results)


def test_restarted_daemon_still_serves_the_task(
    first_round: Round, cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    cluster.restart("peer-1")
    origin.reset_stats()
    output = module_dir / "after-restart.bin"
    result = dfget_on(cluster, "peer-1", first_round.url, output)
    assert result.ok, result.stderr
    assert sha256_of(output) == first_round.sha256
    assert result.traffic == {"origin": 0, "seed": 0, "peers": 0, "local": SIZE}
    assert origin.bytes_served() == 0

"""Failures the user sees through dfget: origin errors, wrong digest, full storage, rate limit, no scheduler.

One cluster for the module: peer-1 is ordinary, peer-2 keeps its storage on a 48 MiB tmpfs, peer-3 has
``download.bandwidthLimit: 20MiB/s``. The scheduler test runs last because it stops the scheduler.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from swarm_helpers import (
    MiB,
    daemon_metric,
    dfget_in_background,
    dfget_on,
    make_file,
    mount_tmpfs,
    sha256_of,
    unmount,
)

from dragonfly.cli.cluster import SCHEDULER, SEED_PEER, LocalCluster, OriginProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

# Above 4 MiB, so downloads go through the scheduler rather than straight to the origin.
SIZE = 16 * MiB


@pytest.fixture(scope="module")
def small_storage(module_dir: Path) -> Iterator[tuple[Path, str | None]]:
    path = module_dir / "small-storage"
    why_not = mount_tmpfs(path, "48m")
    yield path, why_not
    if why_not is None:
        unmount(path)


@pytest.fixture(scope="module")
def cluster(module_dir: Path, small_storage: tuple[Path, str | None]) -> Iterator[LocalCluster]:
    peer_configs = {
        "peer-2": {"storage": {"dir": str(small_storage[0])}},
        "peer-3": {"download": {"bandwidthLimit": "20MiB/s"}},
    }
    with LocalCluster(module_dir / "cluster", peers=3, peer_configs=peer_configs) as running:
        yield running


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("404", r"\b404\b"),
        ("500", r"\b500\b"),
        ("reset", r"(?i)reset|closed|broken|eof|incomplete"),
        ("short", r"(?i)short|incomplete|closed|eof|expected|truncat|fewer"),
    ],
)
def test_origin_errors_fail_clearly(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path, mode: str, expected: str
) -> None:
    name = f"fault-{mode}.bin"
    make_file(origin, name, SIZE)
    origin.set_fault(name, mode)
    output = module_dir / name
    try:
        result = dfget_on(cluster, "peer-1", origin.url(name), output, "--timeout", "60s", timeout=120)
    finally:
        origin.clear_faults()
    assert result.returncode == 1, result.stderr
    assert (result.error or "").startswith("dfget: error: download failed:"), result.stderr
    assert re.search(expected, result.error or ""), result.error
    # It failed with the origin's error, not dfget's --timeout 60s, so it did not wait for the deadline.
    assert "timed out" not in (result.error or "")
    assert not output.exists()


def test_an_origin_error_does_not_take_the_seed_out_of_service(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    """Issue 8 item 11: a 500 the seed got from the origin once sent every new file straight to the origin."""
    make_file(origin, "seed-500.bin", SIZE)
    origin.set_fault("seed-500.bin", "500")
    try:
        failed = dfget_on(
            cluster, "peer-1", origin.url("seed-500.bin"), module_dir / "seed-500.bin", "--timeout", "60s"
        )
    finally:
        origin.clear_faults()
    assert failed.returncode == 1, failed.stderr
    sha = make_file(origin, "after-500.bin", SIZE)
    result = dfget_on(cluster, "peer-1", origin.url("after-500.bin"), module_dir / "after-500.bin")
    assert result.ok, result.stderr
    assert sha256_of(module_dir / "after-500.bin") == sha
    assert result.traffic is not None
    assert result.traffic["origin"] == 0, f"the seed was skipped after an origin error: {result.traffic}"
    assert result.traffic["seed"] > 0


def test_disable_back_to_source_still_lets_the_seed_fetch(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    """Issue 8 item 10: the flag was forwarded to the seed, which then refused to fetch the file for the swarm."""
    sha = make_file(origin, "no-b2s.bin", SIZE)
    output = module_dir / "no-b2s.bin"
    result = dfget_on(cluster, "peer-1", origin.url("no-b2s.bin"), output, "--disable-back-to-source", timeout=120)
    assert result.ok, result.stderr
    assert sha256_of(output) == sha
    assert result.traffic is not None
    assert result.traffic["origin"] == 0
    assert result.traffic["seed"] == SIZE


def test_wrong_digest_fails_without_file(cluster: LocalCluster, origin: OriginProcess, module_dir: Path) -> None:
    make_file(origin, "digest.bin", SIZE)
    output = module_dir / "digest.bin"
    wrong = "sha256:" + "0" * 64
    result = dfget_on(cluster, "peer-1", origin.url("digest.bin"), output, "--digest", wrong)
    assert result.returncode == 1, result.stderr
    assert re.search(r"(?i)digest", result.error or ""), result.stderr
    assert "0" * 64 in (result.error or ""), result.stderr
    assert not output.exists()


def test_right_digest_succeeds(cluster: LocalCluster, origin: OriginProcess, module_dir: Path) -> None:
    sha = make_file(origin, "digest-ok.bin", SIZE)
    output = module_dir / "digest-ok.bin"
    result = dfget_on(cluster, "peer-1", origin.url("digest-ok.bin"), output, "--digest", f"sha256:{sha}")
    assert result.ok, result.stderr
    assert sha256_of(output) == sha


def test_storage_full_fails_clearly_and_daemon_keeps_working(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path, small_storage: tuple[Path, str | None]
) -> None:
    if small_storage[1] is not None:
        pytest.skip(small_storage[1])
    make_file(origin, "too-big.bin", 64 * MiB)
    output = module_dir / "too-big.bin"
    result = dfget_on(cluster, "peer-2", origin.url("too-big.bin"), output, "--timeout", "60s", timeout=120)
    assert result.returncode == 1, result.stderr
    assert re.search(r"(?i)no space|space left|storage|disk full", result.error or ""), result.stderr
    assert not output.exists()
    assert cluster.process("peer-2").running
    sha = make_file(origin, "fits.bin", 8 * MiB)
    result = dfget_on(cluster, "peer-2", origin.url("fits.bin"), module_dir / "fits.bin")
    assert result.ok, result.stderr
    assert sha256_of(module_dir / "fits.bin") == sha


def test_disk_full_during_a_download_is_reported_at_once_with_the_path(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path, small_storage: tuple[Path, str | None]
) -> None:
    """Issue 8 item 9: the storage fills up while pieces arrive; the user sees why and where, at once."""
    if small_storage[1] is not None:
        pytest.skip(small_storage[1])
    storage = small_storage[0]
    name = "fills-up.bin"
    size = 24 * MiB
    make_file(origin, name, size)
    origin.set_fault(name, "slow", rate=4 * MiB)  # per response: ~1 s per piece, so the fill lands mid-download
    received = "dragonfly_client_download_traffic"
    before = sum(daemon_metric(cluster, "peer-2", received, f'type="{t}"') for t in ("BACK_TO_SOURCE", "REMOTE_PEER"))
    filler = storage / "filler.bin"
    try:
        with dfget_in_background(cluster, ["peer-2"], origin.url(name), module_dir / "fills-up") as running:

            def got() -> float:
                metric = (
                    daemon_metric(cluster, "peer-2", received, f'type="{t}"') for t in ("BACK_TO_SOURCE", "REMOTE_PEER")
                )
                return sum(metric) - before

            wait_for(lambda: got() > 0, 60, "peer-2 to receive its first piece")
            with open(filler, "wb") as f:  # take every free byte of the tmpfs
                chunk = b"\0" * MiB
                try:
                    while True:
                        f.write(chunk)
                        f.flush()
                except OSError:
                    pass
            result = running["peer-2"].result()
        assert result.returncode == 1, result.stderr
        assert "no space left on device" in (result.error or ""), result.stderr
        assert str(storage) in (result.error or ""), result.stderr
        # At once: it did not wait for the rest of the file (nor blame the parents and refetch it elsewhere).
        assert got() < size
        assert not (module_dir / "fills-up" / "peer-2").exists()
        assert cluster.process("peer-2").running
    finally:
        filler.unlink(missing_ok=True)
        origin.clear_faults()
    sha = make_file(origin, "after-full.bin", 8 * MiB)
    after = dfget_on(cluster, "peer-2", origin.url("after-full.bin"), module_dir / "after-full.bin")
    assert after.ok, after.stderr
    assert sha256_of(module_dir / "after-full.bin") == sha


def test_download_bandwidth_limit(cluster: LocalCluster, origin: OriginProcess, module_dir: Path) -> None:
    sha = make_file(origin, "limited.bin", 100 * MiB)
    url = origin.url("limited.bin")
    # Warm the seed peer first so the timed download measures the limit, not the origin or the seed's start-up:
    # with the seed holding the task, every piece's trusted digest is known at once (docs/security.md).
    warm = dfget_on(cluster, SEED_PEER, url, module_dir / "limited-warm.bin")
    assert warm.ok, warm.stderr
    # A hard link: the timed part is the transfer, not the copy of the output (docs/output-and-cache.md).
    result = dfget_on(cluster, "peer-3", url, module_dir / "limited.bin", "--force-hard-link")
    assert result.ok, result.stderr
    assert sha256_of(module_dir / "limited.bin") == sha
    # The limit is a floor on the time (a loaded machine can only make it slower, so no upper bound: the bucket's
    # accuracy is measured in tests/native/test_token_bucket.py). Its burst is one 4 MiB piece.
    assert result.seconds >= (100 - 4) / 20 * 0.95, f"100 MiB at 20 MiB/s took only {result.seconds:.2f}s"


def test_scheduler_unreachable(cluster: LocalCluster, origin: OriginProcess, module_dir: Path) -> None:
    cluster.kill(SCHEDULER)
    try:
        sha = make_file(origin, "no-scheduler.bin", SIZE)
        output = module_dir / "no-scheduler.bin"
        began = time.monotonic()
        result = dfget_on(cluster, "peer-1", origin.url("no-scheduler.bin"), output, timeout=120)
        assert result.ok, result.stderr
        # Bounded, not fast: the regression this guards against waits out scheduleTimeout (hours) or dfget's 2 h.
        assert time.monotonic() - began < 100, "back-to-source without a scheduler took too long"
        assert sha256_of(output) == sha
        assert result.traffic == {"origin": SIZE, "seed": 0, "peers": 0, "local": 0}

        make_file(origin, "no-scheduler-no-source.bin", SIZE)
        output = module_dir / "no-scheduler-no-source.bin"
        result = dfget_on(
            cluster, "peer-1", origin.url("no-scheduler-no-source.bin"), output, "--disable-back-to-source",
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert (result.error or "").startswith("dfget: error: download failed:"), result.stderr
        assert re.search(r"(?i)scheduler|back.to.source", result.error or ""), result.error
        assert not output.exists()
    finally:
        cluster.restart(SCHEDULER)

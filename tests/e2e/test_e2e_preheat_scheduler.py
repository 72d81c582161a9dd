"""The scheduler's preheat RPCs against real processes: PreheatFile, PreheatImage, StatFile, StatImage.

One module-wide cluster (scheduler, seed peer, 3 peers on loopback addresses of their own so scopes can pick by
IP), the demo origin (it counts the bytes it serves) and Debian's docker-registry holding images built here and
pushed with skopeo (its access log counts blob bytes). Each test uses files and repositories of its own, so the
shared caches never decide an outcome. Calls are made as the manager makes them: a manager-role certificate and
the wait mode that returns per-host results.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import duration_pb2
from preheat_helpers import hosts_of, preheat, rpc_error, scheduler_channel

from dragonfly.cli.cluster import LocalCluster, OriginProcess, run_dfget
from dragonfly.cli.registry import MultiPlatformImage, RegistryProcess, build_multi_platform_image, push
from dragonfly.common.identity import ROLE_PEER
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("docker-registry", "skopeo")),
    reason="needs docker-registry and skopeo (scripts/system-deps.sh installs them)",
)

MIB = 1024 * 1024
IPS = {"peer-1": "127.0.0.2", "peer-2": "127.0.0.3", "peer-3": "127.0.0.4"}
PEERS = ["peer-1", "peer-2", "peer-3"]


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=3, daemon_ips=IPS) as running:
        yield running


@pytest.fixture(scope="module")
def registry(module_dir: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(module_dir / "registry") as server:
        yield server


def push_image(module_dir: Path, registry: RegistryProcess, repository: str) -> MultiPlatformImage:
    """Build a two-platform image index with random layers and push it as ``repository:v1``."""
    image = build_multi_platform_image(
        module_dir / repository.replace("/", "-"),
        # Layers above 4 MiB: smaller tasks are fetched from the origin by every daemon (Dragonfly's rule).
        {"linux/amd64": [5 * MIB, 1 * MIB], "linux/arm64": [6 * MIB, 5 * MIB]},
        tag="v1",
    )
    push(image, registry, repository, all_platforms=True)
    return image


@pytest.fixture
async def stub(cluster: LocalCluster) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    channel = scheduler_channel(cluster)
    yield scheduler_pb2_grpc.SchedulerStub(channel)
    await channel.close()


def origin_file(origin: OriginProcess, name: str, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    (origin.directory / name).write_bytes(data)
    return origin.url(name), data


async def dfget(cluster: LocalCluster, name: str, url: str, output: Path) -> dict[str, int]:
    result = await asyncio.to_thread(run_dfget, cluster.socket_path(name), url, output, timeout=120)
    assert result.ok, result.stderr
    assert result.traffic is not None
    return result.traffic


def served_once(origin: OriginProcess, name: str, size: int) -> bool:
    """Return whether the origin sent the file's bytes once (each daemon's stat of the origin reads 1 byte more)."""
    return size <= origin.bytes_served(name) <= size + 16


def _timeout(seconds: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(seconds))


# ------------------------------------------------------------------------------------------------ files


async def test_single_seed_peer_then_a_peer_downloads_from_the_swarm(
    cluster: LocalCluster, origin: OriginProcess, stub: scheduler_pb2_grpc.SchedulerStub, tmp_path: Path
) -> None:
    url, data = origin_file(origin, "single.bin", 12 * MIB)
    plan, result = await preheat(
        stub, "PreheatFile", scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url=url)
    )
    assert plan == {"urls": 1, "hosts": 1, "platforms": []}
    assert result["failure_tasks"] == []
    assert result["success_tasks"] == [{"url": url, "hostname": "seed-peer", "ip": "127.0.0.1"}]
    assert served_once(origin, "single.bin", len(data))

    traffic = await dfget(cluster, "peer-1", url, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    assert traffic["origin"] == 0
    assert served_once(origin, "single.bin", len(data))

    stat = await stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=30)
    holders = {peer.hostname: [(f.url, f.is_finished) for f in peer.cached_files] for peer in stat.peers}
    assert holders == {"seed-peer": [(url, True)], "peer-1": [(url, True)]}


async def test_all_peers_reaches_every_peer_with_one_origin_fetch(
    origin: OriginProcess, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    url, data = origin_file(origin, "all.bin", 16 * MIB)
    _plan, result = await preheat(stub, "PreheatFile", scheduler_pb2.PreheatFileRequest(url=url, scope="all_peers"))
    assert result["failure_tasks"] == []
    assert hosts_of(result["success_tasks"]) == PEERS
    assert {task["ip"] for task in result["success_tasks"]} == set(IPS.values())
    assert served_once(origin, "all.bin", len(data))
    stat = await stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=30)
    finished = {peer.hostname for peer in stat.peers if all(f.is_finished for f in peer.cached_files)}
    assert set(PEERS) <= finished


async def test_count_one_reaches_exactly_one_peer(
    origin: OriginProcess, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    url, _ = origin_file(origin, "count.bin", 4 * MIB)
    request = scheduler_pb2.PreheatFileRequest(url=url, scope="all_peers", count=1)
    plan, result = await preheat(stub, "PreheatFile", request)
    assert plan["hosts"] == 1
    assert len(result["success_tasks"]) == 1
    chosen = result["success_tasks"][0]["hostname"]
    assert chosen in PEERS
    stat = await stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=30)
    assert {peer.hostname for peer in stat.peers} - {"seed-peer"} == {chosen}


async def test_ips_reach_only_those_peers(origin: OriginProcess, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    url, _ = origin_file(origin, "ips.bin", 4 * MIB)
    request = scheduler_pb2.PreheatFileRequest(url=url, scope="all_peers", ips=["127.0.0.3", "127.0.0.4"], count=1)
    _plan, result = await preheat(stub, "PreheatFile", request)
    # ips win over count.
    assert hosts_of(result["success_tasks"]) == ["peer-2", "peer-3"]
    stat = await stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=30)
    assert {peer.hostname for peer in stat.peers} - {"seed-peer"} == {"peer-2", "peer-3"}


async def test_all_seed_peers(origin: OriginProcess, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    url, _ = origin_file(origin, "seeds.bin", 4 * MIB)
    request = scheduler_pb2.PreheatFileRequest(url=url, scope="all_seed_peers")
    _plan, result = await preheat(stub, "PreheatFile", request)
    assert hosts_of(result["success_tasks"]) == ["seed-peer"]


async def test_origin_failure_is_reported_per_host(
    origin: OriginProcess, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    url = origin.url("missing.bin")
    request = scheduler_pb2.PreheatFileRequest(url=url, scope="all_peers", ips=["127.0.0.2"])
    _plan, result = await preheat(stub, "PreheatFile", request)
    assert result["success_tasks"] == []
    [failure] = result["failure_tasks"]
    assert (failure["hostname"], failure["ip"], failure["url"]) == ("peer-1", "127.0.0.2", url)
    assert "404" in failure["description"]


async def test_without_wait_the_call_returns_and_the_preheat_runs(
    origin: OriginProcess, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    url, data = origin_file(origin, "background.bin", 8 * MIB)
    await stub.PreheatFile(scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url=url), timeout=30)

    async def seeded() -> bool:
        stat = await stub.StatFile(scheduler_pb2.StatFileRequest(url=url), timeout=30)
        return any(peer.hostname == "seed-peer" and peer.cached_files[0].is_finished for peer in stat.peers)

    await eventually(seeded, 60, "the background preheat to finish on the seed peer", interval=0.2)
    assert served_once(origin, "background.bin", len(data))


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (scheduler_pb2.PreheatFileRequest(url="http://x/f", scope="everyone"), "INVALID_ARGUMENT", "scope"),
        (
            scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url="http://x/f", piece_length=1024),
            "INVALID_ARGUMENT",
            "piece_length",
        ),
        (
            scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url="http://x/f", output_path="/etc/x"),
            "INVALID_ARGUMENT",
            "output_path",
        ),
        (scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url="x"), "INVALID_ARGUMENT", "absolute URI"),
        (
            scheduler_pb2.PreheatFileRequest(url="http://x/f", scope="all_peers", ips=["10.9.9.9"]),
            "NOT_FOUND",
            "no peer of this scheduler has one of the IPs 10.9.9.9",
        ),
        (
            scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url="http://x/f", ips=["not-an-ip"]),
            "INVALID_ARGUMENT",
            "not an IP",
        ),
    ],
)
async def test_bad_requests(
    stub: scheduler_pb2_grpc.SchedulerStub, request_: scheduler_pb2.PreheatFileRequest, code: str, message: str
) -> None:
    error = await rpc_error(stub.PreheatFile(request_, timeout=30))
    assert error.code().name == code
    assert message in (error.details() or "")


async def test_only_the_manager_role_may_preheat(cluster: LocalCluster) -> None:
    channel = scheduler_channel(cluster, "some-peer", (ROLE_PEER,))
    try:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        error = await rpc_error(
            stub.PreheatFile(scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url="http://x/f"), timeout=30)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "PreheatFile needs a certificate with role manager" in (error.details() or "")
    finally:
        await channel.close()


# ------------------------------------------------------------------------------------------------ images


async def test_image_platform_arm64_then_peers_pull_its_layers_from_the_swarm(
    module_dir: Path,
    cluster: LocalCluster,
    registry: RegistryProcess,
    stub: scheduler_pb2_grpc.SchedulerStub,
    tmp_path: Path,
) -> None:
    image = push_image(module_dir, registry, "arm/app")
    arm, amd = image.images["linux/arm64"], image.images["linux/amd64"]
    url = f"{registry.url}/v2/arm/app/manifests/v1"
    request = scheduler_pb2.PreheatImageRequest(
        scope="single_seed_peer", url=url, platform="linux/arm64", timeout=_timeout(120)
    )
    plan, result = await preheat(stub, "PreheatImage", request)
    blob_urls = [f"{registry.url}/v2/arm/app/blobs/{blob.digest}" for blob in (arm.config, *arm.layers)]
    assert plan == {"urls": 3, "hosts": 1, "platforms": ["linux/arm64"]}
    assert result["failure_tasks"] == []
    assert sorted(task["url"] for task in result["success_tasks"]) == sorted(blob_urls)

    def logged_in_full() -> Counter[str] | None:
        counts = registry.blob_bytes()
        return counts if all(counts[b.digest] >= b.size for b in (arm.config, *arm.layers)) else None

    # The registry logs a request after its last byte left, which can be after the seed peer reported success.
    fetched = await eventually(logged_in_full, 30, "the registry to log every arm64 blob it sent in full")
    for blob in (amd.config, *amd.layers):
        assert fetched[blob.digest] == 0, f"amd64 blob {blob.digest} was fetched"

    for i, layer in enumerate(arm.layers):
        traffic = await dfget(cluster, "peer-3", f"{registry.url}/v2/arm/app/blobs/{layer.digest}", tmp_path / f"l{i}")
        assert traffic["origin"] == 0
    after = registry.blob_bytes()
    # The peer's stat of each blob reads one byte from the registry; the bytes themselves came from the seed.
    assert all(after[layer.digest] - fetched[layer.digest] <= 16 for layer in arm.layers)

    stat = await stub.StatImage(scheduler_pb2.StatImageRequest(url=url, platform="linux/arm64"), timeout=60)
    assert [layer.url for layer in stat.image.layers] == blob_urls
    holders = {peer.hostname: {layer.url for layer in peer.cached_layers if layer.is_finished} for peer in stat.peers}
    assert holders["seed-peer"] == set(blob_urls)
    assert holders["peer-3"] == set(blob_urls[1:])


async def test_image_without_platform_gets_the_platform_the_hosts_announce(
    module_dir: Path, registry: RegistryProcess, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    image = push_image(module_dir, registry, "announced/app")
    url = f"{registry.url}/v2/announced/app/manifests/v1"
    request = scheduler_pb2.PreheatImageRequest(url=url, scope="all_peers", ips=["127.0.0.2"])
    plan, result = await preheat(stub, "PreheatImage", request)
    # The daemons here run on amd64 machines and say so (build.platform); the other platform stays untouched.
    assert plan["platforms"] == ["linux/amd64"]
    amd = image.images["linux/amd64"]
    assert len(result["success_tasks"]) == 1 + len(amd.layers)
    fetched = registry.blob_bytes()
    assert all(
        fetched[blob.digest] == 0 for blob in (image.images["linux/arm64"].config, *image.images["linux/arm64"].layers)
    )


async def test_missing_platform_and_image_fail_with_the_registrys_reason(
    module_dir: Path, registry: RegistryProcess, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    push_image(module_dir, registry, "missing/app")
    url = f"{registry.url}/v2/missing/app/manifests/v1"
    error = await rpc_error(
        stub.PreheatImage(scheduler_pb2.PreheatImageRequest(scope="single_seed_peer", url=url, platform="linux/s390x"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no manifest for platform linux/s390x" in (error.details() or "")
    assert "linux/amd64, linux/arm64" in (error.details() or "")

    missing = f"{registry.url}/v2/missing/app/manifests/v2"
    error = await rpc_error(
        stub.PreheatImage(
            scheduler_pb2.PreheatImageRequest(scope="single_seed_peer", url=missing, platform="linux/arm64")
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "MANIFEST_UNKNOWN: manifest unknown" in (error.details() or "")

    error = await rpc_error(
        stub.PreheatImage(
            scheduler_pb2.PreheatImageRequest(scope="single_seed_peer", url=f"{registry.url}/v2/x/blobs/y")
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a manifest URL" in (error.details() or "")

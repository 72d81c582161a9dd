"""The manager's job engine against real processes: preheat jobs fanned out to a scheduler, per-host results.

One module-wide cluster (scheduler, seed peer, 3 peers on loopback addresses of their own), the demo origin and
Debian's docker-registry holding a two-platform image pushed with skopeo. The engine runs in the test process
with the in-process queue, or with two engines on one real redis-server (several managers); it calls the
scheduler as the manager does, with a manager-role certificate.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from preheat_helpers import CHANNEL_OPTIONS
from tls_helpers import make_ca, make_server_cert

from dragonfly.cli.cluster import LocalCluster, OriginProcess, run_dfget
from dragonfly.cli.registry import MultiPlatformImage, RegistryProcess, build_multi_platform_image, push
from dragonfly.cli.services import RedisProcess
from dragonfly.common import tls
from dragonfly.manager.jobs.engine import JobEngine
from dragonfly.manager.jobs.model import FAILURE, PENDING, SUCCESS, JobRecord, MemoryJobStore
from dragonfly.manager.jobs.preheat import DEFAULT_REGISTRY_TLS, RegistryTLS, SchedulerTarget
from dragonfly.manager.jobs.queue import MemoryQueue, RedisQueue
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("docker-registry", "skopeo", "redis-server")),
    reason="needs docker-registry, skopeo and redis-server (scripts/system-deps.sh installs them)",
)

MIB = 1024 * 1024
IPS = {"peer-1": "127.0.0.2", "peer-2": "127.0.0.3", "peer-3": "127.0.0.4"}
PEERS = ["peer-1", "peer-2", "peer-3"]
CLUSTER_ID = 1


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=3, daemon_ips=IPS) as running:
        yield running


@pytest.fixture(scope="module")
def registry(module_dir: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(module_dir / "registry") as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(module_dir: Path) -> Iterator[RedisProcess]:
    with RedisProcess(module_dir / "redis") as server:
        yield server


def make_engine(
    cluster: LocalCluster,
    store: MemoryJobStore,
    queue: Any,
    name: str = "manager-1",
    registry_tls: RegistryTLS = DEFAULT_REGISTRY_TLS,
) -> JobEngine:
    files = cluster.client_files("test-manager")

    async def directory(ids: Sequence[int]) -> Mapping[int, Sequence[SchedulerTarget]]:
        wanted = ids or [CLUSTER_ID]
        return {
            cid: [SchedulerTarget(cid, cluster.scheduler_addr, "scheduler")] if cid == CLUSTER_ID else []
            for cid in wanted
        }

    channels: dict[str, Any] = {}

    def channel(address: str) -> Any:
        if address not in channels:
            channels[address] = tls.aio_channel(address, files, CHANNEL_OPTIONS)
        return channels[address]

    engine = JobEngine(store, queue, directory, channel, workers=2, name=name, registry_tls=registry_tls)
    engine.channels_opened = channels  # type: ignore[attr-defined]
    return engine


async def close_engine(engine: JobEngine, *, release: bool = True) -> None:
    await engine.stop(release=release)
    for channel in engine.channels_opened.values():  # type: ignore[attr-defined]
        await channel.close()


@pytest.fixture
async def engine(cluster: LocalCluster) -> AsyncIterator[JobEngine]:
    running = make_engine(cluster, MemoryJobStore(), MemoryQueue())
    await running.start()
    yield running
    await close_engine(running)


def origin_file(origin: OriginProcess, name: str, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    (origin.directory / name).write_bytes(data)
    return origin.url(name), data


def outcome(job: JobRecord) -> tuple[list[str], list[dict[str, Any]]]:
    """Return (hostnames that succeeded, failure entries) of a one-cluster job."""
    [job_state] = job.result["job_states"]
    [entry] = job_state["results"]
    assert entry["scheduler_cluster_id"] == CLUSTER_ID
    return sorted(task["hostname"] for task in entry["success_tasks"]), entry["failure_tasks"]


async def wait_running(store: MemoryJobStore | Any, job_id: int) -> None:
    """Wait (at most 60 s) until a manager runs the job."""

    async def running() -> bool:
        current = await store.get(job_id)
        assert current is not None
        return bool(current.progress.get("phase") == "running")

    await eventually(running, 60, f"job {job_id} to start")


def push_image(module_dir: Path, registry: RegistryProcess, repository: str) -> MultiPlatformImage:
    image = build_multi_platform_image(
        module_dir / repository.replace("/", "-"),
        # Layers above 4 MiB: smaller tasks are fetched from the origin by every daemon (Dragonfly's rule).
        {"linux/amd64": [5 * MIB, 1 * MIB], "linux/arm64": [6 * MIB, 5 * MIB]},
        tag="v1",
    )
    push(image, registry, repository, all_platforms=True)
    return image


async def test_file_preheat_all_peers_records_every_host_and_who_holds_it(
    engine: JobEngine, origin: OriginProcess
) -> None:
    url, data = origin_file(origin, "all.bin", 8 * MIB)
    job = await engine.submit_preheat({"type": "file", "url": url, "scope": "all_peers"}, scheduler_cluster_ids=[1])
    assert job.state == PENDING
    assert isinstance(job.id, int)
    done = await engine.wait(job.id, 120)
    assert done.state == SUCCESS, done.result
    assert done.progress["phase"] == "succeeded"
    assert done.progress["attempt"] == 1
    succeeded, failed = outcome(done)
    assert succeeded == PEERS
    assert failed == []
    assert len(data) <= origin.bytes_served("all.bin") <= len(data) + 16
    [entry] = done.result["job_states"][0]["results"]
    cached = {peer["hostname"]: peer["cached"] for peer in entry["peers"]}
    assert all(cached[name] == [url] for name in PEERS)


async def test_count_and_ips_choose_the_hosts(engine: JobEngine, origin: OriginProcess) -> None:
    url, _ = origin_file(origin, "count.bin", 5 * MIB)
    one = await engine.submit_preheat({"type": "file", "url": url, "scope": "all_peers", "count": 1})
    url2, _ = origin_file(origin, "ips.bin", 5 * MIB)
    two = await engine.submit_preheat(
        {"type": "file", "url": url2, "scope": "all_peers", "ips": ["127.0.0.3", "127.0.0.4"]}
    )
    done_one, done_two = await engine.wait(one.id, 120), await engine.wait(two.id, 120)
    assert done_one.state == SUCCESS
    assert len(outcome(done_one)[0]) == 1
    assert done_two.state == SUCCESS
    assert outcome(done_two)[0] == ["peer-2", "peer-3"]


async def test_a_host_that_fails_is_reported_with_the_reason(engine: JobEngine, origin: OriginProcess) -> None:
    url = origin.url("missing.bin")
    job = await engine.submit_preheat({"type": "file", "url": url, "scope": "all_peers", "ips": ["127.0.0.2"]})
    done = await engine.wait(job.id, 120)
    assert done.state == FAILURE
    succeeded, failed = outcome(done)
    assert succeeded == []
    assert [f["hostname"] for f in failed] == ["peer-1"]
    assert "404" in failed[0]["description"]
    assert "reached no host" in done.result["job_states"][0]["error"]


async def test_image_arm64_preheat_then_a_peer_pulls_each_layer_from_the_swarm(
    module_dir: Path, cluster: LocalCluster, engine: JobEngine, registry: RegistryProcess, tmp_path: Path
) -> None:
    image = push_image(module_dir, registry, "jobs/app")
    arm, amd = image.images["linux/arm64"], image.images["linux/amd64"]
    url = f"{registry.url}/v2/jobs/app/manifests/v1"
    job = await engine.submit_preheat({"type": "image", "url": url, "platform": "linux/arm64"})
    done = await engine.wait(job.id, 180)
    assert done.state == SUCCESS, done.result
    blob_urls = sorted(f"{registry.url}/v2/jobs/app/blobs/{b.digest}" for b in (arm.config, *arm.layers))
    [entry] = done.result["job_states"][0]["results"]
    assert sorted(task["url"] for task in entry["success_tasks"]) == blob_urls
    assert {task["hostname"] for task in entry["success_tasks"]} == {"seed-peer"}
    fetched = registry.blob_bytes()
    assert all(fetched[b.digest] == 0 for b in (amd.config, *amd.layers)), "an amd64 blob was fetched"
    for i, layer in enumerate(arm.layers):
        blob = f"{registry.url}/v2/jobs/app/blobs/{layer.digest}"
        result = await asyncio.to_thread(
            run_dfget, cluster.socket_path("peer-1"), blob, tmp_path / f"l{i}", timeout=120
        )
        assert result.ok, result.stderr
        assert result.traffic is not None
        assert result.traffic["origin"] == 0
    after = registry.blob_bytes()
    assert all(after[b.digest] == 0 for b in (amd.config, *amd.layers))


async def test_missing_image_or_platform_fails_with_the_registrys_reason(
    module_dir: Path, engine: JobEngine, registry: RegistryProcess
) -> None:
    push_image(module_dir, registry, "jobs/missing")
    platform = await engine.submit_preheat(
        {"type": "image", "url": f"{registry.url}/v2/jobs/missing/manifests/v1", "platform": "linux/s390x"}
    )
    image = await engine.submit_preheat({"type": "image", "url": f"{registry.url}/v2/jobs/missing/manifests/v9"})
    done = await engine.wait(platform.id, 60)
    assert done.state == FAILURE
    assert "no manifest for platform linux/s390x" in done.result["job_states"][0]["error"]
    done = await engine.wait(image.id, 60)
    assert done.state == FAILURE
    assert "MANIFEST_UNKNOWN" in done.result["job_states"][0]["error"]


async def test_cancel_stops_a_running_job_and_timeout_ends_a_slow_one(engine: JobEngine, origin: OriginProcess) -> None:
    url, _ = origin_file(origin, "slow.bin", 16 * MIB)
    origin.set_fault("/slow.bin", "slow", rate=512 * 1024)
    try:
        job = await engine.submit_preheat({"type": "file", "url": url})
        await wait_running(engine.store, job.id)
        cancelled = await engine.cancel(job.id)
        assert cancelled.state == FAILURE
        assert cancelled.progress["phase"] == "cancelled"
        assert cancelled.result["error"] == "the job was cancelled"

        url2, _ = origin_file(origin, "slow2.bin", 16 * MIB)
        origin.set_fault("/slow2.bin", "slow", rate=512 * 1024)
        timed = await engine.submit_preheat({"type": "file", "url": url2, "timeout": 2 * 10**9})
        done = await engine.wait(timed.id, 120)
        assert done.state == FAILURE
        assert "timeout" in done.result["job_states"][0]["error"]
        # The cancelled job stays as it was ended.
        again = await engine.store.get(job.id)
        assert again is not None
        assert again.progress["phase"] == "cancelled"
    finally:
        origin.clear_faults()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_two_managers_on_redis_run_each_job_once_and_take_over_a_dead_ones_job(
    cluster: LocalCluster, origin: OriginProcess, redis_server: RedisProcess
) -> None:
    store = MemoryJobStore()  # stands in for the shared database
    prefix = f"test:{uuid.uuid4().hex}"
    queues = [RedisQueue.from_url(redis_server.url, prefix=prefix, lease=3.0, renew_interval=1.0) for _ in range(2)]
    first = make_engine(cluster, store, queues[0], "manager-1")
    second = make_engine(cluster, store, queues[1], "manager-2")
    first.reap_interval = second.reap_interval = 0.5
    slow_url, _ = origin_file(origin, "takeover.bin", 12 * MIB)
    origin.set_fault("/takeover.bin", "slow", rate=256 * 1024)
    try:
        await first.start()
        slow = await first.submit_preheat({"type": "file", "url": slow_url})
        await wait_running(store, slow.id)
        await second.start()
        jobs = []
        for i in range(4):
            url, _ = origin_file(origin, f"many-{i}.bin", 1 * MIB)
            engine = (first, second)[i % 2]
            jobs.append(await engine.submit_preheat({"type": "file", "url": url}))
        await first.stop(release=False)  # as if killed: its lease lapses, manager-2 takes the job over
        origin.clear_faults()
        done = list(await asyncio.gather(*(second.wait(job.id, 400) for job in (slow, *jobs))))
    finally:
        origin.clear_faults()
        await close_engine(first)
        await close_engine(second)
        for queue in queues:
            await queue.close()
    assert [job.state for job in done] == [SUCCESS] * 5, [job.result for job in done]
    assert done[0].progress["manager"] == "manager-2"
    assert done[0].progress["attempt"] == 2
    # A job runs again only when the manager that held it died: at most the dead one's two workers' jobs.
    retried = [job for job in done if job.progress["attempt"] != 1]
    assert len(retried) <= 2
    assert all(job.progress["attempt"] == 2 and job.progress["manager"] == "manager-2" for job in retried)


async def test_a_registry_with_a_private_ca_needs_the_configured_ca(
    module_dir: Path, cluster: LocalCluster, registry: RegistryProcess
) -> None:
    push_image(module_dir, registry, "private/app")
    ca = make_ca(module_dir / "ca", "registry-ca")
    cert = make_server_cert(ca, module_dir / "ca", "registry", ["127.0.0.1"])
    with RegistryProcess(module_dir / "registry", storage=registry.storage, name="registry-tls", tls=cert) as server:
        url = f"{server.url}/v2/private/app/manifests/v1"
        plain = make_engine(cluster, MemoryJobStore(), MemoryQueue())
        trusting = make_engine(
            cluster,
            MemoryJobStore(),
            MemoryQueue(),
            registry_tls=RegistryTLS((ca.cert.public_bytes(Encoding.DER),)),
        )
        await plain.start()
        await trusting.start()
        try:
            refused = await plain.wait((await plain.submit_preheat({"type": "image", "url": url})).id, 120)
            accepted = await trusting.wait((await trusting.submit_preheat({"type": "image", "url": url})).id, 180)
        finally:
            await close_engine(plain)
            await close_engine(trusting)
    assert refused.state == FAILURE
    assert "certificate" in refused.result["job_states"][0]["error"].lower()
    assert accepted.state == SUCCESS, accepted.result

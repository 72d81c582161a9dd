"""``dragonfly preheat`` against real processes: a manager (mutual TLS like the rest), a scheduler registered
with it, a seed peer and 3 peers, Debian's docker-registry holding a two-platform image index pushed with skopeo
from an OCI layout built here.

The command goes through the manager's Open API with a personal access token; the manager's job engine sends the
preheat to the scheduler; afterwards a peer downloads each arm64 layer from the swarm with zero origin bytes and
no amd64 blob ever left the registry. A missing image or platform fails with the registry's reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dragonfly.cli.cluster import LocalCluster, OriginProcess, run_dfget
from dragonfly.cli.registry import RegistryProcess, build_multi_platform_image, push
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("docker-registry", "skopeo")),
    reason="needs docker-registry and skopeo (scripts/system-deps.sh installs them)",
)

MIB = 1024 * 1024
ROOT_PASSWORD = "preheat-root-password"
IPS = {"peer-1": "127.0.0.2", "peer-2": "127.0.0.3", "peer-3": "127.0.0.4"}


def rest(cluster: LocalCluster, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(
        cluster.manager_url + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(
        module_dir / "cluster",
        peers=3,
        daemon_ips=IPS,
        manager=True,
        manager_config={"auth": {"rootPassword": ROOT_PASSWORD}},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def registry(module_dir: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(module_dir / "registry") as server:
        yield server


@pytest.fixture(scope="module")
def token(cluster: LocalCluster) -> str:
    """A personal access token with the job scope, once the scheduler is active in the manager."""
    session = rest(cluster, "POST", "/api/v1/users/signin", {"name": "root", "password": ROOT_PASSWORD})["token"]
    wait_for(
        lambda: any(s["state"] == "active" for s in rest(cluster, "GET", "/api/v1/schedulers", token=session)),
        60,
        "the scheduler to become active in the manager",
        interval=0.2,
    )
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    body = {"name": "preheat-e2e", "scopes": ["job"], "expired_at": expires}
    created: str = rest(cluster, "POST", "/api/v1/personal-access-tokens", body, token=session)["token"]
    return created


def preheat_cli(cluster: LocalCluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRAGONFLY_MANAGER": cluster.manager_url, "DRAGONFLY_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.dragonfly", "preheat", "--poll-interval", "0.3", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_cli_preheats_arm64_then_a_peer_pulls_each_layer_with_zero_origin_bytes(
    module_dir: Path, cluster: LocalCluster, registry: RegistryProcess, token: str, tmp_path: Path
) -> None:
    image = build_multi_platform_image(
        module_dir / "multi",
        # Layers above 4 MiB: smaller tasks are fetched from the origin by every daemon (Dragonfly's rule).
        {"linux/amd64": [5 * MIB, 6 * MIB], "linux/arm64": [6 * MIB, 5 * MIB]},
        tag="v1",
    )
    push(image, registry, "multi/app", all_platforms=True)
    arm, amd = image.images["linux/arm64"], image.images["linux/amd64"]
    name = f"{registry.addr}/multi/app:v1"
    done = await asyncio.to_thread(preheat_cli, cluster, token, name, "--plain-http", "--platform", "linux/arm64")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    for blob in (arm.config, *arm.layers):
        assert f"cached    {registry.url}/v2/multi/app/blobs/{blob.digest}" in done.stdout, done.stdout
    assert "seed-peer (127.0.0.1): 3 cached" in done.stdout
    fetched = registry.blob_bytes()
    assert all(fetched[b.digest] == 0 for b in (amd.config, *amd.layers)), "an amd64 blob was fetched"

    for i, layer in enumerate(arm.layers):
        url = f"{registry.url}/v2/multi/app/blobs/{layer.digest}"
        result = await asyncio.to_thread(run_dfget, cluster.socket_path("peer-2"), url, tmp_path / f"l{i}", timeout=120)
        assert result.ok, result.stderr
        assert result.traffic is not None
        assert result.traffic["origin"] == 0
    after = registry.blob_bytes()
    assert all(after[b.digest] == 0 for b in (amd.config, *amd.layers)), "an amd64 blob was fetched"


async def test_cli_missing_platform_or_image_fails_with_the_registrys_reason(
    module_dir: Path, cluster: LocalCluster, registry: RegistryProcess, token: str
) -> None:
    image = build_multi_platform_image(module_dir / "gone", {"linux/amd64": [1 * MIB], "linux/arm64": [1 * MIB]})
    push(image, registry, "gone/app", all_platforms=True)
    base = f"{registry.url}/v2/gone/app/manifests"
    platform = await asyncio.to_thread(preheat_cli, cluster, token, f"{base}/latest", "--platform", "linux/s390x")
    assert platform.returncode == 1
    assert "no manifest for platform linux/s390x" in platform.stdout, platform.stdout + platform.stderr
    missing = await asyncio.to_thread(preheat_cli, cluster, token, f"{base}/v9")
    assert missing.returncode == 1
    assert "MANIFEST_UNKNOWN" in missing.stdout, missing.stdout + missing.stderr


async def test_cli_scopes_count_and_ips(cluster: LocalCluster, origin: OriginProcess, token: str) -> None:
    (origin.directory / "scoped.bin").write_bytes(os.urandom(5 * MIB))
    url = origin.url("scoped.bin")
    one = await asyncio.to_thread(preheat_cli, cluster, token, url, "--scope", "all_peers", "--count", "1", "--json")
    assert one.returncode == 0, one.stderr
    job = json.loads(one.stdout)
    [entry] = job["result"]["job_states"][0]["results"]
    assert len(entry["success_tasks"]) == 1

    (origin.directory / "ips.bin").write_bytes(os.urandom(5 * MIB))
    args = (origin.url("ips.bin"), "--scope", "all_peers", "--ip", "127.0.0.2", "--ip", "127.0.0.4", "--json")
    both = await asyncio.to_thread(preheat_cli, cluster, token, *args)
    assert both.returncode == 0, both.stderr
    [entry] = json.loads(both.stdout)["result"]["job_states"][0]["results"]
    assert sorted(t["hostname"] for t in entry["success_tasks"]) == ["peer-1", "peer-3"]

    bad = await asyncio.to_thread(preheat_cli, cluster, "not-a-token", url)
    assert bad.returncode == 1
    assert "401" in bad.stderr

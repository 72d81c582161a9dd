"""The jobs REST API of a real (in-process) manager on SQLite, preheating through a real scheduler, seed peer and
peers and Debian's docker-registry: Harbor's exact bodies replayed against ``/oapi/v1/jobs`` and polled as Harbor
polls; the console's ``/api/v1/jobs``.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dragonfly.cli.cluster import LocalCluster, OriginProcess
from dragonfly.cli.registry import RegistryProcess, build_multi_platform_image, push
from dragonfly.common import oci
from dragonfly.manager import bootstrap, db
from dragonfly.manager.api.app import create_app, wrap
from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.context import ManagerContext
from dragonfly.manager.jobs.api import extension, start_jobs, stop_jobs
from tests.waiting import eventually

from .conftest import API, ROOT_PASSWORD, add_scheduler, manager_config

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("docker-registry", "skopeo")),
    reason="needs docker-registry and skopeo (scripts/system-deps.sh installs them)",
)

MIB = 1024 * 1024
HARBOR_TOKEN = "harbor-issued-registry-token-0123456789"
HARBOR_STATES = {"PENDING", "SUCCESS", "FAILURE"}


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs-api")


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    # The in-process manager runs without TLS (its test config), so the scheduler does too.
    with LocalCluster(module_dir / "cluster", peers=2, tls=False) as running:
        yield running


@pytest.fixture(scope="module")
def registry(module_dir: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(module_dir / "registry") as server:
        yield server


@pytest.fixture(scope="module")
def origin(module_dir: Path) -> Iterator[OriginProcess]:
    directory = module_dir / "origin"
    directory.mkdir()
    with OriginProcess(directory, module_dir / "origin.log") as server:
        yield server


@pytest.fixture
async def jobs_api(tmp_path: Path, cluster: LocalCluster) -> AsyncIterator[API]:
    """A migrated manager with the jobs extension started, its cluster 1 holding the running scheduler."""
    cfg = manager_config(tmp_path)
    engine = db.create_engine(db.database_url(cfg))
    ctx = ManagerContext(cfg, engine, db.session_factory(engine), SigninLimiter(3, 60))
    await db.migrate(engine)
    await bootstrap.bootstrap(ctx.sessions, ROOT_PASSWORD)
    await add_scheduler(ctx, cluster.scheduler_addr)
    app = wrap(create_app(ctx, [extension()]), ctx)
    await start_jobs(ctx)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://manager") as client:
            yield API(client, ctx)
    finally:
        await stop_jobs(ctx)
        await ctx.close_channels()
        await engine.dispose()


async def pat(api: API, scopes: list[str]) -> dict[str, str]:
    root = await api.signin()
    created = await api.make_token(root, scopes)
    return {"Authorization": f"Bearer {created['token']}"}


async def poll_as_harbor(api: API, headers: dict[str, str], job_id: int, *, limit: float = 180) -> dict[str, Any]:
    """GET /oapi/v1/jobs/<id> until it leaves PENDING (Harbor: every 10 s for 30 min; here faster, bounded)."""

    async def ended() -> dict[str, Any] | None:
        response = await api.client.get(f"/oapi/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        assert HARBOR_TOKEN not in response.text
        job: dict[str, Any] = response.json()
        assert job["state"] in HARBOR_STATES
        return job if job["state"] != "PENDING" else None

    done: dict[str, Any] = await eventually(ended, limit, f"job {job_id} to leave PENDING", interval=0.5)
    return done


def harbor_body(url: str, cluster_ids: list[int] | None) -> str:
    """The JSON Harbor's Dragonfly provider marshals: every field present, Go zero values where unset."""
    return json.dumps(
        {
            "type": "preheat",
            "args": {
                "type": "image",
                "url": url,
                "tag": "",
                "filtered_query_params": "",
                "headers": {"Authorization": f"Bearer {HARBOR_TOKEN}"},
                "scope": "single_peer",
                "concurrent_count": 0,
                "timeout": 0,
            },
            "scheduler_cluster_ids": cluster_ids,
        }
    )


@pytest.mark.parametrize("cluster_ids", [[1], None])
async def test_harbor_preheat_replayed_and_polled(
    jobs_api: API, module_dir: Path, registry: RegistryProcess, cluster_ids: list[int] | None
) -> None:
    repository = f"harbor/app{len(cluster_ids or [])}"
    image = build_multi_platform_image(module_dir / repository.replace("/", "-"), {"linux/amd64": [5 * MIB]}, tag="v1")
    push(image, registry, repository, all_platforms=True)
    url = f"{registry.url}/v2/{repository}/manifests/v1"

    health = await jobs_api.client.get("/healthy")
    assert health.status_code == 200
    headers = {**await pat(jobs_api, ["job"]), "Content-Type": "application/json"}
    response = await jobs_api.client.post("/oapi/v1/jobs", content=harbor_body(url, cluster_ids), headers=headers)
    assert response.status_code == 200, response.text
    assert HARBOR_TOKEN not in response.text
    created = response.json()
    assert isinstance(created["id"], int)
    assert created["state"] == "PENDING"
    for key in ("created_at", "updated_at"):
        assert dt.datetime.fromisoformat(created[key]).tzinfo is not None
    assert created["args"]["scope"] == "single_seed_peer"
    assert "Authorization" not in created["args"].get("headers", {})

    job = await poll_as_harbor(jobs_api, headers, created["id"])
    assert job["state"] == "SUCCESS", job["result"]
    assert job["progress"]["phase"] == "succeeded"
    # What Harbor renders: job_states[].results[].{success_tasks, failure_tasks, scheduler_cluster_id}.
    [state] = job["result"]["job_states"]
    [result] = state["results"]
    assert result["scheduler_cluster_id"] == 1
    amd = image.images["linux/amd64"]
    blobs = {f"{registry.url}/v2/{repository}/blobs/{b.digest}" for b in (amd.config, *amd.layers)}
    assert {task["url"] for task in result["success_tasks"]} == blobs
    assert {task["hostname"] for task in result["success_tasks"]} == {"seed-peer"}
    assert result["failure_tasks"] == []
    assert state["error"] == ""
    holdings = {peer["hostname"]: set(peer["cached"]) for peer in result["peers"]}
    assert holdings["seed-peer"] == blobs


async def test_harbor_sends_no_platform_and_the_hosts_own_platform_is_preheated(
    jobs_api: API, module_dir: Path, registry: RegistryProcess
) -> None:
    image = build_multi_platform_image(
        module_dir / "harbor-multi", {"linux/amd64": [5 * MIB], "linux/arm64": [5 * MIB]}, tag="v1"
    )
    push(image, registry, "harbor/multi", all_platforms=True)
    headers = {**await pat(jobs_api, ["job"]), "Content-Type": "application/json"}
    url = f"{registry.url}/v2/harbor/multi/manifests/v1"
    response = await jobs_api.client.post("/oapi/v1/jobs", content=harbor_body(url, [1]), headers=headers)
    assert response.status_code == 200, response.text
    job = await poll_as_harbor(jobs_api, headers, response.json()["id"])
    assert job["state"] == "SUCCESS", job["result"]
    [result] = job["result"]["job_states"][0]["results"]
    # The daemons announce this machine's platform: its layers are preheated, the other platform's never fetched.
    own = str(oci.local_platform())
    if own not in image.images:
        pytest.skip(f"this machine is {own}; the image offers linux/amd64 and linux/arm64")
    mine, (other,) = image.images[own], [img for name, img in image.images.items() if name != own]
    expected = {f"{registry.url}/v2/harbor/multi/blobs/{b.digest}" for b in (mine.config, *mine.layers)}
    assert {task["url"] for task in result["success_tasks"]} == expected
    fetched = registry.blob_bytes()
    assert all(fetched[b.digest] == 0 for b in (other.config, *other.layers))


async def test_a_missing_image_fails_with_the_registrys_reason(jobs_api: API, registry: RegistryProcess) -> None:
    headers = {**await pat(jobs_api, ["job"]), "Content-Type": "application/json"}
    url = f"{registry.url}/v2/harbor/none/manifests/v1"
    response = await jobs_api.client.post("/oapi/v1/jobs", content=harbor_body(url, [1]), headers=headers)
    assert response.status_code == 200, response.text
    job = await poll_as_harbor(jobs_api, headers, response.json()["id"])
    assert job["state"] == "FAILURE"
    assert "MANIFEST_UNKNOWN" in job["result"]["job_states"][0]["error"]


async def test_auth_scopes_and_bad_bodies(jobs_api: API, origin: OriginProcess) -> None:
    body = {"type": "preheat", "args": {"type": "file", "url": origin.url("x.bin")}}
    assert (await jobs_api.client.post("/oapi/v1/jobs", json=body)).status_code == 401
    cluster_only = await pat(jobs_api, ["cluster"])
    assert (await jobs_api.client.post("/oapi/v1/jobs", json=body, headers=cluster_only)).status_code == 403
    headers = await pat(jobs_api, ["job"])
    bad = await jobs_api.client.post(
        "/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "file", "url": "ftp://x/y"}}, headers=headers
    )
    assert bad.status_code == 422
    assert "scheme" in bad.json()["message"]
    unknown = await jobs_api.client.post("/oapi/v1/jobs", json={**body, "scheduler_cluster_ids": [99]}, headers=headers)
    assert unknown.status_code == 422
    assert "scheduler cluster 99 not found" in unknown.json()["message"]
    other = await jobs_api.client.post("/oapi/v1/jobs", json={"type": "sync_peers", "args": {}}, headers=headers)
    assert other.status_code == 422
    assert (await jobs_api.client.get("/oapi/v1/jobs/424242", headers=headers)).status_code == 404


async def test_console_lists_gets_cancels_and_deletes(jobs_api: API, origin: OriginProcess) -> None:
    root = await jobs_api.signin()
    (origin.directory / "console.bin").write_bytes(b"x" * (6 * MIB))
    origin.set_fault("/console.bin", "slow", rate=256 * 1024)
    try:
        body = {
            "type": "preheat",
            "bio": "from the console",
            "args": {"type": "file", "url": origin.url("console.bin"), "scope": "all_peers", "password": "pw"},
            "scheduler_cluster_ids": [1],
        }
        response = await jobs_api.client.post("/api/v1/jobs", json=body, headers=root)
        assert response.status_code == 200, response.text
        job = response.json()
        assert "password" not in job["args"]
        listed = await jobs_api.client.get("/api/v1/jobs", params={"type": "preheat", "state": "PENDING"}, headers=root)
        assert listed.status_code == 200
        assert [item["id"] for item in listed.json()] == [job["id"]]
        assert listed.headers["X-Total-Count"] == "1"
        cancelled = await jobs_api.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=root)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "FAILURE"
        assert cancelled.json()["progress"]["phase"] == "cancelled"
        patched = await jobs_api.client.patch(f"/api/v1/jobs/{job['id']}", json={"bio": "renamed"}, headers=root)
        assert patched.json()["bio"] == "renamed"
        assert (await jobs_api.client.get("/api/v1/jobs", params={"state": "RUNNING"}, headers=root)).status_code == 422
        assert (await jobs_api.client.delete(f"/api/v1/jobs/{job['id']}", headers=root)).status_code == 204
        assert (await jobs_api.client.get(f"/api/v1/jobs/{job['id']}", headers=root)).status_code == 404
    finally:
        origin.clear_faults()


async def test_openapi_documents_the_job_shapes(jobs_api: API) -> None:
    spec = (await jobs_api.client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/jobs" in spec["paths"]
    assert "/api/v1/jobs/{ident}/cancel" in spec["paths"]
    job = spec["components"]["schemas"]["JobOut"]
    assert job["properties"]["id"]["type"] == "integer"
    assert job["properties"]["state"]["enum"] == ["PENDING", "SUCCESS", "FAILURE"]

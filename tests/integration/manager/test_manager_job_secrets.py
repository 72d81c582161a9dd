"""A pending job's registry credentials at rest: sealed in the job row (read here with raw SQL), never in an
answer or a log line, still usable after a manager restart, wiped when the job ends, and a manager holding another
key fails the job with a message that says which key it needs; credentials inside URLs stay out of answers too, and
odd bodies get 422. SQLite and PostgreSQL; the preheat goes through a real scheduler and seed peer to Debian's
docker-registry behind htpasswd basic auth.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from dragonfly.cli.cluster import LocalCluster
from dragonfly.cli.registry import RegistryProcess, build_image, push
from dragonfly.cli.services import RedisProcess
from dragonfly.manager import bootstrap, config, db
from dragonfly.manager.api.app import create_app, wrap
from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.context import ManagerContext
from dragonfly.manager.jobs.api import EXTRA_KEY, extension, job_sealer, make_directory, start_jobs, stop_jobs
from dragonfly.manager.jobs.engine import JobEngine
from dragonfly.manager.jobs.queue import MemoryQueue
from dragonfly.manager.jobs.sealing import Sealer, SecretsUnavailable, ensure_key_file, key_id, read_key_file
from dragonfly.manager.jobs.store import DatabaseJobStore

from .conftest import ROOT_PASSWORD, add_scheduler, database_for, manager_config

needs_registry = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("docker-registry", "skopeo", "htpasswd")),
    reason="needs docker-registry, skopeo and htpasswd (scripts/system-deps.sh installs them)",
)

MIB = 1024 * 1024
USERNAME = "robot-puller-7f3a"
PASSWORD = "registry-password-9c1e5b"
TOKEN = "x-auth-token-value-4d2f8a"
REPOSITORY = "team/sealed"


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("job-secrets")


@pytest.fixture(scope="module")
def auth_registry(module_dir: Path) -> Iterator[RegistryProcess]:
    """A registry that answers only USERNAME/PASSWORD, holding one image (pushed through an open twin)."""
    image = build_image(module_dir / "image", [5 * MIB], tag="v1")
    with RegistryProcess(module_dir / "registry") as open_registry:
        push(image, open_registry, REPOSITORY)
        htpasswd = module_dir / "htpasswd"
        line = subprocess.run(["htpasswd", "-nbB", USERNAME, PASSWORD], capture_output=True, text=True, check=True)
        htpasswd.write_text(line.stdout.strip() + "\n")
        with RegistryProcess(
            module_dir / "registry", storage=open_registry.storage, name="registry-auth", htpasswd=htpasswd
        ) as server:
            yield server


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=0, tls=False) as running:
        yield running


@dataclass
class Manager:
    """One in-process manager (REST app, database); ``start_jobs`` makes it run jobs, else they stay PENDING."""

    ctx: ManagerContext
    client: httpx.AsyncClient
    headers: dict[str, str]

    @property
    def engine(self) -> JobEngine:
        engine = self.ctx.extras[EXTRA_KEY]
        assert isinstance(engine, JobEngine)
        return engine

    async def raw_row(self, job_id: int) -> tuple[Any, ...]:
        async with self.ctx.engine.connect() as conn:
            return tuple((await conn.execute(text("SELECT * FROM job WHERE id = :id"), {"id": job_id})).one())

    async def raw_secret(self, job_id: int) -> str:
        async with self.ctx.engine.connect() as conn:
            value = (await conn.execute(text("SELECT secret FROM job WHERE id = :id"), {"id": job_id})).scalar_one()
        return str(value)


class Managers:
    """Opens managers on one database, as restarts (or two managers) would; closes them all."""

    def __init__(self, database: dict[str, Any], tmp_path: Path) -> None:
        self.database = database
        self.tmp_path = tmp_path
        self._open: list[tuple[Manager, Any]] = []

    def config(self, *, name: str = "", database: dict[str, Any] | None = None, **job: Any) -> config.Config:
        """A manager's config; ``name`` gives it a data directory of its own (another host's manager)."""
        return manager_config(
            self.tmp_path / name if name else self.tmp_path,
            database=database or self.database,
            extra={"job": job} if job else None,
        )

    async def open(self, cfg: config.Config, *, run_jobs: bool) -> Manager:
        engine = db.create_engine(db.database_url(cfg), pool_size=2)
        ctx = ManagerContext(cfg, engine, db.session_factory(engine), SigninLimiter(3, 60))
        await db.migrate(engine)
        await bootstrap.bootstrap(ctx.sessions, ROOT_PASSWORD)
        if run_jobs:
            await start_jobs(ctx)
        else:
            store = DatabaseJobStore(ctx.sessions, job_sealer(ctx))
            ctx.extras[EXTRA_KEY] = JobEngine(store, MemoryQueue(), make_directory(ctx), ctx.scheduler_channel)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=wrap(create_app(ctx, [extension()]), ctx)), base_url="http://manager"
        )
        signin = await client.post("/api/v1/users/signin", json={"name": "root", "password": ROOT_PASSWORD})
        assert signin.status_code == 200, signin.text
        manager = Manager(ctx, client, {"Authorization": f"Bearer {signin.json()['token']}"})
        self._open.append((manager, engine))
        return manager

    async def close(self, manager: Manager) -> None:
        for index, (item, engine) in enumerate(self._open):
            if item is manager:
                del self._open[index]
                await stop_jobs(manager.ctx)
                await manager.ctx.close_channels()
                await manager.client.aclose()
                await engine.dispose()
                return

    async def close_all(self) -> None:
        while self._open:
            await self.close(self._open[-1][0])


@pytest.fixture(params=["sqlite", "postgres"])
async def managers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Managers]:
    opened = Managers(database_for(request.param, request), tmp_path)
    try:
        yield opened
    finally:
        await opened.close_all()


def preheat_body(url: str) -> dict[str, Any]:
    return {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": url,
            "username": USERNAME,
            "password": PASSWORD,
            "headers": {"X-Auth-Token": TOKEN, "X-Trace": "visible"},
        },
        "scheduler_cluster_ids": [1],
    }


def assert_no_credential(text_: str) -> None:
    for needle in (USERNAME, PASSWORD, TOKEN):
        assert needle not in text_


async def create_job(manager: Manager, url: str) -> int:
    response = await manager.client.post("/api/v1/jobs", json=preheat_body(url), headers=manager.headers)
    assert response.status_code == 200, response.text
    assert_no_credential(response.text)
    job: dict[str, Any] = response.json()
    assert job["args"]["headers"] == {"X-Trace": "visible"}
    return int(job["id"])


@needs_registry
async def test_credentials_are_sealed_in_the_row_and_used_after_a_restart(
    managers: Managers,
    cluster: LocalCluster,
    auth_registry: RegistryProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"{auth_registry.url}/v2/{REPOSITORY}/manifests/v1"
    cfg = managers.config()
    first = await managers.open(cfg, run_jobs=False)
    await add_scheduler(first.ctx, cluster.scheduler_addr)
    job_id = await create_job(first, url)

    row = await first.raw_row(job_id)
    assert_no_credential(repr(row))
    sealed = await first.raw_secret(job_id)
    key = read_key_file(cfg.job_secret_key_file())
    assert key_id(key) in sealed
    assert base64.b64encode(key).decode() not in repr(row)
    for path in ("/api/v1/jobs", f"/api/v1/jobs/{job_id}", "/oapi/v1/jobs", f"/oapi/v1/jobs/{job_id}"):
        response = await first.client.get(path, headers=first.headers)
        assert response.status_code == 200, response.text
        assert_no_credential(response.text)

    # The manager stops with the job still PENDING; the next one (same data directory, same key) runs it.
    await managers.close(first)
    second = await managers.open(cfg, run_jobs=True)
    job = await second.engine.wait(job_id, timeout=180)
    assert job.state == "SUCCESS", job.result
    [state] = job.result["job_states"]
    assert {task["hostname"] for task in state["results"][0]["success_tasks"]} == {"seed-peer"}
    assert await second.raw_secret(job_id) in ("{}", "{ }")
    assert_no_credential(repr(await second.raw_row(job_id)))

    # Without the credentials the registry refuses: they were what made the job succeed.
    anonymous = await second.client.post(
        "/api/v1/jobs",
        json={"type": "preheat", "args": {"type": "image", "url": url}, "scheduler_cluster_ids": [1]},
        headers=second.headers,
    )
    assert anonymous.status_code == 200, anonymous.text
    refused = await second.engine.wait(anonymous.json()["id"], timeout=120)
    assert refused.state == "FAILURE"
    assert refused.result["job_states"][0]["error"]
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert_no_credential(logged)


@needs_registry
async def test_two_managers_sharing_a_database_queue_and_key_run_each_others_jobs(
    managers: Managers,
    cluster: LocalCluster,
    auth_registry: RegistryProcess,
    redis_server: RedisProcess,
    tmp_path: Path,
) -> None:
    key = tmp_path / "shared" / "job.key"
    ensure_key_file(key)
    # Two hosts: data directories of their own, one database (SQLite: a file both open), one Redis queue.
    database = {**(managers.database or {"url": f"sqlite:///{tmp_path / 'shared' / 'manager.db'}"})}
    database["redis"] = {"addrs": [f"127.0.0.1:{redis_server.port}"]}
    first = await managers.open(managers.config(name="a", database=database, secretKeyFile=str(key)), run_jobs=False)
    await add_scheduler(first.ctx, cluster.scheduler_addr)
    job_id = await create_job(first, f"{auth_registry.url}/v2/{REPOSITORY}/manifests/v1")
    second = await managers.open(managers.config(name="b", database=database, secretKeyFile=str(key)), run_jobs=True)
    assert not (tmp_path / "b" / "manager" / "job-secret.key").exists()
    job = await second.engine.wait(job_id, timeout=180)
    assert job.state == "SUCCESS", job.result
    assert job.progress["manager"] == second.engine.name
    assert await second.raw_secret(job_id) in ("{}", "{ }")


async def test_a_manager_with_another_key_fails_the_job_with_a_clear_error(
    managers: Managers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = "https://registry.example.com/v2/team/app/manifests/v1"
    first = await managers.open(managers.config(), run_jobs=False)
    job_id = await create_job(first, url)
    await managers.close(first)

    other_key = tmp_path / "other.key"
    other_key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    other_key.chmod(0o600)
    second = await managers.open(managers.config(secretKeyFile=str(other_key)), run_jobs=True)
    job = await second.engine.wait(job_id, timeout=60)
    assert job.state == "FAILURE"
    error = job.result["error"]
    sealed_with = key_id(read_key_file(managers.config().job_secret_key_file()))
    assert f"sealed with job secret key {sealed_with!r}" in error
    assert f"this manager holds key {key_id(read_key_file(other_key))!r} ({other_key})" in error
    assert "need the same job.secretKeyFile" in error
    assert await second.raw_secret(job_id) in ("{}", "{ }")
    assert any(error in record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)
    response = await second.client.get(f"/api/v1/jobs/{job_id}", headers=second.headers)
    assert response.json()["result"]["error"] == error


async def test_cancel_and_delete_wipe_the_credentials(managers: Managers) -> None:
    manager = await managers.open(managers.config(), run_jobs=False)
    url = "https://registry.example.com/v2/team/app/manifests/v1"
    cancelled, deleted = await create_job(manager, url), await create_job(manager, url)
    assert (await manager.raw_secret(cancelled)) not in ("{}", "{ }")
    response = await manager.client.post(f"/api/v1/jobs/{cancelled}/cancel", headers=manager.headers)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "FAILURE"
    assert await manager.raw_secret(cancelled) in ("{}", "{ }")
    assert (await manager.client.delete(f"/api/v1/jobs/{deleted}", headers=manager.headers)).status_code == 204
    async with manager.ctx.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM job WHERE id = :id"), {"id": deleted})).scalar() == 0


async def test_clear_rows_and_rotated_keys_are_resealed_with_the_current_key_at_start(
    managers: Managers, tmp_path: Path
) -> None:
    url = "https://registry.example.com/v2/team/app/manifests/v1"
    old_cfg = managers.config()
    first = await managers.open(old_cfg, run_jobs=False)
    rotated, from_before, foreign = [await create_job(first, url) for _ in range(3)]
    old_key = read_key_file(old_cfg.job_secret_key_file())
    # A row an older manager wrote in clear, and one sealed with a key nobody here holds.
    async with first.ctx.engine.begin() as conn:
        clear = json.dumps({"password": PASSWORD, "username": USERNAME})
        await conn.execute(text("UPDATE job SET secret = :s WHERE id = :id"), {"s": clear, "id": from_before})
        sealed = json.dumps(Sealer(os.urandom(32)).seal(foreign, {"password": PASSWORD}))
        await conn.execute(text("UPDATE job SET secret = :s WHERE id = :id"), {"s": sealed, "id": foreign})
    await managers.close(first)

    new_key = tmp_path / "new.key"
    ensure_key_file(new_key)
    cfg = managers.config(secretKeyFile=str(new_key), previousSecretKeyFiles=[str(old_cfg.job_secret_key_file())])
    second = await managers.open(cfg, run_jobs=False)
    store = second.engine.store
    assert isinstance(store, DatabaseJobStore)
    assert await store.reseal() == 2
    for job_id in (rotated, from_before):
        assert key_id(read_key_file(new_key)) in await second.raw_secret(job_id)
        assert_no_credential(repr(await second.raw_row(job_id)))
    assert await store.secrets(from_before) == {"password": PASSWORD, "username": USERNAME}
    assert key_id(old_key) not in await second.raw_secret(rotated)
    assert await store.reseal() == 0
    # The old key is no longer needed for these two: a manager without it opens them.
    await managers.close(second)
    third = await managers.open(managers.config(secretKeyFile=str(new_key)), run_jobs=False)
    assert (await third.engine.store.secrets(rotated))["password"] == PASSWORD
    with pytest.raises(SecretsUnavailable, match="sealed with job secret key"):
        await third.engine.store.secrets(foreign)


async def test_credentials_inside_urls_are_not_shown_and_odd_bodies_get_422(managers: Managers) -> None:
    manager = await managers.open(managers.config(), run_jobs=False)
    signed = f"https://{USERNAME}:{PASSWORD}@origin.example.com/model.bin?X-Amz-Signature={TOKEN}&part=1"
    body = {
        "type": "preheat",
        "args": {"type": "file", "url": signed, "urls": ["https://origin.example.com/plain.bin"]},
        "scheduler_cluster_ids": [1],
    }
    response = await manager.client.post("/api/v1/jobs", json=body, headers=manager.headers)
    assert response.status_code == 200, response.text
    assert_no_credential(response.text)
    job_id = response.json()["id"]
    assert response.json()["args"]["url"] == "https://***@origin.example.com/model.bin?X-Amz-Signature=***&part=1"
    assert response.json()["args"]["urls"][1] == "https://origin.example.com/plain.bin"
    assert_no_credential((await manager.client.get(f"/api/v1/jobs/{job_id}", headers=manager.headers)).text)
    assert_no_credential(repr(await manager.raw_row(job_id)))
    store = manager.engine.store
    assert (await store.secrets(job_id))["urls"] == [signed, "https://origin.example.com/plain.bin"]

    nul = await manager.client.post("/api/v1/jobs", json={**body, "bio": "a\u0000b"}, headers=manager.headers)
    assert nul.status_code == 422, nul.text
    nul = await manager.client.post(
        "/api/v1/jobs", json={**body, "args": {**body["args"], "tag": "t\u0000"}}, headers=manager.headers
    )
    assert nul.status_code == 422, nul.text
    patched = await manager.client.patch(f"/api/v1/jobs/{job_id}", json={"bio": "x\u0000"}, headers=manager.headers)
    assert patched.status_code == 422, patched.text
    many = {f"X-H{i}": "v" for i in range(65)}
    too_many = await manager.client.post(
        "/api/v1/jobs", json={**body, "args": {**body["args"], "headers": many}}, headers=manager.headers
    )
    assert too_many.status_code == 422
    assert "at most 64 headers" in too_many.json()["message"]
    # Each job in a list carries its whole result: a page holds at most 100.
    assert (await manager.client.get("/api/v1/jobs", params={"per_page": 100}, headers=manager.headers)).is_success
    assert (
        await manager.client.get("/api/v1/jobs", params={"per_page": 101}, headers=manager.headers)
    ).status_code == 422

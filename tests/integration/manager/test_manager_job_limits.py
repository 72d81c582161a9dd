"""job.rateLimit on the REST API of a real (in-process) manager on SQLite: per user, in all, 429 + Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from dragonfly.manager import bootstrap, db
from dragonfly.manager.api.app import create_app, wrap
from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.context import ManagerContext
from dragonfly.manager.jobs.api import extension, start_jobs, stop_jobs

from .conftest import API, ROOT_PASSWORD, manager_config

JOB = {"type": "preheat", "args": {"type": "file", "url": "http://origin.invalid/a.bin"}}


@pytest.fixture
async def jobs_api(tmp_path: Path) -> AsyncIterator[API]:
    """A manager allowing 2 jobs per user and 3 in all every 10 minutes (no scheduler: the jobs fail; no matter)."""
    cfg = manager_config(tmp_path, extra={"job": {"rateLimit": {"perUser": 2, "total": 3, "window": "10m"}}})
    engine = db.create_engine(db.database_url(cfg))
    ctx = ManagerContext(cfg, engine, db.session_factory(engine), SigninLimiter(3, 60))
    await db.migrate(engine)
    await bootstrap.bootstrap(ctx.sessions, ROOT_PASSWORD)
    app = wrap(create_app(ctx, [extension()]), ctx)
    await start_jobs(ctx)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://manager") as client:
            yield API(client, ctx)
    finally:
        await stop_jobs(ctx)
        await engine.dispose()


async def test_job_creation_is_limited_per_user_and_in_all(jobs_api: API) -> None:
    root = await jobs_api.signin()
    role = {"name": "preheater", "permissions": [{"object": "jobs", "action": "write"}]}
    assert (await jobs_api.client.post("/api/v1/roles", headers=root, json=role)).status_code == 201
    alice = await jobs_api.make_user(root, "alice", ["preheater"])
    root_token = {"Authorization": f"Bearer {(await jobs_api.make_token(root, ['job']))['token']}"}

    for _ in range(2):
        response = await jobs_api.client.post("/api/v1/jobs", headers=root, json=JOB)
        assert response.status_code == 200, response.text
    # The third of root's jobs, by session or through Harbor's Open API with root's token: one user, one budget.
    for path, headers in (("/api/v1/jobs", root), ("/oapi/v1/jobs", root_token)):
        response = await jobs_api.client.post(path, headers=headers, json=JOB)
        assert response.status_code == 429, response.text
        wait = response.headers["retry-after"]
        assert 1 <= int(wait) <= 600
        assert response.json() == {
            "message": f"too many jobs: user root may create at most 2 every 600 s; try again in {wait} s"
        }

    # Another user has a budget of its own, up to what the manager takes in all.
    assert (await jobs_api.client.post("/api/v1/jobs", headers=alice, json=JOB)).status_code == 200
    response = await jobs_api.client.post("/api/v1/jobs", headers=alice, json=JOB)
    assert response.status_code == 429
    assert response.json()["message"].startswith("too many jobs: this manager takes at most 3 every 600 s;")
    assert int(response.headers["retry-after"]) >= 1

    # Refused requests created nothing.
    listed = await jobs_api.client.get("/api/v1/jobs", headers=root)
    assert listed.headers["x-total-count"] == "3"

"""The manager's REST app in process (httpx over ASGI) on a real database: SQLite in tmp_path; a real redis-server."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dragonfly.cli.services import RedisProcess
from dragonfly.manager import bootstrap, config, db, models
from dragonfly.manager.api.app import create_app, wrap
from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.context import ManagerContext
from tests import mysql
from tests.postgres import PostgresServer, find_bin

ROOT_PASSWORD = "root-password-1"


@dataclass
class API:
    """A client of one in-process manager, with helpers for signing in."""

    client: httpx.AsyncClient
    ctx: ManagerContext

    async def signin(self, name: str = "root", password: str = ROOT_PASSWORD) -> dict[str, str]:
        response = await self.client.post("/api/v1/users/signin", json={"name": name, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    async def make_user(self, root: dict[str, str], name: str, roles: list[str]) -> dict[str, str]:
        password = f"{name}-password"
        response = await self.client.post(
            "/api/v1/users", headers=root, json={"name": name, "password": password, "roles": roles}
        )
        assert response.status_code == 201, response.text
        return await self.signin(name, password)

    async def make_token(self, headers: dict[str, str], scopes: list[str], **extra: Any) -> dict[str, Any]:
        body = {
            "name": "t",
            "scopes": scopes,
            "expired_at": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(),
            **extra,
        }
        response = await self.client.post("/api/v1/personal-access-tokens", headers=headers, json=body)
        assert response.status_code == 201, response.text
        out: dict[str, Any] = response.json()
        return out


async def add_scheduler(ctx: ManagerContext, scheduler_addr: str) -> None:
    """Register a running scheduler (``host:port``) as active in cluster 1 with the preheat feature."""
    host, port = scheduler_addr.rsplit(":", 1)
    async with ctx.sessions() as session:
        session.add(
            models.Scheduler(
                hostname="scheduler",
                ip=host,
                port=int(port),
                state=models.STATE_ACTIVE,
                features=["schedule", "preheat"],
                scheduler_cluster_id=1,
            )
        )
        await session.commit()


def manager_config(
    tmp_path: Path,
    *,
    database: dict[str, Any] | None = None,
    rest_addr: str = ":8080",
    grpc_port: int = 65003,
    keep_alive_timeout: str = "15s",
    security: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> config.Config:
    """A config with its data directory in tmp_path, plaintext unless ``security`` says otherwise."""
    return config.load(
        None,
        overrides={
            "server": {
                "dataDir": str(tmp_path / "manager"),
                "rest": {"addr": rest_addr, "maxBodySize": "64KiB"},
                "grpc": {"listenIP": "127.0.0.1", "port": {"start": grpc_port, "end": grpc_port}},
            },
            "database": database or {},
            "auth": {"rootPassword": ROOT_PASSWORD, "signinMaxFailures": 3},
            "keepAlive": {"timeout": keep_alive_timeout},
            "security": security or {"enable": False},
            **(extra or {}),
        },
    )


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 with its smallest cost: the tests sign in often, and the KDF's strength is not what they test."""
    from argon2 import PasswordHasher

    from dragonfly.manager import auth

    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def database_for(kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Return the ``database`` section for ``kind``: sqlite (the default), postgres or mysql (a fresh database)."""
    if kind == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")
        return {"url": server.create_database()}
    if kind == "mysql":
        maria: mysql.MariaDBServer = request.getfixturevalue("mariadb")
        return {"url": maria.create_database()}
    return {}


@pytest.fixture(params=["sqlite", "postgres"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[API]:
    """A migrated, bootstrapped manager on SQLite, then on PostgreSQL, and a client of its REST app.

    A test may ask for MySQL too with ``@pytest.mark.parametrize("api", [..., "mysql"], indirect=True)``.
    """
    database = database_for(request.param, request)
    cfg = manager_config(tmp_path, database=database)
    engine = db.create_engine(db.database_url(cfg), pool_size=2)
    ctx = ManagerContext(cfg, engine, db.session_factory(engine), SigninLimiter(3, 60))
    await db.migrate(engine)
    await bootstrap.bootstrap(ctx.sessions, ROOT_PASSWORD)
    app = wrap(create_app(ctx), ctx)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://manager") as client:
        yield API(client, ctx)
    await engine.dispose()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A redis-server for the module (the job queue of several managers)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (scripts/system-deps.sh installs it)")
    with RedisProcess(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (Debian's packages; skipped where they are not installed)."""
    bindir = find_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/system-deps.sh installs it)")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[mysql.MariaDBServer]:
    """One MariaDB server for the session (Debian's mariadb-server-core; skipped where it is not installed)."""
    if not mysql.available():
        pytest.skip("MariaDB is not installed (scripts/system-deps.sh installs it)")
    pytest.importorskip("aiomysql")
    server = mysql.MariaDBServer()
    server.start()
    yield server
    server.stop()

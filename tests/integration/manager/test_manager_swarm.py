"""GET /api/v1/swarm: the manager asks the active schedulers over the console's swarm call and merges them.

The schedulers here are grpc.aio servers in the test serving the call (the scheduler's own side is tested against
a real scheduler in tests/integration/scheduler/test_scheduler_swarm_view.py); one answers, one has no such method
(as a Dragonfly scheduler), one is registered but inactive and must not be asked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from dragonfly.common import ids, swarm
from dragonfly.manager import bootstrap, config, db, models
from dragonfly.manager.api.app import create_app, load_extensions, wrap
from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.context import ManagerContext

ROOT_PASSWORD = "root-password-1"
URL = "http://origin.test/blob.bin"
TASK = ids.task_id(URL)


STATS = {
    "hosts": 3,
    "seed_hosts": 1,
    "tasks": 2,
    "tasks_in_flight": 1,
    "peers_in_flight": 2,
    "traffic": {"hour": {"source": 10, "peers": 30}, "day": {"source": 100, "peers": 300}},
}


HOSTS = [
    {"hostname": f"host-{n:02}", "ip": f"10.0.0.{n}", "type": "super" if n == 0 else "normal"} for n in range(12)
] + ["junk"]


TASKS = [
    {"task_id": "a" * 64, "url": "http://origin.test/old", "updated_at": 100.0},
    {"task_id": TASK, "url": URL, "updated_at": 200.0},
    "junk",
]


class FakeScheduler:
    """A gRPC server that answers the swarm calls (``answer``, and STATS) or has no such methods."""

    def __init__(self, answer: dict[str, Any] | None) -> None:
        self.answer = answer
        self.asked: list[str] = []
        self.server = grpc.aio.server()
        if answer is not None:

            async def get_task(task_id: str, _context: Any) -> dict[str, Any]:
                self.asked.append(task_id)
                return {**self.answer, "task_id": task_id} if self.answer else {}

            async def get_stats(_request: dict[str, Any], _context: Any) -> dict[str, Any]:
                return STATS

            async def get_hosts(_request: dict[str, Any], _context: Any) -> dict[str, Any]:
                return {"hosts": HOSTS, "truncated": False}

            async def get_tasks(_request: dict[str, Any], _context: Any) -> dict[str, Any]:
                return {"tasks": TASKS, "total": 2}

            handlers = {
                "GetTasks": grpc.unary_unary_rpc_method_handler(
                    get_tasks, request_deserializer=swarm.decode_stats_request, response_serializer=swarm.encode
                ),
                "GetHosts": grpc.unary_unary_rpc_method_handler(
                    get_hosts, request_deserializer=swarm.decode_stats_request, response_serializer=swarm.encode
                ),
                "GetTask": grpc.unary_unary_rpc_method_handler(
                    get_task, request_deserializer=swarm.decode_request, response_serializer=swarm.encode
                ),
                "GetStats": grpc.unary_unary_rpc_method_handler(
                    get_stats, request_deserializer=swarm.decode_stats_request, response_serializer=swarm.encode
                ),
            }
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(swarm.SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    from argon2 import PasswordHasher

    from dragonfly.manager import auth

    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ManagerContext]]:
    cfg = config.load(
        None,
        overrides={
            "server": {"dataDir": str(tmp_path / "manager")},
            "auth": {"rootPassword": ROOT_PASSWORD},
            "security": {"enable": False},
        },
    )
    engine = db.create_engine(db.database_url(cfg))
    ctx = ManagerContext(cfg, engine, db.session_factory(engine), SigninLimiter(3, 60))
    await db.migrate(engine)
    await bootstrap.bootstrap(ctx.sessions, ROOT_PASSWORD)
    app = wrap(create_app(ctx, load_extensions(["dragonfly.manager.swarm"])), ctx)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://manager") as client:
        yield client, ctx
    await ctx.close_channels()
    await engine.dispose()


async def _signin(client: httpx.AsyncClient, name: str = "root", password: str = ROOT_PASSWORD) -> dict[str, str]:
    response = await client.post("/api/v1/users/signin", json={"name": name, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def _register(ctx: ManagerContext, hostname: str, port: int, state: str) -> None:
    async with ctx.sessions() as session:
        session.add(models.Scheduler(hostname=hostname, ip="127.0.0.1", port=port, state=state, scheduler_cluster_id=1))
        await session.commit()


async def test_swarm_merges_active_schedulers_and_names_the_ones_that_cannot_answer(manager) -> None:
    client, ctx = manager
    answer = {
        "found": True,
        "url": URL,
        "state": "Running",
        "content_length": 8192,
        "piece_length": 4096,
        "total_pieces": 2,
        "peers": [{"id": "p1", "hostname": "peer-1", "bytes_from_source": 4096}, "junk"],
        "edges": [{"parent": "s", "child": "p1", "bytes": 4096, "pieces": 1, "active": True}],
    }
    ours, dragonflys, stopped = FakeScheduler(answer), FakeScheduler(None), FakeScheduler(answer)
    for fake in (ours, dragonflys, stopped):
        await fake.server.start()
    try:
        await _register(ctx, "sched-ours", ours.port, models.STATE_ACTIVE)
        await _register(ctx, "sched-dragonfly", dragonflys.port, models.STATE_ACTIVE)
        await _register(ctx, "sched-stopped", stopped.port, models.STATE_INACTIVE)
        root = await _signin(client)

        by_url = await client.get("/api/v1/swarm", params={"url": URL}, headers=root)
        assert by_url.status_code == 200, by_url.text
        body = by_url.json()
        assert (body["task_id"], body["found"], body["total_pieces"], body["schedulers"]) == (
            TASK,
            True,
            2,
            ["sched-ours"],
        )
        assert body["peers"] == [
            {"id": "p1", "hostname": "peer-1", "bytes_from_source": 4096, "scheduler": "sched-ours"}
        ]
        assert body["edges"] == answer["edges"]
        assert len(body["errors"]) == 1
        assert "sched-dragonfly" in body["errors"][0]
        assert "does not report swarms" in body["errors"][0]
        assert ours.asked == [TASK]
        assert stopped.asked == []

        stats = (await client.get("/api/v1/swarm/stats", headers=root)).json()
        assert {k: v for k, v in stats.items() if k != "errors"} == {
            "schedulers": 1,
            "hosts": 3,
            "seed_hosts": 1,
            "tasks_in_flight": 1,
            "peers_in_flight": 2,
            "traffic": STATS["traffic"],
        }
        assert len(stats["errors"]) == 1

        hosts = await client.get("/api/v1/swarm/hosts", params={"page": 2, "per_page": 5}, headers=root)
        assert hosts.headers["X-Total-Count"] == "12"
        assert [h["hostname"] for h in hosts.json()["items"]] == [f"host-{n:02}" for n in range(5, 10)]
        assert hosts.json()["items"][0]["scheduler"] == "sched-ours"
        seeds = await client.get("/api/v1/swarm/hosts", params={"type": "super"}, headers=root)
        assert [h["hostname"] for h in seeds.json()["items"]] == ["host-00"]
        assert (await client.get("/api/v1/swarm/hosts", params={"type": "x"}, headers=root)).status_code == 422

        recent = (await client.get("/api/v1/swarm/tasks", headers=root)).json()
        assert [(t["task_id"], t["scheduler"]) for t in recent["items"]] == [
            (TASK, "sched-ours"),
            ("a" * 64, "sched-ours"),
        ]
        assert len(recent["errors"]) == 1

        by_id = await client.get("/api/v1/swarm", params={"task_id": TASK}, headers=root)
        assert by_id.json()["peers"] == body["peers"]
        # A guest reads it too; nobody without a session does.
        guest = await client.post(
            "/api/v1/users", headers=root, json={"name": "g", "password": "guest-password", "roles": ["guest"]}
        )
        assert guest.status_code == 201
        assert (
            await client.get(
                "/api/v1/swarm", params={"task_id": TASK}, headers=await _signin(client, "g", "guest-password")
            )
        ).status_code == 200
        assert (await client.get("/api/v1/swarm", params={"task_id": TASK})).status_code == 401
    finally:
        for fake in (ours, dragonflys, stopped):
            await fake.server.stop(0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "give either task_id or url"),
        ({"task_id": TASK, "url": URL}, "give either task_id or url"),
        ({"task_id": "../../etc/passwd"}, "task_id: 64 lower-case hex digits"),
        ({"url": "no-scheme"}, "url: not a URL"),
    ],
)
async def test_swarm_refuses_bad_queries_in_words(manager, params: dict[str, str], message: str) -> None:
    client, _ctx = manager
    response = await client.get("/api/v1/swarm", params=params, headers=await _signin(client))
    assert response.status_code == 400
    assert json.loads(response.text)["message"] == message


async def test_swarm_without_schedulers_says_so(manager) -> None:
    client, _ctx = manager
    response = await client.get("/api/v1/swarm", params={"task_id": TASK}, headers=await _signin(client))
    assert response.json()["found"] is False
    assert response.json()["errors"] == ["no active scheduler"]

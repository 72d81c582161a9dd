"""A scheduler with manager.addr: it registers, keeps alive, applies its cluster's limits and survives the manager."""

from __future__ import annotations

from pathlib import Path

import grpc
from dragonfly_api import manager_pb2, manager_pb2_grpc
from sqlalchemy import update

from dragonfly.manager import models
from dragonfly.manager.server import ManagerServer
from dragonfly.scheduler import config as scheduler_config
from dragonfly.scheduler.server import SchedulerServer
from tests.integration.manager.conftest import manager_config
from tests.waiting import eventually


def _scheduler(manager_addr: str) -> SchedulerServer:
    config = scheduler_config.load(
        None,
        overrides={
            "server": {"host": "127.0.0.1", "port": 0},
            "metrics": {"enable": False},
            "security": {"enable": False},
            "manager": {"addr": manager_addr, "schedulerClusterID": 1, "keepAlive": {"interval": "200ms"}},
            "dynConfig": {"refreshInterval": "300ms"},
            "host": {"idc": "idc-1"},
        },
    )
    return SchedulerServer(config)


async def test_scheduler_registers_keeps_alive_and_follows_dynamic_config(tmp_path: Path) -> None:
    cfg = manager_config(tmp_path, rest_addr="127.0.0.1:0", grpc_port=0, keep_alive_timeout="2s")
    manager = ManagerServer(cfg, extensions=[])
    await manager.start()
    scheduler = _scheduler(manager.grpc_address)
    await scheduler.start()
    assert manager.ctx is not None
    try:
        async with grpc.aio.insecure_channel(manager.grpc_address) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)  # type: ignore[no-untyped-call]

            async def listed() -> bool:
                response = await stub.ListSchedulers(
                    manager_pb2.ListSchedulersRequest(hostname="p", ip="10.0.0.1"), wait_for_ready=True
                )
                return [s.port for s in response.schedulers] == [int(scheduler.address.rsplit(":", 1)[1])]

            await eventually(listed, 10, "the scheduler to be listed")
            response = await stub.ListSchedulers(
                manager_pb2.ListSchedulersRequest(hostname="p", ip="10.0.0.1"), wait_for_ready=True
            )
            assert response.schedulers[0].idc == "idc-1"
            # The bootstrap cluster's limits (candidate 3, filter 15, load 200; seed load 2000) are applied.
            assert scheduler.ctx.config.scheduler.candidate_parent_limit == 3
            async with manager.ctx.sessions() as session:
                await session.execute(
                    update(models.SchedulerCluster)
                    .where(models.SchedulerCluster.id == 1)
                    .values(
                        config={"candidate_parent_limit": 7, "filter_parent_limit": 40},
                        client_config={"load_limit": 55},
                    )
                )
                session.add(
                    models.Application(name="vip", priority={"value": 4, "urls": [{"regex": "/big/", "value": 5}]})
                )
                await session.commit()

            async def applied() -> bool:
                return (
                    scheduler.ctx.scheduling.config.candidate_parent_limit == 7 and "vip" in scheduler.ctx.applications
                )

            await eventually(applied, 10, "the change to be applied")
            assert scheduler.ctx.resource.config.peer_concurrent_upload_limit == 55
            assert scheduler.ctx.config.scheduler.filter_parent_limit == 40
            assert scheduler.ctx.applications["vip"].priority_for("https://x/big/file") == 5
            assert scheduler.ctx.applications["vip"].priority_for("https://x/small") == 4
            # The manager goes away: the scheduler keeps its last config and serves on.
            await manager.stop()
            announcer = scheduler.announcer
            assert announcer is not None
            assert not await announcer.refresh()
            assert scheduler.ctx.scheduling.config.candidate_parent_limit == 7
        # A new manager on the same database and port: the scheduler registers again by itself.
        cfg2 = manager_config(
            tmp_path,
            rest_addr="127.0.0.1:0",
            grpc_port=int(manager.grpc_address.rsplit(":", 1)[1]),
            keep_alive_timeout="2s",
        )
        manager = ManagerServer(cfg2, extensions=[])
        await manager.start()
        async with grpc.aio.insecure_channel(manager.grpc_address) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)  # type: ignore[no-untyped-call]
            await eventually(listed, 10, "the scheduler to be listed")
            # The scheduler stops: its keep-alive stream ends and it is inactive at once.
            await scheduler.stop()

            async def gone() -> bool:
                response = await stub.ListSchedulers(
                    manager_pb2.ListSchedulersRequest(hostname="p", ip="10.0.0.1"), wait_for_ready=True
                )
                return not response.schedulers

            await eventually(gone, 10, "the scheduler to be gone")
    finally:
        await scheduler.stop()
        await manager.stop()

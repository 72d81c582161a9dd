"""manager.v2 over gRPC against a ManagerServer (in process, SQLite): registration, discovery, liveness, mTLS."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from dragonfly_api import manager_pb2, manager_pb2_grpc

from dragonfly.common import pki, tls
from dragonfly.manager import models
from dragonfly.manager.server import ManagerServer
from tests.integration.manager.conftest import manager_config
from tests.waiting import eventually

S = manager_pb2.SCHEDULER_SOURCE


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ManagerServer]:
    cfg = manager_config(tmp_path, rest_addr="127.0.0.1:0", grpc_port=0, keep_alive_timeout="1500ms")
    server = ManagerServer(cfg, extensions=[])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def stub(manager: ManagerServer) -> AsyncIterator[manager_pb2_grpc.ManagerStub]:
    async with grpc.aio.insecure_channel(manager.grpc_address) as channel:
        yield manager_pb2_grpc.ManagerStub(channel)  # type: ignore[no-untyped-call]


async def _cluster(server: ManagerServer, name: str, scopes: dict[str, Any], default: bool = False) -> int:
    assert server.ctx is not None
    async with server.ctx.sessions() as session:
        cluster = models.SchedulerCluster(
            name=name, scopes=scopes, is_default=default, config={"filter_parent_limit": 20}
        )
        session.add(cluster)
        await session.commit()
        return cluster.id


def _update(hostname: str, ip: str, cluster: int, **extra: Any) -> manager_pb2.UpdateSchedulerRequest:
    fields: dict[str, Any] = {"source_type": S, "port": 8002, "features": ["schedule"], **extra}
    return manager_pb2.UpdateSchedulerRequest(hostname=hostname, ip=ip, scheduler_cluster_id=cluster, **fields)


async def _keep_alive(stub: manager_pb2_grpc.ManagerStub, hostname: str, ip: str, cluster: int) -> Any:
    queue: asyncio.Queue[manager_pb2.KeepAliveRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[manager_pb2.KeepAliveRequest]:
        while (item := await queue.get()) is not None:
            yield item

    call = stub.KeepAlive(requests())
    await queue.put(manager_pb2.KeepAliveRequest(source_type=S, hostname=hostname, ip=ip, cluster_id=cluster))
    return call, queue


async def _names(stub: manager_pb2_grpc.ManagerStub, **request: Any) -> list[str]:
    # Dragonfly's rules want the caller's hostname and IP in every request.
    fields: dict[str, Any] = {"hostname": "x", "ip": "10.0.0.9", **request}
    response = await stub.ListSchedulers(
        manager_pb2.ListSchedulersRequest(source_type=manager_pb2.PEER_SOURCE, **fields)
    )
    return [s.hostname for s in response.schedulers]


async def test_register_keep_alive_and_discovery_by_scopes(manager: ManagerServer, stub: Any) -> None:
    east = await _cluster(manager, "east", {"cidrs": ["10.1.0.0/16"]})
    west = await _cluster(manager, "west", {"hostnames": ["^west-"], "idc": "idc-w|idc-x"})
    config = json.dumps({"manager_keep_alive_interval": 5_000_000_000}).encode()
    registered = await stub.UpdateScheduler(_update("sched-east", "10.1.0.1", east, config=config, idc="idc-e"))
    assert registered.scheduler_cluster.name == "east"
    assert json.loads(registered.scheduler_cluster.config) == {"filter_parent_limit": 20}
    assert registered.state == "inactive"
    await stub.UpdateScheduler(_update("sched-west", "10.2.0.1", west))
    await stub.UpdateScheduler(_update("sched-default", "10.3.0.1", 1))
    # Registered but not keeping alive: nobody is handed out.
    assert await _names(stub, hostname="peer-1", ip="10.1.2.3") == []
    calls = [
        await _keep_alive(stub, h, ip, c)
        for h, ip, c in [
            ("sched-east", "10.1.0.1", east),
            ("sched-west", "10.2.0.1", west),
            ("sched-default", "10.3.0.1", 1),
        ]
    ]

    async def all_active() -> bool:
        return len(await _names(stub, hostname="x", ip="192.168.0.1")) == 3

    await eventually(all_active, 10, "every scheduler to be active")
    assert (await _names(stub, hostname="peer-1", ip="10.1.2.3"))[0] == "sched-east"
    assert (await _names(stub, hostname="west-7", ip="192.168.0.9"))[0] == "sched-west"
    assert (await _names(stub, hostname="peer-2", ip="192.168.0.9", idc="idc-x"))[0] == "sched-west"
    # No scope matches: the default cluster first.
    assert (await _names(stub, hostname="other", ip="172.16.0.1"))[0] == "sched-default"
    assert await _names(stub, scheduler_cluster_id=east) == ["sched-east"]
    got = await stub.GetScheduler(
        manager_pb2.GetSchedulerRequest(source_type=S, hostname="sched-default", ip="10.3.0.1", scheduler_cluster_id=1)
    )
    assert got.state == "active"
    assert json.loads(got.scheduler_cluster.client_config) == {"load_limit": 200}
    # Ending the stream makes the scheduler inactive at once; the peer moves on to the next cluster.
    call, queue = calls[0]
    await queue.put(None)
    await call

    async def east_gone() -> bool:
        return (await _names(stub, hostname="peer-1", ip="10.1.2.3"))[0] != "sched-east"

    await eventually(east_gone, 10, "the east scheduler to be gone")
    for call, queue in calls[1:]:
        await queue.put(None)
        await call


async def test_silent_keep_alive_expires(manager: ManagerServer, stub: Any) -> None:
    await stub.UpdateScheduler(_update("sched-1", "10.0.0.1", 1))
    call, _queue = await _keep_alive(stub, "sched-1", "10.0.0.1", 1)
    await eventually(lambda: _active(stub), 10, "the scheduler to be active")

    # The stream stays open but nothing more is sent (a hung host): the expiry check catches it (timeout 1.5 s).
    async def inactive() -> bool:
        return not await _active(stub)

    await eventually(inactive, 10, "the scheduler to be inactive")
    call.cancel()


async def _active(stub: Any) -> bool:
    return await _names(stub, hostname="x", ip="10.0.0.9") == ["sched-1"]


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            _update("bad host", "10.0.0.1", 1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "hostname: value must be a valid hostname",
        ),
        (_update("h", "10.0.0.300", 1), grpc.StatusCode.INVALID_ARGUMENT, "ip: value must be a valid IP address"),
        (
            _update("h", "10.0.0.1", 0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "scheduler_cluster_id: value must be greater than or equal to 1",
        ),
        (_update("h", "10.0.0.1", 99), grpc.StatusCode.NOT_FOUND, "scheduler cluster 99 not found"),
        (_update("h", "10.0.0.1", 1, config=b"{nope"), grpc.StatusCode.INVALID_ARGUMENT, "not JSON"),
        (_update("h", "10.0.0.1", 1, features=["fly"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown features"),
    ],
)
async def test_update_scheduler_validates(stub: Any, request_: Any, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateScheduler(request_)
    assert info.value.code() == code
    assert message in (info.value.details() or "")


async def test_unknown_cluster_and_unregistered_keep_alive(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _names(stub, scheduler_cluster_id=42)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    call, _queue = await _keep_alive(stub, "ghost", "10.9.9.9", 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register first" in (info.value.details() or "")


async def test_seed_peers_and_applications(manager: ManagerServer, stub: Any) -> None:
    seed = await stub.UpdateSeedPeer(
        manager_pb2.UpdateSeedPeerRequest(
            source_type=manager_pb2.SEED_PEER_SOURCE,
            hostname="seed-1",
            type="super",
            ip="10.0.0.7",
            port=4000,
            download_port=4005,
            seed_peer_cluster_id=1,
        )
    )
    assert seed.seed_peer_cluster.name == "cluster-1"
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def requests() -> AsyncIterator[Any]:
        while (item := await queue.get()) is not None:
            yield item

    call = stub.KeepAlive(requests())
    await queue.put(
        manager_pb2.KeepAliveRequest(
            source_type=manager_pb2.SEED_PEER_SOURCE, hostname="seed-1", ip="10.0.0.7", cluster_id=1
        )
    )

    async def listed() -> bool:
        response = await stub.ListSeedPeers(manager_pb2.ListSeedPeersRequest(hostname="sched-1", ip="10.0.0.1"))
        return [s.hostname for s in response.seed_peers] == ["seed-1"]

    await eventually(listed, 10, "the scheduler to be listed")
    # A scheduler of cluster-1 sees the active seed peers of its linked seed-peer cluster.
    await stub.UpdateScheduler(_update("sched-1", "10.0.0.1", 1))
    got = await stub.GetScheduler(
        manager_pb2.GetSchedulerRequest(hostname="sched-1", ip="10.0.0.1", scheduler_cluster_id=1)
    )
    assert [s.hostname for s in got.seed_peers] == ["seed-1"]
    await queue.put(None)
    await call
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListApplications(manager_pb2.ListApplicationsRequest(hostname="peer-1", ip="10.0.0.8"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert manager.ctx is not None
    async with manager.ctx.sessions() as session:
        session.add(
            models.Application(name="d7y", priority={"value": 3, "urls": [{"regex": "^https://a/", "value": 9}]})
        )
        await session.commit()
    apps = (
        await stub.ListApplications(manager_pb2.ListApplicationsRequest(hostname="peer-1", ip="10.0.0.8"))
    ).applications
    assert [(a.name, a.priority.value, [(u.regex, u.value) for u in a.priority.urls]) for a in apps] == [
        ("d7y", 3, [("^https://a/", 6)])
    ]
    await stub.DeleteSeedPeer(
        manager_pb2.DeleteSeedPeerRequest(hostname="seed-1", ip="10.0.0.7", seed_peer_cluster_id=1)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetSeedPeer(manager_pb2.GetSeedPeerRequest(hostname="seed-1", ip="10.0.0.7", seed_peer_cluster_id=1))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_mtls_a_scheduler_registers_only_itself(tmp_path: Path) -> None:
    ca = pki.create_ca()
    ca_cert, _ = ca.write(tmp_path / "ca")

    def files(name: str, role: str, ip: str) -> tls.TLSFiles:
        cert, key = pki.issue(ca, name, ips=[ip], roles=[role]).write(tmp_path, name)
        return tls.TLSFiles(ca_cert=str(ca_cert), cert=str(cert), key=str(key))

    own = files("manager", "manager", "127.0.0.1")
    cfg = manager_config(
        tmp_path,
        rest_addr="127.0.0.1:0",
        grpc_port=0,
        security={"enable": True, "caCert": own.ca_cert, "cert": own.cert, "key": own.key},
    )
    server = ManagerServer(cfg, extensions=[])
    await server.start()
    try:
        target = server.grpc_address
        scheduler = files("sched-a", "scheduler", "10.0.0.1")
        async with tls.aio_channel(target, scheduler) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)  # type: ignore[no-untyped-call]
            assert (await stub.UpdateScheduler(_update("sched-a", "10.0.0.1", 1))).hostname == "sched-a"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.UpdateScheduler(_update("sched-b", "10.0.0.2", 1))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        peer = files("peer-a", "peer", "10.0.0.3")
        async with tls.aio_channel(target, peer) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)  # type: ignore[no-untyped-call]
            await stub.ListSchedulers(manager_pb2.ListSchedulersRequest(hostname="peer-a", ip="10.0.0.3"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.UpdateScheduler(_update("peer-a", "10.0.0.3", 1))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with grpc.aio.insecure_channel(target) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListSchedulers(manager_pb2.ListSchedulersRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()


async def test_metrics_count_requests_and_instances(tmp_path: Path) -> None:
    import urllib.request

    cfg = manager_config(
        tmp_path, rest_addr="127.0.0.1:0", grpc_port=0, keep_alive_timeout="600ms", extra={"metrics": {"enable": True}}
    )
    server = ManagerServer(cfg, extensions=[])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            stub = manager_pb2_grpc.ManagerStub(channel)  # type: ignore[no-untyped-call]
            await stub.UpdateScheduler(_update("sched-1", "10.0.0.1", 1))
            call, queue = await _keep_alive(stub, "sched-1", "10.0.0.1", 1)

            def scrape() -> str:
                with urllib.request.urlopen(f"http://{server.rest_address}/metrics", timeout=10) as response:
                    return str(response.read().decode())

            async def counted() -> bool:
                # The keep-alive check refreshes the gauge; the one registered scheduler is in one of the states.
                text = await asyncio.to_thread(scrape)
                states = re.findall(r'dragonfly_manager_instances\{kind="scheduler",state="\w+"\} (\S+)', text)
                return sum(map(float, states)) == 1.0

            await eventually(counted, 10, "the request to be counted")
            text = await asyncio.to_thread(scrape)
            assert 'dragonfly_manager_requests_total{code="200",method="GET"}' in text
            await queue.put(None)
            await call
    finally:
        await server.stop()

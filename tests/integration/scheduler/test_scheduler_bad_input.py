"""Illegal message orders and garbage get precise gRPC errors; the scheduler keeps serving everyone else."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from dragonfly_api import common_pb2, scheduler_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

TASK = "c" * 64


async def test_first_message_must_be_register(start_scheduler, helpers):
    cluster = await start_scheduler()
    a = cluster.peer(await cluster.announce(helpers.host("peer-a")), TASK)
    await a.started()
    error = await a.error()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == ("the first message must be RegisterPeerRequest, got download_peer_started_request")


async def test_request_without_oneof_is_refused(start_scheduler, helpers):
    cluster = await start_scheduler()
    a = cluster.peer(await cluster.announce(helpers.host("peer-a")), TASK)
    await a.send()
    error = await a.error()
    # Dragonfly's rules mark the oneof required: refused as it decodes, as the Go scheduler does.
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "invalid AnnouncePeerRequest.request: value is required"


async def test_undecodable_bytes_are_refused(start_scheduler):
    cluster = await start_scheduler()
    call = cluster.channel.stream_stream("/scheduler.v2.Scheduler/AnnouncePeer")()
    await call.write(b"\xff\xff\xff\xff")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(5):
            await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("cannot decode AnnouncePeerRequest: ")


async def test_unknown_host_is_not_found(start_scheduler, helpers):
    cluster = await start_scheduler()
    a = cluster.peer(helpers.host("never-announced"), TASK)
    await a.register(helpers.download())
    error = await a.error()
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"host {a.host.id} not found: announce the host before its peers"


async def test_double_register_and_duplicate_peer_are_refused(start_scheduler, helpers):
    cluster = await start_scheduler()
    host = await cluster.announce(helpers.host("peer-a"))
    a = cluster.peer(host, TASK)
    await a.register(helpers.download())
    assert (await a.response()).WhichOneof("response") == "need_back_to_source_response"

    again = cluster.peer(host, TASK)
    again.peer_id = a.peer_id
    await again.register(helpers.download())
    error = await again.error()
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == f"peer {a.peer_id} is already registered"

    await a.register(helpers.download())
    error = await a.error()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"peer {a.peer_id} is already registered on this stream"


async def test_messages_for_another_peer_or_a_deleted_peer_are_refused(start_scheduler, helpers):
    cluster = await start_scheduler()
    host = await cluster.announce(helpers.host("peer-a"))
    a = cluster.peer(host, TASK)
    await a.register(helpers.download())
    await a.response()
    await a.call.write(
        scheduler_pb2.AnnouncePeerRequest(
            host_id=host.id,
            task_id=TASK,
            peer_id="someone-else",
            download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest(),
        )
    )
    error = await a.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().endswith(f"peer 'someone-else' on the stream of peer {a.peer_id}")

    b = cluster.peer(host, TASK)
    await b.register(helpers.download())
    await b.response()
    await cluster.stub.DeletePeer(
        scheduler_pb2.DeletePeerRequest(host_id="test-client", task_id=TASK, peer_id=b.peer_id)
    )
    await b.back_to_source_started()
    error = await b.error()
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"peer {b.peer_id} not found (it was deleted)"


async def test_illegal_transition_fails_the_stream_and_the_peer(start_scheduler, helpers):
    cluster = await start_scheduler()
    a = cluster.peer(await cluster.announce(helpers.host("peer-a")), TASK)
    await a.register(helpers.download())
    await a.response()
    await a.back_to_source_started()
    await a.started()
    error = await a.error()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"peer {a.peer_id}: event Download is not allowed in state BackToSource"
    peer = await cluster.stub.StatPeer(
        scheduler_pb2.StatPeerRequest(host_id="test-client", task_id=TASK, peer_id=a.peer_id)
    )
    assert peer.state == "Failed"


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("peer_id", "peer_id is 10240 characters long, the limit is 1024"),
        ("task_id", "task_id is 10240 characters long, the limit is 1024"),
        ("host_id", "host_id is 10240 characters long, the limit is 1024"),
    ],
)
async def test_ten_kilobyte_ids_are_invalid(start_scheduler, helpers, field, message):
    cluster = await start_scheduler()
    a = cluster.peer(await cluster.announce(helpers.host("peer-a")), TASK)
    if field == "host_id":
        a.host = common_pb2.Host(id="x" * 10240)
    else:
        setattr(a, field, "x" * 10240)
    await a.register(helpers.download())
    error = await a.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


async def test_inconsistent_sizes_and_blocked_downloads_are_refused(start_scheduler, helpers):
    cluster = await start_scheduler(extra={"blockList": {"download": {"urls": [r"^http://blocked\.test/"]}}})
    host = await cluster.announce(helpers.host("peer-a"))
    a = cluster.peer(host, TASK)
    download = helpers.download()
    download.actual_piece_count = 99
    await a.register(download)
    error = await a.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "download.actual_piece_count 99 does not match content length 16384 and piece length 4096"
    )
    b = cluster.peer(host, TASK)
    await b.register(helpers.download("http://blocked.test/x"))
    error = await b.error()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"task {TASK} is blocked by the scheduler's block list"


async def test_ten_thousand_bogus_registrations_get_errors_with_bounded_memory(start_scheduler, helpers):
    cluster = await start_scheduler()
    host = await cluster.announce(helpers.host("legit"))
    rss_before = cluster.rss()
    codes: dict[grpc.StatusCode, int] = {}
    semaphore = asyncio.Semaphore(200)
    bogus_host = helpers.host("bogus")

    async def bogus(index: int) -> None:
        async with semaphore:
            peer = cluster.peer(bogus_host, f"{index:064x}")
            kind = index % 3
            if kind == 0:
                await peer.register(helpers.download())
            elif kind == 1:
                peer.peer_id = "p" * 10240
                await peer.register(helpers.download())
            else:
                await peer.piece(0)
            # A bound on a hung call, not a speed requirement (2 shared cores under other tests' load).
            error = await peer.error(within=120)
            codes[error.code()] = codes.get(error.code(), 0) + 1

    flood = asyncio.ensure_future(asyncio.gather(*(bogus(i) for i in range(10_000))))
    # A well-behaved peer is served while the flood runs: before it ends, whatever the machine's speed.
    legit = cluster.peer(host, TASK)
    await legit.register(helpers.download())
    assert (await legit.response(within=120)).WhichOneof("response") == "need_back_to_source_response"
    assert not flood.done(), "the legitimate peer was answered only after the whole flood"
    await asyncio.wait_for(flood, 240)
    assert codes == {
        grpc.StatusCode.NOT_FOUND: 3334,
        grpc.StatusCode.INVALID_ARGUMENT: 3333,
        grpc.StatusCode.FAILED_PRECONDITION: 3333,
    }
    assert cluster.rss() - rss_before < 64 * 1024 * 1024
    hosts = await cluster.stub.ListHosts(scheduler_pb2.ListHostsRequest())
    assert [h.id for h in hosts.hosts] == [host.id]
    await legit.back_to_source_started()
    await legit.piece(0)
    await legit.finished(back_to_source=True)


@pytest.mark.parametrize(
    ("method", "request_type", "reason"),
    [
        ("StatCacheTask", scheduler_pb2.StatCacheTaskRequest, "cache tasks are not supported by this scheduler yet"),
        (
            "StatPersistentTask",
            scheduler_pb2.StatPersistentTaskRequest,
            "persistent tasks are not supported by this scheduler yet",
        ),
    ],
)
async def test_unsupported_rpcs_are_unimplemented(start_scheduler, method, request_type, reason):
    cluster = await start_scheduler()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(cluster.stub, method)(request_type(host_id="test-client", task_id=TASK), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details() == f"scheduler.v2.Scheduler/{method} is not implemented: {reason}"


async def test_streaming_cache_rpc_is_unimplemented(start_scheduler):
    cluster = await start_scheduler()
    call = cluster.stub.AnnounceCachePeer()

    async def exchange() -> None:
        # The scheduler may end the call before the write lands; either way the status is the answer.
        async with asyncio.timeout(5):
            await call.write(scheduler_pb2.AnnounceCachePeerRequest(peer_id="x"))
            await call.read()

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange()
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_and_reflection(start_scheduler):
    cluster = await start_scheduler()
    health = health_pb2_grpc.HealthStub(cluster.channel)
    for service in ("", "scheduler.v2.Scheduler"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(cluster.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    async with asyncio.timeout(5):
        response = await call.read()
    await call.done_writing()
    names = {service.name for service in response.list_services_response.service}
    assert {"scheduler.v2.Scheduler", "grpc.health.v1.Health"} <= names

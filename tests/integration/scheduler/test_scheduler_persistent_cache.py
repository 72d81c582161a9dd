"""Persistent cache RPCs against a real scheduler process: import, stat with the importer's digest, export
candidates, replication to the replica count, who may delete what, TTL expiry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2
from google.protobuf import duration_pb2, empty_pb2

from dragonfly.common import pki, tls
from tests.waiting import eventually

WAIT = 5.0
MiB = 1024 * 1024
DIGEST = "sha256:" + "ab" * 32


class ReplicaEndpoint(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    """Stands in for a daemon's DfdaemonUpload server: records what the scheduler asks of it (this test is about
    the scheduler's decisions; the daemon side has its own tests with real processes)."""

    def __init__(self, files: tls.TLSFiles) -> None:
        self.files = files
        self.downloads: list[dfdaemon_pb2.DownloadPersistentCacheTaskRequest] = []
        self.deletes: list[str] = []
        self.changed = asyncio.Event()
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def DownloadPersistentCacheTask(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.downloads.append(request)
        self.changed.set()
        yield dfdaemon_pb2.DownloadPersistentCacheTaskResponse(
            host_id="h",
            task_id=request.task_id,
            peer_id="p",
            download_persistent_cache_task_started_response=dfdaemon_pb2.DownloadPersistentCacheTaskStartedResponse(
                content_length=1
            ),
        )

    async def DeletePersistentCacheTask(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.deletes.append(request.task_id)
        self.changed.set()
        return empty_pb2.Empty()

    async def wait(self, condition: Any) -> None:
        async with asyncio.timeout(WAIT):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def start(self) -> None:
        self._server = grpc.aio.server()
        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(self, self._server)
        self.port = tls.add_port(self._server, "127.0.0.1:0", self.files)
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)


@pytest.fixture
async def replicas(tmp_path: Path, authority: pki.CertificateAuthority) -> AsyncIterator[list[ReplicaEndpoint]]:
    """Two stand-in daemons on 127.0.0.1 with certificates of the scheduler's CA."""
    ca_cert, _ = authority.write(tmp_path / "replicas")
    endpoints = []
    for name in ("replica-1", "replica-2"):
        cert, key = pki.issue(authority, name, ips=["127.0.0.1"], roles=["peer"]).write(tmp_path / "replicas", name)
        endpoint = ReplicaEndpoint(tls.TLSFiles(ca_cert=str(ca_cert), cert=str(cert), key=str(key)))
        await endpoint.start()
        endpoints.append(endpoint)
    yield endpoints
    for endpoint in endpoints:
        await endpoint.stop()


def started_request(
    host: common_pb2.Host,
    task_id: str,
    peer_id: str,
    *,
    replicas: int = 1,
    ttl: float = 3600,
    content_length: int = 10 * MiB,
    piece_length: int = 4 * MiB,
) -> scheduler_pb2.UploadPersistentCacheTaskStartedRequest:
    return scheduler_pb2.UploadPersistentCacheTaskStartedRequest(
        host_id=host.id,
        task_id=task_id,
        peer_id=peer_id,
        persistent_replica_count=replicas,
        piece_length=piece_length,
        content_length=content_length,
        piece_count=-(-content_length // piece_length),
        ttl=duration_pb2.Duration(seconds=int(ttl), nanos=int((ttl % 1) * 1e9)),
        tag="t",
    )


async def import_task(scheduler: Any, host: common_pb2.Host, task_id: str, **kwargs: Any) -> str:
    peer_id = f"{host.id}-{uuid.uuid4()}"
    stub = scheduler.host_stub(host)
    await stub.UploadPersistentCacheTaskStarted(
        started_request(host, task_id, peer_id, **kwargs),
        metadata=(("dragonfly-content-digest", DIGEST),),
        timeout=WAIT,
    )
    await stub.UploadPersistentCacheTaskFinished(
        scheduler_pb2.UploadPersistentCacheTaskFinishedRequest(host_id=host.id, task_id=task_id, peer_id=peer_id),
        timeout=WAIT,
    )
    return peer_id


async def test_import_stat_export_and_delete(start_scheduler: Any, helpers: Any) -> None:
    scheduler = await start_scheduler()
    importer = await scheduler.announce(helpers.host("importer"))
    exporter = await scheduler.announce(helpers.host("exporter"))
    other = await scheduler.announce(helpers.host("other"))
    task_id = "c" * 64

    # Unknown before the import.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scheduler.stub.StatPersistentCacheTask(
            scheduler_pb2.StatPersistentCacheTaskRequest(host_id="test-client", task_id=task_id)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    importer_peer = await import_task(scheduler, importer, task_id)
    call = scheduler.stub.StatPersistentCacheTask(
        scheduler_pb2.StatPersistentCacheTaskRequest(host_id=exporter.id, task_id=task_id), timeout=WAIT
    )
    task = await call
    assert (task.state, task.content_length, task.piece_count, task.tag) == ("Succeeded", 10 * MiB, 3, "t")
    assert (task.persistent_replica_count, task.current_persistent_replica_count) == (1, 1)
    assert ("dragonfly-content-digest", DIGEST) in tuple(await call.trailing_metadata())

    # Another host cannot import the same id while it exists.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scheduler.host_stub(other).UploadPersistentCacheTaskStarted(
            started_request(other, task_id, f"{other.id}-x"), timeout=WAIT
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # An exporter registers and gets the importer as its parent, reports its pieces and finishes.
    stream, message, response = await register_exporter(scheduler, exporter, task_id, persistent=False)
    peer_id = message().peer_id
    parents = response.normal_persistent_cache_task_response.candidate_cache_parents
    assert [parent.id for parent in parents] == [importer_peer]
    assert parents[0].host.id == importer.id
    assert parents[0].task.id == task_id
    for number in range(3):
        piece = common_pb2.Piece(number=number, parent_id=importer_peer, length=4 * MiB)
        piece.cost.FromMilliseconds(5)  # cost and created_at are required by Dragonfly's rules
        piece.created_at.GetCurrentTime()
        await stream.write(
            message(download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece))
        )
    await stream.write(
        message(
            download_persistent_cache_peer_finished_request=scheduler_pb2.DownloadPersistentCachePeerFinishedRequest()
        )
    )
    async with asyncio.timeout(WAIT):
        assert await stream.read() is grpc.aio.EOF
    peer = await scheduler.stub.StatPersistentCachePeer(
        scheduler_pb2.StatPersistentCachePeerRequest(host_id=exporter.id, task_id=task_id, peer_id=peer_id)
    )
    assert (peer.state, peer.persistent, peer.host.id) == ("Succeeded", False, exporter.id)
    task = await scheduler.stub.StatPersistentCacheTask(
        scheduler_pb2.StatPersistentCacheTaskRequest(host_id="test-client", task_id=task_id)
    )
    assert (task.current_persistent_replica_count, task.current_replica_count) == (1, 1)

    # A host that is not the importer drops only its own copy; another host's certificate cannot act for it.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scheduler.host_stub(other).DeletePersistentCacheTask(
            scheduler_pb2.DeletePersistentCacheTaskRequest(host_id=importer.id, task_id=task_id)
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await scheduler.host_stub(exporter).DeletePersistentCacheTask(
        scheduler_pb2.DeletePersistentCacheTaskRequest(host_id=exporter.id, task_id=task_id)
    )
    task = await scheduler.stub.StatPersistentCacheTask(
        scheduler_pb2.StatPersistentCacheTaskRequest(host_id="test-client", task_id=task_id)
    )
    assert (task.current_persistent_replica_count, task.current_replica_count) == (1, 0)

    # The importer deletes it for everyone.
    await scheduler.host_stub(importer).DeletePersistentCacheTask(
        scheduler_pb2.DeletePersistentCacheTaskRequest(host_id=importer.id, task_id=task_id)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scheduler.stub.StatPersistentCacheTask(
            scheduler_pb2.StatPersistentCacheTaskRequest(host_id="test-client", task_id=task_id)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_imports_are_refused(start_scheduler: Any, helpers: Any) -> None:
    scheduler = await start_scheduler()
    importer = await scheduler.announce(helpers.host("importer"))
    stub = scheduler.host_stub(importer)
    request = started_request(importer, "d" * 64, "p")
    request.piece_count = 7
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UploadPersistentCacheTaskStarted(request, timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "piece_count 7" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UploadPersistentCacheTaskStarted(
            started_request(importer, "d" * 64, "p"), metadata=(("dragonfly-content-digest", "md5:00"),), timeout=WAIT
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # More pieces than the scheduler keeps count of (maxPieceCount, 4 Mi by default).
    huge = started_request(importer, "d" * 64, "p", content_length=((1 << 22) + 1) * 4 * MiB)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UploadPersistentCacheTaskStarted(huge, timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maxPieceCount" in (info.value.details() or "")
    # A certificate imports only for the host ids it owns.
    other = helpers.host("other")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UploadPersistentCacheTaskStarted(started_request(other, "d" * 64, "p"), timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Exporting something that was never imported.
    stream = stub.AnnouncePersistentCachePeer()
    await stream.write(
        scheduler_pb2.AnnouncePersistentCachePeerRequest(
            host_id=importer.id,
            task_id="e" * 64,
            peer_id="p",
            register_persistent_cache_peer_request=scheduler_pb2.RegisterPersistentCachePeerRequest(
                piece_length=4 * MiB
            ),
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(WAIT):
            await stream.read()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def register_exporter(
    scheduler: Any, host: common_pb2.Host, task_id: str, *, persistent: bool
) -> tuple[Any, Any, scheduler_pb2.AnnouncePersistentCachePeerResponse]:
    """Open ``host``'s AnnouncePersistentCachePeer stream and register a fresh peer of the task; return the stream,
    a builder of the peer's next messages and the scheduler's answer."""
    peer_id = f"{host.id}-{uuid.uuid4()}"
    stream = scheduler.host_stub(host).AnnouncePersistentCachePeer()

    def message(**kwargs: Any) -> scheduler_pb2.AnnouncePersistentCachePeerRequest:
        return scheduler_pb2.AnnouncePersistentCachePeerRequest(
            host_id=host.id, task_id=task_id, peer_id=peer_id, **kwargs
        )

    await stream.write(
        message(
            register_persistent_cache_peer_request=scheduler_pb2.RegisterPersistentCachePeerRequest(
                persistent=persistent, piece_length=4 * MiB, piece_count=3
            )
        )
    )
    async with asyncio.timeout(WAIT):
        response = await stream.read()
    return stream, message, response


async def export_task(scheduler: Any, host: common_pb2.Host, task_id: str) -> list[str]:
    """Register ``host`` as an exporter, report the whole task and finish; return the parents it was given."""
    stream, message, response = await register_exporter(scheduler, host, task_id, persistent=True)
    await stream.write(
        message(
            download_persistent_cache_peer_finished_request=scheduler_pb2.DownloadPersistentCachePeerFinishedRequest()
        )
    )
    async with asyncio.timeout(WAIT):
        assert await stream.read() is grpc.aio.EOF
    return [parent.id for parent in response.normal_persistent_cache_task_response.candidate_cache_parents]


async def test_a_peer_whose_stream_ends_unfinished_is_forgotten(start_scheduler: Any, helpers: Any) -> None:
    scheduler = await start_scheduler()
    importer = await scheduler.announce(helpers.host("importer"))
    exporter = await scheduler.announce(helpers.host("exporter"))
    task_id = "7" * 64
    await import_task(scheduler, importer, task_id)
    peer_id = f"{exporter.id}-gone"
    stream = scheduler.host_stub(exporter).AnnouncePersistentCachePeer()
    await stream.write(
        scheduler_pb2.AnnouncePersistentCachePeerRequest(
            host_id=exporter.id,
            task_id=task_id,
            peer_id=peer_id,
            register_persistent_cache_peer_request=scheduler_pb2.RegisterPersistentCachePeerRequest(
                piece_length=4 * MiB, piece_count=3
            ),
        )
    )
    async with asyncio.timeout(WAIT):
        await stream.read()
    request = scheduler_pb2.StatPersistentCachePeerRequest(host_id=exporter.id, task_id=task_id, peer_id=peer_id)
    assert (await scheduler.stub.StatPersistentCachePeer(request)).state == "Running"
    stream.cancel()  # the daemon went away mid-export

    async def gone() -> bool:
        try:
            await scheduler.stub.StatPersistentCachePeer(request)
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    await eventually(gone, WAIT, "the scheduler to forget the peer whose stream ended")


async def test_replicas_are_requested_up_to_the_count(
    start_scheduler: Any, helpers: Any, replicas: list[ReplicaEndpoint]
) -> None:
    scheduler = await start_scheduler()
    importer = await scheduler.announce(helpers.host("importer"))
    for index, endpoint in enumerate(replicas):
        await scheduler.announce(helpers.host(f"replica-{index + 1}", ip="127.0.0.1", port=endpoint.port))
    task_id = "f" * 64
    await import_task(scheduler, importer, task_id, replicas=3)
    # Two more copies than the importer's are wanted: both other hosts are asked for one.
    for endpoint in replicas:
        await endpoint.wait(lambda endpoint=endpoint: bool(endpoint.downloads))
        request = endpoint.downloads[0]
        assert (request.task_id, request.persistent, request.tag) == (task_id, True, "t")
    assert await scheduler.metric("dragonfly_scheduler_persistent_cache_replications_total", 'result="started"') >= 2
    assert await scheduler.metric("dragonfly_scheduler_persistent_cache_tasks") == 1


async def test_expiry_drops_the_task_everywhere(
    start_scheduler: Any, helpers: Any, replicas: list[ReplicaEndpoint]
) -> None:
    # A TTL of seconds is outside Dragonfly's rules (at least 5 minutes): this scheduler does not check them.
    scheduler = await start_scheduler(env={"DRAGONFLY_REQUEST_VALIDATION": "0"})
    importer = await scheduler.announce(helpers.host("importer"))
    holder = await scheduler.announce(helpers.host("replica-1", ip="127.0.0.1", port=replicas[0].port))
    task_id = "9" * 64
    importer_peer = await import_task(scheduler, importer, task_id, ttl=2.0)
    assert await export_task(scheduler, holder, task_id) == [importer_peer]
    task = await scheduler.stub.StatPersistentCacheTask(
        scheduler_pb2.StatPersistentCacheTaskRequest(host_id="test-client", task_id=task_id)
    )
    assert task.current_persistent_replica_count == 2
    # The TTL runs out: the task is gone, and the host that holds a copy is told to drop it.
    await replicas[0].wait(lambda: replicas[0].deletes == [task_id])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scheduler.stub.StatPersistentCacheTask(
            scheduler_pb2.StatPersistentCacheTaskRequest(host_id="test-client", task_id=task_id)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

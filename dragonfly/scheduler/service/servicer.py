"""``scheduler.v2.Scheduler`` on grpc.aio: host, peer, preheat and persistent cache RPCs; cache and persistent RPCs are
UNIMPLEMENTED.

StatPeer reports abnormal-parent marks in its trailing metadata, since common.v2.Peer has no field for them:
``dragonfly-bad-parent`` ("true"/"false"), and while true ``dragonfly-bad-parent-reason`` and
``dragonfly-bad-parent-remaining`` (seconds of cool-down left).

With mutual TLS every caller is a cluster member, and a caller may announce, register peers for and delete only
the hosts its certificate owns (``dragonfly.common.identity``; ``docs/security.md``): a host cannot take over
another's id. The manager role may delete any host, task or peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import empty_pb2

from dragonfly.common.identity import HOST_ROLES, ROLE_SEED_PEER
from dragonfly.scheduler.service import convert
from dragonfly.scheduler.service.announce_peer import MAX_ID_LENGTH, PeerStream, StreamError
from dragonfly.scheduler.service.persistent_cache import PersistentCacheService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from dragonfly.scheduler.preheat.service import PreheatService
    from dragonfly.scheduler.resource.host import Host
    from dragonfly.scheduler.resource.peer import Peer
    from dragonfly.scheduler.resource.task import Task
    from dragonfly.scheduler.server import SchedulerContext

log = logging.getLogger(__name__)

# StatPeer lists up to this many pieces on the event loop; more are listed on a thread.
_INLINE_PIECES = 4096

IMPLEMENTED = frozenset(
    (
        "AnnouncePeer",
        "StatPeer",
        "DeletePeer",
        "StatTask",
        "DeleteTask",
        "AnnounceHost",
        "ListHosts",
        "DeleteHost",
        "PreheatFile",
        "PreheatImage",
        "StatFile",
        "StatImage",
        "AnnouncePersistentCachePeer",
        "StatPersistentCachePeer",
        "DeletePersistentCachePeer",
        "UploadPersistentCacheTaskStarted",
        "UploadPersistentCacheTaskFinished",
        "UploadPersistentCacheTaskFailed",
        "StatPersistentCacheTask",
        "DeletePersistentCacheTask",
    )
)


def _unimplemented_reason(method: str) -> str:
    if "PersistentCache" in method:
        return "persistent-cache tasks are not supported by this scheduler yet"
    if "Persistent" in method:
        return "persistent tasks are not supported by this scheduler yet"
    return "cache tasks are not supported by this scheduler yet"


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\n", " ")


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> Any:
    await context.abort(code, message)


def _check_ids(**ids: str) -> tuple[grpc.StatusCode, str] | None:
    for name, value in ids.items():
        if not value:
            return grpc.StatusCode.INVALID_ARGUMENT, f"{name} is empty"
        if len(value) > MAX_ID_LENGTH:
            return grpc.StatusCode.INVALID_ARGUMENT, f"{name} is longer than {MAX_ID_LENGTH} characters"
    return None


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    """The gRPC face of one scheduler."""

    def __init__(
        self, ctx: SchedulerContext, preheat: PreheatService, persistent_cache: PersistentCacheService | None = None
    ) -> None:
        self._ctx = ctx
        self._preheat = preheat
        self._pcache = persistent_cache or PersistentCacheService(ctx)
        self._large_stats = asyncio.Semaphore(1)

    async def AnnouncePeer(
        self, request_iterator: AsyncIterator[scheduler_pb2.AnnouncePeerRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.AnnouncePeerResponse]:
        """Run one peer's announce stream until a terminal message, an error or the client's end."""
        authz = self._ctx.authz
        identity = await authz.caller(context)
        owned_host_id = ""
        stream = PeerStream(self._ctx)
        requests = aiter(request_iterator)
        try:
            while True:
                try:
                    request = await anext(requests)
                except StopAsyncIteration:
                    return
                # Malformed ids (empty, too long) get the stream's INVALID_ARGUMENT rather than a refusal. Every
                # message of a stream names the same host, so one check per distinct id keeps piece reports cheap.
                host_id = request.host_id
                if identity is not None and host_id != owned_host_id and 0 < len(host_id) <= MAX_ID_LENGTH:
                    if not identity.owns_host_id(host_id):
                        stream.close()
                        await authz.deny(
                            context, identity, f"AnnouncePeer for host {host_id!r}: the certificate does not own it"
                        )
                    owned_host_id = host_id
                failure: tuple[grpc.StatusCode, str] | None = None
                try:
                    response = await stream.handle(request)
                except StreamError as exc:
                    failure = exc.code, exc.message
                if failure is not None:
                    # The stream ends with its status set, not raised: a raised StreamError, or grpc's AbortError,
                    # leaves a cycle through its traceback's frames (~10 KiB a stream) that only a full collection
                    # frees, and a frozen heap (scheduler.gc.pythonGCFreezeInterval) holds those until
                    # pythonGCFullCollectInterval: a flood of bad streams would grow the scheduler meanwhile.
                    code, message = failure
                    peer = stream.peer
                    log.info(
                        "announce stream failed",
                        extra={
                            "task_id": peer.task.id if peer else "-",
                            "peer_id": peer.id if peer else "-",
                            "code": code.name,
                            "error": message,
                        },
                    )
                    stream.close()
                    context.set_code(code)
                    context.set_details(message)
                    return
                if response is not None:
                    yield response
                if stream.done:
                    return
        finally:
            stream.close()

    # peers and tasks

    def _peer(self, peer_id: str) -> Peer | None:
        return self._ctx.resource.peers.get(peer_id)

    async def StatPeer(self, request: scheduler_pb2.StatPeerRequest, context: grpc.aio.ServicerContext) -> Any:
        """Return the peer with its finished pieces; bad-parent marks go in trailing metadata."""
        await self._ctx.authz.caller(context)
        error = _check_ids(peer_id=request.peer_id)
        if error:
            return await _abort(context, *error)
        peer = self._peer(request.peer_id)
        if peer is None:
            return await _abort(context, grpc.StatusCode.NOT_FOUND, f"peer {request.peer_id} not found")
        now = time.monotonic()
        bad = peer.is_bad(now)
        metadata = [("dragonfly-bad-parent", "true" if bad else "false")]
        if bad:
            reason = peer.bad_reason if now < peer.bad_until else "slow: its last piece cost is abnormal"
            metadata.append(("dragonfly-bad-parent-reason", _ascii(reason)))
            metadata.append(("dragonfly-bad-parent-remaining", f"{max(peer.bad_until - now, 0.0):.3f}"))
        context.set_trailing_metadata(tuple(metadata))
        message = convert.peer_message(peer, convert.task_message(peer.task))
        task = peer.task
        pieces = peer.pieces.snapshot()
        if peer.pieces.count <= _INLINE_PIECES:
            convert.add_peer_pieces(message, pieces, task.piece_length, task.content_length)
            return message
        # Thousands of pieces take a CPU-second per million to list: build them on a thread from a copy of the
        # bitmap, one such request at a time, so registrations and piece reports keep flowing meanwhile.
        async with self._large_stats:
            await asyncio.to_thread(convert.add_peer_pieces, message, pieces, task.piece_length, task.content_length)
        return message

    async def DeletePeer(self, request: scheduler_pb2.DeletePeerRequest, context: grpc.aio.ServicerContext) -> Any:
        """Remove a peer (its children lose it as a parent)."""
        error = _check_ids(peer_id=request.peer_id)
        if error:
            return await _abort(context, *error)
        peer = self._peer(request.peer_id)
        if peer is None:
            return await _abort(context, grpc.StatusCode.NOT_FOUND, f"peer {request.peer_id} not found")
        await self._ctx.authz.require_host(context, peer.host.id, "DeletePeer")
        self._ctx.resource.delete_peer(peer, time.monotonic())
        log.info("peer deleted", extra={"task_id": peer.task.id, "peer_id": peer.id})
        return empty_pb2.Empty()

    def _task(self, task_id: str) -> Task | None:
        return self._ctx.resource.tasks.get(task_id)

    async def StatTask(self, request: scheduler_pb2.StatTaskRequest, context: grpc.aio.ServicerContext) -> Any:
        """Return the task with its trusted pieces (digests from a digest authority, docs/security.md)."""
        await self._ctx.authz.caller(context)
        error = _check_ids(task_id=request.task_id)
        if error:
            return await _abort(context, *error)
        task = self._task(request.task_id)
        if task is None:
            return await _abort(context, grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        return convert.task_message(task, with_pieces=True)

    async def DeleteTask(self, request: scheduler_pb2.DeleteTaskRequest, context: grpc.aio.ServicerContext) -> Any:
        """Remove the given host's peers of the task."""
        error = _check_ids(host_id=request.host_id, task_id=request.task_id)
        if error:
            return await _abort(context, *error)
        await self._ctx.authz.require_host(context, request.host_id, "DeleteTask")
        task = self._task(request.task_id)
        if task is None:
            return await _abort(context, grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        now = time.monotonic()
        resource = self._ctx.resource
        for peer in [p for p in task.peers.values() if p.host.id == request.host_id]:
            resource.delete_peer(peer, now)
        return empty_pb2.Empty()

    # hosts

    async def AnnounceHost(self, request: scheduler_pb2.AnnounceHostRequest, context: grpc.aio.ServicerContext) -> Any:
        """Create or refresh a host."""
        host = request.host
        error = _check_ids(**{"host.id": host.id, "host.ip": host.ip})
        if error:
            return await _abort(context, *error)
        if not 0 < host.port <= 65535:
            return await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"host.port {host.port} is not a TCP port")
        if host.type > 3:
            return await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"host.type {host.type} is unknown")
        await self._authorize_host(host, context)
        interval = convert.seconds(request.interval) if request.HasField("interval") else 0.0
        self._ctx.resource.announce_host(host, interval, time.monotonic())
        return empty_pb2.Empty()

    async def _authorize_host(self, host: Any, context: grpc.aio.ServicerContext) -> None:
        """Refuse an AnnounceHost whose id, name, IP or type the caller's certificate does not vouch for."""
        authz = self._ctx.authz
        identity = await authz.caller(context)
        if identity is None:
            return
        problems = []
        if not identity.has_role(*HOST_ROLES):
            problems.append("the certificate has neither the peer nor the seed-peer role")
        if host.type != 0 and not identity.has_role(ROLE_SEED_PEER):
            problems.append(f"host.type {host.type} (a seed peer) needs the seed-peer role")
        if not identity.owns_host_id(host.id):
            problems.append(f"the certificate does not own host id {host.id[:256]!r}")
        if not identity.owns_name(host.hostname):
            problems.append(f"host.hostname {host.hostname[:256]!r} is not among its names")
        if not identity.owns_ip(host.ip):
            problems.append(f"host.ip {host.ip[:64]!r} is not among its IPs")
        if problems:
            await authz.deny(context, identity, f"AnnounceHost refused: {'; '.join(problems)}")

    async def ListHosts(self, request: scheduler_pb2.ListHostsRequest, context: grpc.aio.ServicerContext) -> Any:
        """Return every host, or those of one type."""
        await self._ctx.authz.caller(context)
        hosts: list[Host] = list(self._ctx.resource.hosts.values())
        if request.HasField("type"):
            hosts = [host for host in hosts if host.message.type == request.type]
        return scheduler_pb2.ListHostsResponse(hosts=[host.message for host in hosts])

    async def DeleteHost(self, request: scheduler_pb2.DeleteHostRequest, context: grpc.aio.ServicerContext) -> Any:
        """Remove a host and all its peers."""
        error = _check_ids(host_id=request.host_id)
        if error:
            return await _abort(context, *error)
        await self._ctx.authz.require_host(context, request.host_id, "DeleteHost")
        host = self._ctx.resource.hosts.get(request.host_id)
        if host is None:
            return await _abort(context, grpc.StatusCode.NOT_FOUND, f"host {request.host_id} not found")
        self._ctx.resource.delete_host(host, time.monotonic())
        return empty_pb2.Empty()

    # preheat (``dragonfly.scheduler.preheat.service``)

    async def PreheatFile(self, request: scheduler_pb2.PreheatFileRequest, context: grpc.aio.ServicerContext) -> Any:
        """Make the hosts of the request's scope download a file."""
        return await self._preheat.preheat_file(request, context)

    async def PreheatImage(self, request: scheduler_pb2.PreheatImageRequest, context: grpc.aio.ServicerContext) -> Any:
        """Resolve an image and make the hosts of the request's scope download its blobs."""
        return await self._preheat.preheat_image(request, context)

    async def StatFile(self, request: scheduler_pb2.StatFileRequest, context: grpc.aio.ServicerContext) -> Any:
        """Return the hosts that hold a file."""
        return await self._preheat.stat_file(request, context)

    async def StatImage(self, request: scheduler_pb2.StatImageRequest, context: grpc.aio.ServicerContext) -> Any:
        """Return an image's blobs and the hosts that hold them."""
        return await self._preheat.stat_image(request, context)

    # persistent cache tasks (``dragonfly.scheduler.service.persistent_cache``)

    async def AnnouncePersistentCachePeer(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.AnnouncePersistentCachePeerRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[scheduler_pb2.AnnouncePersistentCachePeerResponse]:
        """Run one exporting peer's stream."""
        async for response in self._pcache.announce_peer(request_iterator, context):
            yield response

    async def StatPersistentCachePeer(
        self, request: scheduler_pb2.StatPersistentCachePeerRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Return one peer of a persistent cache task."""
        return await self._pcache.stat_peer(request, context)

    async def DeletePersistentCachePeer(
        self, request: scheduler_pb2.DeletePersistentCachePeerRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Remove one peer of a persistent cache task."""
        return await self._pcache.delete_peer(request, context)

    async def UploadPersistentCacheTaskStarted(
        self, request: scheduler_pb2.UploadPersistentCacheTaskStartedRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Record an import that has begun."""
        return await self._pcache.upload_started(request, context)

    async def UploadPersistentCacheTaskFinished(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFinishedRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Record a finished import and start its replicas."""
        return await self._pcache.upload_finished(request, context)

    async def UploadPersistentCacheTaskFailed(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFailedRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Forget an import that failed."""
        return await self._pcache.upload_failed(request, context)

    async def StatPersistentCacheTask(
        self, request: scheduler_pb2.StatPersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Return a persistent cache task; the importer's content digest goes in trailing metadata."""
        return await self._pcache.stat_task(request, context)

    async def DeletePersistentCacheTask(
        self, request: scheduler_pb2.DeletePersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        """Delete a persistent cache task everywhere (its importer) or one host's copy (anyone else)."""
        return await self._pcache.delete_task(request, context)


def _make_unimplemented(method: str) -> Any:
    message = f"scheduler.v2.Scheduler/{method} is not implemented: {_unimplemented_reason(method)}"

    async def unimplemented(self: SchedulerServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    unimplemented.__name__ = method
    unimplemented.__doc__ = f"Answer UNIMPLEMENTED ({_unimplemented_reason(method)})."
    return unimplemented


for _method in scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].methods:
    if _method.name not in IMPLEMENTED:
        setattr(SchedulerServicer, _method.name, _make_unimplemented(_method.name))

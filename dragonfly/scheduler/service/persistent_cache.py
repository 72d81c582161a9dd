"""The persistent cache RPCs of ``scheduler.v2.Scheduler`` (``docs/dfcache.md#on-the-scheduler``).

Import: the importer's daemon calls UploadPersistentCacheTaskStarted (sizes, replica count, TTL), stores the file,
then UploadPersistentCacheTaskFinished; the scheduler then has ``persistent_replica_count - 1`` other hosts fetch it
(DfdaemonUpload.DownloadPersistentCacheTask) so the content survives the importer. Export: a daemon asks
StatPersistentCacheTask for the sizes, opens AnnouncePersistentCachePeer and gets the holders as candidate parents.

Trust (``docs/security.md#persistent-cache-tasks``): any host may import under a host id its certificate owns; the
first importer of a task id owns it until it is deleted or expires, and only it (or the manager role) may delete
the task for everyone; any other host drops only its own copy. The importer may declare its digest of the whole
content in the request metadata ``dragonfly-content-digest`` (``sha256:<hex>``) of UploadPersistentCacheTaskStarted;
the scheduler hands it out in the trailing metadata of StatPersistentCacheTask under the same key, and exporting
daemons check the content against it before they keep or serve it. Nothing a non-importer says changes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2
from google.protobuf import empty_pb2
from prometheus_client import Counter, Gauge

from dragonfly.common import tls
from dragonfly.common.background import BackgroundJobs
from dragonfly.scheduler.metrics import NAMESPACE
from dragonfly.scheduler.resource import persistent_cache as pc
from dragonfly.scheduler.service.announce_peer import MAX_ID_LENGTH
from dragonfly.scheduler.service.convert import duration, seconds, timestamp

if TYPE_CHECKING:
    from dragonfly.scheduler.resource.host import Host
    from dragonfly.scheduler.server import SchedulerContext

log = logging.getLogger(__name__)

CONTENT_DIGEST_KEY = "dragonfly-content-digest"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
#: Candidate parents handed to an exporting peer at a time.
CANDIDATE_PARENT_LIMIT = 4
#: How often expired tasks are collected and missing replicas are started.
TICK_INTERVAL = 1.0
#: A host whose replication failed is not asked again for this task for this long.
REPLICATION_RETRY_AFTER = 60.0
#: The longest a replication download may take.
REPLICATION_TIMEOUT = 3600.0
_MAX_TTL = 366 * 86400.0
#: Live imports one host may have: the scheduler's memory is not a host's to fill.
MAX_TASKS_PER_HOST = 10_000


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message.replace("\n", " ")[:4096])
    raise AssertionError("abort returned")


def _check_ids(**ids: str) -> str | None:
    for name, value in ids.items():
        if not value:
            return f"{name} is empty"
        if len(value) > MAX_ID_LENGTH:
            return f"{name} is longer than {MAX_ID_LENGTH} characters"
    return None


def task_message(task: pc.PersistentCacheTask) -> common_pb2.PersistentCacheTask:
    """Return the common.v2.PersistentCacheTask of ``task``."""
    message = common_pb2.PersistentCacheTask(
        id=task.id,
        persistent_replica_count=task.persistent_replica_count,
        current_persistent_replica_count=task.persistent_replicas(),
        current_replica_count=task.replicas(),
        piece_length=task.piece_length,
        content_length=task.content_length,
        piece_count=task.piece_count,
        state=task.state,
        ttl=duration(task.ttl),
        created_at=timestamp(task.created_at),
        updated_at=timestamp(task.updated_at),
    )
    if task.tag:
        message.tag = task.tag
    if task.application:
        message.application = task.application
    return message


def peer_message(peer: pc.PersistentCachePeer, host: Host | None) -> common_pb2.PersistentCachePeer:
    """Return the common.v2.PersistentCachePeer of ``peer`` with its task and (when announced) its host."""
    message = common_pb2.PersistentCachePeer(
        id=peer.id,
        persistent=peer.persistent,
        cost=duration(max(peer.cost, 0.0)),
        state=peer.state,
        task=task_message(peer.task),
        created_at=timestamp(peer.created_at),
        updated_at=timestamp(peer.updated_at),
        concurrent_piece_count=peer.concurrent_piece_count,
    )
    if host is not None:
        message.host.CopyFrom(host.message)
    return message


def _content_digest(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == CONTENT_DIGEST_KEY:
            return str(value)
    return None


class PersistentCacheService:
    """Persistent cache tasks of one scheduler: the RPCs, TTL expiry and replication."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self._ctx = ctx
        self.resource = pc.PersistentCacheResource()
        self._tls = ctx.config.tls().seed_peer
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._jobs = BackgroundJobs()
        self._ticker: asyncio.Task[None] | None = None
        # task id -> hosts asked to replicate it, whose download is still running.
        self._replicating: dict[str, set[str]] = {}
        # (task id, host id) -> when that host may be asked again after a failed replication.
        self._replication_failed: dict[tuple[str, str], float] = {}
        registry = ctx.metrics.registry
        self._tasks_gauge = Gauge(
            f"{NAMESPACE}_persistent_cache_tasks", "Persistent cache tasks known.", registry=registry
        )
        self._tasks_gauge.set_function(lambda: len(self.resource.tasks))
        self._replications = Counter(
            f"{NAMESPACE}_persistent_cache_replications",
            "Replications of persistent cache tasks asked of hosts, by result (started, succeeded, failed).",
            ["result"],
            registry=registry,
        )
        self._expired = Counter(
            f"{NAMESPACE}_persistent_cache_expired", "Persistent cache tasks whose TTL ran out.", registry=registry
        )

    # lifecycle

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_loop(), name="persistent-cache-tick")

    async def close(self) -> None:
        await self._jobs.close(self._ticker)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            try:
                self.tick(time.time())
            except Exception:
                log.exception("persistent cache upkeep failed")

    def tick(self, now: float) -> None:
        """Collect expired tasks and start missing replicas."""
        for task in self.resource.expired_tasks(now):
            log.info("persistent cache task expired", extra={"task_id": task.id})
            self._expired.inc()
            self._drop_everywhere(task)
        for task in list(self.resource.tasks.values()):
            if task.state == pc.TASK_SUCCEEDED:
                self.replicate(task, now)

    def _channel(self, host: Host) -> grpc.aio.Channel:
        channel = self._channels.get(host.address)
        if channel is None:
            channel = self._channels[host.address] = tls.aio_channel(host.address, self._tls)
        return channel

    def _host(self, host_id: str) -> Host | None:
        return self._ctx.resource.hosts.get(host_id)

    # replication

    def replicate(self, task: pc.PersistentCacheTask, now: float) -> list[str]:
        """Ask enough hosts to fetch ``task`` to reach its persistent replica count; return the hosts asked."""
        replicating = self._replicating.setdefault(task.id, set())
        have = sum(
            1
            for peer in task.peers.values()
            if peer.persistent and peer.state == pc.PEER_SUCCEEDED and self._host(peer.host_id) is not None
        )
        missing = task.persistent_replica_count - have - len(replicating)
        if missing <= 0:
            if not replicating:
                self._replicating.pop(task.id, None)
            return []
        busy = {peer.host_id for peer in task.peers.values() if peer.state != pc.PEER_FAILED} | replicating
        candidates = [
            host
            for host in self._ctx.resource.hosts.values()
            if host.id not in busy
            and not host.disable_shared
            and self._replication_failed.get((task.id, host.id), 0.0) <= now
        ]
        if not candidates or not task.holders():
            if not replicating:
                self._replicating.pop(task.id, None)
            return []
        # Normal hosts first (seed peers' disks are for origin content), at random among equals.
        random.shuffle(candidates)
        candidates.sort(key=lambda host: host.is_seed)
        chosen = candidates[:missing]
        for host in chosen:
            replicating.add(host.id)
            log.info("persistent cache replication started", extra={"task_id": task.id, "host_id": host.id})
            self._replications.labels("started").inc()
            self._jobs.spawn(self._replicate_to(task, host))
        return [host.id for host in chosen]

    async def _replicate_to(self, task: pc.PersistentCacheTask, host: Host) -> None:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(self._channel(host))  # type: ignore[no-untyped-call]
        request = dfdaemon_pb2.DownloadPersistentCacheTaskRequest(task_id=task.id, persistent=True)
        if task.tag:
            request.tag = task.tag
        if task.application:
            request.application = task.application
        failure = ""
        try:
            call = stub.DownloadPersistentCacheTask(request, timeout=REPLICATION_TIMEOUT)
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            failure = f"{exc.code().name}: {exc.details()}"
        finally:
            replicating = self._replicating.get(task.id)
            if replicating is not None:
                replicating.discard(host.id)
        if not failure and not any(
            peer.host_id == host.id and peer.state == pc.PEER_SUCCEEDED for peer in task.peers.values()
        ):
            failure = "the download ended without the host reporting a copy"
        self._replications.labels("failed" if failure else "succeeded").inc()
        if failure:
            self._replication_failed[(task.id, host.id)] = time.time() + REPLICATION_RETRY_AFTER
            log.warning(
                "persistent cache replication failed", extra={"task_id": task.id, "host_id": host.id, "error": failure}
            )
        else:
            log.info("persistent cache replication finished", extra={"task_id": task.id, "host_id": host.id})

    # deletion on the hosts

    def _drop_everywhere(self, task: pc.PersistentCacheTask, *, except_host: str | None = None) -> None:
        """Forget the task and have every host that holds a copy drop it."""
        holders = self.resource.delete_task(task)
        self._replicating.pop(task.id, None)
        for key in [key for key in self._replication_failed if key[0] == task.id]:
            del self._replication_failed[key]
        for peer in holders:
            host = self._host(peer.host_id)
            if host is not None and host.id != except_host:
                self._jobs.spawn(self._drop_on(task.id, host))

    async def _drop_on(self, task_id: str, host: Host) -> None:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(self._channel(host))  # type: ignore[no-untyped-call]
        try:
            await stub.DeletePersistentCacheTask(
                dfdaemon_pb2.DeletePersistentCacheTaskRequest(task_id=task_id), timeout=10.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.info(
                    "could not tell a host to drop a persistent cache task",
                    extra={"task_id": task_id, "host_id": host.id, "code": exc.code().name},
                )

    # import

    async def upload_started(
        self, request: scheduler_pb2.UploadPersistentCacheTaskStartedRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        error = _check_ids(host_id=request.host_id, task_id=request.task_id, peer_id=request.peer_id)
        if error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, error)
        await self._ctx.authz.require_host(context, request.host_id, "UploadPersistentCacheTaskStarted")
        try:
            pc.check_sizes(request.piece_length, request.content_length, request.piece_count)
        except pc.SizeError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.piece_count > self._ctx.config.scheduler.max_piece_count:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"piece_count {request.piece_count} is above this scheduler's maxPieceCount",
            )
        ttl = seconds(request.ttl)
        if not 0 < ttl <= _MAX_TTL:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"ttl {ttl:g}s must be positive and at most 366d")
        if request.persistent_replica_count < 1:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "persistent_replica_count must be at least 1")
        digest = _content_digest(context)
        if digest is not None and not _DIGEST.match(digest):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"{CONTENT_DIGEST_KEY} must be sha256:<64 lower-case hex>"
            )
        now = time.time()
        existing = self.resource.get_task(request.task_id, now)
        # The importer may import again (after a restart, say); nobody else may take over its task id.
        if existing is not None and existing.importer_host_id != request.host_id:
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"persistent cache task {request.task_id} already exists (imported by {existing.importer_host_id})",
            )
        if existing is None and len(self.resource.tasks_of_importer(request.host_id)) >= MAX_TASKS_PER_HOST:
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"host {request.host_id} has imported {MAX_TASKS_PER_HOST} persistent cache tasks already",
            )
        task = pc.PersistentCacheTask(
            id=request.task_id,
            importer_host_id=request.host_id,
            importer_peer_id=request.peer_id,
            persistent_replica_count=request.persistent_replica_count,
            piece_length=request.piece_length,
            content_length=request.content_length,
            piece_count=request.piece_count,
            ttl=ttl,
            tag=request.tag,
            application=request.application,
            content_digest=digest,
            created_at=now,
            updated_at=now,
        )
        self.resource.create_task(task)
        log.info(
            "persistent cache task import started",
            extra={"task_id": task.id, "host_id": request.host_id, "replicas": task.persistent_replica_count},
        )
        return empty_pb2.Empty()

    async def _importing(self, request: Any, context: grpc.aio.ServicerContext, action: str) -> pc.PersistentCacheTask:
        error = _check_ids(host_id=request.host_id, task_id=request.task_id, peer_id=request.peer_id)
        if error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, error)
        await self._ctx.authz.require_host(context, request.host_id, action)
        task = self.resource.get_task(request.task_id, time.time())
        if task is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
        if task.importer_host_id != request.host_id or task.importer_peer_id != request.peer_id:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"persistent cache task {request.task_id} is not being imported by peer {request.peer_id}",
            )
        return task

    async def upload_finished(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFinishedRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.PersistentCacheTask:
        task = await self._importing(request, context, "UploadPersistentCacheTaskFinished")
        now = time.time()
        task.state = pc.TASK_SUCCEEDED
        task.updated_at = now
        peer = task.peers.get(request.peer_id)
        if peer is not None:
            peer.state = pc.PEER_SUCCEEDED
            peer.finished_at = peer.updated_at = now
            peer.pieces = set(range(task.piece_count))
        log.info("persistent cache task imported", extra={"task_id": task.id, "host_id": request.host_id})
        self.replicate(task, now)
        return task_message(task)

    async def upload_failed(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFailedRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        task = await self._importing(request, context, "UploadPersistentCacheTaskFailed")
        if task.state != pc.TASK_SUCCEEDED:
            self.resource.delete_task(task)
            log.info(
                "persistent cache task import failed",
                extra={"task_id": task.id, "host_id": request.host_id, "error": request.description[:512]},
            )
        return empty_pb2.Empty()

    # stat and delete

    async def stat_task(
        self, request: scheduler_pb2.StatPersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.PersistentCacheTask:
        await self._ctx.authz.caller(context)
        error = _check_ids(task_id=request.task_id)
        if error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, error)
        task = self.resource.get_task(request.task_id, time.time())
        if task is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
        if task.content_digest:
            context.set_trailing_metadata(((CONTENT_DIGEST_KEY, task.content_digest),))
        return task_message(task)

    async def delete_task(
        self, request: scheduler_pb2.DeletePersistentCacheTaskRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        """The importer (or the manager role) deletes the task everywhere; any other host drops its own copy."""
        error = _check_ids(host_id=request.host_id, task_id=request.task_id)
        if error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, error)
        identity = await self._ctx.authz.require_host(context, request.host_id, "DeletePersistentCacheTask")
        task = self.resource.get_task(request.task_id, time.time())
        if task is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
        owner = task.importer_host_id == request.host_id
        if identity is not None and not identity.owns_host_id(request.host_id):
            owner = True  # the manager role, which require_host let through
        if owner:
            log.info("persistent cache task deleted", extra={"task_id": task.id, "host_id": request.host_id})
            self._drop_everywhere(task, except_host=request.host_id)
        else:
            for peer in [p for p in task.peers.values() if p.host_id == request.host_id]:
                self.resource.delete_peer(peer)
        return empty_pb2.Empty()

    async def stat_peer(
        self, request: scheduler_pb2.StatPersistentCachePeerRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.PersistentCachePeer:
        await self._ctx.authz.caller(context)
        error = _check_ids(peer_id=request.peer_id)
        if error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, error)
        peer = self.resource.peers.get(request.peer_id)
        if peer is None or self.resource.get_task(peer.task.id, time.time()) is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"persistent cache peer {request.peer_id} not found")
        return peer_message(peer, self._host(peer.host_id))

    async def delete_peer(
        self, request: scheduler_pb2.DeletePersistentCachePeerRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        error = _check_ids(peer_id=request.peer_id)
        if error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, error)
        peer = self.resource.peers.get(request.peer_id)
        if peer is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"persistent cache peer {request.peer_id} not found")
        await self._ctx.authz.require_host(context, peer.host_id, "DeletePersistentCachePeer")
        self.resource.delete_peer(peer)
        return empty_pb2.Empty()

    # export

    def candidates(
        self, task: pc.PersistentCacheTask, peer: pc.PersistentCachePeer, exclude: set[str], now: float
    ) -> list[common_pb2.PersistentCachePeer]:
        """Return up to CANDIDATE_PARENT_LIMIT holders on announced hosts other than the peer's, at random."""
        found = []
        for parent in task.holders():
            host = self._host(parent.host_id)
            if (
                host is None
                or parent.host_id == peer.host_id
                or parent.id in exclude
                or parent.is_bad(now)
                or host.disable_shared
            ):
                continue
            found.append((parent, host))
        random.shuffle(found)
        # Hosts that have it persistently (the importer and its replicas) before transient copies.
        found.sort(key=lambda item: not item[0].persistent)
        return [peer_message(parent, host) for parent, host in found[:CANDIDATE_PARENT_LIMIT]]

    async def announce_peer(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.AnnouncePersistentCachePeerRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[scheduler_pb2.AnnouncePersistentCachePeerResponse]:
        """Run one exporting peer's stream: register, get holders, report pieces, finish or fail.

        A peer whose stream ends before it finished (its daemon died, the call was cancelled) is forgotten: it
        holds nothing anyone can use, and it would keep its host from being chosen for a replica.
        """
        registered: list[pc.PersistentCachePeer] = []
        try:
            async for response in self._announce_peer(request_iterator, context, registered):
                yield response
        finally:
            for peer in registered:
                if peer.state == pc.PEER_RUNNING and self.resource.peers.get(peer.id) is peer:
                    self.resource.delete_peer(peer)

    async def _announce_peer(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.AnnouncePersistentCachePeerRequest],
        context: grpc.aio.ServicerContext,
        registered: list[pc.PersistentCachePeer],
    ) -> AsyncIterator[scheduler_pb2.AnnouncePersistentCachePeerResponse]:
        authz = self._ctx.authz
        identity = await authz.caller(context)
        peer: pc.PersistentCachePeer | None = None
        checked_host = ""
        async for request in request_iterator:
            error = _check_ids(host_id=request.host_id, task_id=request.task_id, peer_id=request.peer_id)
            if error:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, error)
            if identity is not None and request.host_id != checked_host:
                if not identity.owns_host_id(request.host_id):
                    await authz.deny(
                        context,
                        identity,
                        f"AnnouncePersistentCachePeer for host {request.host_id[:256]!r}: "
                        "the certificate does not own it",
                    )
                checked_host = request.host_id
            now = time.time()
            kind = request.WhichOneof("request")
            if kind == "register_persistent_cache_peer_request":
                peer = await self._register(request, context, now)
                registered.append(peer)
                parents = self.candidates(peer.task, peer, set(), now)
                if not parents:
                    await _abort(
                        context,
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"persistent cache task {request.task_id} has no available parent",
                    )
                yield scheduler_pb2.AnnouncePersistentCachePeerResponse(
                    normal_persistent_cache_task_response=scheduler_pb2.NormalPersistentCacheTaskResponse(
                        candidate_cache_parents=parents
                    )
                )
                continue
            if peer is None or peer.id != request.peer_id or peer.task.id != request.task_id:
                await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"peer {request.peer_id} is not registered")
            peer.updated_at = now
            if kind == "download_persistent_cache_peer_started_request":
                continue
            if kind == "reschedule_persistent_cache_peer_request":
                exclude = {parent.id for parent in request.reschedule_persistent_cache_peer_request.candidate_parents}
                parents = self.candidates(peer.task, peer, exclude, now)
                if not parents:
                    await _abort(
                        context,
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"persistent cache task {request.task_id} has no other available parent",
                    )
                yield scheduler_pb2.AnnouncePersistentCachePeerResponse(
                    normal_persistent_cache_task_response=scheduler_pb2.NormalPersistentCacheTaskResponse(
                        candidate_cache_parents=parents
                    )
                )
            elif kind == "download_piece_finished_request":
                number = request.download_piece_finished_request.piece.number
                if number < peer.task.piece_count:
                    peer.pieces.add(number)
            elif kind == "download_piece_failed_request":
                failed = request.download_piece_failed_request
                parent = self.resource.peers.get(failed.parent_id)
                if parent is not None and parent.task is peer.task and not failed.temporary:
                    # Dragonfly's peers report temporary=true for transfer errors; ours report false only when the
                    # bytes failed verification against the importer's digest.
                    parent.mark_bad(f"served piece {failed.piece_number} that failed verification", now)
                    log.warning(
                        "persistent cache parent served bad content",
                        extra={"task_id": peer.task.id, "peer_id": parent.id, "reporter": peer.id},
                    )
            elif kind == "download_persistent_cache_peer_finished_request":
                peer.state = pc.PEER_SUCCEEDED
                peer.finished_at = now
                peer.pieces = set(range(peer.task.piece_count))
                log.info("persistent cache peer finished", extra={"task_id": peer.task.id, "peer_id": peer.id})
                return
            elif kind == "download_persistent_cache_peer_failed_request":
                log.info(
                    "persistent cache peer failed",
                    extra={
                        "task_id": peer.task.id,
                        "peer_id": peer.id,
                        "error": request.download_persistent_cache_peer_failed_request.description[:512],
                    },
                )
                self.resource.delete_peer(peer)
                return
            else:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "request carries no message")

    async def _register(
        self, request: scheduler_pb2.AnnouncePersistentCachePeerRequest, context: grpc.aio.ServicerContext, now: float
    ) -> pc.PersistentCachePeer:
        register = request.register_persistent_cache_peer_request
        task = self.resource.get_task(request.task_id, now)
        if task is None or task.state != pc.TASK_SUCCEEDED:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"persistent cache task {request.task_id} not found")
        if self._host(request.host_id) is None:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"host {request.host_id} is not announced")
        if register.piece_length and register.piece_length != task.piece_length:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"piece_length {register.piece_length} differs from the task's {task.piece_length}",
            )
        peer = self.resource.create_peer(request.peer_id, task, request.host_id, persistent=register.persistent)
        peer.concurrent_piece_count = register.concurrent_piece_count
        log.info(
            "persistent cache peer registered",
            extra={"task_id": task.id, "peer_id": peer.id, "host_id": request.host_id},
        )
        return peer

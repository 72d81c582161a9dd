"""This daemon's side of AnnouncePeer (``docs/reference/protocol.md#announcepeer``): register a download with the
task's scheduler and act on each answer in the reference's order (parents, back to source, an empty task,
reschedules); learn the size of a task whose source cannot be read here from the swarm; tell the scheduler that a
task it asked for is here already (metadata only); hand the piece verifier the digests the scheduler vouches for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from dragonfly_api import common_pb2, scheduler_pb2

from dragonfly.common import ids
from dragonfly.common.piece import piece_count
from dragonfly.common.redact import redact_url
from dragonfly.daemon.backends import NotReadableHere, StatResult
from dragonfly.daemon.config import DfdaemonConfig
from dragonfly.daemon.download.parent_downloader import ParentDownloader
from dragonfly.daemon.download.scheduler_client import AnnouncePeerStream, SchedulerClient, describe_error
from dragonfly.daemon.download.source_downloader import SourceDownloader
from dragonfly.daemon.download.task_download import TaskDownload
from dragonfly.daemon.errors import BackendError, DownloadFailed
from dragonfly.daemon.storage import TaskRecord

log = logging.getLogger(__name__)


class PeerAnnouncer:
    """Talks AnnouncePeer with the schedulers for every download of the daemon (see the module docstring)."""

    def __init__(
        self,
        config: DfdaemonConfig,
        *,
        scheduler: SchedulerClient,
        host_id: str,
        seed: bool,
        new_peer_id: Callable[[], str],
        parents: ParentDownloader,
        source: SourceDownloader,
        spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None,
    ) -> None:
        self._config = config
        self._scheduler = scheduler
        # Runs a coroutine in the background (the daemon waits for it at shutdown); None: awaited in place.
        self._spawn = spawn
        self._host_id = host_id
        self._seed = seed
        self._new_peer_id = new_peer_id
        self._parents = parents
        self._source = source
        self._concurrency = config.download.concurrent_piece_count

    def trusted_pieces(self, task_id: str) -> Callable[[], Coroutine[Any, Any, list[common_pb2.Piece]]]:
        """Return how the verifier asks the task's scheduler for its trusted piece digests (StatTask)."""
        scheduler = self._scheduler
        host_id = self._host_id

        async def refresh() -> list[common_pb2.Piece]:
            return await scheduler.trusted_pieces(host_id, task_id)

        return refresh

    def _register_download(self, td: TaskDownload, task: TaskRecord) -> common_pb2.Download:
        download = common_pb2.Download()
        download.CopyFrom(td.download)
        if not download.filtered_query_params:
            download.filtered_query_params.extend(ids.DEFAULT_FILTERED_QUERY_PARAMS)
        if td.byte_range is not None:
            download.range.start = td.byte_range.start
            download.range.length = td.byte_range.length
        download.actual_content_length = task.content_length
        download.actual_piece_length = task.piece_length
        download.actual_piece_count = piece_count(task.content_length, task.piece_length)
        download.concurrent_piece_count = self._concurrency
        return download

    async def download(self, td: TaskDownload, task: TaskRecord) -> bool:
        """Follow the scheduler's answers; True when every piece is stored, False to fall back.

        The answers and what each asks for: ``docs/reference/protocol.md#announcepeer``.
        """
        td.registered = True
        first: scheduler_pb2.AnnouncePeerResponse | None = None
        if td.probe is not None:
            # Registered already, to learn the task's size: go on with the scheduler's answer to that.
            stream, addr, first = td.probe
            td.probe = None
        else:
            addr = self._scheduler.owner(td.task_id)
            if not await self._scheduler.ensure_announced(addr):
                raise ConnectionError(f"scheduler {addr} is unreachable")
            stream = self._scheduler.announce_peer(addr, host_id=self._host_id, task_id=td.task_id, peer_id=td.peer_id)
        ended = False
        try:
            result = await self._follow(td, task, stream, first)
            ended = True
            return result
        except (grpc.aio.AioRpcError, ConnectionError):
            self._scheduler.forget(addr)
            raise
        finally:
            if ended and self._spawn is not None:
                # The conversation is over: its last messages are written or queued in order. The scheduler's end
                # of the stream is waited for in the background, not by the download's requesters, who would
                # otherwise wait a round trip to the scheduler per task (bench small-files: 200 in a row per peer).
                self._spawn(stream.close())
            else:
                await stream.close()

    async def stat_from_swarm(self, td: TaskDownload, unreadable: NotReadableHere) -> StatResult:
        """Learn the size of a task whose source this daemon cannot read (a ``file://`` path only a seed peer may
        read) from the swarm: register without a size; the scheduler has a seed peer fetch the task, and the
        parents it then offers carry the task's content length. The stream stays open for the download itself.
        """
        if self._seed:
            raise unreadable
        scheduler = self._scheduler
        addr = scheduler.owner(td.task_id)
        if not await scheduler.ensure_announced(addr):
            raise BackendError(f"{unreadable.message}; scheduler {addr} is unreachable") from unreadable
        register = common_pb2.Download()
        register.CopyFrom(td.download)
        if not register.filtered_query_params:
            register.filtered_query_params.extend(ids.DEFAULT_FILTERED_QUERY_PARAMS)
        register.concurrent_piece_count = self._concurrency
        td.unreadable = True
        stream = scheduler.announce_peer(addr, host_id=self._host_id, task_id=td.task_id, peer_id=td.peer_id)
        response: scheduler_pb2.AnnouncePeerResponse | None = None
        try:
            await stream.send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=register))
            response = await stream.recv(self._config.scheduler.schedule_timeout)
        except (grpc.aio.AioRpcError, ConnectionError, TimeoutError) as exc:
            await stream.close()
            if not isinstance(exc, TimeoutError):
                scheduler.forget(addr)
            raise BackendError(
                f"{unreadable.message}; the swarm did not provide it either ({describe_error(exc)})"
            ) from unreadable
        kind = response.WhichOneof("response") if response is not None else None
        length: int | None = None
        if kind == "empty_task_response":
            # Nothing to fetch: finish the peer as the scheduler expects, and the task is an empty file.
            try:
                await stream.send(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
                await stream.send(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())
            except (grpc.aio.AioRpcError, ConnectionError, TimeoutError) as exc:
                log.info("empty task announcement failed", extra={"task_id": td.task_id, "error": repr(exc)})
            await stream.close()
            return StatResult(0, {"Content-Length": "0"})
        if kind == "normal_task_response":
            assert response is not None
            parents = response.normal_task_response.candidate_parents
            if parents and parents[0].task.content_length > 0:
                length = parents[0].task.content_length
        if length is None:
            await stream.close()
            # The scheduler had a seed peer fetch the task meanwhile (an empty file, which no parent serves, ends
            # here): its size is known now. The download then registers anew, with another peer id.
            known = await self._task_size(td)
            if known is None:
                raise BackendError(
                    f"{unreadable.message}; the swarm did not provide it either (the scheduler answered {kind})"
                ) from unreadable
            td.peer_id = self._new_peer_id()
            return StatResult(known, {"Content-Length": str(known)})
        assert response is not None
        log.info(
            "source not readable here: size taken from the swarm",
            extra={"task_id": td.task_id, "content_length": length, "reason": unreadable.message},
        )
        td.probe = (stream, addr, response)
        return StatResult(length, {"Content-Length": str(length)})

    async def _task_size(self, td: TaskDownload) -> int | None:
        """Return the task's content length as its scheduler knows it, or None while nobody has announced it."""
        for attempt in range(3):
            try:
                task = await self._scheduler.stat_task(self._host_id, td.task_id)
            except (grpc.aio.AioRpcError, ConnectionError, TimeoutError):
                task = None
            if task is not None and (task.content_length > 0 or task.size_scope == common_pb2.EMPTY):
                return int(task.content_length)
            if attempt < 2:
                await asyncio.sleep(0.5)
        return None

    async def _follow(
        self,
        td: TaskDownload,
        task: TaskRecord,
        stream: AnnouncePeerStream,
        first: scheduler_pb2.AnnouncePeerResponse | None = None,
    ) -> bool:
        """Register (unless ``first``, the answer to a register already sent, is given), then act on each response
        in the reference's message order (``docs/reference/protocol.md#announcepeer``)."""
        scheduler_config = self._config.scheduler
        deadline = time.monotonic() + scheduler_config.schedule_timeout
        if first is None:
            await stream.send(
                register_peer_request=scheduler_pb2.RegisterPeerRequest(download=self._register_download(td, task))
            )
        schedule_count = 0
        while True:
            if first is not None:
                response: scheduler_pb2.AnnouncePeerResponse | None = first
                first = None
            else:
                response = await stream.recv(max(deadline - time.monotonic(), 0.001))
            if response is None:
                log.info("scheduler closed the stream without a decision", extra={"task_id": td.task_id})
                return False
            schedule_count += 1
            if schedule_count > scheduler_config.max_schedule_count:
                stream.report(
                    download_peer_failed_request=scheduler_pb2.DownloadPeerFailedRequest(
                        description="max schedule count exceeded"
                    )
                )
                return False
            kind = response.WhichOneof("response")
            if kind == "empty_task_response":
                await stream.send(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
                await stream.send(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())
                return True
            if kind == "normal_task_response":
                parents = list(response.normal_task_response.candidate_parents)
                # Piece 0's request sent with the stat (a trigger the scheduler then gave parents): not needed.
                await td.close_first_piece()
                if td.verifier is not None:
                    td.verifier.learn(piece for parent in parents for piece in parent.task.pieces)
                # Queued, not awaited: the stream keeps the order, and the download need not wait for the write.
                stream.report(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
                failed: set[str] = set()
                if await self._parents.download(td, task, stream, parents, failed):
                    await stream.send(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())
                    return True
                # The scheduler blocks every parent listed here for this peer: only those that failed it, so an
                # honest parent that merely had nothing yet can be offered again (all of them if none failed).
                blocked = [p for p in parents if p.id in failed] or parents
                await stream.send(
                    reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest(
                        candidate_parents=blocked, description="not all pieces are downloaded from parent"
                    )
                )
                continue
            if kind == "need_back_to_source_response":
                if td.download.disable_back_to_source:
                    description = (
                        f"the scheduler found no parent for {redact_url(td.download.url)} "
                        "and back-to-source is disabled"
                    )
                    stream.report(
                        download_peer_failed_request=scheduler_pb2.DownloadPeerFailedRequest(description=description)
                    )
                    raise DownloadFailed(description)
                # Queued, not awaited: for a seed peer this is on every child's path to the first byte, and a
                # write that waits for a busy loop held the origin request back (59 ms traced in bench swarm).
                stream.report(
                    download_peer_back_to_source_started_request=(
                        scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
                    )
                )
                try:
                    await self._source.download(td, stream)
                except Exception as exc:
                    stream.report(
                        download_peer_back_to_source_failed_request=(
                            scheduler_pb2.DownloadPeerBackToSourceFailedRequest(description=describe_error(exc))
                        )
                    )
                    raise
                await stream.send(
                    download_peer_back_to_source_finished_request=(
                        scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
                    )
                )
                return True
            log.warning("unexpected scheduler response", extra={"task_id": td.task_id, "response": kind})
            return False

    async def announce_metadata_only(self, task: TaskRecord, download: common_pb2.Download, peer_id: str) -> None:
        """Tell the scheduler a task it asked for is already here.

        The metadata-only flow: item 4 of ``docs/reference/protocol.md#announcepeer``.
        """
        addr = self._scheduler.owner(task.id)
        register = common_pb2.Download()
        register.CopyFrom(download)
        register.metadata_only = True
        register.need_back_to_source = False
        register.actual_content_length = task.content_length
        register.actual_piece_length = task.piece_length
        register.actual_piece_count = piece_count(task.content_length, task.piece_length)
        stream = self._scheduler.announce_peer(addr, host_id=self._host_id, task_id=task.id, peer_id=peer_id)
        try:
            await stream.send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=register))
            response = await stream.recv(self._config.scheduler.schedule_timeout)
            if response is not None and response.WhichOneof("response") == "metadata_only_response":
                await stream.send(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
                await stream.send(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())
        except (grpc.aio.AioRpcError, TimeoutError, ConnectionError) as exc:
            log.info("metadata-only announcement failed", extra={"task_id": task.id, "error": repr(exc)})
        finally:
            await stream.close()

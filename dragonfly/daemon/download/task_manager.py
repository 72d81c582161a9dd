"""Download of one task on the peer (``docs/reference/protocol.md#download-of-one-task-on-a-peer`` and
``#announcepeer``; ``docs/architecture.md#control-plane``).

Each task has at most one download running in the daemon, in the background; requesters (dfget over the local
API, the scheduler over DfdaemonUpload.DownloadTask) watch it through storage: a piece they see is written and
verified. Order of work: stat the origin once → task id and piece length as Dragonfly → local hit → tiny task
(≤ 128 bytes) straight to the origin → register with the scheduler and follow its answers (parents,
back-to-source) → on any P2P failure, the rest from the origin unless back-to-source is disabled → whole-file
digest → output file.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Executor
from typing import Any

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, errordetails_pb2, scheduler_pb2

from dragonfly.common import ids, native
from dragonfly.common.byte_range import (
    ByteRange,
    RangeNotSatisfiable,
)
from dragonfly.common.digest import Digest, format_piece_digest, parse_digest, verify_file_digest
from dragonfly.common.errors import DigestMismatch, DragonflyError
from dragonfly.common.piece import MIN_PIECE_LENGTH, calculate_piece_length, piece_count, piece_range
from dragonfly.common.redact import redact_headers, redact_url
from dragonfly.daemon.backends import Backends, Entry, NotReadableHere, SourceOptions, StatResult, check_scheme
from dragonfly.daemon.backends.http import LOCAL as LOCAL_ORIGIN
from dragonfly.daemon.backends.http import HTTPBackend, OriginOptions, RangeNotSupported
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.config import DfdaemonConfig
from dragonfly.daemon.download.buffers import BufferPool
from dragonfly.daemon.download.download_request import (
    requested_range,
    task_id_for,
    validate_download,
    wanted_pieces,
    whole_content_digest,
)
from dragonfly.daemon.download.parent_round import ParentRound
from dragonfly.daemon.download.parent_selector import ParentSelector
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.piece_collector import PieceCollector
from dragonfly.daemon.download.piece_dispatcher import PieceDispatcher, PieceFetch, PieceRates, SlowPiecePolicy
from dragonfly.daemon.download.piece_verifier import PieceVerifier, UnverifiablePiece, piece_hash
from dragonfly.daemon.download.scheduler_client import AnnouncePeerStream, SchedulerClient
from dragonfly.daemon.download.source_window import SourceWindow
from dragonfly.daemon.download.task_download import PieceDone, TaskDownload, TaskStarted, piece_message, source_of
from dragonfly.daemon.download.vortex_client import ConnectionPool, FetchAbort, PieceAbandoned, fetch_piece
from dragonfly.daemon.errors import BackendError, DownloadFailed, DownloadTimeout, NoSpace, OutputError
from dragonfly.daemon.host_info import TrafficMeter
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.output import Caller, write_output, write_output_as
from dragonfly.daemon.storage import PieceRecord, Storage, TaskRecord

log = logging.getLogger(__name__)

BACK_TO_SOURCE = common_pb2.BACK_TO_SOURCE
REMOTE_PEER = common_pb2.REMOTE_PEER
LOCAL_PEER = common_pb2.LOCAL_PEER
VORTEX_CONNECT_TIMEOUT = 2.0
_SOURCE_BUFFER = 4 * 1024 * 1024


#: Objects (or ranges) up to this size go straight to the origin even with a scheduler: a round trip to the
#: scheduler and a seed peer would cost more than the bytes (the scheduler's TINY size scope). Anything larger, a
#: file of one piece included, goes through the swarm, so the origin serves it about once however many peers ask.
#: (Dragonfly's client sends everything up to 4 MiB to the origin, docs/reference/protocol.md; 200 peers pulling
#: the same 1 MiB file then cost its origin 200 MiB.)
DIRECT_FROM_SOURCE_MAX = 128


class TaskManager:
    """Runs task downloads and streams their progress to requesters."""

    def __init__(
        self,
        config: DfdaemonConfig,
        *,
        storage: Storage,
        backend: HTTPBackend,
        scheduler: SchedulerClient | None,
        channels: ParentChannels,
        executor: Executor,
        metrics: DaemonMetrics,
        download_traffic: TrafficMeter,
        host_id: str,
        ip: str,
        vortex_tls: ssl.SSLContext | None = None,
        backends: Backends | None = None,
    ) -> None:
        self._config = config
        self._storage = storage
        self._backend = backend
        # Every scheme's backend; HTTP's is ``backend`` (also used directly for streamed bodies).
        self._backends = backends if backends is not None else Backends(backend)
        self._scheduler = scheduler
        self._channels = channels
        self._executor = executor
        self._metrics = metrics
        self._traffic = download_traffic
        self.host_id = host_id
        self._ip = ip
        self._seed = config.seed_peer.enable
        download = config.download
        self._concurrency = download.concurrent_piece_count
        self._download_bucket = native.TokenBucket(download.bandwidth_limit, self._burst(download.bandwidth_limit))
        self._source_bucket = native.TokenBucket(
            download.back_to_source_bandwidth_limit, self._burst(download.back_to_source_bandwidth_limit)
        )
        self._recv_buffers = BufferPool(config.storage.write_buffer_size, 2 * self._concurrency)
        self._source_buffers = BufferPool(_SOURCE_BUFFER, 2 * self._concurrency)
        self._vortex_pool = ConnectionPool(max_idle_per_addr=self._concurrency, ssl_context=vortex_tls)
        self._slow_piece = SlowPiecePolicy(
            ratio=download.slow_piece.ratio,
            min_duration=download.slow_piece.min_duration,
            initial_floor=download.slow_piece.initial_floor,
            timeout=download.piece_timeout,
        )
        # Rates of recent pieces from parents and the origin, any task: the reference for a round of parents that
        # has too few pieces of its own.
        self._piece_rates = PieceRates()
        self._active: dict[str, TaskDownload] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False

    @staticmethod
    def _burst(rate: float) -> float | None:
        # A burst of one minimum piece keeps a limited download within a few percent of the rate from the start
        # (Dragonfly's bucket starts with a full second of tokens, which lets short downloads overshoot).
        return float(MIN_PIECE_LENGTH) if 0 < rate < 1e12 else None

    @property
    def seed(self) -> bool:
        """Tell whether this daemon is a seed peer."""
        return self._seed

    def is_active(self, task_id: str) -> bool:
        return task_id in self._active

    async def shutdown(self, grace: float) -> None:
        """Stop dispatching pieces, let in-flight ones finish within ``grace``, then cancel what remains."""
        self._stopping = True
        runners = [td.runner for td in self._active.values() if td.runner is not None]
        runners += list(self._background)
        if runners:
            _done, pending = await asyncio.wait(runners, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        self._vortex_pool.close()

    # ------------------------------------------------------------------ requesters

    async def download(
        self,
        download: common_pb2.Download,
        *,
        from_scheduler: bool = False,
        caller: Caller | None = None,
        remote: bool | None = None,
        insecure: bool = False,
    ) -> AsyncGenerator[TaskStarted | PieceDone, None]:
        """Download a task, yielding the started event then one event per piece; write the output at the end.

        With a range (``Download.range`` or a ``Range`` request header) only the pieces covering it are fetched
        and yielded, and the output file holds exactly the range's bytes; the task id and piece layout stay the
        whole content's, so a later full download reuses these pieces. ``caller`` is the local user who asked
        (None: the daemon itself or the scheduler); the output is written with its rights (docs/security.md).
        ``remote`` says another host asked for it (the origin is then reached through the SSRF guard; None: when
        ``from_scheduler``); ``insecure`` skips the origin's certificate verification (a local caller's choice).
        """
        if self._stopping:
            raise DownloadFailed("dfdaemon is shutting down")
        validate_download(download, as_daemon=caller is None or caller.is_daemon_user)
        task_id = task_id_for(download)
        origin = OriginOptions(
            guarded=from_scheduler if remote is None else remote,
            certificate_chain=tuple(download.certificate_chain),
            insecure=insecure,
        )
        timeout = download.timeout.ToTimedelta().total_seconds() if download.HasField("timeout") else 0.0
        deadline = time.monotonic() + timeout if timeout > 0 else None
        byte_range: ByteRange | None = None
        labels = self._metrics.task_labels(download)
        self._metrics.task_started(labels)
        try:
            try:
                async for event in self._stream(
                    task_id, download, from_scheduler=from_scheduler, deadline=deadline, origin=origin
                ):
                    if isinstance(event, TaskStarted):
                        byte_range = event.range
                    yield event
                if download.HasField("output_path"):
                    await self._finish_output(task_id, download, byte_range, caller)
            except DigestMismatch as exc:
                # Only whole-content digests reach here (a bad piece is fetched again). The user knows the URL and
                # the output, not this daemon's content file.
                output = f" (output {download.output_path})" if download.HasField("output_path") else ""
                raise DigestMismatch(exc.expected, exc.actual, what=f"{redact_url(download.url)}{output}") from None
        except BaseException:
            self._metrics.task_finished(labels, failed=True)
            raise
        self._metrics.task_finished(labels, failed=False)

    async def list_entries(self, request: dfdaemon_pb2.ListTaskEntriesRequest, *, remote: bool = False) -> list[Entry]:
        """Return the files and directories under a directory-like URL (``ListTaskEntries``, for ``dfget -r``)."""
        check_scheme(request.url, redact_url)
        origin = OriginOptions(guarded=remote, certificate_chain=tuple(request.certificate_chain))
        options = SourceOptions.of(request, origin)
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else 0.0
        async with asyncio.timeout(timeout if timeout > 0 else None):
            return await self._backends.get(request.url).list_entries(
                request.url, dict(request.request_header), options
            )

    async def _stream(
        self,
        task_id: str,
        download: common_pb2.Download,
        *,
        from_scheduler: bool,
        deadline: float | None,
        origin: OriginOptions = LOCAL_ORIGIN,
    ) -> AsyncIterator[TaskStarted | PieceDone]:
        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DownloadTimeout(f"download of {redact_url(download.url)} did not finish within its timeout")
            return left

        spec = requested_range(download)
        while True:
            task = self._storage.get_task(task_id)
            td = self._active.get(task_id)
            if (
                td is None
                and task is not None
                and task.finished_at is not None
                and not await self._local_hit_usable(task, download, ranged=spec is not None)
            ):
                self._storage.delete_task(task_id)
                task = None
            if td is None and task is not None and task.failed_at is None:
                byte_range = spec.resolve(task.content_length) if spec is not None else None
                wanted = wanted_pieces(task, byte_range)
                if task.finished_at is not None or (wanted is not None and wanted.issubset(task.pieces)):
                    for event in self._serve_local(task, byte_range, wanted):
                        yield event
                    if from_scheduler and self._scheduler is not None and task.finished_at is not None:
                        peer_id = ids.peer_id(self._ip, self._config.host.hostname, seed=self._seed)
                        self._spawn(self._announce_metadata_only(task, download, peer_id))
                    return
            if td is None:
                peer_id = ids.peer_id(self._ip, self._config.host.hostname, seed=self._seed)
                td = self._active[task_id] = TaskDownload(task_id, download, peer_id, spec, origin)
                td.from_scheduler = from_scheduler
                td.runner = asyncio.create_task(self._run(td), name=f"download-{task_id[:12]}")
            try:
                await asyncio.wait_for(td.ready.wait(), remaining())
            except TimeoutError:
                remaining()
                raise
            if td.task is None:
                assert td.error is not None
                raise td.error
            task = td.task
            byte_range = spec.resolve(task.content_length) if spec is not None else None
            wanted = wanted_pieces(task, byte_range)
            if td.wanted is None or (wanted is not None and wanted <= td.wanted):
                break
            # The running download fetches another range only; this one starts when it ends.
            try:
                await asyncio.wait_for(td.done.wait(), remaining())
            except TimeoutError:
                remaining()
                raise
        yield TaskStarted(task_id, td.peer_id, task.content_length, task.piece_length, task.response_header, byte_range)
        # Pieces stored before this download began (a resumed task) are local; the rest keep their source.
        left = len(wanted) if wanted is not None else -1
        for number in sorted(set(task.pieces) - set(td.order)):
            if wanted is None or number in wanted:
                left -= 1
                yield PieceDone(task.pieces[number], LOCAL_PEER)
        seen = 0
        while True:
            while seen < len(td.order):
                number = td.order[seen]
                seen += 1
                if wanted is None or number in wanted:
                    left -= 1
                    yield PieceDone(task.pieces[number], task.pieces[number].traffic_type)
            if left == 0:
                # A range is complete once its pieces are here, whatever the rest of the download does.
                return
            if td.done.is_set():
                break
            wait = remaining()
            await self._storage.wait_for_change(task_id, 1.0 if wait is None else min(wait, 1.0))
        if td.error is not None:
            raise td.error

    def _serve_local(
        self, task: TaskRecord, byte_range: ByteRange | None, wanted: frozenset[int] | None
    ) -> Iterator[TaskStarted | PieceDone]:
        """Yield the events of a download answered entirely from storage."""
        self._storage.touch(task.id)
        peer_id = ids.peer_id(self._ip, self._config.host.hostname, seed=self._seed)
        yield TaskStarted(task.id, peer_id, task.content_length, task.piece_length, task.response_header, byte_range)
        for number in sorted(task.pieces if wanted is None else wanted):
            piece = task.pieces[number]
            self._metrics.record_piece("local", piece.length, 0.0)
            yield PieceDone(piece, LOCAL_PEER)

    async def _local_hit_usable(self, task: TaskRecord, download: common_pb2.Download, *, ranged: bool) -> bool:
        """Return whether a finished task may be served as it is; a changed or failing copy is downloaded again.

        See docs/output-and-cache.md: a cheap size/mtime/inode check on every hit, the digest when one is given.
        """
        if not self._storage.content_intact(task):
            reason = "content_file_changed"
        elif not ranged and download.HasField("digest") and download.digest:
            try:
                with self._storage.content_fd(task.id):
                    await run_blocking(
                        self._executor,
                        verify_file_digest,
                        self._storage.content_path(task.id),
                        parse_digest(download.digest),
                    )
                return True
            except DigestMismatch:
                reason = "local_digest_mismatch"
        else:
            return True
        self._metrics.failures.labels(reason).inc()
        log.warning("cached task is not used: downloading it again", extra={"task_id": task.id, "reason": reason})
        return False

    async def _finish_output(
        self, task_id: str, download: common_pb2.Download, byte_range: ByteRange | None, caller: Caller | None
    ) -> None:
        content = self._storage.content_path(task_id)
        digest = parse_digest(download.digest) if download.HasField("digest") and download.digest else None
        with self._storage.content_fd(task_id) as fd:
            if digest is not None and byte_range is None:
                await run_blocking(self._executor, verify_file_digest, content, digest)
            # The digest of a ranged download is the digest of the bytes written: the range.
            verify = None if digest is None or byte_range is None else lambda path: verify_file_digest(path, digest)
            if caller is None or caller.is_daemon_user or os.geteuid() != 0:
                # A daemon that is not root has no other rights to write with (docs/security.md#local-users).
                await run_blocking(
                    self._executor,
                    lambda: write_output(
                        fd,
                        content,
                        download.output_path,
                        overwrite=download.overwrite,
                        link=download.force_hard_link,
                        byte_range=byte_range,
                        verify=verify,
                        link_if_possible=self._config.download.hard_link_output,
                    ),
                )
                return
            if download.force_hard_link:
                raise OutputError("force_hard_link is only available to the daemon's own user: the cache is not yours")
            await write_output_as(
                caller, fd, download.output_path, overwrite=download.overwrite, byte_range=byte_range, verify=verify
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ the download itself

    async def _run(self, td: TaskDownload) -> None:
        download = td.download
        try:
            task = self._storage.get_task(td.task_id)
            if task is None or task.failed_at is not None:
                header = dict(download.request_header)
                try:
                    stat = await self._backends.get(download.url).stat(download.url, header, td.options)
                except NotReadableHere as exc:
                    stat = await self._stat_from_swarm(td, exc)
                td.streamed = not stat.supports_range
                piece_length = (
                    download.piece_length
                    if download.HasField("piece_length")
                    else calculate_piece_length(stat.content_length)
                )
                content = None
                if task is None or not self._storage.reusable(
                    task, piece_length=piece_length, content_length=stat.content_length
                ):
                    # Preallocating a large file can take a while: not on the event loop.
                    content = await run_blocking(
                        self._executor, self._storage.create_content_file, td.task_id, stat.content_length
                    )
                task = self._storage.prepare_task(
                    td.task_id,
                    # Stored and shown without credentials (docs/security.md#secrets); the request keeps them.
                    url=redact_url(download.url),
                    piece_length=piece_length,
                    content_length=stat.content_length,
                    response_header=redact_headers(stat.header),
                    content=content,
                )
            td.task = task
            whole = whole_content_digest(download, ranged=td.spec is not None)
            td.verifier = PieceVerifier(
                self._config.download.piece_verification,
                whole_digest=whole is not None,
                refresh=self._trusted_pieces(td.task_id),
                executor=self._executor,
            )
            if td.spec is not None:
                try:
                    td.byte_range = td.spec.resolve(task.content_length)
                    td.wanted = wanted_pieces(task, td.byte_range)
                except RangeNotSatisfiable:
                    # Its requester gets the error; the task itself is fine and stays as it is.
                    td.wanted = frozenset()
            td.ready.set()
            if task.finished_at is None and td.missing(task):
                await self._download_pieces(td, task)
                missing = td.missing(task)
                if missing:
                    raise DownloadFailed(f"{len(missing)} pieces of task {td.task_id} are still missing")
            if task.finished_at is None and len(task.pieces) == piece_count(task.content_length, task.piece_length):
                if whole is not None:
                    await self._verify_content(td, task, whole)
                self._storage.finish_task(td.task_id)
                if td.from_scheduler and not td.registered and self._scheduler is not None:
                    # A task small enough to skip the scheduler, fetched on its request: tell it the task is here
                    # (and its size), so peers that cannot reach the source learn it (docs/backends.md#file).
                    finished = self._storage.get_task(td.task_id)
                    if finished is not None:
                        self._spawn(self._announce_metadata_only(finished, download, td.peer_id))
        except BaseException as exc:
            td.error = exc if isinstance(exc, Exception) else DownloadFailed("download cancelled")
            self._storage.fail_task(td.task_id)
            self._metrics.failures.labels("task").inc()
            log.warning("task download failed", extra={"task_id": td.task_id, "error": str(td.error)})
            if not isinstance(exc, Exception):
                raise
        finally:
            if td.probe is not None:
                # Registered for the size, then failed before the download used the stream.
                await td.probe[0].close()
                td.probe = None
            td.ready.set()
            td.done.set()
            self._active.pop(td.task_id, None)

    def _trusted_pieces(self, task_id: str) -> Callable[[], Coroutine[Any, Any, list[common_pb2.Piece]]] | None:
        """Return how the verifier asks the task's scheduler for its trusted piece digests (StatTask)."""
        scheduler = self._scheduler
        if scheduler is None:
            return None

        async def refresh() -> list[common_pb2.Piece]:
            return await scheduler.trusted_pieces(self.host_id, task_id)

        return refresh

    async def _verify_content(self, td: TaskDownload, task: TaskRecord, whole: Digest) -> None:
        """Check the whole content before the task is finished; bytes from parents that fail it are fetched again.

        A task is never finished (and so never served, nor a local hit) with content that fails its digest.
        """
        path = self._storage.content_path(td.task_id)
        try:
            with self._storage.content_fd(td.task_id):
                await run_blocking(self._executor, verify_file_digest, path, whole)
            return
        except DigestMismatch:
            from_parents = any(piece.traffic_type == REMOTE_PEER for piece in task.pieces.values())
            if not from_parents or td.download.disable_back_to_source:
                raise
        self._metrics.failures.labels("content_digest_mismatch").inc()
        log.warning("content from parents fails its digest, fetching it from the origin", extra={"task_id": td.task_id})
        self._storage.reset_pieces(td.task_id)
        td.wanted = None  # the whole content, whatever range was asked for
        await self._download_from_source(td, None)
        with self._storage.content_fd(td.task_id):
            await run_blocking(self._executor, verify_file_digest, path, whole)

    async def _download_pieces(self, td: TaskDownload, task: TaskRecord) -> None:
        download = td.download
        back_to_source_allowed = not download.disable_back_to_source
        tiny = task.content_length <= DIRECT_FROM_SOURCE_MAX or (
            td.byte_range is not None and td.byte_range.length <= DIRECT_FROM_SOURCE_MAX
        )
        # Not when the source cannot be read here (the swarm is the only way), nor for the scheduler's own request
        # (a seed peer fetching for a peer that cannot reach the source: its pieces' digests must reach the
        # scheduler, which vouches for them to that peer).
        if tiny and back_to_source_allowed and not td.unreadable and not td.from_scheduler:
            await self._download_from_source(td, None)
            return
        if self._scheduler is not None:
            try:
                if await self._download_with_scheduler(td, task):
                    return
            except (BackendError, DownloadFailed, NoSpace):
                # The origin itself failed (after the scheduler sent us there), the task cannot be done, or this
                # daemon has no room for it: no other source would help.
                raise
            except (grpc.aio.AioRpcError, OSError, TimeoutError, DragonflyError) as exc:
                log.info("P2P download failed", extra={"task_id": td.task_id, "error": repr(exc)})
                if not back_to_source_allowed:
                    raise DownloadFailed(
                        f"P2P download of {redact_url(download.url)} failed ({_describe(exc)}) "
                        "and back-to-source is disabled"
                    ) from exc
        elif not back_to_source_allowed:
            raise DownloadFailed(
                f"no scheduler is configured and back-to-source is disabled for {redact_url(download.url)}"
            )
        if td.missing(task):
            if not back_to_source_allowed:
                raise DownloadFailed(
                    f"not all pieces of {redact_url(download.url)} could be fetched from peers "
                    "and back-to-source is disabled"
                )
            await self._download_from_source(td, None)

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

    async def _download_with_scheduler(self, td: TaskDownload, task: TaskRecord) -> bool:
        """Follow the scheduler's answers; True when every piece is stored, False to fall back.

        The answers and what each asks for: ``docs/reference/protocol.md#announcepeer``.
        """
        assert self._scheduler is not None
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
            stream = self._scheduler.announce_peer(addr, host_id=self.host_id, task_id=td.task_id, peer_id=td.peer_id)
        try:
            return await self._follow_scheduler(td, task, stream, first)
        except (grpc.aio.AioRpcError, ConnectionError):
            self._scheduler.forget(addr)
            raise
        finally:
            await stream.close()

    async def _stat_from_swarm(self, td: TaskDownload, unreadable: NotReadableHere) -> StatResult:
        """Learn the size of a task whose source this daemon cannot read (a ``file://`` path only a seed peer may
        read) from the swarm: register without a size; the scheduler has a seed peer fetch the task, and the
        parents it then offers carry the task's content length. The stream stays open for the download itself.
        """
        scheduler = self._scheduler
        if scheduler is None or self._seed:
            raise unreadable
        addr = scheduler.owner(td.task_id)
        if not await scheduler.ensure_announced(addr):
            raise BackendError(f"{unreadable.message}; scheduler {addr} is unreachable") from unreadable
        register = common_pb2.Download()
        register.CopyFrom(td.download)
        if not register.filtered_query_params:
            register.filtered_query_params.extend(ids.DEFAULT_FILTERED_QUERY_PARAMS)
        register.concurrent_piece_count = self._concurrency
        td.unreadable = True
        stream = scheduler.announce_peer(addr, host_id=self.host_id, task_id=td.task_id, peer_id=td.peer_id)
        response: scheduler_pb2.AnnouncePeerResponse | None = None
        try:
            await stream.send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=register))
            response = await stream.recv(self._config.scheduler.schedule_timeout)
        except (grpc.aio.AioRpcError, ConnectionError, TimeoutError) as exc:
            await stream.close()
            if not isinstance(exc, TimeoutError):
                scheduler.forget(addr)
            raise BackendError(
                f"{unreadable.message}; the swarm did not provide it either ({_describe(exc)})"
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
            known = await self._task_size_from_scheduler(td)
            if known is None:
                raise BackendError(
                    f"{unreadable.message}; the swarm did not provide it either (the scheduler answered {kind})"
                ) from unreadable
            td.peer_id = ids.peer_id(self._ip, self._config.host.hostname, seed=self._seed)
            return StatResult(known, {"Content-Length": str(known)})
        assert response is not None
        log.info(
            "source not readable here: size taken from the swarm",
            extra={"task_id": td.task_id, "content_length": length, "reason": unreadable.message},
        )
        td.probe = (stream, addr, response)
        return StatResult(length, {"Content-Length": str(length)})

    async def _task_size_from_scheduler(self, td: TaskDownload) -> int | None:
        """Return the task's content length as its scheduler knows it, or None while nobody has announced it."""
        assert self._scheduler is not None
        for attempt in range(3):
            try:
                task = await self._scheduler.stat_task(self.host_id, td.task_id)
            except (grpc.aio.AioRpcError, ConnectionError, TimeoutError):
                task = None
            if task is not None and (task.content_length > 0 or task.size_scope == common_pb2.EMPTY):
                return int(task.content_length)
            if attempt < 2:
                await asyncio.sleep(0.5)
        return None

    async def _follow_scheduler(
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
                if td.verifier is not None:
                    td.verifier.learn(piece for parent in parents for piece in parent.task.pieces)
                await stream.send(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
                failed: set[str] = set()
                if await self._download_from_parents(td, task, stream, parents, failed):
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
                await stream.send(
                    download_peer_back_to_source_started_request=(
                        scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
                    )
                )
                try:
                    await self._download_from_source(td, stream)
                except Exception as exc:
                    stream.report(
                        download_peer_back_to_source_failed_request=(
                            scheduler_pb2.DownloadPeerBackToSourceFailedRequest(description=_describe(exc))
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

    async def _announce_metadata_only(self, task: TaskRecord, download: common_pb2.Download, peer_id: str) -> None:
        """Tell the scheduler a task it asked for is already here.

        The metadata-only flow: item 4 of ``docs/reference/protocol.md#announcepeer``.
        """
        assert self._scheduler is not None
        addr = self._scheduler.owner(task.id)
        register = common_pb2.Download()
        register.CopyFrom(download)
        register.metadata_only = True
        register.need_back_to_source = False
        register.actual_content_length = task.content_length
        register.actual_piece_length = task.piece_length
        register.actual_piece_count = piece_count(task.content_length, task.piece_length)
        stream = self._scheduler.announce_peer(addr, host_id=self.host_id, task_id=task.id, peer_id=peer_id)
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

    # ------------------------------------------------------------------ pieces from parents

    async def _download_from_parents(
        self,
        td: TaskDownload,
        task: TaskRecord,
        stream: AnnouncePeerStream,
        parents: list[common_pb2.Peer],
        failed: set[str],
    ) -> bool:
        """Fetch missing pieces from ``parents``, in the order a PieceDispatcher decides.

        Return whether every wanted piece is stored; add to ``failed`` the parents that let this peer down (sent
        bad or slow bytes, failed requests, never answered or broke their SyncPieces stream).
        """
        count = piece_count(task.content_length, task.piece_length)
        parents = [p for p in parents if p.id != td.peer_id and p.host.ip and p.host.port]
        if not parents:
            return td.complete(task, count)
        collector = PieceCollector(
            self._channels,
            host_id=self.host_id,
            task_id=td.task_id,
            parents=parents,
            interested=td.missing(task),
            piece_count=count,
            idle_timeout=self._config.download.collected_piece_timeout,
            first_timeout=self._config.download.first_collected_piece_timeout,
        )
        selector = ParentSelector(self._channels, host_id=self.host_id, peer_id=td.peer_id, parents=parents)
        # Pieces already here, and for a ranged download the pieces outside its range, are never dispatched.
        skip = [n for n in range(count) if n in task.pieces or (td.wanted is not None and n not in td.wanted)]
        dispatcher = PieceDispatcher(
            task.content_length,
            task.piece_length,
            skip=skip,
            concurrency=self._concurrency,
            selector=selector,
            slow=self._slow_piece,
            daemon_rates=self._piece_rates,
        )
        round_ = ParentRound(
            dispatcher,
            collector,
            fetch=lambda fetch, abort: self._fetch_from_parent(td, task, stream, fetch, abort),
            report_failure=lambda fetch, error: self._piece_from_parent_failed(td, stream, fetch, error),
            idle_timeout=self._config.download.collected_piece_timeout,
        )
        collector.start()
        selector.start()
        try:
            await round_.run(lambda: td.complete(task, count), lambda: self._stopping)
        finally:
            await collector.stop()
            await selector.stop()
            failed.update(round_.failed_parents())
        return td.complete(task, count)

    def _piece_from_parent_failed(
        self,
        td: TaskDownload,
        stream: AnnouncePeerStream,
        fetch: PieceFetch,
        error: BaseException,
    ) -> None:
        corrupt = isinstance(error, DigestMismatch)
        if fetch.parent.vortex_addr is not None:
            self._vortex_pool.discard(fetch.parent.vortex_addr)
        if corrupt:
            reason = "piece_digest_mismatch"
        elif isinstance(error, PieceAbandoned):
            reason = "piece_too_slow"
        else:
            reason = "piece_from_parent"
        self._metrics.failures.labels(reason).inc()
        log.info(
            "piece from parent failed",
            extra={"task_id": td.task_id, "piece": fetch.number, "parent": fetch.parent.id, "error": str(error)},
        )
        # Wrong bytes are not a passing fault: the scheduler marks the sender bad at once (docs/security.md).
        stream.report(
            download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                piece_number=fetch.number, parent_id=fetch.parent.id, temporary=not corrupt
            )
        )

    async def _fetch_from_parent(
        self, td: TaskDownload, task: TaskRecord, stream: AnnouncePeerStream, fetch: PieceFetch, abort: FetchAbort
    ) -> float:
        """Fetch one piece into storage and report it; return the seconds its bytes took to arrive."""
        number, parent = fetch.number, fetch.parent
        offset, length = piece_range(number, task.content_length, task.piece_length)
        addr = parent.vortex_addr
        assert addr is not None
        verifier = td.verifier
        assert verifier is not None
        started = time.monotonic()
        # The trusted digest is asked for while the bytes arrive: at the swarm's head it reaches the scheduler
        # about when the piece reaches this peer, and asking first put a StatTask poll before each transfer.
        expecting = asyncio.ensure_future(verifier.expected(number))
        try:
            await self._acquire(self._download_bucket, length)
            created_at = time.time()
            with self._storage.content_fd(td.task_id) as fd:
                async with self._recv_buffers.get() as buffer, self._writing_piece(number):
                    started = fetch.transfer_started = time.monotonic()
                    fetched = await run_blocking(
                        self._executor,
                        lambda: fetch_piece(
                            addr,
                            td.task_id,
                            number,
                            fd=fd,
                            offset=offset,
                            length=length,
                            buffer=buffer,
                            connect_timeout=VORTEX_CONNECT_TIMEOUT,
                            timeout=self._config.download.piece_timeout,
                            pool=self._vortex_pool,
                            abort=abort,
                            blake3=True,
                        ),
                    )
                cost = time.monotonic() - started
                # The bytes are in: waiting for the trusted digest is not the parent's slowness.
                fetch.transfer_started = None
                digest = format_piece_digest(fetched.crc)
                if fetched.digest != digest:
                    raise DigestMismatch(
                        fetched.digest or "<empty>", digest, what=f"piece {number} from parent {parent.id}"
                    )
                # Until this returns the piece is not recorded: nobody reads these bytes.
                expected = await expecting
                strong = await verifier.verify(
                    number, expected, fd, offset, length, crc=fetched.crc, parent=parent.id, hashed=fetched.blake3
                )
        except UnverifiablePiece as exc:
            # Bytes no one trusted vouched for come from the origin, never from a parent (docs/security.md); the
            # origin's bytes overwrite the parent's.
            if td.download.disable_back_to_source:
                raise DownloadFailed(f"{exc} of {redact_url(td.download.url)} and back-to-source is disabled") from None
            self._metrics.failures.labels("piece_unverifiable").inc()
            await self._fetch_from_source(td, task, stream, number, lambda _received: None)
            return time.monotonic() - started
        finally:
            if not expecting.done():
                expecting.cancel()
            elif not expecting.cancelled():
                expecting.exception()  # retrieved: a failed transfer makes a missing digest moot
        record = PieceRecord(number, offset, length, digest, parent.id, REMOTE_PEER, cost, created_at, strong)
        self._finish_piece(td, record)
        stream.report(
            download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece_message(record))
        )
        return cost

    # ------------------------------------------------------------------ pieces from the origin

    async def _download_from_source(self, td: TaskDownload, stream: AnnouncePeerStream | None) -> None:
        """Fetch every missing piece from the origin in ascending order, as many at once as a SourceWindow allows.

        An origin that ignores ``Range`` (its stat, or a piece request, got the whole body) is read once instead,
        as one streamed GET cut into pieces (``_stream_from_source``).
        """
        if not td.streamed:
            try:
                await self._fetch_pieces_from_source(td, stream)
                return
            except RangeNotSupported:
                log.info("origin ignores Range: streaming the task", extra={"task_id": td.task_id})
                td.streamed = True
        await self._stream_from_source(td, stream)

    async def _fetch_pieces_from_source(self, td: TaskDownload, stream: AnnouncePeerStream | None) -> None:
        task = td.task
        assert task is not None
        pending = collections.deque(td.missing(task))
        window = SourceWindow(self._concurrency, task.piece_length)
        failure: list[BaseException] = []

        async def worker() -> None:
            # A worker that ends a piece takes the next one itself when the window allows: no hop through the loop.
            while pending and not failure:
                if self._stopping:
                    failure.append(DownloadFailed("dfdaemon is shutting down"))
                    return
                if not window.admits():
                    await window.wait()
                    continue
                number = pending.popleft()
                _offset, length = piece_range(number, task.content_length, task.piece_length)
                piece = window.begin(length)
                try:
                    await self._fetch_from_source(td, task, stream, number, piece.receive)
                except RangeNotSupported as exc:
                    # Not a failure of the piece: the caller switches the task to one streamed GET.
                    window.end(piece)
                    failure.append(exc)
                    return
                except Exception as exc:
                    window.end(piece)
                    failure.append(exc)
                    self._metrics.failures.labels("back_to_source").inc()
                    if stream is not None:
                        stream.report(download_piece_back_to_source_failed_request=_source_failure(number, exc))
                    return
                window.complete(piece)

        # Pieces in flight finish (and are reported) even after a failure.
        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(pending)))))
        if failure:
            raise failure[0]

    async def _stream_from_source(self, td: TaskDownload, stream: AnnouncePeerStream | None) -> None:
        """Read the body once from its first byte and store each missing piece as soon as its bytes are in.

        Each piece is written, CRC'd, recorded and reported when it completes, so children fetch it before the
        body ends. Pieces already stored are read past; the body is left after the last piece this download wants.
        A broken body is opened again (``backend.maxRetries`` times) and the pieces stored meanwhile skipped.
        """
        task = td.task
        assert task is not None
        missing = td.missing(task)
        if not missing:
            return
        url, header = td.download.url, dict(td.download.request_header)
        attempt = 0
        while True:
            number = 0
            try:
                async with self._backend.open_stream(url, header, td.origin) as reader:
                    for number in range(missing[-1] + 1):
                        if self._stopping:
                            raise DownloadFailed("dfdaemon is shutting down")
                        if number in task.pieces:
                            await _discard(reader, task.pieces[number].length, url)
                            continue
                        await self._store_streamed_piece(td, task, stream, reader, number)
                return
            except BackendError as exc:
                retry = exc.status_code is None and attempt < self._config.backend.max_retries
                log.info(
                    "streamed download from the origin broke",
                    extra={"task_id": td.task_id, "piece": number, "retry": retry, "error": str(exc)},
                )
                if not retry:
                    self._metrics.failures.labels("back_to_source").inc()
                    if stream is not None:
                        stream.report(download_piece_back_to_source_failed_request=_source_failure(number, exc))
                    raise
                attempt += 1

    async def _store_streamed_piece(
        self,
        td: TaskDownload,
        task: TaskRecord,
        stream: AnnouncePeerStream | None,
        reader: Any,
        number: int,
    ) -> None:
        offset, length = piece_range(number, task.content_length, task.piece_length)
        await self._acquire(self._source_bucket, length)
        await self._acquire(self._download_bucket, length)
        created_at = time.time()
        started = time.monotonic()
        with self._storage.content_fd(td.task_id) as fd:
            async with self._source_buffers.get() as buffer:
                crc = await self._backend.read_stream_piece(
                    td.download.url, reader, fd=fd, offset=offset, length=length, buffer=buffer
                )
            strong = await self._origin_piece_hash(stream, fd, offset, length)
        cost = time.monotonic() - started
        record = PieceRecord(
            number, offset, length, format_piece_digest(crc), None, BACK_TO_SOURCE, cost, created_at, strong
        )
        self._finish_piece(td, record)
        if stream is not None:
            stream.report(
                download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                    piece=piece_message(record)
                )
            )

    async def _origin_piece_hash(
        self, stream: AnnouncePeerStream | None, fd: int, offset: int, length: int
    ) -> str | None:
        """Return the BLAKE3 digest of a piece just fetched from the origin, when a scheduler will hear of it.

        The origin's bytes: their BLAKE3 is what a seed peer vouches for (docs/security.md). Without a scheduler
        nobody receives the digest, so the piece is not read again for it.
        """
        if stream is None:
            return None
        return await run_blocking(self._executor, lambda: piece_hash(fd, offset, length))

    async def _fetch_from_source(
        self,
        td: TaskDownload,
        task: TaskRecord,
        stream: AnnouncePeerStream | None,
        number: int,
        progress: Callable[[int], None],
    ) -> None:
        offset, length = piece_range(number, task.content_length, task.piece_length)
        await self._acquire(self._source_bucket, length)
        await self._acquire(self._download_bucket, length)
        created_at = time.time()
        started = time.monotonic()
        with self._storage.content_fd(td.task_id) as fd:
            async with self._source_buffers.get() as buffer, self._writing_piece(number):
                crc = await self._backends.get(td.download.url).download_piece(
                    td.download.url,
                    dict(td.download.request_header),
                    td.options,
                    fd=fd,
                    offset=offset,
                    length=length,
                    buffer=buffer,
                    progress=progress,
                )
            strong = await self._origin_piece_hash(stream, fd, offset, length)
        record = PieceRecord(
            number,
            offset,
            length,
            format_piece_digest(crc),
            None,
            BACK_TO_SOURCE,
            time.monotonic() - started,
            created_at,
            strong,
        )
        self._finish_piece(td, record)
        self._piece_rates.add(length, record.cost)
        if stream is not None:
            stream.report(
                download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                    piece=piece_message(record)
                )
            )

    # ------------------------------------------------------------------ shared

    @staticmethod
    async def _acquire(bucket: native.TokenBucket, count: int) -> None:
        wait = bucket.reserve(count)
        if wait > 0:
            await asyncio.sleep(wait)

    @contextlib.asynccontextmanager
    async def _writing_piece(self, number: int) -> AsyncIterator[None]:
        """Report a full disk met while writing piece ``number`` as NoSpace, however deep a transfer wrapped it."""
        try:
            yield
        except NoSpace:
            raise
        except Exception as exc:
            cause: BaseException | None = exc
            while cause is not None:
                if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._storage.no_space(cause, f"write piece {number}") from exc
                cause = cause.__cause__ or cause.__context__
            raise

    def _finish_piece(self, td: TaskDownload, record: PieceRecord) -> None:
        if td.task is None or self._storage.get_task(td.task_id) is not td.task:
            raise DownloadFailed(f"task {td.task_id} was deleted during its download")
        # Recorded first: requesters read td.order as pieces they can find in storage.
        self._storage.finish_piece(td.task_id, record)
        td.order.append(record.number)
        self._traffic.add(record.length)
        self._metrics.record_piece(source_of(record, record.traffic_type), record.length, record.cost)


async def _discard(reader: Any, length: int, url: str) -> None:
    """Read past ``length`` bytes of a streamed body (a piece already stored)."""
    left = length
    while left:
        chunk = await reader.read(min(left, 1024 * 1024))
        if not chunk:
            raise BackendError(f"origin closed the body of {url} {left} bytes before the end of a stored piece")
        left -= len(chunk)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


def _source_failure(number: int, exc: BaseException) -> scheduler_pb2.DownloadPieceBackToSourceFailedRequest:
    if isinstance(exc, BackendError):
        backend = errordetails_pb2.Backend(message=exc.message, header=exc.header)
        if exc.status_code is not None:
            backend.status_code = exc.status_code
        return scheduler_pb2.DownloadPieceBackToSourceFailedRequest(piece_number=number, backend=backend)
    return scheduler_pb2.DownloadPieceBackToSourceFailedRequest(
        piece_number=number, unknown=errordetails_pb2.Unknown(message=_describe(exc))
    )

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
import logging
import os
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator
from concurrent.futures import Executor
from typing import Any

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.common import ids, native
from dragonfly.common.byte_range import (
    ByteRange,
    RangeNotSatisfiable,
)
from dragonfly.common.digest import Digest, parse_digest, verify_file_digest
from dragonfly.common.errors import DigestMismatch, DragonflyError
from dragonfly.common.piece import calculate_piece_length, piece_count
from dragonfly.common.redact import redact_headers, redact_url
from dragonfly.daemon.backends import Backends, Entry, NotReadableHere, SourceOptions, check_scheme
from dragonfly.daemon.backends.http import LOCAL as LOCAL_ORIGIN
from dragonfly.daemon.backends.http import HTTPBackend, OriginOptions
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.config import DfdaemonConfig
from dragonfly.daemon.download.download_request import (
    requested_range,
    task_id_for,
    validate_download,
    wanted_pieces,
    whole_content_digest,
)
from dragonfly.daemon.download.parent_downloader import ParentDownloader
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.peer_announcer import PeerAnnouncer
from dragonfly.daemon.download.piece_dispatcher import PieceRates
from dragonfly.daemon.download.piece_verifier import PieceVerifier
from dragonfly.daemon.download.piece_writer import PieceWriter
from dragonfly.daemon.download.scheduler_client import SchedulerClient, describe_error
from dragonfly.daemon.download.source_downloader import SourceDownloader
from dragonfly.daemon.download.task_download import LOCAL_PEER, REMOTE_PEER, PieceDone, TaskDownload, TaskStarted
from dragonfly.daemon.errors import BackendError, DownloadFailed, DownloadTimeout, NoSpace, OutputError
from dragonfly.daemon.host_info import TrafficMeter
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.output import Caller, write_output, write_output_as
from dragonfly.daemon.storage import Storage, TaskRecord

log = logging.getLogger(__name__)


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
        vortex_native_tls: native.TlsClientConfig | None = None,
    ) -> None:
        self._config = config
        self._storage = storage
        # Every scheme's backend; HTTP's is ``backend`` (also used directly for streamed bodies).
        self._backends = backends if backends is not None else Backends(backend)
        self._executor = executor
        self._metrics = metrics
        self.host_id = host_id
        self._ip = ip
        self._seed = config.seed_peer.enable
        self._concurrency = config.download.concurrent_piece_count
        writer = PieceWriter(
            storage, bandwidth_limit=config.download.bandwidth_limit, traffic=download_traffic, metrics=metrics
        )
        # Rates of recent pieces from parents and the origin, any task.
        piece_rates = PieceRates()
        self._source = SourceDownloader(
            config,
            backend=backend,
            backends=self._backends,
            storage=storage,
            executor=executor,
            metrics=metrics,
            writer=writer,
            piece_rates=piece_rates,
            stopping=lambda: self._stopping,
        )
        self._parents = ParentDownloader(
            config,
            host_id=host_id,
            channels=channels,
            storage=storage,
            executor=executor,
            metrics=metrics,
            writer=writer,
            source=self._source,
            piece_rates=piece_rates,
            stopping=lambda: self._stopping,
            vortex_tls=vortex_tls,
            vortex_native_tls=vortex_native_tls,
        )
        self._announcer = (
            None
            if scheduler is None
            else PeerAnnouncer(
                config,
                scheduler=scheduler,
                host_id=host_id,
                seed=self._seed,
                new_peer_id=self._new_peer_id,
                parents=self._parents,
                source=self._source,
            )
        )
        self._active: dict[str, TaskDownload] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False

    def _new_peer_id(self) -> str:
        return ids.peer_id(self._ip, self._config.host.hostname, seed=self._seed)

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
        self._parents.close()

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
                    if from_scheduler and self._announcer is not None and task.finished_at is not None:
                        self._spawn(self._announcer.announce_metadata_only(task, download, self._new_peer_id()))
                    return
            if td is None:
                peer_id = self._new_peer_id()
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
        peer_id = self._new_peer_id()
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
                    if self._announcer is None:
                        raise
                    stat = await self._announcer.stat_from_swarm(td, exc)
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
                refresh=None if self._announcer is None else self._announcer.trusted_pieces(td.task_id),
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
                if td.from_scheduler and not td.registered and self._announcer is not None:
                    # A task small enough to skip the scheduler, fetched on its request: tell it the task is here
                    # (and its size), so peers that cannot reach the source learn it (docs/backends.md#file).
                    finished = self._storage.get_task(td.task_id)
                    if finished is not None:
                        self._spawn(self._announcer.announce_metadata_only(finished, download, td.peer_id))
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
        await self._source.download(td, None)
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
            await self._source.download(td, None)
            return
        if self._announcer is not None:
            try:
                if await self._announcer.download(td, task):
                    return
            except (BackendError, DownloadFailed, NoSpace):
                # The origin itself failed (after the scheduler sent us there), the task cannot be done, or this
                # daemon has no room for it: no other source would help.
                raise
            except (grpc.aio.AioRpcError, OSError, TimeoutError, DragonflyError) as exc:
                log.info("P2P download failed", extra={"task_id": td.task_id, "error": repr(exc)})
                if not back_to_source_allowed:
                    raise DownloadFailed(
                        f"P2P download of {redact_url(download.url)} failed ({describe_error(exc)}) "
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
            await self._source.download(td, None)

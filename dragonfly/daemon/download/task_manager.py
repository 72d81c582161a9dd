"""The requesters of task downloads (``docs/reference/protocol.md#download-of-one-task-on-a-peer``;
``docs/architecture.md#control-plane``).

Each task has at most one download running in the daemon, in the background (``TaskRunner``); requesters (dfget
over the local API, the proxy, the scheduler over DfdaemonUpload.DownloadTask) watch it through storage: a piece
they see is written and verified. A finished task is a local hit, served from storage once a cheap check (or the
requested digest) says it is intact; a ranged request waits for the pieces of its range only; the output file is
written with the rights of the local user who asked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator
from concurrent.futures import Executor
from typing import Any, overload

from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.common import ids, native
from dragonfly.common.byte_range import ByteRange
from dragonfly.common.digest import parse_digest, verify_file_digest
from dragonfly.common.errors import DigestMismatch
from dragonfly.common.redact import redact_headers, redact_url
from dragonfly.daemon.backends import Backends, Entry, SourceOptions, check_scheme
from dragonfly.daemon.backends.http import LOCAL as LOCAL_ORIGIN
from dragonfly.daemon.backends.http import HTTPBackend, OriginOptions
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.config import DfdaemonConfig
from dragonfly.daemon.download.download_request import (
    requested_range,
    task_id_for,
    validate_download,
    wanted_pieces,
)
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.scheduler_client import SchedulerClient
from dragonfly.daemon.download.task_download import LOCAL_PEER, HeadStarted, PieceDone, TaskDownload, TaskStarted
from dragonfly.daemon.download.task_runner import TaskRunner
from dragonfly.daemon.errors import DownloadFailed, DownloadTimeout, OutputError
from dragonfly.daemon.host_info import TrafficMeter
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.output import Caller, write_output, write_output_as
from dragonfly.daemon.storage import Storage, TaskRecord

log = logging.getLogger(__name__)


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
        self._runner = TaskRunner(
            config,
            storage=storage,
            backend=backend,
            backends=self._backends,
            scheduler=scheduler,
            channels=channels,
            executor=executor,
            metrics=metrics,
            download_traffic=download_traffic,
            host_id=host_id,
            new_peer_id=self._new_peer_id,
            spawn=self._spawn,
            stopping=lambda: self._stopping,
            vortex_tls=vortex_tls,
            vortex_native_tls=vortex_native_tls,
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
        await self._finish(runners, grace)
        # Runners that ended meanwhile may have handed work to the background (an AnnouncePeer stream's close,
        # which writes the peer's last reports to the scheduler): that is waited for too.
        await self._finish(list(self._background), grace)
        self._runner.close()

    @staticmethod
    async def _finish(tasks: list[asyncio.Task[None]], grace: float) -> None:
        """Wait for ``tasks`` at most ``grace``, then cancel what remains and wait for that as long again."""
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace)

    def prepare_origin_head(self, download: common_pb2.Download) -> None:
        """A whole-content ``download(..., origin_head=...)`` of ``download`` is expected within a moment (an image
        manifest named its blob): start what its stat will wait for, unless the task is here or under way."""
        task_id = task_id_for(download)
        task = self._storage.get_task(task_id)
        if task_id not in self._active and (task is None or task.failed_at is not None):
            self._runner.prepare_origin_head(task_id)

    @overload
    def download(
        self,
        download: common_pb2.Download,
        *,
        from_scheduler: bool = ...,
        caller: Caller | None = ...,
        remote: bool | None = ...,
        insecure: bool = ...,
        in_order: bool = ...,
        copy_output: bool = ...,
    ) -> AsyncGenerator[TaskStarted | PieceDone, None]: ...

    @overload
    def download(
        self,
        download: common_pb2.Download,
        *,
        from_scheduler: bool = ...,
        caller: Caller | None = ...,
        remote: bool | None = ...,
        insecure: bool = ...,
        in_order: bool = ...,
        origin_head: int,
        copy_output: bool = ...,
    ) -> AsyncGenerator[HeadStarted | TaskStarted | PieceDone, None]: ...

    async def download(
        self,
        download: common_pb2.Download,
        *,
        from_scheduler: bool = False,
        caller: Caller | None = None,
        remote: bool | None = None,
        insecure: bool = False,
        in_order: bool = False,
        origin_head: int = 0,
        copy_output: bool = False,
    ) -> AsyncGenerator[HeadStarted | TaskStarted | PieceDone, None]:
        """Download a task, yielding the started event then one event per piece; write the output at the end.

        With a range (``Download.range`` or a ``Range`` request header) only the pieces covering it are fetched
        and yielded, and the output file holds exactly the range's bytes; the task id and piece layout stay the
        whole content's, so a later full download reuses these pieces. ``caller`` is the local user who asked
        (None: the daemon itself or the scheduler); the output is written with its rights (docs/security.md).
        ``remote`` says another host asked for it (the origin is then reached through the SSRF guard; None: when
        ``from_scheduler``); ``insecure`` skips the origin's certificate verification (a local caller's choice).
        ``in_order`` says the caller consumes the pieces in order as they come (the download then starts with its
        first wanted piece alone, where parents serve it). ``origin_head`` (whole-content requests): if this request
        starts the download of an http(s) task whose piece 0 the swarm cannot serve soon (``OriginHeadGate``), its
        stat of the origin reads that many first bytes too, and a HeadStarted event hands them over, unverified and
        as they arrive, as soon as the stat is answered (the proxy sends them at once and checks them against piece
        0); so does a request that joins the download before its piece 0 is stored. ``copy_output`` writes the
        output as a copy even where ``download.hardLinkOutput`` would link it (the caller will edit it in place).
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
                    task_id,
                    download,
                    from_scheduler=from_scheduler,
                    deadline=deadline,
                    origin=origin,
                    in_order=in_order,
                    origin_head=origin_head,
                ):
                    if isinstance(event, TaskStarted):
                        byte_range = event.range
                    yield event
                if download.HasField("output_path"):
                    await self._finish_output(task_id, download, byte_range, caller, copy=copy_output)
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
        in_order: bool = False,
        origin_head: int = 0,
    ) -> AsyncIterator[HeadStarted | TaskStarted | PieceDone]:
        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DownloadTimeout(f"download of {redact_url(download.url)} did not finish within its timeout")
            return left

        spec = requested_range(download)
        head_sent = False
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
                    if from_scheduler and self._runner.announcer is not None and task.finished_at is not None:
                        self._spawn(self._runner.announcer.announce_metadata_only(task, download, self._new_peer_id()))
                    return
            if td is None:
                peer_id = self._new_peer_id()
                td = self._active[task_id] = TaskDownload(task_id, download, peer_id, spec, origin)
                td.from_scheduler = from_scheduler
                td.in_order = in_order
                td.head_size = origin_head
                td.runner = asyncio.create_task(self._run(td), name=f"download-{task_id[:12]}")
            if origin_head and spec is None and not head_sent:
                try:
                    await asyncio.wait_for(td.head_ready.wait(), remaining())
                except TimeoutError:
                    remaining()
                    raise
                head = td.head
                # The origin's head is only of use (and only unchecked) until the swarm's piece 0 is here.
                if head is not None and (td.task is None or 0 not in td.task.pieces):
                    head_sent = True
                    yield HeadStarted(task_id, td.peer_id, head.content_length, redact_headers(head.header), head)
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
                if number == 0:
                    td.head = None
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
        self,
        task_id: str,
        download: common_pb2.Download,
        byte_range: ByteRange | None,
        caller: Caller | None,
        *,
        copy: bool = False,
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
                        link_if_possible=self._config.download.hard_link_output and not copy,
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

    async def _run(self, td: TaskDownload) -> None:
        """Run the download of ``td``; once it ends, the next request for its task starts another."""
        try:
            await self._runner.run(td)
        finally:
            self._active.pop(td.task_id, None)

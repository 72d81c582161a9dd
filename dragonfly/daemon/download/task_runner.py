"""The download of one task, from the stat of its source to its finish.

Order of work (``docs/reference/protocol.md#download-of-one-task-on-a-peer`` and ``#announcepeer``): stat the origin
once → piece length as Dragonfly → prepare the content file and records → tiny task (≤ 128 bytes) straight to the
origin → register with the scheduler and follow its answers (parents, back-to-source) → on any P2P failure, the
rest from the origin unless back-to-source is disabled → whole-file digest → finished. Pieces from parents, pieces
from the origin and the scheduler conversation each have their own module; this one decides which a task needs.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

import grpc
from dragonfly_api import common_pb2

from dragonfly.common import native
from dragonfly.common.byte_range import RangeNotSatisfiable
from dragonfly.common.digest import Digest, verify_file_digest
from dragonfly.common.errors import DigestMismatch, DragonflyError
from dragonfly.common.piece import calculate_piece_length, piece_count
from dragonfly.common.redact import redact_headers, redact_url
from dragonfly.common.schemes import scheme_of
from dragonfly.daemon.backends import Backends, NotReadableHere, StatResult
from dragonfly.daemon.backends.http import HTTPBackend
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.config import DfdaemonConfig
from dragonfly.daemon.download.download_request import wanted_pieces, whole_content_digest
from dragonfly.daemon.download.origin_head_gate import OriginHeadGate
from dragonfly.daemon.download.parent_downloader import ParentDownloader
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.peer_announcer import PeerAnnouncer
from dragonfly.daemon.download.piece_dispatcher import PieceRates
from dragonfly.daemon.download.piece_verifier import PieceVerifier
from dragonfly.daemon.download.piece_writer import PieceWriter
from dragonfly.daemon.download.scheduler_client import SchedulerClient, describe_error
from dragonfly.daemon.download.source_downloader import SourceDownloader
from dragonfly.daemon.download.task_download import REMOTE_PEER, TaskDownload
from dragonfly.daemon.errors import BackendError, DownloadFailed, NoSpace
from dragonfly.daemon.host_info import TrafficMeter
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.storage import Storage, TaskRecord

log = logging.getLogger(__name__)

#: Objects (or ranges) up to this size go straight to the origin even with a scheduler: a round trip to the
#: scheduler and a seed peer would cost more than the bytes (the scheduler's TINY size scope). Anything larger, a
#: file of one piece included, goes through the swarm, so the origin serves it about once however many peers ask.
#: (Dragonfly's client sends everything up to 4 MiB to the origin, docs/reference/protocol.md; 200 peers pulling
#: the same 1 MiB file then cost its origin 200 MiB.)
DIRECT_FROM_SOURCE_MAX = 128


def first_piece_length(download: common_pb2.Download) -> int:
    """Return the piece length to ask piece 0 of ``download`` for before its content length is known.

    The request's own piece length, or the one of the length a scheduler's trigger carries (the first registrant's
    ``actual_content_length``, a claim: it only picks the range asked for; the task's length and piece length come
    from the origin's answer, and a wrong guess costs the folded request, not the task).
    """
    if download.HasField("piece_length"):
        return download.piece_length
    return calculate_piece_length(download.actual_content_length)


class TaskRunner:
    """Runs the downloads of the daemon's tasks, one call per task (see the module docstring)."""

    def __init__(
        self,
        config: DfdaemonConfig,
        *,
        storage: Storage,
        backend: HTTPBackend,
        backends: Backends,
        scheduler: SchedulerClient | None,
        channels: ParentChannels,
        executor: Executor,
        metrics: DaemonMetrics,
        download_traffic: TrafficMeter,
        host_id: str,
        new_peer_id: Callable[[], str],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        stopping: Callable[[], bool],
        vortex_tls: ssl.SSLContext | None = None,
        vortex_native_tls: native.TlsClientConfig | None = None,
    ) -> None:
        self._config = config
        self._storage = storage
        self._backends = backends
        self._executor = executor
        self._metrics = metrics
        # Runs a coroutine in the background, for the daemon to wait for at shutdown.
        self._spawn = spawn
        writer = PieceWriter(
            storage, bandwidth_limit=config.download.bandwidth_limit, traffic=download_traffic, metrics=metrics
        )
        # Rates of recent pieces from parents and the origin, any task.
        piece_rates = PieceRates()
        self._source = SourceDownloader(
            config,
            backend=backend,
            backends=backends,
            storage=storage,
            executor=executor,
            metrics=metrics,
            writer=writer,
            piece_rates=piece_rates,
            stopping=stopping,
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
            stopping=stopping,
            vortex_tls=vortex_tls,
            vortex_native_tls=vortex_native_tls,
        )
        self._head_gate = (
            None
            if scheduler is None
            else OriginHeadGate(scheduler, host_id=host_id, max_peers=config.proxy.origin_head_max_peers)
        )
        self.announcer = (
            None
            if scheduler is None
            else PeerAnnouncer(
                config,
                scheduler=scheduler,
                host_id=host_id,
                seed=config.seed_peer.enable,
                new_peer_id=new_peer_id,
                parents=self._parents,
                source=self._source,
                spawn=spawn,
            )
        )

    async def _head_wanted(self, td: TaskDownload) -> bool:
        # Without a scheduler no peer can serve piece 0: the head costs the origin nothing it would not serve anyway.
        return self._head_gate is None or await self._head_gate.head_wanted(td.task_id)

    def prepare_origin_head(self, task_id: str) -> None:
        """Start the origin-head gate's question for a download of ``task_id`` expected shortly (none: no-op)."""
        if self._head_gate is not None:
            self._head_gate.prepare(task_id)

    def close(self) -> None:
        """Close the connections the downloads keep to parents, drop the gate's unused answers."""
        self._parents.close()
        if self._head_gate is not None:
            self._head_gate.close()

    async def run(self, td: TaskDownload) -> None:
        """Download the task of ``td`` (see the module docstring); a failure ends up in ``td.error``."""
        download = td.download
        try:
            task = self._storage.get_task(td.task_id)
            if task is None or task.failed_at is not None:
                header = dict(download.request_header)
                try:
                    if td.head_size and scheme_of(download.url) in ("http", "https") and await self._head_wanted(td):
                        # The requester wants the first bytes at once: the stat's one request reads them too.
                        found, head = await self._backends.http.stat_with_head(
                            download.url, header, td.origin, head=td.head_size, spawn=self._spawn
                        )
                        stat = StatResult(found.content_length, found.header, found.supports_range)
                        if head is not None and head.size < stat.content_length:
                            td.head = head
                        # Its requester starts its answer now, without waiting for the content file.
                        td.head_ready.set()
                    elif self._origin_first(td):
                        # Piece 0 will be fetched from the origin next: the stat is its request.
                        guess = first_piece_length(download)
                        found, td.first_piece = await self._backends.http.stat_with_first_piece(
                            download.url, header, td.origin, piece_length=guess
                        )
                        stat = StatResult(found.content_length, found.header, found.supports_range)
                    else:
                        stat = await self._backends.get(download.url).stat(download.url, header, td.options)
                except NotReadableHere as exc:
                    if self.announcer is None:
                        raise
                    stat = await self.announcer.stat_from_swarm(td, exc)
                td.streamed = not stat.supports_range
                piece_length = (
                    download.piece_length
                    if download.HasField("piece_length")
                    else calculate_piece_length(stat.content_length)
                )
                if td.first_piece is not None and td.first_piece.length != min(piece_length, stat.content_length):
                    # The guess was wrong (a file over 2000 MiB, or a wrong hint): the answer is not piece 0.
                    await td.close_first_piece()
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
            if 0 in task.pieces:
                await td.close_first_piece()
            td.task = task
            whole = whole_content_digest(download, ranged=td.spec is not None)
            td.verifier = PieceVerifier(
                self._config.download.piece_verification,
                whole_digest=whole is not None,
                refresh=None if self.announcer is None else self.announcer.trusted_pieces(td.task_id),
                executor=self._executor,
            )
            if td.spec is not None:
                try:
                    td.byte_range = td.spec.resolve(task.content_length)
                    td.wanted = wanted_pieces(task, td.byte_range)
                except RangeNotSatisfiable:
                    # Its requester gets the error; the task itself is fine and stays as it is.
                    td.wanted = frozenset()
            td.head_ready.set()
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
                if td.from_scheduler and not td.registered and self.announcer is not None:
                    # A task small enough to skip the scheduler, fetched on its request: tell it the task is here
                    # (and its size), so peers that cannot reach the source learn it (docs/backends.md#file).
                    finished = self._storage.get_task(td.task_id)
                    if finished is not None:
                        self._spawn(self.announcer.announce_metadata_only(finished, download, td.peer_id))
        except BaseException as exc:
            td.error = exc if isinstance(exc, Exception) else DownloadFailed("download cancelled")
            self._storage.fail_task(td.task_id)
            self._metrics.failures.labels("task").inc()
            log.warning("task download failed", extra={"task_id": td.task_id, "error": str(td.error)})
            if not isinstance(exc, Exception):
                raise
        finally:
            await td.close_first_piece()
            if td.probe is not None:
                # Registered for the size, then failed before the download used the stream.
                await td.probe[0].close()
                td.probe = None
            td.head_ready.set()
            td.ready.set()
            td.done.set()

    def _origin_first(self, td: TaskDownload) -> bool:
        """Tell whether the download goes to the origin for piece 0 right after its stat: the whole content of an
        http(s) URL, asked for with ``need_back_to_source`` (a seed peer's trigger) or with no scheduler to ask."""
        download = td.download
        return (
            td.spec is None
            and scheme_of(download.url) in ("http", "https")
            and not download.disable_back_to_source
            and (self.announcer is None or download.need_back_to_source)
        )

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
        if self.announcer is not None:
            try:
                if await self.announcer.download(td, task):
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

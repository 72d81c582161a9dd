"""Pieces from parents: one round of the scheduler's candidate parents for a download, and each piece's transfer.

A round has a PieceCollector (which parent has which piece, over SyncPieces), a ParentSelector (each parent's
figures), a PieceDispatcher (which piece from which parent, and when to give up) and a ParentRound (the fetches in
flight). A piece travels over Vortex into the content file, its CRC checked against the parent's and its digest
against the one the scheduler vouches for, then it is recorded and reported; a piece nobody trusted vouched for
comes from the origin instead (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Executor

from dragonfly_api import common_pb2, scheduler_pb2

from dragonfly.common import native
from dragonfly.common.digest import format_piece_digest
from dragonfly.common.errors import DigestMismatch
from dragonfly.common.piece import piece_count, piece_range
from dragonfly.common.redact import redact_url
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.config import DfdaemonConfig
from dragonfly.daemon.download.buffers import BufferPool
from dragonfly.daemon.download.parent_round import ParentRound
from dragonfly.daemon.download.parent_selector import ParentSelector
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.piece_collector import PieceCollector
from dragonfly.daemon.download.piece_dispatcher import PieceDispatcher, PieceFetch, PieceRates, SlowPiecePolicy
from dragonfly.daemon.download.piece_verifier import UnverifiablePiece
from dragonfly.daemon.download.piece_writer import PieceWriter
from dragonfly.daemon.download.scheduler_client import AnnouncePeerStream
from dragonfly.daemon.download.source_downloader import SourceDownloader
from dragonfly.daemon.download.task_download import REMOTE_PEER, TaskDownload, fill_piece_message
from dragonfly.daemon.download.vortex_client import ConnectionPool, FetchAbort, PieceAbandoned, fetch_piece
from dragonfly.daemon.errors import DownloadFailed
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.storage import PieceRecord, Storage, TaskRecord

log = logging.getLogger(__name__)

VORTEX_CONNECT_TIMEOUT = 2.0


class ParentDownloader:
    """Fetches pieces from parents for every download of the daemon (see the module docstring)."""

    def __init__(
        self,
        config: DfdaemonConfig,
        *,
        host_id: str,
        channels: ParentChannels,
        storage: Storage,
        executor: Executor,
        metrics: DaemonMetrics,
        writer: PieceWriter,
        source: SourceDownloader,
        piece_rates: PieceRates,
        stopping: Callable[[], bool],
        vortex_tls: ssl.SSLContext | None = None,
        vortex_native_tls: native.TlsClientConfig | None = None,
    ) -> None:
        self._config = config
        self._host_id = host_id
        self._channels = channels
        self._storage = storage
        self._executor = executor
        self._metrics = metrics
        self._writer = writer
        self._source = source
        # Rates of recent pieces from parents and the origin, any task: the reference for a round of parents that
        # has too few pieces of its own.
        self._piece_rates = piece_rates
        self._stopping = stopping
        download = config.download
        self._concurrency = download.concurrent_piece_count
        self._recv_buffers = BufferPool(config.storage.write_buffer_size, 2 * self._concurrency)
        self._vortex_pool = ConnectionPool(
            max_idle_per_addr=self._concurrency, ssl_context=vortex_tls, native_tls=vortex_native_tls
        )
        self._slow_piece = SlowPiecePolicy(
            ratio=download.slow_piece.ratio,
            min_duration=download.slow_piece.min_duration,
            initial_floor=download.slow_piece.initial_floor,
            timeout=download.piece_timeout,
        )

    def close(self) -> None:
        """Close the idle Vortex connections."""
        self._vortex_pool.close()

    async def download(
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
            host_id=self._host_id,
            task_id=td.task_id,
            parents=parents,
            interested=td.missing(task),
            piece_count=count,
            idle_timeout=self._config.download.collected_piece_timeout,
            first_timeout=self._config.download.first_collected_piece_timeout,
        )
        selector = ParentSelector(self._channels, host_id=self._host_id, peer_id=td.peer_id, parents=parents)
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
            in_order=td.in_order,
        )
        collector.wanted = dispatcher.wants
        round_ = ParentRound(
            dispatcher,
            collector,
            fetch=lambda fetch, abort: self._fetch_piece(td, task, stream, fetch, abort),
            report_failure=lambda fetch, error, tell: self._piece_failed(td, stream, fetch, error, tell_scheduler=tell),
            idle_timeout=self._config.download.collected_piece_timeout,
        )
        collector.start()
        if count > 1:
            # A task of one piece makes one choice of parent, and a SyncHost answer would not come before it: the
            # scheduler's figures for each parent decide, and no parent serves a SyncHost stream per child for it.
            selector.start()
        try:
            await round_.run(lambda: td.complete(task, count), self._stopping)
        finally:
            await collector.stop()
            await selector.stop()
            failed.update(round_.failed_parents())
        return td.complete(task, count)

    def _piece_failed(
        self,
        td: TaskDownload,
        stream: AnnouncePeerStream,
        fetch: PieceFetch,
        error: BaseException,
        *,
        tell_scheduler: bool,
    ) -> None:
        corrupt = isinstance(error, DigestMismatch)
        if fetch.parent.vortex_addr is not None:
            self._vortex_pool.discard(fetch.parent.vortex_addr)
        self._channels.forget_vortex_addr(fetch.parent.addr)
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
        if not tell_scheduler:
            return
        # Wrong bytes are not a passing fault: the scheduler marks the sender bad at once (docs/security.md).
        stream.report(
            download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                piece_number=fetch.number, parent_id=fetch.parent.id, temporary=not corrupt
            )
        )

    async def _fetch_piece(
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
        # about when the piece reaches this peer, and asking first put a StatTask poll before each transfer. Most
        # pieces' digests came with the parents: then no task and no event for it.
        known = verifier.known(number)
        arrived = asyncio.Event() if known is None else None
        expecting = None if arrived is None else asyncio.ensure_future(verifier.expected(number, arrived))
        try:
            await self._writer.reserve(length)
            created_at = time.time()
            with self._storage.content_fd(td.task_id) as fd:
                async with self._recv_buffers.get() as buffer, self._writer.writing(number):
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
                if arrived is not None:
                    arrived.set()
                digest = format_piece_digest(fetched.crc)
                if fetched.digest != digest:
                    raise DigestMismatch(
                        fetched.digest or "<empty>", digest, what=f"piece {number} from parent {parent.id}"
                    )
                # Until this returns the piece is not recorded: nobody reads these bytes.
                expected = known if expecting is None else await expecting
                strong = await verifier.verify(
                    number, expected, fd, offset, length, crc=fetched.crc, parent=parent.id, hashed=fetched.blake3
                )
        except UnverifiablePiece as exc:
            # Bytes no one trusted vouched for come from the origin, never from a parent (docs/security.md); the
            # origin's bytes overwrite the parent's.
            if td.download.disable_back_to_source:
                raise DownloadFailed(f"{exc} of {redact_url(td.download.url)} and back-to-source is disabled") from None
            self._metrics.failures.labels("piece_unverifiable").inc()
            await self._source.fetch_piece(td, task, stream, number, lambda _received: None)
            return time.monotonic() - started
        finally:
            if expecting is None:
                pass
            elif not expecting.done():
                expecting.cancel()
            elif not expecting.cancelled():
                expecting.exception()  # retrieved: a failed transfer makes a missing digest moot
        record = PieceRecord(number, offset, length, digest, parent.id, REMOTE_PEER, cost, created_at, strong)
        self._writer.finish(td, record)
        # Built in place: a message passed to a constructor is copied, and this one is three levels deep.
        request = stream.request()
        fill_piece_message(request.download_piece_finished_request.piece, record)
        stream.report_request(request)
        return cost

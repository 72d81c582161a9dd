"""Pieces from the origin (back-to-source): every missing piece of a task, in ascending order, as many at once as
a SourceWindow allows; or, from an origin that ignores ``Range``, one streamed GET cut into pieces. Each piece is
written, CRC'd, hashed when a scheduler will vouch for it, recorded and reported as soon as its bytes are in.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from dragonfly_api import errordetails_pb2, scheduler_pb2

from dragonfly.common.digest import format_piece_digest
from dragonfly.common.piece import piece_range
from dragonfly.daemon.backends import Backends
from dragonfly.daemon.backends.http import HTTPBackend, RangeNotSupported
from dragonfly.daemon.backends.piece_chunks import PieceDigest
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.config import DfdaemonConfig
from dragonfly.daemon.download.buffers import BufferPool
from dragonfly.daemon.download.piece_dispatcher import PieceRates
from dragonfly.daemon.download.piece_verifier import PIECE_HASH, piece_hash
from dragonfly.daemon.download.piece_writer import PieceWriter, take_tokens, token_bucket
from dragonfly.daemon.download.scheduler_client import AnnouncePeerStream, describe_error
from dragonfly.daemon.download.source_window import SourceWindow
from dragonfly.daemon.download.task_download import BACK_TO_SOURCE, TaskDownload, piece_message
from dragonfly.daemon.errors import BackendError, DownloadFailed
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.storage import PieceRecord, Storage, TaskRecord

log = logging.getLogger(__name__)

_SOURCE_BUFFER = 4 * 1024 * 1024


class SourceDownloader:
    """Fetches pieces from the origin for every download of the daemon (see the module docstring)."""

    def __init__(
        self,
        config: DfdaemonConfig,
        *,
        backend: HTTPBackend,
        backends: Backends,
        storage: Storage,
        executor: Executor,
        metrics: DaemonMetrics,
        writer: PieceWriter,
        piece_rates: PieceRates,
        stopping: Callable[[], bool],
    ) -> None:
        self._config = config
        # HTTP's backend, for streamed bodies; ``backends`` has every scheme's, HTTP's included.
        self._backend = backend
        self._backends = backends
        self._storage = storage
        self._executor = executor
        self._metrics = metrics
        self._writer = writer
        self._piece_rates = piece_rates
        self._stopping = stopping
        self._concurrency = config.download.concurrent_piece_count
        self._bucket = token_bucket(config.download.back_to_source_bandwidth_limit)
        self._buffers = BufferPool(_SOURCE_BUFFER, 2 * self._concurrency)

    async def download(self, td: TaskDownload, stream: AnnouncePeerStream | None) -> None:
        """Fetch every missing piece from the origin in ascending order, as many at once as a SourceWindow allows.

        An origin that ignores ``Range`` (its stat, or a piece request, got the whole body) is read once instead,
        as one streamed GET cut into pieces (``_stream``).
        """
        if not td.streamed:
            try:
                await self._fetch_pieces(td, stream)
                return
            except RangeNotSupported:
                log.info("origin ignores Range: streaming the task", extra={"task_id": td.task_id})
                td.streamed = True
        await self._stream(td, stream)

    async def _fetch_pieces(self, td: TaskDownload, stream: AnnouncePeerStream | None) -> None:
        task = td.task
        assert task is not None
        pending = collections.deque(td.missing(task))
        window = SourceWindow(self._concurrency, task.piece_length)
        failure: list[BaseException] = []

        async def worker() -> None:
            # A worker that ends a piece takes the next one itself when the window allows: no hop through the loop.
            while pending and not failure:
                if self._stopping():
                    failure.append(DownloadFailed("dfdaemon is shutting down"))
                    return
                if not window.admits():
                    await window.wait()
                    continue
                number = pending.popleft()
                _offset, length = piece_range(number, task.content_length, task.piece_length)
                piece = window.begin(length)
                try:
                    await self.fetch_piece(td, task, stream, number, piece.receive)
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
                        stream.report(download_piece_back_to_source_failed_request=back_to_source_failure(number, exc))
                    return
                window.complete(piece)

        # Pieces in flight finish (and are reported) even after a failure.
        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(pending)))))
        if failure:
            raise failure[0]

    async def _stream(self, td: TaskDownload, stream: AnnouncePeerStream | None) -> None:
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
                        if self._stopping():
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
                        stream.report(download_piece_back_to_source_failed_request=back_to_source_failure(number, exc))
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
        await self._reserve(length)
        created_at = time.time()
        started = time.monotonic()
        digest = _digest_for(stream)
        with self._storage.content_fd(td.task_id) as fd:
            async with self._buffers.get() as buffer:
                crc = await self._backend.read_stream_piece(
                    td.download.url, reader, fd=fd, offset=offset, length=length, buffer=buffer, digest=digest
                )
            strong = await self._origin_piece_hash(stream, fd, offset, length, digest)
        cost = time.monotonic() - started
        record = PieceRecord(
            number, offset, length, format_piece_digest(crc), None, BACK_TO_SOURCE, cost, created_at, strong
        )
        self._finish(td, stream, record)

    async def _reserve(self, length: int) -> None:
        """Wait for both rate limits a piece from the origin counts against: back-to-source, then download."""
        await take_tokens(self._bucket, length)
        await self._writer.reserve(length)

    def _finish(self, td: TaskDownload, stream: AnnouncePeerStream | None, record: PieceRecord) -> None:
        """Record a piece from the origin, and report it to the scheduler when one follows this download."""
        self._writer.finish(td, record)
        if stream is not None:
            stream.report(
                download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                    piece=piece_message(record)
                )
            )

    async def _origin_piece_hash(
        self, stream: AnnouncePeerStream | None, fd: int, offset: int, length: int, digest: PieceDigest | None
    ) -> str | None:
        """Return the BLAKE3 digest of a piece just fetched from the origin, when a scheduler will hear of it.

        The origin's bytes: their BLAKE3 is what a seed peer vouches for (docs/security.md). The backend hashed them
        as it wrote them (``digest``); one that did not has the piece read back. Without a scheduler nobody receives
        the digest, so the piece is not hashed at all.
        """
        if stream is None:
            return None
        if digest is not None and (hashed := digest.result(length)) is not None:
            return hashed
        return await run_blocking(self._executor, lambda: piece_hash(fd, offset, length))

    async def fetch_piece(
        self,
        td: TaskDownload,
        task: TaskRecord,
        stream: AnnouncePeerStream | None,
        number: int,
        progress: Callable[[int], None],
    ) -> None:
        offset, length = piece_range(number, task.content_length, task.piece_length)
        await self._reserve(length)
        created_at = time.time()
        started = time.monotonic()
        digest = _digest_for(stream)
        with self._storage.content_fd(td.task_id) as fd:
            async with self._buffers.get() as buffer, self._writer.writing(number):
                # Taken with no wait before the call that reads or closes it.
                opened = td.take_first_piece() if number == 0 else None
                url, header = td.download.url, dict(td.download.request_header)
                fetch = (
                    # Requested with the stat (TaskRunner): its bytes may be in already.
                    functools.partial(self._backend.download_piece, url, header, options=td.origin, opened=opened)
                    if opened is not None
                    else functools.partial(self._backends.get(url).download_piece, url, header, td.options)
                )
                crc = await fetch(fd=fd, offset=offset, length=length, buffer=buffer, progress=progress, digest=digest)
            strong = await self._origin_piece_hash(stream, fd, offset, length, digest)
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
        self._finish(td, stream, record)
        self._piece_rates.add(length, record.cost)


def _digest_for(stream: AnnouncePeerStream | None) -> PieceDigest | None:
    """Return the hasher a backend feeds the piece's bytes to, when a scheduler will hear of the piece's digest."""
    return None if stream is None else PieceDigest(PIECE_HASH)


async def _discard(reader: Any, length: int, url: str) -> None:
    """Read past ``length`` bytes of a streamed body (a piece already stored)."""
    left = length
    while left:
        chunk = await reader.read(min(left, 1024 * 1024))
        if not chunk:
            raise BackendError(f"origin closed the body of {url} {left} bytes before the end of a stored piece")
        left -= len(chunk)


def back_to_source_failure(number: int, exc: BaseException) -> scheduler_pb2.DownloadPieceBackToSourceFailedRequest:
    """Return the report of piece ``number`` failing from the origin: the origin's answer when it gave one."""
    if isinstance(exc, BackendError):
        backend = errordetails_pb2.Backend(message=exc.message, header=exc.header)
        if exc.status_code is not None:
            backend.status_code = exc.status_code
        return scheduler_pb2.DownloadPieceBackToSourceFailedRequest(piece_number=number, backend=backend)
    return scheduler_pb2.DownloadPieceBackToSourceFailedRequest(
        piece_number=number, unknown=errordetails_pb2.Unknown(message=describe_error(exc))
    )

"""Fetching a persistent cache task's pieces from its parents over Vortex (CRC-32 checked), and telling the
scheduler about parents that served bad pieces."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, scheduler_pb2

from dragonfly.common.errors import DragonflyError
from dragonfly.common.pbtime import duration, timestamp
from dragonfly.common.piece import piece_count, piece_range
from dragonfly.daemon import compression
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.download import vortex_client
from dragonfly.daemon.download.parents import ParentChannels, upload_addr
from dragonfly.daemon.errors import DownloadFailed
from dragonfly.daemon.persistent_cache.announcer import REQUEST_TIMEOUT
from dragonfly.daemon.persistent_cache.metrics import PersistentCacheMetrics
from dragonfly.daemon.storage import PieceRecord, Storage

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

RECV_BUFFER = 1024 * 1024
CONNECT_TIMEOUT = 2.0
#: ``common.v2.TrafficType`` of a piece from a parent.
REMOTE_PEER = 1


class PieceFetcher:
    """Fetches pieces into a persistent cache storage; counts what crossed the wire."""

    def __init__(
        self,
        storage: Storage,
        *,
        channels: ParentChannels,
        executor: Executor,
        host_id: str,
        vortex_tls: ssl.SSLContext | None,
        concurrent_piece_count: int,
        piece_timeout: float,
        compression: bool,
        metrics: PersistentCacheMetrics,
        on_fetched: Callable[[int], None] | None = None,
    ) -> None:
        self.storage = storage
        self._channels = channels
        self._executor = executor
        self.host_id = host_id
        self.pool = vortex_client.ConnectionPool(ssl_context=vortex_tls)
        self._concurrency = concurrent_piece_count
        self._piece_timeout = piece_timeout
        #: Whether zstd-compressed pieces are asked for from parents that offer them.
        self.compression = compression
        self.metrics = metrics
        self._on_fetched = on_fetched
        #: Bytes of piece content that crossed the wire (less than the content when compressed).
        self.wire_bytes = 0

    def close(self) -> None:
        self.pool.close()

    async def fetch_pieces(
        self,
        task_id: str,
        parents: list[common_pb2.PersistentCachePeer],
        content_length: int,
        piece_length: int,
        send: Callable[..., None],
    ) -> list[PieceRecord]:
        """Fetch every piece from ``parents`` (CRC-32 checked); return the pieces recorded."""
        addrs: list[tuple[str, tuple[str, int], bool]] = []
        for parent in parents:
            found = await self.vortex_addr(parent, task_id)
            if found is not None:
                addrs.append((parent.id, *found))
        if not addrs:
            raise DownloadFailed(f"persistent cache task {task_id}: no parent could be reached")
        count = piece_count(content_length, piece_length)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(count):
            queue.put_nowait(number)
        recorded: list[PieceRecord] = []
        failures: dict[int, int] = {}

        async def worker(index: int) -> None:
            buffer = bytearray(RECV_BUFFER)
            while True:
                try:
                    number = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                parent_id, addr, zstd = addrs[(number + failures.get(number, 0)) % len(addrs)]
                offset, length = piece_range(number, content_length, piece_length)
                started = time.monotonic()
                try:
                    with self.storage.content_fd(task_id) as fd:
                        fetched = await run_blocking(
                            self._executor,
                            functools.partial(
                                vortex_client.fetch_piece,
                                addr,
                                task_id,
                                number,
                                fd=fd,
                                offset=offset,
                                length=length,
                                buffer=buffer,
                                connect_timeout=CONNECT_TIMEOUT,
                                timeout=self._piece_timeout,
                                pool=self.pool,
                                persistent_cache=True,
                                accept_zstd=zstd,
                            ),
                        )
                    if fetched.digest != f"crc32:{fetched.crc}":
                        raise DownloadFailed(f"piece {number} from {parent_id} failed its CRC-32")
                except (OSError, DragonflyError) as exc:
                    failures[number] = failures.get(number, 0) + 1
                    if failures[number] > 2 * len(addrs) + 1:
                        raise DownloadFailed(f"piece {number} of {task_id} could not be fetched: {exc}") from exc
                    send(
                        download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                            piece_number=number, parent_id=parent_id, temporary=True
                        )
                    )
                    queue.put_nowait(number)
                    continue
                cost = time.monotonic() - started
                piece = PieceRecord(
                    number=number,
                    offset=offset,
                    length=length,
                    digest=fetched.digest,
                    parent_id=parent_id,
                    traffic_type=REMOTE_PEER,
                    cost=cost,
                    created_at=time.time(),
                )
                self.storage.finish_piece(task_id, piece)
                recorded.append(piece)
                wire = fetched.wire_length if fetched.wire_length >= 0 else length
                self.wire_bytes += wire
                self.metrics.piece_bytes.labels("content").inc(length)
                self.metrics.piece_bytes.labels("wire").inc(wire)
                if self._on_fetched is not None:
                    self._on_fetched(length)
                send(
                    download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(
                        piece=common_pb2.Piece(
                            number=number,
                            parent_id=parent_id,
                            offset=offset,
                            length=length,
                            digest=fetched.digest,
                            traffic_type=common_pb2.REMOTE_PEER,
                            cost=duration(cost),
                            created_at=timestamp(piece.created_at),
                        )
                    )
                )

        workers = [asyncio.create_task(worker(i)) for i in range(min(self._concurrency, max(count, 1)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for job in workers:
                job.cancel()
        recorded.sort(key=lambda p: p.number)
        return recorded

    async def vortex_addr(
        self, parent: common_pb2.PersistentCachePeer, task_id: str
    ) -> tuple[tuple[str, int], bool] | None:
        """Ask a parent's upload server where its Vortex port is (SyncPersistentCachePieces, first answer) and
        whether it offers zstd (its initial metadata; Dragonfly's parents send none)."""
        host = parent.host
        stub = self._channels.stub(upload_addr(host.ip, host.port))
        call = stub.SyncPersistentCachePieces(
            # Piece 0 is enough for the first answer, and Dragonfly's rules want at least one number.
            dfdaemon_pb2.SyncPersistentCachePiecesRequest(
                host_id=self.host_id, task_id=task_id, interested_piece_numbers=[0]
            ),
            timeout=REQUEST_TIMEOUT,
        )
        try:
            metadata = await call.initial_metadata()
            zstd = self.compression and any(
                key == compression.ENCODING_KEY and str(value) == compression.ZSTD for key, value in metadata or ()
            )
            async for response in call:
                if response.HasField("tcp_port"):
                    return (response.ip or host.ip, response.tcp_port), zstd
        except grpc.aio.AioRpcError as exc:
            log.info(
                "persistent cache parent unreachable",
                extra={"task_id": task_id, "peer_id": parent.id, "code": exc.code().name},
            )
            return None
        finally:
            call.cancel()
        return None


def report_liars(suspect: list[PieceRecord], good: list[PieceRecord], send: Callable[..., None]) -> None:
    """Report the parents whose pieces of a failed mixed attempt differ from the verified content's."""
    digests = {piece.number: piece.digest for piece in good}
    liars: dict[str, int] = {}
    for piece in suspect:
        if piece.parent_id and digests.get(piece.number) != piece.digest:
            liars.setdefault(piece.parent_id, piece.number)
    for parent_id, number in liars.items():
        log.warning("a parent served a piece that is not the importer's", extra={"peer_id": parent_id})
        send(
            download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                piece_number=number, parent_id=parent_id, temporary=False
            )
        )

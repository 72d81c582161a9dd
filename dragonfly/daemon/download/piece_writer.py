"""Where every fetched piece ends, from a parent or the origin: the daemon's download rate limit, a full disk named
as such however deep a transfer wrapped it, the piece's record in storage (from then on its requesters see it), and
the traffic and metrics it counts for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator

from dragonfly.common import native
from dragonfly.common.piece import MIN_PIECE_LENGTH
from dragonfly.daemon.download.task_download import TaskDownload, source_of
from dragonfly.daemon.errors import DownloadFailed, NoSpace
from dragonfly.daemon.host_info import TrafficMeter
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.storage import PieceRecord, Storage


def token_bucket(rate: float) -> native.TokenBucket:
    """Return a token bucket of ``rate`` bytes/s (unlimited when 0 or huge)."""
    # A burst of one minimum piece keeps a limited download within a few percent of the rate from the start
    # (Dragonfly's bucket starts with a full second of tokens, which lets short downloads overshoot).
    return native.TokenBucket(rate, float(MIN_PIECE_LENGTH) if 0 < rate < 1e12 else None)


async def take_tokens(bucket: native.TokenBucket, count: int) -> None:
    """Wait until ``bucket`` allows ``count`` more bytes."""
    wait = bucket.reserve(count)
    if wait > 0:
        await asyncio.sleep(wait)


class PieceWriter:
    """Takes the pieces of every download of the daemon into storage (see the module docstring)."""

    def __init__(
        self, storage: Storage, *, bandwidth_limit: float, traffic: TrafficMeter, metrics: DaemonMetrics
    ) -> None:
        self._storage = storage
        self._bucket = token_bucket(bandwidth_limit)
        self._traffic = traffic
        self._metrics = metrics

    async def reserve(self, length: int) -> None:
        """Wait until the daemon's download rate limit allows a piece of ``length`` bytes."""
        await take_tokens(self._bucket, length)

    @contextlib.asynccontextmanager
    async def writing(self, number: int) -> AsyncIterator[None]:
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

    def finish(self, td: TaskDownload, record: PieceRecord) -> None:
        """Record a piece written and verified: from now on requesters of ``td`` see it."""
        if td.task is None or self._storage.get_task(td.task_id) is not td.task:
            raise DownloadFailed(f"task {td.task_id} was deleted during its download")
        # Recorded first: requesters read td.order as pieces they can find in storage.
        self._storage.finish_piece(td.task_id, record)
        td.order.append(record.number)
        self._traffic.add(record.length)
        self._metrics.record_piece(source_of(record, record.traffic_type), record.length, record.cost)

"""Learn which pieces each candidate parent has, through one SyncPieces stream per parent
(``docs/reference/protocol.md#pieces-from-parents``).

Each parent answers with a message per finished interested piece, and keeps the stream open while its own
download goes on. The collector keeps one bitmap per parent and wakes the downloader on every change. A parent
that reports no piece within ``firstCollectedPieceTimeout`` of being asked (seconds: a parent the scheduler offers
has pieces, or is about to get them from its own parents; ``FINISHED_FIRST_ANSWER`` for a parent the scheduler
says has finished the task, which only has to read its own storage) or then stays silent for longer than
``collectedPieceTimeout`` counts as failed: a parent that claims a task and never answers costs seconds.

Like Dragonfly's, a piece becomes dispatchable once every parent still syncing has reported it, or
``COLLECT_WINDOW`` after its first report: a piece the seed just finished is then often also held by a peer a
moment later, and the load can spread.

A report of a piece the downloader does not want at that moment (``wanted``: stored already, or in flight) is
recorded without waking it: each parent reports every interested piece, so with three or four parents most reports
come after the child has the piece, and each woke the round to plan nothing (bench swarm, 16 x 256 MiB: 3.6-4.2
plans per piece a peer stored, 2.3 without those wake-ups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.common import native
from dragonfly.daemon.download.parent_selector import is_seed_peer
from dragonfly.daemon.download.parents import ParentChannels, upload_addr

log = logging.getLogger(__name__)


COLLECT_WINDOW = 0.1
#: How long a parent the scheduler reports as finished (state Succeeded) may take to report its first piece.
FINISHED_FIRST_ANSWER = 2.0
_SUCCEEDED = "Succeeded"


def holds_every_piece(peer: common_pb2.Peer, piece_count: int) -> bool:
    """Tell whether the scheduler lists ``peer`` with every piece of the task (it does so for a parent that has them
    all but has not reported its download finished yet, e.g. a seed peer of a one-piece task)."""
    if not 0 < len(peer.pieces) <= piece_count:
        return False
    return len({piece.number for piece in peer.pieces if 0 <= piece.number < piece_count}) == piece_count


class ParentState:
    """What the collector knows about one parent."""

    __slots__ = ("addr", "bitmap", "error", "finished", "host_id", "id", "seed", "syncing", "vortex_addr")

    def __init__(self, peer: common_pb2.Peer, piece_count: int) -> None:
        self.id = peer.id
        # What the scheduler says (Succeeded, or every piece listed); a liar gains nothing by it but a shorter
        # deadline to answer.
        self.finished = peer.state == _SUCCEEDED or holds_every_piece(peer, piece_count)
        self.host_id = peer.host.id
        self.seed = is_seed_peer(peer)
        self.addr = upload_addr(peer.host.ip, peer.host.port)
        self.bitmap = native.PieceBitmap(piece_count)
        self.vortex_addr: tuple[str, int] | None = None
        self.syncing = True
        self.error: str | None = None


class _Silence:
    """Ends a SyncPieces call that stays silent past its deadline, which the reader moves before each read.

    One timer per silence, not one per read: a child reads a report from each of its parents for about every piece
    of the task, and a timer started and stopped around each read (``asyncio.timeout``, or ``wait_for``, which also
    wrapped each read in a task) was one of the collector's largest costs per report. A deadline moved later costs
    a float store: the timer, when it fires before the deadline it finds, sleeps again until that deadline. One
    moved earlier (the first report switches from firstCollectedPieceTimeout to collectedPieceTimeout) re-arms it.
    Past the deadline the timer cancels the call, which ends the pending read, and ``expired`` tells the reader why.
    """

    __slots__ = ("_armed", "_cancel", "_handle", "_loop", "deadline", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, cancel: Callable[[], object], timeout: float) -> None:
        self._loop = loop
        self._cancel = cancel
        self.deadline = self._armed = loop.time() + timeout
        self.expired = False
        self._handle = loop.call_at(self._armed, self._check)

    def move(self, deadline: float) -> None:
        """Make ``deadline`` (event loop time) the moment the call counts as silent."""
        self.deadline = deadline
        if deadline < self._armed:
            self._handle.cancel()
            self._armed = deadline
            self._handle = self._loop.call_at(deadline, self._check)

    def _check(self) -> None:
        if self._loop.time() < self.deadline:
            self._armed = self.deadline
            self._handle = self._loop.call_at(self.deadline, self._check)
            return
        self.expired = True
        self._cancel()

    def stop(self) -> None:
        self._handle.cancel()


def _cancelling() -> bool:
    """Tell whether the running task itself is being cancelled (not just the call it was reading from)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class PieceCollector:
    """SyncPieces streams to every candidate parent of one task."""

    def __init__(
        self,
        channels: ParentChannels,
        *,
        host_id: str,
        task_id: str,
        parents: list[common_pb2.Peer],
        interested: list[int],
        piece_count: int,
        idle_timeout: float,
        first_timeout: float,
    ) -> None:
        self._channels = channels
        self._host_id = host_id
        self._task_id = task_id
        self._interested = interested
        self._idle_timeout = idle_timeout
        self._first_timeout = first_timeout
        self.parents = {peer.id: ParentState(peer, piece_count) for peer in parents}
        #: Whether the downloader wants piece ``number`` now; a report of any other piece does not set ``changed``.
        self.wanted: Callable[[int], bool] = lambda _number: True
        self.changed = asyncio.Event()
        #: When each piece was first reported by any parent (monotonic seconds).
        self.first_seen: dict[int, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for parent in self.parents.values():
            known = self._channels.vortex_addr(parent.addr) if parent.finished else None
            if known is not None:
                self._take_finished(parent, known)
                continue
            self._tasks.append(asyncio.create_task(self._sync(parent), name=f"sync-pieces-{parent.id}"))

    def _take_finished(self, parent: ParentState, vortex_addr: tuple[str, int]) -> None:
        """Count a parent the scheduler says has finished the task as holding every piece, without SyncPieces.

        Its Vortex address is the one its upload server reported for an earlier task. A parent that lies about
        having finished gains nothing: its bytes are checked against the trusted digests like any parent's, and a
        failed fetch excludes it (and makes this daemon ask it over SyncPieces again next time).
        """
        parent.vortex_addr = vortex_addr
        parent.syncing = False
        parent.bitmap.set_all()
        now = time.monotonic()
        for number in self._interested:
            self.first_seen.setdefault(number, now)
        self.changed.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def syncing(self) -> bool:
        """Tell whether any parent may still report pieces."""
        return any(p.syncing for p in self.parents.values())

    async def _sync(self, parent: ParentState) -> None:
        request = dfdaemon_pb2.SyncPiecesRequest(
            host_id=self._host_id, task_id=self._task_id, interested_piece_numbers=self._interested
        )
        call = self._channels.stub(parent.addr).SyncPieces(request)
        timeout = min(self._first_timeout, FINISHED_FIRST_ANSWER) if parent.finished else self._first_timeout
        loop = asyncio.get_running_loop()
        silence = _Silence(loop, call.cancel, timeout)
        try:
            while True:
                silence.move(loop.time() + timeout)
                try:
                    response = await call.read()
                except (asyncio.CancelledError, grpc.aio.AioRpcError):
                    if silence.expired and not _cancelling():
                        raise TimeoutError from None
                    raise
                if response is grpc.aio.EOF:
                    if silence.expired:
                        raise TimeoutError
                    break
                if not 0 <= response.number < parent.bitmap.size:
                    log.warning(
                        "parent reported an unknown piece", extra={"parent": parent.id, "piece": response.number}
                    )
                    continue
                if not response.HasField("tcp_port"):
                    continue
                first = parent.vortex_addr is None
                if first:
                    self._channels.remember_vortex_addr(parent.addr, (response.ip, response.tcp_port))
                parent.vortex_addr = (response.ip, response.tcp_port)
                timeout = self._idle_timeout
                parent.bitmap.set(response.number)
                self.first_seen.setdefault(response.number, time.monotonic())
                # The first report makes the parent usable at all; later ones matter only for a wanted piece.
                if first or self.wanted(response.number):
                    self.changed.set()
        except grpc.aio.AioRpcError as exc:
            parent.error = f"{exc.code().name}: {exc.details()}"
        except TimeoutError:
            if parent.vortex_addr is None:
                why = (
                    "a parent that finished the task answers at once"
                    if parent.finished
                    else "firstCollectedPieceTimeout"
                )
                parent.error = f"no piece reported within {timeout:g}s of asking ({why})"
            else:
                parent.error = f"no further piece reported for {timeout:g}s (collectedPieceTimeout)"
        finally:
            silence.stop()
            call.cancel()
            parent.syncing = False
            self.changed.set()
        if parent.error:
            log.warning(
                "sync pieces with parent ended",
                extra={"task_id": self._task_id, "parent": parent.id, "error": parent.error},
            )

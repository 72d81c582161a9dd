"""One running download of a task in this daemon, and what its requesters see of it: the origin's head when asked
for (the proxy), the started event, one event per stored piece, and the common.v2.Piece those pieces are reported as.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dragonfly_api import common_pb2, scheduler_pb2

from dragonfly.common.byte_range import ByteRange, RangeSpec
from dragonfly.common.piece import piece_count
from dragonfly.daemon.backends import SourceOptions
from dragonfly.daemon.backends.http import LOCAL as LOCAL_ORIGIN
from dragonfly.daemon.backends.http import OpenedPiece, OriginOptions
from dragonfly.daemon.backends.origin_head import OriginHead
from dragonfly.daemon.download.piece_verifier import PieceVerifier
from dragonfly.daemon.download.scheduler_client import AnnouncePeerStream
from dragonfly.daemon.storage import PieceRecord, TaskRecord

BACK_TO_SOURCE = common_pb2.BACK_TO_SOURCE
REMOTE_PEER = common_pb2.REMOTE_PEER
LOCAL_PEER = common_pb2.LOCAL_PEER


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The first event of a download: what the task is."""

    task_id: str
    peer_id: str
    content_length: int
    piece_length: int
    response_header: dict[str, str]
    #: The bytes the requester asked for, None for the whole content.
    range: ByteRange | None = None


@dataclass(frozen=True, slots=True)
class HeadStarted:
    """Before TaskStarted, for a requester that asked for the origin's head: the stat's answer and its first bytes,
    unverified, arriving (``TaskManager.download``'s ``origin_head``)."""

    task_id: str
    peer_id: str
    content_length: int
    response_header: dict[str, str]
    head: OriginHead


@dataclass(frozen=True, slots=True)
class PieceDone:
    """A piece is in storage; ``traffic_type`` says where its bytes came from, as the requester sees it."""

    piece: PieceRecord
    traffic_type: int


class TaskDownload:
    """The one running download of a task in this daemon."""

    __slots__ = (
        "byte_range",
        "done",
        "download",
        "error",
        "first_piece",
        "from_scheduler",
        "head",
        "head_ready",
        "head_size",
        "in_order",
        "options",
        "order",
        "origin",
        "peer_id",
        "probe",
        "ready",
        "registered",
        "runner",
        "spec",
        "streamed",
        "task",
        "task_id",
        "unreadable",
        "verifier",
        "wanted",
    )

    def __init__(
        self,
        task_id: str,
        download: common_pb2.Download,
        peer_id: str,
        spec: RangeSpec | None,
        origin: OriginOptions = LOCAL_ORIGIN,
    ) -> None:
        self.task_id = task_id
        self.download = download
        # How this download may reach the origin (the SSRF guard, trust roots): set by whoever started it.
        self.origin = origin
        self.peer_id = peer_id
        # A ranged download fetches only the pieces that cover its range (``wanted``; None means every piece).
        self.spec = spec
        self.byte_range: ByteRange | None = None
        self.wanted: frozenset[int] | None = None
        # The origin ignores Range: pieces are cut from one streamed GET instead of fetched one by one.
        self.streamed = False
        self.task: TaskRecord | None = None
        self.error: BaseException | None = None
        self.order: list[int] = []
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.runner: asyncio.Task[None] | None = None
        self.verifier: PieceVerifier | None = None
        # What the non-HTTP backends need besides the URL (credentials among them).
        self.options = SourceOptions.of(download, origin)
        # The source cannot be read here: the AnnouncePeer stream that learnt the task's size from the swarm, with
        # the scheduler's first answer, to go on with (``_stat_from_swarm``).
        self.probe: tuple[AnnouncePeerStream, str, scheduler_pb2.AnnouncePeerResponse] | None = None
        # The source cannot be read here: every piece comes from the swarm (never the small-task shortcut).
        self.unreadable = False
        # Asked for by the scheduler (a seed peer's task), and whether this download told the scheduler about it.
        self.from_scheduler = False
        self.registered = False
        # A requester consumes the pieces in order as they arrive (the proxy streaming a response): the first one
        # matters most.
        self.in_order = False
        # How many first bytes the stat of the origin reads too (``proxy.originHead``; 0: a 1-byte stat), those
        # bytes when they are a strict prefix of the content (until piece 0 is stored), and when that is decided.
        self.head_size = 0
        self.head: OriginHead | None = None
        self.head_ready = asyncio.Event()
        # Piece 0's request, sent as the stat of a download headed for the origin, until its source fetch reads it.
        self.first_piece: OpenedPiece | None = None

    def take_first_piece(self) -> OpenedPiece | None:
        """Return piece 0's request sent with the stat, if still unread; it is the caller's to read or close."""
        opened, self.first_piece = self.first_piece, None
        return opened

    async def close_first_piece(self) -> None:
        """Drop piece 0's request sent with the stat, if unread (the piece comes from elsewhere, or not at all)."""
        opened = self.take_first_piece()
        if opened is not None:
            await opened.close()

    def missing(self, task: TaskRecord) -> list[int]:
        """Return the pieces this download still has to fetch of ``task``, in ascending order."""
        if self.wanted is None:
            return [n for n in range(piece_count(task.content_length, task.piece_length)) if n not in task.pieces]
        return sorted(n for n in self.wanted if n not in task.pieces)

    def complete(self, task: TaskRecord, count: int) -> bool:
        """Tell whether every piece this download wants of ``task`` (``count`` pieces in all) is stored."""
        if self.wanted is None:
            return len(task.pieces) == count
        return self.wanted.issubset(task.pieces)


def piece_message(piece: PieceRecord, traffic_type: int | None = None) -> common_pb2.Piece:
    """Return the common.v2.Piece of a stored piece."""
    message = common_pb2.Piece()
    fill_piece_message(message, piece, traffic_type)
    return message


def fill_piece_message(message: common_pb2.Piece, piece: PieceRecord, traffic_type: int | None = None) -> None:
    """Fill an empty common.v2.Piece (one inside a request under construction) with a stored piece."""
    message.number = piece.number
    message.offset = piece.offset
    message.length = piece.length
    # The BLAKE3 digest when known: the scheduler hands it to children as a trusted digest (docs/security.md).
    message.digest = piece.strong_digest or piece.digest
    # The stored int is a TrafficType value.
    message.traffic_type = piece.traffic_type if traffic_type is None else traffic_type  # type: ignore[assignment]
    message.cost.seconds = int(piece.cost)
    message.cost.nanos = int((piece.cost % 1) * 1e9)
    message.created_at.seconds = int(piece.created_at)
    if piece.parent_id:
        message.parent_id = piece.parent_id


def source_of(piece: PieceRecord, traffic_type: int) -> str:
    """Return the metrics/report source of a piece: origin, seed, peer or local."""
    if traffic_type == LOCAL_PEER:
        return "local"
    if traffic_type == BACK_TO_SOURCE:
        return "origin"
    return "seed" if (piece.parent_id or "").endswith("-seed") else "peer"

"""Peers: one download of one task on one host, with an explicit state machine
(``docs/reference/scheduler.md#resource-model``, ``#peer-state-machine``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dragonfly.scheduler.resource import dag
from dragonfly.scheduler.resource.fsm import StateMachine
from dragonfly.scheduler.resource.pieces import PieceSet
from dragonfly.scheduler.resource.stats import RollingWindow

if TYPE_CHECKING:
    from dragonfly_api import common_pb2

    from dragonfly.scheduler.resource.host import Host
    from dragonfly.scheduler.resource.task import Task

PENDING = "Pending"
RECEIVED_EMPTY = "ReceivedEmpty"
RECEIVED_TINY = "ReceivedTiny"
RECEIVED_SMALL = "ReceivedSmall"
RECEIVED_NORMAL = "ReceivedNormal"
RUNNING = "Running"
BACK_TO_SOURCE = "BackToSource"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
LEAVE = "Leave"

STATES = (
    PENDING,
    RECEIVED_EMPTY,
    RECEIVED_TINY,
    RECEIVED_SMALL,
    RECEIVED_NORMAL,
    RUNNING,
    BACK_TO_SOURCE,
    SUCCEEDED,
    FAILED,
    LEAVE,
)
RECEIVED = (RECEIVED_EMPTY, RECEIVED_TINY, RECEIVED_SMALL, RECEIVED_NORMAL)

REGISTER_EMPTY = "RegisterEmpty"
REGISTER_TINY = "RegisterTiny"
REGISTER_SMALL = "RegisterSmall"
REGISTER_NORMAL = "RegisterNormal"
DOWNLOAD = "Download"
DOWNLOAD_BACK_TO_SOURCE = "DownloadBackToSource"
DOWNLOAD_SUCCEEDED = "DownloadSucceeded"
DOWNLOAD_FAILED = "DownloadFailed"
EVENT_LEAVE = "Leave"

PEER_FSM = StateMachine(
    STATES,
    {
        REGISTER_EMPTY: ((PENDING,), RECEIVED_EMPTY),
        REGISTER_TINY: ((PENDING,), RECEIVED_TINY),
        REGISTER_SMALL: ((PENDING,), RECEIVED_SMALL),
        REGISTER_NORMAL: ((PENDING,), RECEIVED_NORMAL),
        DOWNLOAD: (RECEIVED, RUNNING),
        DOWNLOAD_BACK_TO_SOURCE: ((*RECEIVED, RUNNING), BACK_TO_SOURCE),
        DOWNLOAD_SUCCEEDED: ((*RECEIVED, RUNNING, BACK_TO_SOURCE), SUCCEEDED),
        DOWNLOAD_FAILED: ((PENDING, *RECEIVED, RUNNING, BACK_TO_SOURCE, SUCCEEDED), FAILED),
        EVENT_LEAVE: (tuple(s for s in STATES if s != LEAVE), LEAVE),
    },
)

# States in which a peer can serve pieces to others (``docs/reference/scheduler.md#abnormal-parents``: all others make a
# bad parent).
SERVING_STATES = frozenset((RUNNING, BACK_TO_SOURCE, SUCCEEDED))
# Events after which the peer has no parents any more (``docs/reference/scheduler.md#peer-state-machine``, side
# effects).
_DROPS_PARENTS = frozenset((DOWNLOAD_BACK_TO_SOURCE, DOWNLOAD_SUCCEEDED, DOWNLOAD_FAILED, EVENT_LEAVE))
_ENDS_DOWNLOAD = frozenset((DOWNLOAD_SUCCEEDED, DOWNLOAD_FAILED, EVENT_LEAVE))

DEFAULT_CONCURRENT_PIECE_COUNT = 8


class Peer:
    """One peer; edges to parents and children form the task's DAG."""

    __slots__ = (
        "asked_for_source",
        "bad_reason",
        "bad_until",
        "block_parents",
        "bytes_from_parents",
        "bytes_from_source",
        "children",
        "concurrent_piece_count",
        "cost",
        "cost_window",
        "created_at",
        "created_wall",
        "deleted",
        "disable_back_to_source",
        "failure_times",
        "handed_parents",
        "host",
        "id",
        "need_back_to_source",
        "parents",
        "piece_updated_at",
        "pieces",
        "pieces_from_parents",
        "priority",
        "range",
        "served_window",
        "state",
        "stream_open",
        "task",
        "updated_at",
    )

    def __init__(
        self,
        peer_id: str,
        task: Task,
        host: Host,
        download: common_pb2.Download,
        *,
        window_size: int,
        piece_limit: int,
        now: float,
    ) -> None:
        self.id = peer_id
        self.task = task
        self.host = host
        # Only this flag of the registration is needed later; keeping the message would keep its whole request
        # (a protobuf arena of several KiB) alive for the peer's lifetime.
        self.disable_back_to_source = download.disable_back_to_source
        self.state = PENDING
        self.priority = download.priority
        self.range: tuple[int, int] | None = (
            (download.range.start, download.range.length) if download.HasField("range") else None
        )
        self.concurrent_piece_count = (
            download.concurrent_piece_count
            if download.HasField("concurrent_piece_count") and download.concurrent_piece_count > 0
            else DEFAULT_CONCURRENT_PIECE_COUNT
        )
        self.pieces = PieceSet(task.piece_count, piece_limit)
        # This peer's own download costs (seconds), judged by Dragonfly's IsBadParent rule.
        self.cost_window = RollingWindow(window_size)
        # Costs children paid for pieces served by this peer; allocated on first use.
        self.served_window: RollingWindow | None = None
        self.failure_times: list[float] = []
        self.cost = 0.0
        self.block_parents: set[str] = {peer_id}
        self.need_back_to_source = False
        # The peer asked for the origin itself (Download.need_back_to_source): its digests vouch for nothing.
        self.asked_for_source = False
        # Every parent ever handed to this peer: the only ones it may name as the source of a piece.
        self.handed_parents: set[str] = set()
        self.parents: dict[str, Peer] = {}
        self.children: dict[str, Peer] = {}
        # Where this peer's bytes came from, by parent peer id, and from the origin: the swarm view's edges (a parent
        # leaves ``parents`` when the download ends; these counts stay).
        self.bytes_from_parents: dict[str, int] = {}
        self.pieces_from_parents: dict[str, int] = {}
        self.bytes_from_source = 0
        self.bad_until = 0.0
        self.bad_reason = ""
        self.stream_open = False
        self.deleted = False
        self.created_at = now
        self.created_wall = time.time()
        self.updated_at = now
        self.piece_updated_at = now

    def __repr__(self) -> str:
        return f"Peer({self.id!r}, {self.state})"

    def can(self, event: str) -> bool:
        """Return whether ``event`` is allowed now."""
        return PEER_FSM.can(event, self.state)

    def fire(self, event: str, now: float) -> None:
        """Apply ``event`` with its side effects on the task and the DAG, or raise InvalidTransition."""
        old = self.state
        new = PEER_FSM.target(event, old, f"peer {self.id}")
        task = self.task
        if event in _DROPS_PARENTS:
            dag.delete_in_edges(self)
        if event == DOWNLOAD_BACK_TO_SOURCE:
            task.back_to_source_peers.add(self.id)
        elif event in _ENDS_DOWNLOAD:
            if event == DOWNLOAD_FAILED and old == BACK_TO_SOURCE:
                task.peer_failed_count += 1
            elif event == DOWNLOAD_SUCCEEDED:
                task.peer_failed_count = 0
            task.back_to_source_peers.discard(self.id)
        self.state = new
        self.updated_at = now
        task.peer_state_changed(self, old, new)

    def touch(self, now: float) -> None:
        """Record activity (refreshes the peer TTL)."""
        self.updated_at = now

    @property
    def servable(self) -> bool:
        """Return whether others may download from this peer now: serving state and something to serve."""
        return self.state in SERVING_STATES and (self.pieces.count > 0 or self.state == SUCCEEDED)

    def is_bad(self, now: float) -> bool:
        """Return whether this peer is marked bad (cool-down running) or its last own cost is abnormal."""
        return now < self.bad_until or self.cost_window.last_is_outlier()

    def mark_bad(self, reason: str, now: float, until: float) -> bool:
        """Mark the peer bad until ``until`` (extending a running cool-down); return whether it is a new mark."""
        fresh = now >= self.bad_until
        self.bad_until = max(self.bad_until, until)
        self.bad_reason = reason
        return fresh

    def edge_load(self) -> tuple[int, int, int]:
        """Return what an edge into this peer charges its parent's host: (bits/s, pieces, bytes)."""
        task = self.task
        return (
            max(task.piece_length, 0) * self.concurrent_piece_count * 8,
            self.concurrent_piece_count,
            max(task.content_length, 0),
        )

    def updated_wall(self) -> float:
        """Return the wall-clock time of the last update."""
        return self.created_wall + (self.updated_at - self.created_at)

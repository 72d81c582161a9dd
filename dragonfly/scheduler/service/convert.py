"""Build common.v2 messages from the resource model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dragonfly_api import common_pb2

from dragonfly.common.pbtime import duration, seconds, timestamp
from dragonfly.common.redact import redact_headers, redact_url

__all__ = [
    "add_held_pieces",
    "add_peer_pieces",
    "add_trusted_pieces",
    "duration",
    "peer_message",
    "seconds",
    "task_message",
    "timestamp",
]

if TYPE_CHECKING:
    from dragonfly.common import native
    from dragonfly.scheduler.resource.peer import Peer
    from dragonfly.scheduler.resource.task import Task


def task_message(task: Task, *, with_pieces: bool = False) -> common_pb2.Task:
    """Return the common.v2.Task of ``task`` (with its stored back-to-source pieces for StatTask)."""
    message = common_pb2.Task(
        id=task.id,
        type=task.type,
        # Answers (StatTask, candidate parents) never carry credentials: anyone can ask (docs/security.md).
        url=redact_url(task.url),
        filtered_query_params=task.filtered_query_params,
        content_length=max(task.content_length, 0),
        piece_count=task.piece_count,
        size_scope=task.size_scope(),
        state=task.state,
        peer_count=len(task.peers),
        has_available_peer=len(task.parent_pool) > 0,
        created_at=timestamp(task.created_wall),
        updated_at=timestamp(task.created_wall + (task.updated_at - task.created_at)),
    )
    if task.request_header:
        # Only when there are headers: a map argument, even an empty one, costs ABC isinstance checks per answer.
        message.request_header.update(redact_headers(task.request_header))
    if task.digest:
        message.digest = task.digest
    if task.tag:
        message.tag = task.tag
    if task.application:
        message.application = task.application
    if with_pieces:
        add_trusted_pieces(message, task)
    return message


def add_trusted_pieces(message: common_pb2.Task, task: Task) -> None:
    """Add the task's trusted pieces (number, offset, length, digest from a digest authority) to ``message``."""
    pieces = task.pieces
    message.pieces.extend(pieces[number] for number in sorted(pieces))


def peer_message(peer: Peer, task: common_pb2.Task) -> common_pb2.Peer:
    """Return the common.v2.Peer of ``peer``, carrying its task and its host as announced."""
    message = common_pb2.Peer(
        id=peer.id,
        priority=peer.priority,
        cost=duration(peer.cost),
        state=peer.state,
        task=task,
        host=peer.host.message,
        need_back_to_source=peer.need_back_to_source,
        created_at=timestamp(peer.created_wall),
        updated_at=timestamp(peer.updated_wall()),
        concurrent_piece_count=peer.concurrent_piece_count,
    )
    if peer.range is not None:
        message.range.start, message.range.length = peer.range
    return message


def add_peer_pieces(
    message: common_pb2.Peer, pieces: native.PieceBitmap | None, piece_length: int, content_length: int
) -> None:
    """Append a Piece (number, offset, length) per piece in ``pieces`` to a Peer message (any thread)."""
    if pieces is None:
        return
    for number in pieces.present():
        piece = message.pieces.add(number=number)
        if piece_length > 0:
            piece.offset = number * piece_length
            if content_length >= 0:
                piece.length = max(min(piece_length, content_length - piece.offset), 0)


def add_held_pieces(message: common_pb2.Peer, peer: Peer) -> None:
    """List the pieces ``peer`` holds in its candidate-parent message, with the fields Dragonfly's rules require of
    a Piece (a client echoes its candidates back in ReschedulePeerRequest): cost unknown here (zero), created_at
    when the peer last changed."""
    task = peer.task
    add_peer_pieces(message, peer.pieces.snapshot(), task.piece_length, task.content_length)
    created = timestamp(peer.updated_wall())
    for piece in message.pieces:
        piece.cost.SetInParent()
        piece.created_at.CopyFrom(created)

"""Persistent cache tasks and their peers (``docs/dfcache.md#on-the-scheduler``).

A persistent cache task is content a host imported (``dfcache import``), not a URL: it has no origin, so its only
sources are the peers that hold it. The scheduler keeps, per task, the importer's declaration (sizes, replica
count, TTL and the importer's digest of the content) and the peers that hold or fetch it. These live apart from
the standard tasks' model: a persistent cache peer outlives its host's announce stream and its host's restarts
(it refers to its host by id and is offered as a parent only while that host is announced), and it leaves only
when its task is deleted or expires, or when its host drops it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

# Task states (Dragonfly's persistent cache task FSM, reduced to the ones a client sees).
TASK_UPLOADING = "Uploading"
TASK_SUCCEEDED = "Succeeded"
TASK_FAILED = "Failed"

# Peer states.
PEER_RUNNING = "Running"
PEER_SUCCEEDED = "Succeeded"
PEER_FAILED = "Failed"

#: A parent that served a piece that failed verification is not offered again for this long.
BAD_PARENT_COOL_DOWN = 300.0


@dataclass(slots=True, eq=False)
class PersistentCachePeer:
    """One host's copy (finished or being fetched) of a persistent cache task."""

    id: str
    task: PersistentCacheTask
    host_id: str
    persistent: bool
    state: str = PEER_RUNNING
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    concurrent_piece_count: int = 0
    pieces: set[int] = field(default_factory=set)
    bad_until: float = 0.0
    bad_reason: str = ""

    def is_bad(self, now: float) -> bool:
        return now < self.bad_until

    def mark_bad(self, reason: str, now: float) -> None:
        self.bad_until = now + BAD_PARENT_COOL_DOWN
        self.bad_reason = reason

    @property
    def cost(self) -> float:
        return (self.finished_at or self.updated_at) - self.created_at


@dataclass(slots=True, eq=False)
class PersistentCacheTask:
    """What the importer declared, and every peer of the task."""

    id: str
    importer_host_id: str
    importer_peer_id: str
    persistent_replica_count: int
    piece_length: int
    content_length: int
    piece_count: int
    ttl: float
    tag: str = ""
    application: str = ""
    #: The importer's digest of the whole content (``sha256:<hex>``), None when the importer gave none
    #: (Dragonfly's daemons do not send one).
    content_digest: str | None = None
    state: str = TASK_UPLOADING
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    peers: dict[str, PersistentCachePeer] = field(default_factory=dict)

    def expires_at(self) -> float:
        return self.created_at + self.ttl

    def expired(self, now: float) -> bool:
        return now >= self.expires_at()

    def holders(self) -> list[PersistentCachePeer]:
        """Return the peers that hold the whole content."""
        return [peer for peer in self.peers.values() if peer.state == PEER_SUCCEEDED]

    def persistent_replicas(self) -> int:
        return sum(1 for peer in self.peers.values() if peer.state == PEER_SUCCEEDED and peer.persistent)

    def replicas(self) -> int:
        return sum(1 for peer in self.peers.values() if peer.state == PEER_SUCCEEDED and not peer.persistent)


class SizeError(ValueError):
    """Sizes of an import that do not fit together."""


def check_sizes(piece_length: int, content_length: int, piece_count: int) -> None:
    """Refuse sizes whose piece count does not follow from the content and piece lengths."""
    if piece_length <= 0:
        raise SizeError(f"piece_length {piece_length} must be positive")
    expected = math.ceil(content_length / piece_length)
    if piece_count != expected:
        raise SizeError(
            f"piece_count {piece_count} does not match content_length {content_length} / piece_length "
            f"{piece_length} ({expected} pieces)"
        )


class PersistentCacheResource:
    """Persistent cache tasks and peers by id; every removal goes through here so both indexes stay right."""

    def __init__(self) -> None:
        self.tasks: dict[str, PersistentCacheTask] = {}
        self.peers: dict[str, PersistentCachePeer] = {}

    def get_task(self, task_id: str, now: float) -> PersistentCacheTask | None:
        """Return the live task (an expired one is removed and not returned)."""
        task = self.tasks.get(task_id)
        if task is not None and task.expired(now):
            self.delete_task(task)
            return None
        return task

    def create_task(self, task: PersistentCacheTask, importer_persistent: bool = True) -> PersistentCachePeer:
        """Add a task being imported, with its importer's peer (Running)."""
        old = self.tasks.get(task.id)
        if old is not None:
            self.delete_task(old)
        self.tasks[task.id] = task
        return self.create_peer(task.importer_peer_id, task, task.importer_host_id, persistent=importer_persistent)

    def create_peer(
        self, peer_id: str, task: PersistentCacheTask, host_id: str, *, persistent: bool
    ) -> PersistentCachePeer:
        old = self.peers.get(peer_id)
        if old is not None:
            self.delete_peer(old)
        # One copy per host and task: a host that registers again replaces its previous peer.
        for other in [p for p in task.peers.values() if p.host_id == host_id]:
            self.delete_peer(other)
        peer = PersistentCachePeer(peer_id, task, host_id, persistent)
        self.peers[peer_id] = peer
        task.peers[peer_id] = peer
        return peer

    def delete_peer(self, peer: PersistentCachePeer) -> None:
        peer.task.peers.pop(peer.id, None)
        if self.peers.get(peer.id) is peer:
            del self.peers[peer.id]

    def delete_task(self, task: PersistentCacheTask) -> list[PersistentCachePeer]:
        """Remove the task and its peers; return the peers that held content (their hosts should drop it)."""
        if self.tasks.get(task.id) is task:
            del self.tasks[task.id]
        removed = list(task.peers.values())
        for peer in removed:
            self.delete_peer(peer)
        return [peer for peer in removed if peer.state == PEER_SUCCEEDED or peer.pieces]

    def tasks_of_importer(self, host_id: str) -> list[PersistentCacheTask]:
        return [task for task in self.tasks.values() if task.importer_host_id == host_id]

    def peers_of_host(self, host_id: str) -> list[PersistentCachePeer]:
        return [peer for peer in self.peers.values() if peer.host_id == host_id]

    def expired_tasks(self, now: float) -> list[PersistentCacheTask]:
        return [task for task in self.tasks.values() if task.expired(now)]

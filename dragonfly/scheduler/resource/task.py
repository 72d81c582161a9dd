"""Tasks: one piece of content and the peers downloading it (``docs/reference/scheduler.md#resource-model``,
``#task-state-machine``)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from dragonfly_api import common_pb2

from dragonfly.scheduler.resource import peer as peer_states
from dragonfly.scheduler.resource.fsm import StateMachine
from dragonfly.scheduler.resource.stats import RollingWindow

if TYPE_CHECKING:
    from collections.abc import Callable

    from dragonfly.scheduler.resource.peer import Peer

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
LEAVE = "Leave"
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, LEAVE)

DOWNLOAD = "Download"
DOWNLOAD_SUCCEEDED = "DownloadSucceeded"
DOWNLOAD_FAILED = "DownloadFailed"
EVENT_LEAVE = "Leave"

TASK_FSM = StateMachine(
    STATES,
    {
        DOWNLOAD: ((PENDING, SUCCEEDED, FAILED, LEAVE), RUNNING),
        DOWNLOAD_SUCCEEDED: ((LEAVE, RUNNING, FAILED), SUCCEEDED),
        DOWNLOAD_FAILED: ((RUNNING,), FAILED),
        EVENT_LEAVE: ((PENDING, RUNNING, SUCCEEDED, FAILED), LEAVE),
    },
)

TINY_CONTENT_LENGTH = 128
# Dragonfly's PeerCountLimitForTask: above it, finished leaf peers are collected eagerly.
PEER_COUNT_LIMIT_FOR_TASK = 300


_RELAY_STATES = frozenset((peer_states.RECEIVED_NORMAL, peer_states.RUNNING))


def is_relay(peer: Peer) -> bool:
    """Return whether ``peer`` holds nothing yet but has parents, so it will hold pieces as soon as they do.

    Dragonfly's filter (``docs/reference/scheduler.md#candidate-filter`` rule 5) accepts a Running peer with
    in-degree ≥ 1; counting a peer that was just given parents (still ReceivedNormal) as well lets peers that
    register or are released together become each other's parents instead of all hanging off the seed peer.
    """
    return peer.state in _RELAY_STATES and bool(peer.parents)


def is_seed_fetching(peer: Peer) -> bool:
    """Return whether ``peer`` is a seed peer fetching a task of several pieces from the origin (holding pieces or
    not yet).

    Offered as a parent before its first piece (Dragonfly's filter accepts such a seed too): the child opens its
    SyncPieces stream, channel and TLS handshake included, while the seed fetches that piece, and learns of the
    piece the moment it is stored, instead of paying a scheduler round trip and a connection after it.

    Not for a task of one piece: there that early SyncPieces stream only ever carries the one piece, whose trusted
    digest the child then has to ask for (StatTask). Offered once it holds the piece, the seed comes with the
    piece's trusted digest and is listed as holding every piece, so the child fetches it at once over a Vortex
    connection it may have already, with neither stream nor StatTask (bench small-files: ~70 % of the children
    registered before the seed had the piece and paid both).
    """
    return peer.state == peer_states.BACK_TO_SOURCE and peer.host.is_seed and peer.task.piece_count != 1


class PeerPool:
    """An indexable set of peers: O(1) add, remove and random sampling."""

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[Peer] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, peer: Peer) -> bool:
        return peer.id in self._index

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def add(self, peer: Peer) -> None:
        """Add ``peer`` unless present."""
        if peer.id not in self._index:
            self._index[peer.id] = len(self._items)
            self._items.append(peer)

    def discard(self, peer: Peer) -> None:
        """Remove ``peer`` if present (swap with the last item)."""
        index = self._index.pop(peer.id, None)
        if index is None:
            return
        last = self._items.pop()
        if index < len(self._items):
            self._items[index] = last
            self._index[last.id] = index

    def sample(self, k: int) -> list[Peer]:
        """Return up to ``k`` distinct peers chosen at random."""
        items = self._items
        if len(items) <= k:
            chosen = list(items)
            random.shuffle(chosen)
            return chosen
        return random.sample(items, k)


class Task:
    """One task: its identity, sizes, state machine, peers, and the pool of peers that can serve it."""

    __slots__ = (
        "_on_peer_state",
        "_waiters",
        "application",
        "back_to_source_limit",
        "back_to_source_peers",
        "content_length",
        "cost_window",
        "created_at",
        "created_wall",
        "digest",
        "filtered_query_params",
        "id",
        "parent_pool",
        "peer_failed_count",
        "peers",
        "piece_count",
        "piece_length",
        "pieces",
        "request_header",
        "seed_failed_at",
        "seed_has_pieces",
        "seed_trigger_active",
        "state",
        "tag",
        "type",
        "updated_at",
        "upload_blocked",
        "url",
    )

    def __init__(
        self,
        task_id: str,
        download: common_pb2.Download,
        *,
        back_to_source_limit: int,
        window_size: int,
        on_peer_state: Callable[[str, str], None],
        now: float,
    ) -> None:
        self.id = task_id
        self.type = download.type
        self.url = download.url
        self.digest = download.digest if download.HasField("digest") else ""
        self.tag = download.tag
        self.application = download.application
        self.filtered_query_params = list(download.filtered_query_params)
        self.request_header = dict(download.request_header)
        # Unknown sizes are -1 / 0 until a registrant or a back-to-source peer tells us.
        self.content_length = -1
        self.piece_length = 0
        self.piece_count = 0
        self.set_sizes(download)
        self.state = PENDING
        self.back_to_source_limit = back_to_source_limit
        # Peers sent to the origin: added when the scheduler says so (not later, so the cap holds under a herd).
        self.back_to_source_peers: set[str] = set()
        self.peers: dict[str, Peer] = {}
        self.parent_pool = PeerPool()
        # Trusted pieces by number: the first back-to-source report of each by a digest authority
        # (docs/security.md#trusted-piece-digests). Children get these digests with their parents and from StatTask
        # (docs/reference/scheduler.md#other-rpcs), and claims that contradict them fail.
        self.pieces: dict[int, common_pb2.Piece] = {}
        self.peer_failed_count = 0
        # Costs of pieces served peer-to-peer across the swarm: the yardstick for slow parents.
        self.cost_window = RollingWindow(window_size)
        self.seed_trigger_active = False
        self.seed_has_pieces = False
        self.seed_failed_at: float | None = None
        # Whether the upload block list forbids handing out this task's peers; decided on first use.
        self.upload_blocked: bool | None = None
        # Schedulers waiting for a change of this task, by id: (their peer's registration time, future).
        self._waiters: dict[int, tuple[float, asyncio.Future[None]]] = {}
        self._on_peer_state = on_peer_state
        self.created_at = now
        self.created_wall = time.time()
        self.updated_at = now

    def __repr__(self) -> str:
        return f"Task({self.id!r}, {self.state}, peers={len(self.peers)})"

    def set_sizes(self, download: common_pb2.Download) -> None:
        """Take content length, piece length and piece count from a registrant's backend stat."""
        if download.HasField("actual_content_length"):
            self.content_length = download.actual_content_length
        if download.HasField("actual_piece_length"):
            self.piece_length = download.actual_piece_length
        elif download.HasField("piece_length"):
            self.piece_length = download.piece_length
        if download.HasField("actual_piece_count"):
            self.piece_count = download.actual_piece_count
        elif self.content_length > 0 and self.piece_length > 0:
            self.piece_count = -(-self.content_length // self.piece_length)

    def reset_sizes(self) -> None:
        """Forget the sizes after a failed back-to-source download
        (``docs/reference/scheduler.md#announcepeer-on-the-scheduler``)."""
        self.content_length = -1
        self.piece_count = 0

    def fire(self, event: str, now: float) -> None:
        """Apply a task event or raise InvalidTransition."""
        self.state = TASK_FSM.target(event, self.state, f"task {self.id}")
        self.updated_at = now

    def touch(self, now: float) -> None:
        """Record activity."""
        self.updated_at = now

    def size_scope(self) -> common_pb2.SizeScope:
        """Return the common.v2.SizeScope; an unknown length schedules as NORMAL (the API has no UNKNOW)."""
        if self.content_length < 0:
            return common_pb2.NORMAL
        if self.content_length == 0:
            return common_pb2.EMPTY
        if self.content_length <= TINY_CONTENT_LENGTH:
            return common_pb2.TINY
        if self.piece_count == 1:
            return common_pb2.SMALL
        return common_pb2.NORMAL

    def can_back_to_source(self) -> bool:
        """Return whether one more peer may go to the origin.

        Dragonfly compares with ``<=`` and so lets limit + 1 peers through; the cap here is exact.
        """
        return len(self.back_to_source_peers) < self.back_to_source_limit and self.type != common_pb2.PERSISTENT_CACHE

    def has_available_peer(self, host_id: str, blocklist: set[str]) -> bool:
        """Return whether a peer on another host, not blocklisted, is Running, BackToSource or Succeeded."""
        for other in self.peers.values():
            if other.state in peer_states.SERVING_STATES and other.host.id != host_id and other.id not in blocklist:
                return True
        return False

    def waiting_for_seed(self) -> bool:
        """Return whether a triggered seed peer is still expected to produce its first piece."""
        return self.seed_trigger_active and not self.seed_has_pieces

    def peer_state_changed(self, peer: Peer, old: str, new: str) -> None:
        """Keep the parent pool and counters in step with a peer transition, and wake waiting schedulers."""
        self.refresh_pool(peer)
        self._on_peer_state(old, new)
        self.notify()

    def refresh_pool(self, peer: Peer) -> None:
        """Put ``peer`` in the parent pool exactly when it can serve, or relay what its parents send it."""
        if peer.deleted:
            self.parent_pool.discard(peer)
        elif peer.servable:
            self.parent_pool.add(peer)
            if peer.host.is_seed:
                self.seed_has_pieces = True
        elif is_relay(peer) or is_seed_fetching(peer):
            self.parent_pool.add(peer)
        else:
            self.parent_pool.discard(peer)

    def notify(self) -> None:
        """Wake every coroutine waiting for a change of this task, earliest registered peer first.

        Woken schedulers run one after the other in this order, and each links its peer before the next decides,
        so the peer that registered first is decided first and becomes a parent of the later ones. (Waking in
        the order of the waits would favour the latest registrant: its own registration wakes the earlier
        waiters, and it starts waiting again before they do.)
        """
        waiters = self._waiters
        if not waiters:
            return
        self._waiters = {}
        for _order, future in sorted(waiters.values(), key=lambda item: item[0]):
            if not future.done():
                future.set_result(None)

    async def wait_changed(self, within: float, order: float = 0.0) -> bool:
        """Wait until notify(), at most ``within`` seconds; return whether something changed.

        ``order`` ranks this waiter among those woken together (lower first): the waiting peer's creation time.
        """
        if within <= 0:
            return False
        future = asyncio.get_running_loop().create_future()
        key = id(future)
        self._waiters[key] = (order, future)
        try:
            async with asyncio.timeout(within):
                await future
        except TimeoutError:
            return False
        finally:
            self._waiters.pop(key, None)
        return True

"""The scheduling decision for one peer (``docs/reference/scheduler.md#scheduling-loop``, decided without Dragonfly's
sleeps).

Dragonfly retries up to ``retryBackToSourceLimit`` times ``retryInterval`` apart before sending a peer to the
origin. Here a decision is made at once when one is possible: parents if any qualify; the origin if nothing
could produce the task soon. Otherwise the peer waits for a change of its task (a peer's first piece, a finished
or failed peer, a seed peer's failure), re-deciding on each, bounded by:

- ``seedPeerWaitTimeout`` while a triggered seed peer has not produced its first piece;
- ``retryBackToSourceLimit × retryInterval`` (Dragonfly's budget) while another peer of the task is fetching
  from the origin and this one may go there too;
- ``retryLimit × retryInterval`` when this peer may not go to the origin (cap reached or back-to-source
  disabled), after which the stream fails with FailedPrecondition "scheduling exceeded RetryLimit".

A parent must be able to serve now: Running, BackToSource or Succeeded, and holding at least one piece (or
Succeeded), with one exception: a seed peer fetching a task of several pieces from the origin is a parent from the
moment it starts, as in Dragonfly. Its children then open their SyncPieces streams (gRPC channel and TLS handshake
included) while it fetches its first piece and learn of that piece as soon as it is stored; waiting for the piece
before deciding put a scheduler round trip and a new connection on every child's path to its first byte
(bench/RESULTS.md, "Time to first byte"). For a task of one piece, see ``is_seed_fetching``. A BackToSource peer
that is not a seed still has to produce a piece first (Dragonfly accepts it too): by default its digests are not
trusted ones (docs/security.md), so a child waiting on it could end up fetching from the origin anyway.

A relay is a parent too: a ReceivedNormal or Running peer that holds nothing yet but has parents (Dragonfly's rule
5 accepts Running peers with in-degree ≥ 1). Peers released together when the seed's first piece lands are
scheduled one after the other, each linked before the next is decided, so every later one gets the earlier ones
as candidates; otherwise all of them would hang off the seed peer for the whole download. Clients tolerate a
parent with nothing yet: SyncPieces on it just reports pieces as they arrive.

In a task of one piece a child is offered only the candidates that hold the piece, listed with it, so it fetches at
once: a relay there holds the whole task as soon as it holds anything, and a child offered it could only watch it
over a SyncPieces stream, which costs both daemons more than a small file's transfer (bench small-files: about one
such stream per file and peer). A child whose candidates are all relays waits for one of them to report the piece
(its report wakes the task's waiters), within the back-to-source budget, after which it is offered them as before.
Relays stay candidates, so the seed peer is still offered only to children with fewer than two other peers:
dropping relays altogether had every child released with the seed's piece pull it from the seed (bench
small-files: 70 % of the bytes from the seed instead of 25 %, makespan 2 x).

A seed peer is offered only to children that get fewer than two other peers: its upload has to carry each piece
out at least once, and a seed that every child pulls from carries it N times. The few children it feeds pass the
pieces on (Dragonfly's host-type score means the same: bootstrap from seeds, then prefer normal peers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from dragonfly.scheduler.resource import dag
from dragonfly.scheduler.resource import peer as peer_states
from dragonfly.scheduler.resource.task import is_relay, is_seed_fetching
from dragonfly.scheduler.scheduling.evaluator import Evaluator

if TYPE_CHECKING:
    from collections.abc import Callable

    from dragonfly.scheduler.config import SchedulerConfig, UploadBlockRule
    from dragonfly.scheduler.metrics import Metrics
    from dragonfly.scheduler.resource.peer import Peer
    from dragonfly.scheduler.resource.task import Task

NORMAL = "normal"
EMPTY = "empty"
BACK_TO_SOURCE = "need_back_to_source"
METADATA_ONLY = "metadata_only"

# How many candidates to look at when the first random sample yields too few, as a multiple of the sample.
_WIDER_SAMPLE_FACTOR = 10
# A child offered this many other peers is not offered a seed peer: see the module docstring.
_PEERS_WITHOUT_SEED = 2
_SCHEDULABLE_STATES = frozenset((peer_states.RECEIVED_NORMAL, peer_states.RUNNING))
_ENDED_STATES = frozenset((peer_states.FAILED, peer_states.LEAVE))


class ScheduleError(Exception):
    """Scheduling cannot give the peer any answer; the stream ends with ``code``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Decision:
    """What to tell a peer: its kind, the parents (already linked in the DAG) or the back-to-source reason."""

    kind: str
    parents: list[Peer] = field(default_factory=list)
    description: str = ""


class Scheduling:
    """Filter, score and pick parents; decide back-to-source."""

    def __init__(
        self,
        config: SchedulerConfig,
        upload_block: UploadBlockRule,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.evaluator = Evaluator(config.evaluator)
        self._upload_block = upload_block
        self._blocked_hosts = frozenset(upload_block.hosts)
        self._metrics = metrics
        self._clock = clock

    def find_candidate_parents(self, child: Peer, now: float) -> list[Peer]:
        """Return up to ``candidateParentLimit`` parents for ``child``, best first (not linked yet)."""
        task = child.task
        pool = task.parent_pool
        if not pool or self._task_upload_blocked(task):
            return []
        limit = self.config.filter_parent_limit
        wanted = self.config.candidate_parent_limit
        candidates = self.filter_parents(pool.sample(limit), child, now)
        if len(candidates) < wanted and len(pool) > limit:
            candidates = self.filter_parents(pool.sample(limit * _WIDER_SAMPLE_FACTOR), child, now)
        if not candidates:
            return []
        ranked = self.evaluator.sort(candidates, child)
        peers = [candidate for candidate in ranked if not candidate.host.is_seed]
        if len(peers) >= _PEERS_WITHOUT_SEED:
            return peers[:wanted]
        return ranked[:wanted]

    def filter_parents(self, sample: list[Peer], child: Peer, now: float) -> list[Peer]:
        """Drop candidates that must not serve ``child`` (``docs/reference/scheduler.md#candidate-filter``, in order,
        plus upload slots)."""
        blocked = child.block_parents
        current = child.parents
        below = dag.descendants(child) if child.children else ()
        child_host = child.host.id
        blocked_hosts = self._blocked_hosts
        kept = []
        for candidate in sample:
            if candidate.id in blocked:
                continue
            host = candidate.host
            if host.disable_shared or host.id == child_host:
                continue
            if blocked_hosts and (host.id in blocked_hosts or host.ip in blocked_hosts):
                continue
            if not (candidate.servable or is_relay(candidate) or is_seed_fetching(candidate)) or candidate.is_bad(now):
                continue
            if host.concurrent_upload_count >= host.concurrent_upload_limit:
                continue
            if candidate.id in current or candidate.id in below:
                continue
            kept.append(candidate)
        return kept

    def _task_upload_blocked(self, task: Task) -> bool:
        blocked = task.upload_blocked
        if blocked is None:
            blocked = task.upload_blocked = self._upload_block.matches(task.url, task.application, task.tag)
        return blocked

    def source_pending(self, peer: Peer, now: float, *, first_seed_piece: bool = False) -> bool:
        """Return whether another peer this one could use is fetching the task from the origin (with
        ``first_seed_piece``: a seed peer that has no piece yet)."""
        task = peer.task
        for other_id in task.back_to_source_peers:
            other = task.peers.get(other_id)
            if (
                other is not None
                and other is not peer
                and other_id not in peer.block_parents
                and other.host is not peer.host
                and not other.is_bad(now)
                and (
                    not first_seed_piece
                    or (other.host.is_seed and other.pieces.count == 0 and other.state not in _ENDED_STATES)
                )
            ):
                return True
        return False

    def back_to_source(self, peer: Peer, description: str) -> Decision:
        """Send ``peer`` to the origin, taking one of the task's back-to-source slots now."""
        peer.task.back_to_source_peers.add(peer.id)
        peer.need_back_to_source = True
        self._metrics.back_to_source.inc()
        return Decision(BACK_TO_SOURCE, description=description)

    async def schedule(self, peer: Peer) -> Decision:
        """Decide for a registered (ReceivedNormal) or rescheduled (Running) peer; see the module docstring."""
        if peer.state not in _SCHEDULABLE_STATES:
            raise ScheduleError(
                grpc.StatusCode.FAILED_PRECONDITION, f"peer {peer.id} cannot be scheduled in state {peer.state}"
            )
        config = self.config
        clock = self._clock
        task = peer.task
        start = clock()
        back_to_source_at = start + config.retry_back_to_source_limit * config.retry_interval
        fail_at = start + config.retry_limit * config.retry_interval
        seed_until = start + config.seed_peer_wait_timeout
        dag.delete_in_edges(peer)
        task.refresh_pool(peer)
        while True:
            if peer.deleted:
                raise ScheduleError(grpc.StatusCode.NOT_FOUND, f"peer {peer.id} was deleted while being scheduled")
            now = clock()
            may_back_to_source = task.can_back_to_source() and not peer.disable_back_to_source
            if may_back_to_source and peer.need_back_to_source:
                return self.back_to_source(peer, "peer's NeedBackToSource is true")
            parents = self.find_candidate_parents(peer, now)
            if parents and task.piece_count == 1 and now < back_to_source_at:
                # A task of one piece: its holders only, or a wait for a relay to hold it (see the module docstring).
                holders = [parent for parent in parents if parent.servable]
                if not holders:
                    await task.wait_changed(back_to_source_at - now, peer.created_at)
                    continue
                parents = holders
            if parents:
                added = dag.add_edges(parents, peer)
                if added:
                    # At once, before any other waiter is decided: this is what makes it a relay for them.
                    task.refresh_pool(peer)
                    return Decision(NORMAL, added)
            # A seed peer fetching a one-piece task is no parent before its piece (``is_seed_fetching``), and its
            # trigger may end before its report of the piece is read here: it is waited for like a triggered one.
            if now < seed_until and (task.waiting_for_seed() or self.source_pending(peer, now, first_seed_piece=True)):
                wait_until = seed_until
            elif may_back_to_source:
                if not self.source_pending(peer, now):
                    return self.back_to_source(peer, "no candidate parents")
                if now >= back_to_source_at:
                    return self.back_to_source(peer, "scheduling exceeded RetryBackToSourceLimit")
                wait_until = back_to_source_at
            else:
                if now >= fail_at:
                    raise ScheduleError(grpc.StatusCode.FAILED_PRECONDITION, "scheduling exceeded RetryLimit")
                wait_until = fail_at
            await task.wait_changed(wait_until - now, peer.created_at)

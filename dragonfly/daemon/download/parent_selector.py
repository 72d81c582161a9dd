"""Pick a parent per piece by what this child observes of each parent, not only what it advertises
(``docs/reference/protocol.md#pieces-from-parents``).

Dragonfly's client weighs candidates by the free upload bandwidth each parent streams over SyncHost
(``max_tx − tx``). That figure is the NIC speed minus traffic, which means little on shaped or virtual links,
and it moves once a second while a child starts several pieces in a millisecond. So the weight here is

    weight = throughput observed from the parent / (1 + pieces in flight to it) × advertised free share

where the throughput is a moving average of ``bytes × concurrent requests / seconds`` over this child's own
fetches (optimistically the best seen so far for a parent not tried yet), and the advertised share is the
parent's free bandwidth relative to the best candidate's. The choice among the candidates is random in
proportion to the weight, so children that see the same figures still spread their requests.

Which parents are candidates for a piece is the downloader's call (``PieceDispatcher``): it keeps seed peers
to a few slots while other peers may serve, since the seed's upload has to carry every piece at least once
(BitTorrent's super-seeding has the same aim).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.daemon.download.parents import ParentChannels, upload_addr

log = logging.getLogger(__name__)

UNKNOWN_BANDWIDTH = 10_000_000_000
# Weight of a new throughput sample in the moving average.
_RATE_SMOOTHING = 0.3


def free_bandwidth_weight(network: common_pb2.Network) -> float:
    """Return a parent's weight from its advertised network figures (bit/s)."""
    max_tx = network.max_tx_bandwidth
    if max_tx <= 0:
        return float(UNKNOWN_BANDWIDTH)
    return float(max(max_tx - network.tx_bandwidth, max_tx / 10))


def is_seed_peer(peer: common_pb2.Peer) -> bool:
    """Return whether ``peer`` runs on a seed host (any host type but normal, or a seed peer id)."""
    return peer.host.type != 0 or peer.id.endswith("-seed")


class ParentSelector:
    """Live figures of one task's candidate parents: advertised free bandwidth, in-flight pieces, throughput."""

    def __init__(self, channels: ParentChannels, *, host_id: str, peer_id: str, parents: list[common_pb2.Peer]) -> None:
        self._channels = channels
        self._host_id = host_id
        self._peer_id = peer_id
        self._parents = parents
        self.weights = {p.id: free_bandwidth_weight(p.host.network) for p in parents}
        self.in_flight: collections.Counter[str] = collections.Counter()
        #: Moving average of the throughput (bytes/s) this child got from each parent it has used.
        self.rates: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for peer in self._parents:
            self._tasks.append(asyncio.create_task(self._sync(peer), name=f"sync-host-{peer.id}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sync(self, peer: common_pb2.Peer) -> None:
        request = dfdaemon_pb2.SyncHostRequest(host_id=self._host_id, peer_id=self._peer_id)
        call = self._channels.stub(upload_addr(peer.host.ip, peer.host.port)).SyncHost(request)
        try:
            async for host in call:
                self.weights[peer.id] = free_bandwidth_weight(host.network)
        except grpc.aio.AioRpcError as exc:
            log.debug("sync host ended", extra={"parent": peer.id, "code": exc.code().name})
        finally:
            call.cancel()

    def begin(self, parent_id: str) -> int:
        """Count a piece request to ``parent_id``; return how many are in flight to it now, this one included."""
        self.in_flight[parent_id] += 1
        return self.in_flight[parent_id]

    def end(self, parent_id: str) -> None:
        """Count a piece request to ``parent_id`` as finished (successfully or not)."""
        self.in_flight[parent_id] -= 1
        if self.in_flight[parent_id] <= 0:
            del self.in_flight[parent_id]

    def observe(self, parent_id: str, length: int, seconds: float, concurrent: int) -> None:
        """Record a piece of ``length`` bytes that took ``seconds`` while ``concurrent`` requests shared the parent."""
        if seconds <= 0 or length <= 0:
            return
        sample = length * max(concurrent, 1) / seconds
        old = self.rates.get(parent_id)
        self.rates[parent_id] = sample if old is None else old + _RATE_SMOOTHING * (sample - old)

    def penalize(self, parent_id: str) -> None:
        """Halve the throughput credited to a parent that failed a piece."""
        rate = self.rates.get(parent_id)
        self.rates[parent_id] = (rate if rate is not None else self._best_rate()) / 2

    def _best_rate(self) -> float:
        return max(self.rates.values(), default=1.0)

    def weight(self, parent_id: str, best_advertised: float, best_rate: float) -> float:
        """Return the selection weight of ``parent_id`` (see the module docstring)."""
        rate = self.rates.get(parent_id, best_rate)
        advertised = self.weights.get(parent_id, float(UNKNOWN_BANDWIDTH)) / best_advertised
        return rate * advertised / (1 + self.in_flight[parent_id])

    def choose(self, candidates: list[str]) -> str:
        """Return one of ``candidates`` at random, in proportion to its weight."""
        if len(candidates) == 1:
            return candidates[0]
        best_advertised = max(self.weights.get(c, float(UNKNOWN_BANDWIDTH)) for c in candidates) or 1.0
        best_rate = self._best_rate()
        weights = [self.weight(c, best_advertised, best_rate) for c in candidates]
        return random.choices(candidates, weights=weights)[0]

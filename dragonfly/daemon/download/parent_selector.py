"""Pick a parent per piece, weighted by its free upload bandwidth (the client half of load-aware scheduling).

Each parent streams its bandwidth figures over SyncHost about once a second. Weight =
``max(max_tx − tx, max_tx / 10)``, or 10 Gbit/s when the parent does not know its NIC speed (§3.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.daemon.download.parents import ParentChannels, upload_addr

log = logging.getLogger(__name__)

UNKNOWN_BANDWIDTH = 10_000_000_000


def free_bandwidth_weight(network: common_pb2.Network) -> float:
    """Return a parent's weight from its advertised network figures (bit/s)."""
    max_tx = network.max_tx_bandwidth
    if max_tx <= 0:
        return float(UNKNOWN_BANDWIDTH)
    return float(max(max_tx - network.tx_bandwidth, max_tx / 10))


class ParentSelector:
    """Live weights of one task's candidate parents."""

    def __init__(self, channels: ParentChannels, *, host_id: str, peer_id: str, parents: list[common_pb2.Peer]) -> None:
        self._channels = channels
        self._host_id = host_id
        self._peer_id = peer_id
        self._parents = parents
        self.weights = {p.id: free_bandwidth_weight(p.host.network) for p in parents}
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

    def choose(self, candidates: list[str]) -> str:
        """Return one of ``candidates`` at random, weighted by free upload bandwidth."""
        if len(candidates) == 1:
            return candidates[0]
        weights = [self.weights.get(c, float(UNKNOWN_BANDWIDTH)) for c in candidates]
        return random.choices(candidates, weights=weights)[0]

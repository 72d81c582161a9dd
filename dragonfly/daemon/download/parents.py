"""gRPC channels to parents' upload servers, shared by every task of the daemon."""

from __future__ import annotations

import collections

import grpc
from dragonfly_api import dfdaemon_pb2_grpc

from dragonfly.common import tls

# Channels to parents that come and go; the oldest is closed beyond this many.
_MAX_CHANNELS = 256


class ParentChannels:
    """An LRU of channels keyed by ``ip:port`` of a parent's DfdaemonUpload server (mTLS with ``tls_files``), and
    the Vortex address each of those servers last reported in SyncPieces."""

    def __init__(self, tls_files: tls.TLSFiles | None = None) -> None:
        self._tls = tls_files
        self._channels: collections.OrderedDict[str, tuple[grpc.aio.Channel, dfdaemon_pb2_grpc.DfdaemonUploadStub]] = (
            collections.OrderedDict()
        )
        self._closing: set[grpc.aio.Channel] = set()
        # A parent the scheduler says has finished a task holds every piece of it: with its Vortex address known
        # from an earlier task, a child fetches at once instead of opening a SyncPieces stream per task (which costs
        # both daemons more than a one-piece task's transfer). Forgotten when a fetch from that address fails.
        self._vortex: collections.OrderedDict[str, tuple[str, int]] = collections.OrderedDict()

    def vortex_addr(self, addr: str) -> tuple[str, int] | None:
        """Return the Vortex address the upload server at ``addr`` last reported, if any."""
        return self._vortex.get(addr)

    def remember_vortex_addr(self, addr: str, vortex_addr: tuple[str, int]) -> None:
        """Record the Vortex address the upload server at ``addr`` reported in SyncPieces."""
        self._vortex[addr] = vortex_addr
        self._vortex.move_to_end(addr)
        while len(self._vortex) > _MAX_CHANNELS:
            self._vortex.popitem(last=False)

    def forget_vortex_addr(self, addr: str) -> None:
        """Drop the Vortex address of ``addr``: a fetch from it failed, so the next task asks over SyncPieces again."""
        self._vortex.pop(addr, None)

    def stub(self, addr: str) -> dfdaemon_pb2_grpc.DfdaemonUploadStub:
        entry = self._channels.get(addr)
        if entry is None:
            channel = tls.aio_channel(
                addr,
                self._tls,
                options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)],
            )
            stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)  # type: ignore[no-untyped-call]
            entry = self._channels[addr] = (channel, stub)
            while len(self._channels) > _MAX_CHANNELS:
                _addr, (old, _stub) = self._channels.popitem(last=False)
                self._closing.add(old)
        self._channels.move_to_end(addr)
        return entry[1]

    async def close(self) -> None:
        for channel in [*self._closing, *(c for c, _ in self._channels.values())]:
            await channel.close()
        self._closing.clear()
        self._channels.clear()


def upload_addr(ip: str, port: int) -> str:
    """Return a gRPC target for ``ip:port`` (bracketing IPv6 literals)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

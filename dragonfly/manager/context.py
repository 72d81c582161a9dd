"""What every request handler and RPC of one manager process shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.config import Config

if TYPE_CHECKING:
    import grpc

    from dragonfly.manager.metrics import ManagerMetrics


#: Preheat results come back in a scheduler's trailing metadata (zlib JSON); gRPC's default metadata limits (8 KiB
#: soft, 16 KiB hard) would cut a big cluster's result.
SCHEDULER_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_metadata_size", 64 << 20),
    ("grpc.absolute_max_metadata_size", 64 << 20),
]


@dataclass(slots=True)
class ManagerContext:
    """The config, the database and process-wide helpers; extensions keep their own objects in ``extras``."""

    config: Config
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    signin_limiter: SigninLimiter
    extras: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    metrics: ManagerMetrics | None = None
    #: token digest -> (monotonic time cached, principal, expiry); see dragonfly.manager.api.deps.authenticate.
    auth_cache: dict[str, tuple[float, Any, Any]] = field(default_factory=dict)

    def scheduler_channel(self, address: str) -> grpc.aio.Channel:
        """Return a channel to a scheduler (``ip:port``), with the manager's client identity under mTLS.

        Channels are cached per address and closed when the manager stops; callers never close them.
        """
        channel = self.channels.get(address)
        if channel is None:
            from dragonfly.common import tls

            channel = tls.aio_channel(address, self.config.grpc_tls(), options=SCHEDULER_CHANNEL_OPTIONS)
            self.channels[address] = channel
        return channel

    async def close_channels(self) -> None:
        """Close every cached channel."""
        channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            await channel.close()

"""What every request handler and RPC of one manager process shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.config import Config


@dataclass(slots=True)
class ManagerContext:
    """The config, the database and process-wide helpers; extensions keep their own objects in ``extras``."""

    config: Config
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    signin_limiter: SigninLimiter
    extras: dict[str, Any] = field(default_factory=dict)

"""A bounded pool of reusable piece buffers, so memory does not grow with the number of tasks or pieces."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class BufferPool:
    """At most ``count`` buffers of ``size`` bytes, allocated on first use; a buffer has one owner at a time."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._slots = asyncio.Semaphore(count)

    @contextlib.asynccontextmanager
    async def get(self) -> AsyncIterator[bytearray]:
        async with self._slots:
            buffer = self._free.pop() if self._free else bytearray(self.size)
            try:
                yield buffer
            finally:
                self._free.append(buffer)

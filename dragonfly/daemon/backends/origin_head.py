"""The first bytes of a content as its origin sends them, readable while they arrive (``proxy.originHead``).

The stat that asks for them (``HTTPBackend.stat_with_head``) fills one in the background while the download goes
on; any number of readers follow it from its start. A body that breaks off, or a read that times out, ends it
early: what arrived is still a prefix of the content as the origin sent it, so a reader can go on from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class OriginHead:
    """Up to ``size`` first bytes of a content of ``content_length`` bytes, and the headers of the origin's answer."""

    __slots__ = ("_changed", "_data", "_ended", "content_length", "header", "size")

    def __init__(self, size: int, content_length: int, header: dict[str, str]) -> None:
        self.size = size
        self.content_length = content_length
        self.header = header
        self._data = bytearray()
        self._ended = False
        # Replaced at every change: a reader waits on the event of the state it has seen.
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def data(self) -> bytes:
        """The bytes that arrived so far (all of them once ``ended``)."""
        return bytes(self._data)

    def feed(self, chunk: bytes) -> None:
        """Append bytes that arrived (never past ``size``)."""
        if self._ended:
            raise RuntimeError("the origin head has ended")
        self._data += chunk[: self.size - len(self._data)]
        self._notify()

    def end(self) -> None:
        """No more bytes will come (all of them, or the body broke off)."""
        self._ended = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the bytes from the first one, as they arrive, until the head ends (its filler always ends it)."""
        offset = 0
        while True:
            if offset < len(self._data):
                chunk = bytes(self._data[offset:])
                offset += len(chunk)
                yield chunk
                continue
            if self._ended:
                return
            await self._changed.wait()

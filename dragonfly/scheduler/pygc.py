"""CPython's cyclic garbage collector at scale (``scheduler.gc.pythonGCFreezeInterval``, 1 s by default).

CPython runs a full collection whenever the objects that survived the young generations since the last one reach a
quarter of the old generation, and a full collection walks every object the process holds: with 100,000 peers and
90,000 open streams that is seconds, in which no decision is made (``bench/RESULTS.md`` §6). With a freeze interval,
a young collection runs at start and then every interval, and everything that survives it is frozen (``gc.freeze``),
so later full collections walk only what came after. Garbage cycles among frozen objects wait for the full
collection that runs once per ``pythonGCFullCollectInterval`` (1 h) after everything is unfrozen: one long pause
per interval instead of one per quarter of growth, and that much cyclic garbage held meanwhile. The scheduler makes
little of it: the peer model holds no cycle once a peer is deleted, a stream that ends or a refused call none either
(grpc's request iterator is not used and aborts are cut from their frames: dragonfly/common/grpc_decoding.py;
bench/RESULTS.md §6). Only cycles that take in objects older than the last freeze are held: garbage that is cyclic
from birth (such as grpc's per-call handler lookup) dies in the young collection before each freeze. The freeze is
process-wide: a scheduler embedded in another process freezes that process's objects too until it stops (then
everything is handed back).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)


class FreezingCollector:
    """Freeze what survives every ``freeze_interval``; unfreeze and collect everything every ``full_interval``."""

    def __init__(
        self, freeze_interval: float, full_interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._freeze_interval = freeze_interval
        self._full_interval = full_interval
        self._clock = clock
        self._next_full = clock() + full_interval
        self._job: asyncio.Task[None] | None = None

    def tick(self) -> bool:
        """Freeze the survivors of a young collection, or of a full one when it is due; return whether it was full."""
        now = self._clock()
        full = now >= self._next_full
        if full:
            gc.unfreeze()
            gc.collect()
            self._next_full = now + self._full_interval
        else:
            gc.collect(1)  # young cyclic garbage is collected, not frozen
        gc.freeze()
        return full

    def start(self) -> None:
        """Freeze now (what start-up built is there for good), then every interval."""
        self.tick()
        self._job = asyncio.create_task(self._run(), name="python-gc-freeze")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._freeze_interval)
            try:
                self.tick()
            except Exception:
                log.exception("freezing the garbage collector's survivors failed")

    async def stop(self) -> None:
        """Stop, and hand every frozen object back to CPython's collector."""
        if self._job is not None:
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job
            self._job = None
        gc.unfreeze()

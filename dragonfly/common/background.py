"""Background coroutines a component starts and forgets, kept referenced until they end and cancelled at its close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class BackgroundJobs:
    """The running fire-and-forget jobs of one component (asyncio keeps only weak references to tasks)."""

    __slots__ = ("_jobs",)

    def __init__(self) -> None:
        self._jobs: set[asyncio.Future[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``coro`` in the background."""
        job = asyncio.ensure_future(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    def __len__(self) -> int:
        return len(self._jobs)

    async def close(self, *others: asyncio.Future[Any] | None) -> None:
        """Cancel every job (and ``others``, such as a component's periodic loops) and wait for them to end."""
        jobs = [*self._jobs, *(job for job in others if job is not None)]
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job

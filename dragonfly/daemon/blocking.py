"""Run blocking native calls on a bounded executor without letting cancellation orphan them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


async def run_blocking(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on ``executor``; if the caller is cancelled, wait for the call to end first.

    An executor thread cannot be interrupted, and it may still be writing into a pooled buffer or through a
    borrowed file descriptor; returning those to their owners while it runs would corrupt another transfer.
    """
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        try:
            await future
        except Exception:
            pass
        raise

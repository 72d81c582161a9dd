"""Run blocking native calls on a bounded executor without letting cancellation orphan them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


async def run_blocking(
    executor: Executor, fn: Callable[..., T], *args: Any, on_cancel: Callable[[], object] | None = None
) -> T:
    """Run ``fn(*args)`` on ``executor``; if the caller is cancelled, wait for the call to end first.

    An executor thread cannot be interrupted, and it may still be writing into a pooled buffer or through a
    borrowed file descriptor; returning those to their owners while it runs would corrupt another transfer. That
    holds however often the caller is cancelled meanwhile (a piece's timeout, then its download stopped): every
    cancellation waits. ``on_cancel``, when given, is called once at the first one (to tell ``fn`` to stop early).
    """
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        while not future.done():
            # asyncio.wait never cancels the future it waits for, and a cancellation of this wait is swallowed
            # until the thread is done; the first cancellation is raised below.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((future,))
        if not future.cancelled():
            future.exception()  # retrieved: the caller was cancelled, so the call's own error is moot
        raise

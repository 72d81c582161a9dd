"""Bounded waits on conditions another process or task changes on its own clock (nothing to await but its answers).

A test waits on a condition, never for a fixed time: a fixed sleep is either too short on a loaded machine or
wasted on an idle one. Each wait fails with what it waited for once its bound expires.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a truthy value and return it; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], Awaitable[Any] | Any], within: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` (plain or async) from the event loop until it is truthy and return its value.

    Fails with ``what`` after ``within`` seconds; a check that hangs counts against the same bound.
    """
    try:
        async with asyncio.timeout(within):
            while True:
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:g}s waiting for {what}") from None


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether something accepts TCP connections on ``host:port`` (a condition for ``wait_for``)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True

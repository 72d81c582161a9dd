"""Process conventions shared by every long-running command: start-up lines, logging, signals, the event loop.

Launchers (``dragonfly up``, tests, benchmarks) read the printed lines: one
``dragonfly: <service> listening on <addr>`` per listener, then ``dragonfly: <component> ready``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from dragonfly.common.redact import redact_text

READY_SUFFIX = "ready"


def announce_listening(service: str, addr: str) -> None:
    """Print the address one listener is bound to (after binding, so port 0 shows the real port)."""
    print(f"dragonfly: {service} listening on {addr}", flush=True)


def announce_ready(component: str) -> None:
    """Print that every listener of ``component`` is up and it accepts work."""
    print(f"dragonfly: {component} {READY_SUFFIX}", flush=True)


class Server(Protocol):
    """A long-running server with explicit start and stop."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(
    component: str,
    server: Server,
    listening: Callable[[], list[tuple[str, str]]],
    start_errors: tuple[type[Exception], ...] = (OSError,),
) -> int:
    """Start ``server``, print its listeners and the ready line, run until cancelled (SIGTERM), stop it.

    A start failure of one of ``start_errors`` is printed as ``dragonfly <component>: <error>`` and returns 1.
    """
    try:
        await server.start()
    except start_errors as exc:
        print(f"dragonfly {component}: {exc}", file=sys.stderr)
        await server.stop()
        return 1
    for service, addr in listening():
        announce_listening(service, addr)
    announce_ready(component)
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(server.stop())
    return 0


class _KeyValueFormatter(logging.Formatter):
    """Render ``time level component logger message key=value ...``; extra fields come from ``extra={...}``."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def __init__(self, component: str) -> None:
        super().__init__("%(asctime)s %(levelname)s " + component + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in self._STANDARD]
        # Last line of defence: whatever reached a log line, URL credentials and secret headers do not.
        return redact_text(f"{line} {' '.join(extras)}" if extras else line)


def setup_logging(level: str = "info", *, component: str) -> None:
    """Send structured key=value logs to stderr at ``level``."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; return the soft limit now in force.

    Servers hold a descriptor per connection; distributions often start services with a soft limit of 1024 and a
    far higher hard limit, which any process may use.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main()`` on uvloop when available; SIGTERM/SIGINT cancel it so servers stop gracefully."""
    raise_open_file_limit()

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await main()
        except asyncio.CancelledError:
            return 0

    try:
        import uvloop
    except ImportError:
        status = asyncio.run(runner())
    else:
        status = uvloop.run(runner())
    # The process exits next, and interpreter finalization runs full collections over every object while it clears
    # the modules: 3-6 s for the manager's ~180k objects on a loaded 2-core machine, after its servers had stopped
    # (gdb: finalize_modules -> _PyGC_CollectNoFail). Frozen objects are left to reference counting; whatever a
    # cycle still holds goes with the process.
    gc.freeze()
    return status

"""Test-suite wide: the event loops the in-process async tests run on (issue 8 item 21).

The daemon and the scheduler run on uvloop when it is installed (dragonfly.common.process.run_async), which is
the case in every real process the integration and end-to-end tests start. In-process async tests (tests/unit,
tests/native) run twice, on the standard asyncio loop (the oracle) and on uvloop, so behaviour that differs
between the two (sendfile, add_writer, socket methods, timeouts) is caught where it is cheapest to see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

_IN_PROCESS = ("unit", "native")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    relative = Path(str(item.path)).resolve().relative_to(Path(__file__).resolve().parent)
    if relative.parts and relative.parts[0] in _IN_PROCESS:
        try:
            import uvloop
        except ImportError:  # not on this platform: asyncio alone
            return factories
        factories["uvloop"] = uvloop.new_event_loop
    return factories

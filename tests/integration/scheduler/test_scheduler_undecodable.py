"""A real scheduler answers bytes that are not a request with INVALID_ARGUMENT and logs no traceback (issue 8 item 18).

Before, grpcio answered UNKNOWN and logged an ERROR with a traceback per request: a log flood anyone could cause.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from dragonfly.cli.cluster import SCHEDULER

GARBAGE = b"\xff\xff\xff\xff\x0fnot a protobuf message"


async def test_garbage_gets_invalid_argument_and_no_traceback(start_scheduler: Callable[..., Any]) -> None:
    client = await start_scheduler()
    for method in ("StatPeer", "AnnounceHost", "DeleteTask"):
        raw = client.channel.unary_unary(f"/scheduler.v2.Scheduler/{method}")
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw(GARBAGE, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    log = client.cluster.log_path(SCHEDULER).read_text()
    assert "Traceback" not in log
    assert "DecodeError" not in log

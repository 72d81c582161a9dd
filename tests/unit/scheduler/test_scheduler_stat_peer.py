"""StatPeer of a peer of a huge task costs the event loop next to nothing (issue 8 item 5).

The loop thread's CPU time is measured (``time.thread_time``), not the wall clock: what matters is how long the
loop cannot serve registrations and piece reports, and CPU time does not depend on how loaded the machine is.
"""

from __future__ import annotations

import time
from typing import Any

from dragonfly_api import common_pb2, scheduler_pb2

from dragonfly.scheduler.config import load
from dragonfly.scheduler.preheat.service import PreheatService
from dragonfly.scheduler.server import SchedulerContext
from dragonfly.scheduler.service.servicer import SchedulerServicer

TASK = "b" * 64
# Walking 4 M bits in Python took ~0.45 s of the loop on an idle machine; a native walk takes microseconds.
PIECES = 4_000_000
LOOP_CPU_BUDGET = 0.05


class Context:
    """The two calls StatPeer makes on grpc's ServicerContext (a stand-in: no server is needed to call it)."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: Any, message: str) -> None:
        raise AssertionError(f"StatPeer aborted: {code} {message}")


def _peer_with(pieces: list[int]) -> tuple[SchedulerServicer, str]:
    ctx = SchedulerContext.create(load(None, overrides={"security": {"enable": False}}))
    now = time.monotonic()
    host = ctx.resource.announce_host(
        common_pb2.Host(id="10.0.0.1-big", hostname="big", ip="10.0.0.1", port=4000, download_port=4000), 0.0, now
    )
    download = common_pb2.Download(url="http://origin.test/huge")
    download.actual_piece_length = 4 << 20
    download.actual_content_length = PIECES * (4 << 20)
    download.actual_piece_count = PIECES
    task = ctx.resource.load_or_create_task(TASK, download, now)
    peer = ctx.resource.create_peer("10.0.0.1-big-peer", task, host, download, now)
    for number in pieces:
        peer.pieces.add(number)
    return SchedulerServicer(ctx, PreheatService(ctx)), peer.id


async def _stat(servicer: SchedulerServicer, peer_id: str) -> tuple[common_pb2.Peer, float]:
    started = time.thread_time()
    message = await servicer.StatPeer(scheduler_pb2.StatPeerRequest(task_id=TASK, peer_id=peer_id), Context())
    return message, time.thread_time() - started


async def test_a_few_pieces_of_a_huge_task_are_listed_without_walking_every_bit() -> None:
    pieces = [0, 7, 1_000_000, PIECES - 1]
    servicer, peer_id = _peer_with(pieces)
    message, loop_cpu = await _stat(servicer, peer_id)
    assert [p.number for p in message.pieces] == pieces
    assert message.pieces[3].offset == (PIECES - 1) * (4 << 20)
    assert message.pieces[3].length == 4 << 20
    assert loop_cpu < LOOP_CPU_BUDGET, f"StatPeer took {loop_cpu:.3f}s of the loop's CPU"


async def test_many_pieces_are_listed_on_a_thread() -> None:
    pieces = list(range(0, PIECES, 40))  # 100,000 pieces
    servicer, peer_id = _peer_with(pieces)
    message, loop_cpu = await _stat(servicer, peer_id)
    assert len(message.pieces) == len(pieces)
    assert message.pieces[-1].number == pieces[-1]
    assert loop_cpu < LOOP_CPU_BUDGET, f"StatPeer took {loop_cpu:.3f}s of the loop's CPU"

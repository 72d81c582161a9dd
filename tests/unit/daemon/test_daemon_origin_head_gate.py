"""When a peer's stat of the origin reads the origin's head (``proxy.originHeadMaxPeers``, docs/proxy.md)."""

from __future__ import annotations

from typing import cast

import grpc
import pytest
from dragonfly_api import common_pb2

from dragonfly.daemon.download.origin_head_gate import STAT_TIMEOUT, OriginHeadGate, head_wanted
from dragonfly.daemon.download.scheduler_client import SchedulerClient

TASK_ID = "a" * 64


def _task(*, peers: int, pieces: tuple[int, ...] = ()) -> common_pb2.Task:
    task = common_pb2.Task(id=TASK_ID, peer_count=peers, content_length=64 << 20)
    for number in pieces:
        task.pieces.append(common_pb2.Piece(number=number, offset=number << 22, length=1 << 22, digest="crc32:1"))
    return task


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class _Scheduler:
    """Answers StatTask with ``answer`` (a task, or an exception to raise) and records what it was asked."""

    def __init__(self, answer: common_pb2.Task | BaseException) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str, float]] = []

    async def stat_task(self, host_id: str, task_id: str, *, max_wait: float) -> common_pb2.Task:
        self.asked.append((host_id, task_id, max_wait))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def _gate(answer: common_pb2.Task | BaseException, max_peers: int = 8) -> tuple[OriginHeadGate, _Scheduler]:
    scheduler = _Scheduler(answer)
    return OriginHeadGate(cast(SchedulerClient, scheduler), host_id="host-1", max_peers=max_peers), scheduler


@pytest.mark.parametrize(
    ("task", "max_peers", "wanted"),
    [
        (None, 8, True),  # nobody has announced the task: piece 0 comes from the origin anyway
        (_task(peers=1), 8, True),  # one peer on it, piece 0 not yet stored anywhere
        (_task(peers=7), 8, True),  # the last peer under the limit
        (_task(peers=8), 8, False),  # at the limit: the swarm serves piece 0 soon
        (_task(peers=100), 0, True),  # 0: no limit while piece 0 is missing
        (_task(peers=1, pieces=(1, 2)), 8, True),  # other pieces do not give a first byte
        (_task(peers=1, pieces=(0,)), 8, False),  # piece 0 is in the swarm
        (_task(peers=0, pieces=(0, 1)), 0, False),
    ],
)
def test_the_head_is_read_only_while_the_swarm_cannot_serve_piece_0(
    task: common_pb2.Task | None, max_peers: int, wanted: bool
) -> None:
    assert head_wanted(task, max_peers) is wanted


async def test_an_unknown_task_gets_the_head_and_the_scheduler_is_asked_briefly() -> None:
    gate, scheduler = _gate(_rpc_error(grpc.StatusCode.NOT_FOUND))
    assert await gate.head_wanted(TASK_ID) is True
    assert scheduler.asked == [("host-1", TASK_ID, STAT_TIMEOUT)]
    assert STAT_TIMEOUT <= 1.0


async def test_the_scheduler_s_task_decides() -> None:
    assert await _gate(_task(peers=2))[0].head_wanted(TASK_ID) is True
    assert await _gate(_task(peers=2, pieces=(0,)))[0].head_wanted(TASK_ID) is False
    assert await _gate(_task(peers=3), max_peers=3)[0].head_wanted(TASK_ID) is False


@pytest.mark.parametrize(
    "error",
    [
        _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
        _rpc_error(grpc.StatusCode.UNAVAILABLE),
        _rpc_error(grpc.StatusCode.PERMISSION_DENIED),
        ConnectionError("scheduler unreachable"),
        TimeoutError(),
    ],
)
async def test_a_scheduler_that_does_not_answer_gets_no_head(error: BaseException) -> None:
    gate, scheduler = _gate(error)
    assert await gate.head_wanted(TASK_ID) is False
    assert len(scheduler.asked) == 1

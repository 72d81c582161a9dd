"""When a peer's stat of the origin reads the origin's head (``proxy.originHeadMaxPeers``, docs/proxy.md)."""

from __future__ import annotations

import asyncio
from typing import cast

import grpc
import pytest
from dragonfly_api import common_pb2

from dragonfly.daemon.download.origin_head_gate import MAX_PREPARED, STAT_TIMEOUT, OriginHeadGate, head_wanted
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


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _gate(
    answer: common_pb2.Task | BaseException, max_peers: int = 8, clock: _Clock | None = None
) -> tuple[OriginHeadGate, _Scheduler]:
    scheduler = _Scheduler(answer)
    gate = OriginHeadGate(
        cast(SchedulerClient, scheduler), host_id="host-1", max_peers=max_peers, clock=clock or _Clock()
    )
    return gate, scheduler


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


async def test_a_prepared_answer_is_taken_once_by_the_download_that_follows() -> None:
    gate, scheduler = _gate(_task(peers=1, pieces=(0,)))
    gate.prepare(TASK_ID)
    gate.prepare(TASK_ID)  # a second manifest naming the blob: the question is already asked
    assert await gate.head_wanted(TASK_ID) is False
    assert scheduler.asked == [("host-1", TASK_ID, STAT_TIMEOUT)]
    # Taken: the next download of the task asks again, and gets the scheduler's answer of now.
    scheduler.answer = _rpc_error(grpc.StatusCode.NOT_FOUND)
    assert await gate.head_wanted(TASK_ID) is True
    assert len(scheduler.asked) == 2


async def test_a_prepared_answer_older_than_the_stat_timeout_is_asked_again() -> None:
    clock = _Clock()
    gate, scheduler = _gate(_rpc_error(grpc.StatusCode.NOT_FOUND), clock=clock)
    gate.prepare(TASK_ID)
    await asyncio.sleep(0)  # the question goes out
    assert len(scheduler.asked) == 1
    clock.now += STAT_TIMEOUT + 0.01
    # Meanwhile a peer stored piece 0: the stale "unknown task" must not send this peer to the origin's head.
    scheduler.answer = _task(peers=1, pieces=(0,))
    assert await gate.head_wanted(TASK_ID) is False
    assert len(scheduler.asked) == 2


async def test_a_prepared_question_the_scheduler_does_not_answer_gets_no_head() -> None:
    gate, scheduler = _gate(_rpc_error(grpc.StatusCode.UNAVAILABLE))
    gate.prepare(TASK_ID)
    assert await gate.head_wanted(TASK_ID) is False
    assert len(scheduler.asked) == 1


async def test_prepared_questions_are_bounded_and_dropped_on_close() -> None:
    gate, scheduler = _gate(_rpc_error(grpc.StatusCode.NOT_FOUND))
    for i in range(MAX_PREPARED + 5):
        gate.prepare(f"{i:064x}")
    assert len(gate._prepared) == MAX_PREPARED
    # The oldest were evicted: their downloads ask for themselves.
    assert await gate.head_wanted(f"{0:064x}") is True
    assert scheduler.asked[-1][1] == f"{0:064x}"
    gate.close()
    assert not gate._prepared

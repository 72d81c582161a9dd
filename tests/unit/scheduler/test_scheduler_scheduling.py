"""The scheduling decision: at once when possible, else after a relevant event, always within its bounds."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from dragonfly.scheduler.config import UploadBlockRule
from dragonfly.scheduler.resource import peer as p
from dragonfly.scheduler.scheduling import scheduling as s
from tests.unit.scheduler.conftest import TASK_ID
from tests.waiting import eventually


class SteppedClock:
    """A clock the test moves by hand, which counts how often the scheduler reads it (each read is a decision)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


@pytest.fixture
def fast(make_world):
    world = make_world(retryInterval=0.05, retryBackToSourceLimit=4, retryLimit=6, seedPeerWaitTimeout=5)
    world.scheduling = s.Scheduling(world.config, UploadBlockRule(), world.metrics)
    return world


async def test_no_parent_and_nothing_coming_goes_to_the_origin_at_once(make_world):
    # "At once" without a wall clock: any wait for a retry would last an hour here, far past this bound.
    world = make_world(retryInterval=3600, retryBackToSourceLimit=4, retryLimit=6, seedPeerWaitTimeout=5)
    world.scheduling = s.Scheduling(world.config, UploadBlockRule(), world.metrics)
    child = world.peer("child")
    decision = await asyncio.wait_for(world.scheduling.schedule(child), 60)
    assert (decision.kind, decision.description) == (s.BACK_TO_SOURCE, "no candidate parents")
    assert child.id in child.task.back_to_source_peers
    assert child.need_back_to_source


async def test_a_parent_is_linked_and_returned(fast):
    parent = fast.peer("parent", state=p.RUNNING, pieces=[0])
    child = fast.peer("child")
    decision = await fast.scheduling.schedule(child)
    assert (decision.kind, decision.parents) == (s.NORMAL, [parent])
    assert child.parents == {parent.id: parent}


async def test_reschedule_drops_current_parents_first(fast):
    parent = fast.peer("parent", state=p.RUNNING, pieces=[0])
    child = fast.peer("child", state=p.RUNNING)
    await fast.scheduling.schedule(child)
    child.block_parents.add(parent.id)
    decision = await fast.scheduling.schedule(child)
    assert decision.kind == s.BACK_TO_SOURCE
    assert not child.parents
    assert parent.host.concurrent_upload_count == 0


async def test_child_waits_for_the_first_piece_of_a_peer_at_the_origin(fast):
    clock = SteppedClock()
    fast.scheduling = s.Scheduling(fast.config, UploadBlockRule(), fast.metrics, clock=clock)
    source = fast.peer("source", state=p.BACK_TO_SOURCE)
    child = fast.peer("child")
    decision = asyncio.ensure_future(fast.scheduling.schedule(child))
    await eventually(lambda: clock.reads >= 2, 5, "the child to decide to wait", interval=0.001)
    assert not decision.done()
    source.pieces.add(0)
    source.task.refresh_pool(source)
    source.task.notify()
    result = await asyncio.wait_for(decision, 1)
    assert (result.kind, result.parents) == (s.NORMAL, [source])


async def test_child_goes_to_the_origin_when_the_budget_runs_out(fast):
    fast.peer("source", state=p.BACK_TO_SOURCE)
    child = fast.peer("child")
    started = time.monotonic()
    decision = await fast.scheduling.schedule(child)
    assert decision.description == "scheduling exceeded RetryBackToSourceLimit"
    assert time.monotonic() - started >= 0.18  # 4 x 0.05 s; a loaded machine only makes it later


async def test_child_waits_for_a_triggered_seed_and_takes_it(fast):
    clock = SteppedClock()
    fast.scheduling = s.Scheduling(fast.config, UploadBlockRule(), fast.metrics, clock=clock)
    seed_host = fast.host("seed", seed=True)
    child = fast.peer("child")
    child.task.seed_trigger_active = True
    decision = asyncio.ensure_future(fast.scheduling.schedule(child))
    await eventually(lambda: clock.reads >= 2, 5, "the child to decide to wait", interval=0.001)
    # Past the back-to-source budget (4 x 0.05 s) but within seedPeerWaitTimeout: woken, it keeps waiting.
    clock.now += 1.0
    reads = clock.reads
    child.task.notify()
    await eventually(lambda: clock.reads > reads, 5, "the woken child to decide again", interval=0.001)
    await asyncio.sleep(0)
    assert not decision.done(), "the triggered seed is awaited past the back-to-source budget"
    seed = fast.peer("seed-peer", seed_host, state=p.BACK_TO_SOURCE, pieces=[0])
    seed.task.notify()
    result = await asyncio.wait_for(decision, 5)
    assert result.parents == [seed]
    assert child.task.seed_has_pieces


async def test_child_gets_the_seed_as_soon_as_it_starts_fetching_from_the_origin(fast):
    clock = SteppedClock()
    fast.scheduling = s.Scheduling(fast.config, UploadBlockRule(), fast.metrics, clock=clock)
    child = fast.peer("child")
    child.task.seed_trigger_active = True
    seed = fast.peer("seed-peer", fast.host("seed", seed=True))  # registered, not fetching yet: no parent
    decision = asyncio.ensure_future(fast.scheduling.schedule(child))
    await eventually(lambda: clock.reads >= 2, 5, "the child to decide to wait", interval=0.001)
    assert not decision.done()
    seed.fire(p.DOWNLOAD_BACK_TO_SOURCE, fast.now)  # wakes the waiting child
    result = await asyncio.wait_for(decision, 5)
    assert result.kind == s.NORMAL
    assert result.parents == [seed]
    assert not child.task.seed_has_pieces, "the seed holds nothing yet"


async def test_a_one_piece_task_gets_the_seed_only_once_it_holds_the_piece(fast):
    # Earlier, the child's SyncPieces stream would only carry that piece, whose digest it would then ask for.
    clock = SteppedClock()
    fast.scheduling = s.Scheduling(fast.config, UploadBlockRule(), fast.metrics, clock=clock)
    task = fast.resource.load_or_create_task(TASK_ID, fast.download(pieces=1), fast.now)
    child = fast.peer("child")
    task.seed_trigger_active = True
    seed = fast.peer("seed-peer", fast.host("seed", seed=True), state=p.BACK_TO_SOURCE)
    assert task.piece_count == 1
    decision = asyncio.ensure_future(fast.scheduling.schedule(child))
    await eventually(lambda: clock.reads >= 2, 5, "the child to decide to wait", interval=0.001)
    reads = clock.reads
    task.notify()
    await eventually(lambda: clock.reads > reads, 5, "the woken child to decide again", interval=0.001)
    await asyncio.sleep(0)
    assert not decision.done(), "a seed without the task's only piece is no parent"
    seed.pieces.add(0)
    task.refresh_pool(seed)
    task.notify()
    result = await asyncio.wait_for(decision, 5)
    assert (result.kind, result.parents) == (s.NORMAL, [seed])


async def test_a_one_piece_task_waits_for_its_seed_past_the_back_to_source_budget_when_its_trigger_ended(fast):
    # The seed's DownloadTask call can end before its piece report is read: its piece is still coming.
    clock = SteppedClock()
    fast.scheduling = s.Scheduling(fast.config, UploadBlockRule(), fast.metrics, clock=clock)
    task = fast.resource.load_or_create_task(TASK_ID, fast.download(pieces=1), fast.now)
    child = fast.peer("child")
    seed = fast.peer("seed-peer", fast.host("seed", seed=True), state=p.BACK_TO_SOURCE)
    task.back_to_source_peers.add(seed.id)
    assert not task.waiting_for_seed()
    decision = asyncio.ensure_future(fast.scheduling.schedule(child))
    await eventually(lambda: clock.reads >= 2, 5, "the child to decide to wait", interval=0.001)
    clock.now += 1.0  # past the back-to-source budget (4 x 0.05 s), within seedPeerWaitTimeout (5 s)
    reads = clock.reads
    task.notify()
    await eventually(lambda: clock.reads > reads, 5, "the woken child to decide again", interval=0.001)
    await asyncio.sleep(0)
    assert not decision.done(), "the seed's piece is awaited, not the origin"
    seed.pieces.add(0)
    task.refresh_pool(seed)
    task.notify()
    result = await asyncio.wait_for(decision, 5)
    assert (result.kind, result.parents) == (s.NORMAL, [seed])


async def test_seed_failure_sends_the_waiting_child_to_the_origin(fast):
    clock = SteppedClock()
    fast.scheduling = s.Scheduling(fast.config, UploadBlockRule(), fast.metrics, clock=clock)
    child = fast.peer("child")
    task = child.task
    task.seed_trigger_active = True
    decision = asyncio.ensure_future(fast.scheduling.schedule(child))
    await eventually(lambda: clock.reads >= 2, 5, "the child to decide to wait", interval=0.001)
    task.seed_trigger_active = False
    task.notify()
    assert (await asyncio.wait_for(decision, 1)).kind == s.BACK_TO_SOURCE


async def test_cap_reached_waits_then_fails_with_retry_limit(make_world):
    world = make_world(retryInterval=0.05, retryLimit=4, backToSourceCount=1)
    scheduling = s.Scheduling(world.config, UploadBlockRule(), world.metrics)
    world.peer("source", state=p.BACK_TO_SOURCE)
    child = world.peer("child")
    started = time.monotonic()
    with pytest.raises(s.ScheduleError) as info:
        await scheduling.schedule(child)
    assert (info.value.code, info.value.message) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "scheduling exceeded RetryLimit",
    )
    # It waited its retries (4 x 50 ms at least); the upper bound is the test's timeout, not a wall clock.
    assert time.monotonic() - started >= 0.18


async def test_cap_is_exact(make_world):
    world = make_world(backToSourceCount=2, retryInterval=0.01)
    scheduling = s.Scheduling(world.config, UploadBlockRule(), world.metrics)
    first, second = world.peer("a"), world.peer("b")
    assert (await scheduling.schedule(first)).kind == s.BACK_TO_SOURCE
    assert (await scheduling.schedule(second)).kind == s.BACK_TO_SOURCE
    assert not first.task.can_back_to_source()


async def test_disabled_back_to_source_is_never_chosen(fast):
    child = fast.peer("child", disable_back_to_source=True)
    with pytest.raises(s.ScheduleError, match="RetryLimit"):
        await fast.scheduling.schedule(child)


async def test_need_back_to_source_is_honoured_at_once(fast):
    fast.peer("parent", state=p.RUNNING, pieces=[0])
    seed = fast.peer("seed", fast.host("s", seed=True), need_back_to_source=True)
    seed.need_back_to_source = True
    decision = await fast.scheduling.schedule(seed)
    assert (decision.kind, decision.description) == (s.BACK_TO_SOURCE, "peer's NeedBackToSource is true")


async def test_deleted_while_waiting_is_not_found(fast):
    clock = SteppedClock()
    fast.scheduling = s.Scheduling(fast.config, UploadBlockRule(), fast.metrics, clock=clock)
    fast.peer("source", state=p.BACK_TO_SOURCE)
    child = fast.peer("child")
    decision = asyncio.ensure_future(fast.scheduling.schedule(child))
    await eventually(lambda: clock.reads >= 2, 5, "the child to decide to wait", interval=0.001)
    fast.resource.delete_peer(child, fast.now)
    with pytest.raises(s.ScheduleError) as info:
        await asyncio.wait_for(decision, 1)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("state", [p.PENDING, p.BACK_TO_SOURCE, p.SUCCEEDED, p.FAILED])
async def test_only_received_or_running_peers_are_scheduled(fast, state):
    peer = fast.peer("x", state=state)
    with pytest.raises(s.ScheduleError, match=f"cannot be scheduled in state {state}"):
        await fast.scheduling.schedule(peer)

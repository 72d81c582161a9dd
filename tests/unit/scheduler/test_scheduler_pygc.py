"""Freezing the survivors of CPython's collector: frozen cycles wait for the periodic full collection."""

from __future__ import annotations

import gc
import types
import weakref

import grpc
import pytest
from dragonfly_api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from dragonfly.scheduler.config import load
from dragonfly.scheduler.pygc import FreezingCollector
from dragonfly.scheduler.server import SchedulerServer
from dragonfly.scheduler.service.announce_peer import PeerStream


class Node:
    """A cycle only the cyclic collector can free."""

    def __init__(self) -> None:
        self.itself = self


def test_frozen_cycles_are_freed_by_the_full_collection_only():
    now = [0.0]
    collector = FreezingCollector(1.0, 60.0, clock=lambda: now[0])
    try:
        young = Node()
        young_ref = weakref.ref(young)
        del young
        node = Node()
        node_ref = weakref.ref(node)
        assert not collector.tick()
        assert young_ref() is None, "garbage already unreachable is collected, not frozen"
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert node_ref() is not None, "a frozen cycle is out of the collector's reach"
        now[0] = 59.0
        assert not collector.tick()
        assert node_ref() is not None
        now[0] = 60.0
        assert collector.tick()
        assert node_ref() is None
        assert not collector.tick(), "the next full collection is an interval away"
    finally:
        gc.unfreeze()


async def test_start_freezes_at_once_and_stop_hands_every_frozen_object_back():
    gc.unfreeze()
    collector = FreezingCollector(3600.0, 3600.0)
    collector.start()
    assert gc.get_freeze_count() > 0, "start-up's objects are frozen at start, not an interval later"
    await collector.stop()
    assert gc.get_freeze_count() == 0


async def test_a_scheduler_with_the_default_config_freezes_while_it_runs():
    config = load(
        None,
        overrides={
            "server": {"host": "127.0.0.1", "port": 0},
            "metrics": {"enable": False},
            "security": {"enable": False},
        },
    )
    assert config.scheduler.gc.python_freeze_interval == 1
    assert config.scheduler.gc.python_full_collect_interval == 3600
    gc.unfreeze()
    server = SchedulerServer(config)
    await server.start()
    try:
        assert gc.get_freeze_count() > 0
    finally:
        await server.stop()
    assert gc.get_freeze_count() == 0


async def test_a_freeze_interval_of_zero_leaves_cpythons_schedule_alone():
    gc.unfreeze()
    server = SchedulerServer(_plain_config())
    await server.start()
    try:
        assert gc.get_freeze_count() == 0
    finally:
        await server.stop()


def _plain_config():
    return load(
        None,
        overrides={
            "server": {"host": "127.0.0.1", "port": 0},
            "metrics": {"enable": False},
            "security": {"enable": False},
            "scheduler": {"gc": {"pythonGCFreezeInterval": "0s"}},
        },
    )


async def test_a_refused_announce_stream_leaves_no_cycle_of_the_schedulers_objects():
    """A frozen heap holds cyclic garbage until its full collection: refusals, which anyone can cause, make none."""
    server = SchedulerServer(_plain_config())
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    codes = []
    try:
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        for index in range(20):
            call = stub.AnnouncePeer()
            await call.write(
                scheduler_pb2.AnnouncePeerRequest(
                    host_id="10.0.0.9-unknown-host",
                    task_id=f"{index:064x}",
                    peer_id=f"peer-{index}",
                    register_peer_request=scheduler_pb2.RegisterPeerRequest(
                        download=common_pb2.Download(url="http://origin.test/f")
                    ),
                )
            )
            codes.append(await call.code())
            assert "not found" in await call.details()
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        await channel.close()
        await server.stop()
    assert codes == [grpc.StatusCode.NOT_FOUND] * 20
    assert not [o for o in garbage if isinstance(o, PeerStream)]
    assert not [o for o in garbage if isinstance(o, types.FrameType) and "/dragonfly/" in o.f_code.co_filename]


def _piece_request(peer: dict[str, str]) -> scheduler_pb2.AnnouncePeerRequest:
    piece = common_pb2.Piece(
        number=0,
        length=4096,
        digest="crc32:0",
        traffic_type=common_pb2.BACK_TO_SOURCE,
        cost=duration_pb2.Duration(nanos=1_000_000),
        created_at=timestamp_pb2.Timestamp(seconds=1),
    )
    finished = scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(piece=piece)
    return scheduler_pb2.AnnouncePeerRequest(**peer, download_piece_back_to_source_finished_request=finished)


async def test_finished_announce_streams_leave_no_cycle_for_the_full_collection():
    """A stream that outlives a freeze and then ends is freed by reference counting, not by the next full collection.

    Every open stream's objects are frozen, as scheduler.gc.pythonGCFreezeInterval does while downloads run; then the
    streams finish and their peers are deleted. Reading a stream through grpc's request iterator tied grpc's message
    receiver, its async generator, the last request and the call's context into one cycle per stream.
    """
    streams = 30
    server = SchedulerServer(_plain_config())
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    host = common_pb2.Host(id="10.0.0.9-gc", hostname="gc", ip="10.0.0.9", port=4000, download_port=4000)
    download = common_pb2.Download(
        url="http://origin.test/f",
        need_back_to_source=True,
        actual_content_length=4096,
        actual_piece_length=4096,
        actual_piece_count=1,
    )
    try:
        await stub.AnnounceHost(scheduler_pb2.AnnounceHostRequest(host=host), timeout=10)
        calls = []
        for index in range(streams):
            peer = {"host_id": host.id, "task_id": f"{index:064x}", "peer_id": f"10.0.0.9-gc-{index}"}
            call = stub.AnnouncePeer()
            register = scheduler_pb2.RegisterPeerRequest(download=download)
            await call.write(scheduler_pb2.AnnouncePeerRequest(**peer, register_peer_request=register))
            assert (await call.read()).WhichOneof("response") == "need_back_to_source_response"
            calls.append((peer, call))
        gc.collect()
        gc.freeze()
        for peer, call in calls:
            started = scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
            await call.write(
                scheduler_pb2.AnnouncePeerRequest(**peer, download_peer_back_to_source_started_request=started)
            )
            await call.write(_piece_request(peer))
            finished = scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
            await call.write(
                scheduler_pb2.AnnouncePeerRequest(**peer, download_peer_back_to_source_finished_request=finished)
            )
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            await stub.DeletePeer(scheduler_pb2.DeletePeerRequest(**peer), timeout=10)
        del calls, call
        gc.collect()  # garbage born after the freeze (grpc's per-call handler lookup) is not the streams'
        gc.unfreeze()
        held = gc.collect()
    finally:
        gc.unfreeze()
        await channel.close()
        await server.stop()
    # Before the fix: at least one object per stream (30); what remains is unrelated to the streams' number.
    assert held < streams // 3, f"the full collection found {held} objects after {streams} finished streams"


async def test_refused_unary_calls_leave_no_cycle_of_the_calls():
    """Refusals, which anyone can cause, leave no abort, frame or call state for the collector."""
    server = SchedulerServer(_plain_config())
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    refusals = [
        lambda index: stub.StatPeer(scheduler_pb2.StatPeerRequest(host_id="h", task_id="t", peer_id=f"p{index}")),
        lambda index: stub.DeletePeer(scheduler_pb2.DeletePeerRequest(host_id="h", task_id="t", peer_id=f"p{index}")),
        lambda index: stub.StatTask(scheduler_pb2.StatTaskRequest(host_id="h", task_id=f"{index:064x}")),
    ]
    refused = []
    try:
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        for index in range(10):
            for refuse in refusals:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await refuse(index)
                refused.append((info.value.code(), "not found" in (info.value.details() or "")))
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        await channel.close()
        await server.stop()
    assert refused == [(grpc.StatusCode.NOT_FOUND, True)] * 30
    assert not [o for o in garbage if isinstance(o, (grpc.aio.AbortError, types.FrameType))]

"""Undecodable and invalid requests get INVALID_ARGUMENT and no ERROR log, on every call shape (issue 8 item 18,
issue 10).

A real grpc.aio server on 127.0.0.1 with the interceptor, a servicer of the scheduler's API, and a client that sends
raw bytes through a generic channel (the only way to put bytes that are not a message on the wire).
"""

from __future__ import annotations

import gc
import logging
import types
from collections.abc import AsyncIterator

import grpc
import pytest
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import empty_pb2

from dragonfly.common import grpc_decoding

GARBAGE = b"\xff\xff\xff\xff\x0fnot a protobuf message"
VALID_ANNOUNCE = scheduler_pb2.AnnouncePeerRequest(
    host_id="h", task_id="t", peer_id="p", download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest()
)


class Servicer(scheduler_pb2_grpc.SchedulerServicer):
    """Answers well-formed requests, so the test also shows the wrapping leaves them alone."""

    async def DeletePeer(self, request, context):  # unary-unary
        return empty_pb2.Empty()

    async def AnnouncePeer(self, request_iterator, context):  # stream-stream
        async for _request in request_iterator:
            yield scheduler_pb2.AnnouncePeerResponse(empty_task_response=scheduler_pb2.EmptyTaskResponse())


class Upload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    async def SyncPieces(self, request, context):  # unary-stream
        for number in request.interested_piece_numbers:
            yield dfdaemon_pb2.SyncPiecesResponse(number=number)


@pytest.fixture
async def address() -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[grpc_decoding.interceptor()])
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(Servicer(), server)
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(Upload(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_undecodable_unary_request_is_an_invalid_argument(address: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(address) as channel:
        raw = channel.unary_unary("/scheduler.v2.Scheduler/DeletePeer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(GARBAGE, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith("cannot decode DeletePeerRequest: ")
        good = scheduler_pb2.DeletePeerRequest(host_id="h", task_id="t", peer_id="p").SerializeToString()
        assert await raw(good, timeout=10) == b""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "an undecodable request was logged loudly"


async def test_undecodable_message_in_a_stream_ends_it_with_invalid_argument(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream("/scheduler.v2.Scheduler/AnnouncePeer")()
        await call.write(VALID_ANNOUNCE.SerializeToString())
        assert await call.read() != grpc.aio.EOF
        await call.write(GARBAGE)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_undecodable_request_of_a_server_stream_is_an_invalid_argument(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        raw = channel.unary_stream("/dfdaemon.v2.DfdaemonUpload/SyncPieces")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in raw(GARBAGE, timeout=10):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        good = dfdaemon_pb2.SyncPiecesRequest(
            host_id="h", task_id="t", interested_piece_numbers=[3, 5]
        ).SerializeToString()
        replies = [dfdaemon_pb2.SyncPiecesResponse.FromString(r) async for r in raw(good, timeout=10)]
        assert [r.number for r in replies] == [3, 5]


async def test_invalid_request_names_the_field(address: str, caplog: pytest.LogCaptureFixture) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DeletePeer(scheduler_pb2.DeletePeerRequest(host_id="h", task_id="t"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "invalid DeletePeerRequest.peer_id: value length must be at least 1 runes"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_invalid_message_in_a_stream_ends_it(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = scheduler_pb2_grpc.SchedulerStub(channel).AnnouncePeer()
        await call.write(VALID_ANNOUNCE)
        assert await call.read() != grpc.aio.EOF
        bad = scheduler_pb2.AnnouncePeerRequest()
        bad.CopyFrom(VALID_ANNOUNCE)
        bad.register_peer_request.download.url = "relative/url"
        await call.write(bad)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == (
            "invalid AnnouncePeerRequest.register_peer_request.download.url: value must be an absolute URI"
        )


async def test_invalid_request_of_a_server_stream(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.SyncPieces(dfdaemon_pb2.SyncPiecesRequest(host_id="h", task_id="t"), timeout=10):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "SyncPiecesRequest.interested_piece_numbers" in (info.value.details() or "")


async def test_validation_can_be_left_off() -> None:
    server = grpc.aio.server(interceptors=[grpc_decoding.interceptor(validate=False)])
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await scheduler_pb2_grpc.SchedulerStub(channel).DeletePeer(scheduler_pb2.DeletePeerRequest(), timeout=10)
    finally:
        await server.stop(None)


def test_environment_turns_validation_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAGONFLY_REQUEST_VALIDATION", "0")
    assert grpc_decoding.interceptor()._validate is False
    monkeypatch.delenv("DRAGONFLY_REQUEST_VALIDATION")
    assert grpc_decoding.interceptor()._validate is True


async def test_each_method_handler_is_wrapped_once_and_again_when_the_server_replaces_it() -> None:
    interceptor = grpc_decoding.interceptor(validate=True)
    first = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    second = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    handlers = {"/a": first}

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return handlers.get(details.method)

    class Details(grpc.HandlerCallDetails):  # type: ignore[misc]
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    wrapped = await interceptor.intercept_service(continuation, Details("/a"))
    assert wrapped is not first
    assert await interceptor.intercept_service(continuation, Details("/a")) is wrapped
    handlers["/a"] = second
    rewrapped = await interceptor.intercept_service(continuation, Details("/a"))
    assert rewrapped is not wrapped
    assert rewrapped.unary_unary is not wrapped.unary_unary
    assert await interceptor.intercept_service(continuation, Details("/unknown")) is None


class Refusing(scheduler_pb2_grpc.SchedulerServicer):
    """Aborts on every call shape; the stream aborts while handling another exception, as handlers often do."""

    async def StatPeer(self, request, context):  # unary-unary
        await context.abort(grpc.StatusCode.NOT_FOUND, f"peer {request.peer_id} not found")

    async def AnnouncePeer(self, request_iterator, context):  # stream-stream
        async for request in request_iterator:
            try:
                raise KeyError(request.peer_id)
            except KeyError:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"peer {request.peer_id} refused")
            yield scheduler_pb2.AnnouncePeerResponse()


class RefusingUpload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    async def SyncPieces(self, request, context):  # unary-stream
        yield dfdaemon_pb2.SyncPiecesResponse(number=request.interested_piece_numbers[0])
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"task {request.task_id} is gone")


async def test_aborts_keep_their_status_and_leave_no_cycle_behind() -> None:
    """A refusal's status reaches the client; its traceback no longer ties the call's state into a cycle."""
    server = grpc.aio.server(interceptors=[grpc_decoding.interceptor()])
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(Refusing(), server)
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(RefusingUpload(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    seen = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            upload = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            for index in range(10):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.StatPeer(scheduler_pb2.StatPeerRequest(host_id="h", task_id="t", peer_id=f"p{index}"))
                seen.append((info.value.code(), info.value.details()))
                call = stub.AnnouncePeer()
                await call.write(VALID_ANNOUNCE)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.read()
                seen.append((info.value.code(), info.value.details()))
                pieces = upload.SyncPieces(
                    dfdaemon_pb2.SyncPiecesRequest(host_id="h", task_id=f"t{index}", interested_piece_numbers=[7])
                )
                assert (await pieces.read()).number == 7
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pieces.read()
                seen.append((info.value.code(), info.value.details()))
            gc.collect()
            garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        await server.stop(None)
    assert seen[:3] == [
        (grpc.StatusCode.NOT_FOUND, "peer p0 not found"),
        (grpc.StatusCode.FAILED_PRECONDITION, "peer p refused"),
        (grpc.StatusCode.UNAVAILABLE, "task t0 is gone"),
    ]
    assert len(seen) == 30
    assert not [o for o in garbage if isinstance(o, grpc.aio.AbortError)]
    assert not [o for o in garbage if isinstance(o, types.FrameType) and o.f_code.co_filename == __file__]

"""Undecodable and invalid requests get INVALID_ARGUMENT, quietly (docs/robustness.md#undecodable-requests).

grpcio decodes a request before the servicer runs; when the bytes are not a valid message it logs an ERROR with a
traceback and answers UNKNOWN. Anyone who can reach a port could so fill the logs, and the caller learns nothing
useful. This server interceptor wraps each method's deserializer so that a decode failure becomes a marker the
wrapped method answers with ``INVALID_ARGUMENT`` ("cannot decode <Message>: ..."), logged at debug level.
A request that decodes is then checked against the protoc-gen-validate rules of Dragonfly's protos
(``validation``), as Dragonfly's own services do, and a violation is answered the same way
("invalid <Message>.<field path>: <reason>"; docs/interop.md#request-validation). On a stream, the first bad
message ends the call. It must be the first interceptor, so that no other one sees the marker.

Since it wraps every handler, it also keeps finished calls out of reference cycles (``_checked``, ``_release``): a
scheduler's frozen heap would hold those until its next full collection (docs/reference/scheduler.md).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from dragonfly.common import validation

log = logging.getLogger(__name__)


class _Undecodable:
    """What a request that could not be decoded becomes."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None, validate: bool) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    # A generated handler's deserializer is the message class's FromString.
    message_class = getattr(deserializer, "__self__", None)
    message = getattr(message_class, "__name__", "request")
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    check = validation.checker(descriptor) if validate and descriptor is not None else None

    def deserialize(data: bytes) -> Any:
        try:
            request = deserializer(data)
        except Exception as exc:  # protobuf raises DecodeError, other codecs their own
            return _Undecodable(f"cannot decode {message}: {exc}")
        if check is not None:
            violation = check(request)
            if violation is not None:
                return _Undecodable(violation)
        return request

    return deserialize


async def _refuse(method: str, request: _Undecodable, context: grpc.aio.ServicerContext) -> None:
    log.debug("request refused", extra={"method": method, "error": request.error})
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)


async def _checked(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    # Reads through the context, never through grpc's request iterator: iterating that makes a cycle between
    # grpc's message receiver and its async generator, which holds the last request and the call's context until
    # the collector runs; on a stream that outlived a freeze (scheduler.gc.pythonGCFreezeInterval) that is the next
    # full collection. Read this way, a finished stream is freed by reference counting.
    while True:
        request = await context.read()
        if request is grpc.aio.EOF:
            return
        if isinstance(request, _Undecodable):
            await _refuse(method, request, context)
        yield request


async def _drain(result: Any) -> AsyncIterator[Any]:
    """Yield what a streaming behavior produces, whether it is an async generator or writes through its context."""
    if inspect.isasyncgen(result):
        async for response in result:
            yield response
    elif inspect.isawaitable(result):
        await result


def _release(abort: Exception) -> None:
    """Cut an abort from the frames it was raised through, so that the finished call is freed by reference counting.

    grpc keeps the AbortError on the call's state and raises it again when the handler returns, which ends the
    call with the abort's status and details whether or not the handler let it through. Its traceback holds the
    handler's frames, whose locals hold the context and so the call's state: a cycle per refused call (~16
    objects with the request and the call) that waits for the collector, and on a scheduler whose heap is frozen
    (scheduler.gc.pythonGCFreezeInterval) possibly for the next full collection. An abort raised while handling
    another exception carries that one's frames too.
    """
    abort.__traceback__ = None
    abort.__context__ = None
    abort.__cause__ = None


def _wrap(method: str, handler: grpc.RpcMethodHandler, validate: bool) -> grpc.RpcMethodHandler:
    fields: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer, validate)}
    if handler.unary_unary is not None:
        inner_uu: Callable[..., Awaitable[Any]] = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, _Undecodable):
                    await _refuse(method, request, context)
                return await inner_uu(request, context)
            except grpc.aio.AbortError as abort:
                _release(abort)
                return None

        fields["unary_unary"] = unary_unary
    elif handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                if isinstance(request, _Undecodable):
                    await _refuse(method, request, context)
                async for response in _drain(inner_us(request, context)):
                    yield response
            except grpc.aio.AbortError as abort:
                _release(abort)

        fields["unary_stream"] = unary_stream
    elif handler.stream_unary is not None:
        inner_su: Callable[..., Awaitable[Any]] = handler.stream_unary

        async def stream_unary(_requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner_su(_checked(method, context), context)
            except grpc.aio.AbortError as abort:
                _release(abort)
                return None

        fields["stream_unary"] = stream_unary
    elif handler.stream_stream is not None:
        inner_ss = handler.stream_stream

        async def stream_stream(_requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in _drain(inner_ss(_checked(method, context), context)):
                    yield response
            except grpc.aio.AbortError as abort:
                _release(abort)

        fields["stream_stream"] = stream_stream
    replaced: grpc.RpcMethodHandler = handler._replace(**fields)
    return replaced


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no stubs here
    """See the module docstring."""

    def __init__(self, validate: bool = True) -> None:
        self._validate = validate
        # Wrapped handlers by method, with the handler each wraps: servers return the same handler object for a
        # method on every call, so each is wrapped once rather than per call (a scheduler takes one AnnouncePeer
        # call per download). Only methods the server knows get here, so this stays as small as its services.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(method, handler, self._validate)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def interceptor(validate: bool | None = None) -> DecodeErrorInterceptor:
    """Return the interceptor to put first in ``grpc.aio.server(interceptors=[...])``.

    ``validate``: check decoded requests against Dragonfly's validation rules too; by default yes, unless the
    environment sets ``DRAGONFLY_REQUEST_VALIDATION=0`` (for tests that need values outside Dragonfly's ranges,
    such as a persistent cache TTL of seconds).
    """
    if validate is None:
        validate = os.environ.get("DRAGONFLY_REQUEST_VALIDATION", "1") != "0"
    return DecodeErrorInterceptor(validate)

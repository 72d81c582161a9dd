"""Undecodable and invalid requests get INVALID_ARGUMENT, quietly (docs/robustness.md#undecodable-requests).

grpcio decodes a request before the servicer runs; when the bytes are not a valid message it logs an ERROR with a
traceback and answers UNKNOWN. Anyone who can reach a port could so fill the logs, and the caller learns nothing
useful. This server interceptor wraps each method's deserializer so that a decode failure becomes a marker the
wrapped method answers with ``INVALID_ARGUMENT`` ("cannot decode <Message>: ..."), logged at debug level.
A request that decodes is then checked against the protoc-gen-validate rules of Dragonfly's protos
(``validation``), as Dragonfly's own services do, and a violation is answered the same way
("invalid <Message>.<field path>: <reason>"; docs/interop.md#request-validation). On a stream, the first bad
message ends the call. It must be the first interceptor, so that no other one sees the marker.
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
    if validate and descriptor is not None and validation.has_rules(descriptor):
        check: Callable[[Any], str | None] | None = validation.check
    else:
        check = None

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


async def _checked(method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
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


def _wrap(method: str, handler: grpc.RpcMethodHandler, validate: bool) -> grpc.RpcMethodHandler:
    fields: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer, validate)}
    if handler.unary_unary is not None:
        inner_uu: Callable[..., Awaitable[Any]] = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await _refuse(method, request, context)
            return await inner_uu(request, context)

        fields["unary_unary"] = unary_unary
    elif handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await _refuse(method, request, context)
            async for response in _drain(inner_us(request, context)):
                yield response

        fields["unary_stream"] = unary_stream
    elif handler.stream_unary is not None:
        inner_su: Callable[..., Awaitable[Any]] = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await inner_su(_checked(method, requests, context), context)

        fields["stream_unary"] = stream_unary
    elif handler.stream_stream is not None:
        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in _drain(inner_ss(_checked(method, requests, context), context)):
                yield response

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

"""Answer a proxied GET from the swarm: the task manager downloads, the response streams pieces in order.

The download runs in-process (no gRPC hop). The status line and headers go out when the first piece the answer
needs is stored, so a failure before that still gets a proper error status; after that, pieces are sent strictly in
order as they arrive (one that arrives early waits for its predecessors), read back from the content file in
``readBufferSize`` chunks. Headers are the origin's, as stored when the task started, rewritten for a full answer
(or a 206 with ``Content-Range`` for a ranged request), plus ``X-Dragonfly-Task-ID`` and ``X-Dragonfly-Peer-ID``.
A failure after the headers aborts the connection: the client sees a short body, never a complete-looking one.

With ``proxy.originHead`` (a whole-content request that starts the task's download here, or joins it before piece 0;
not while the swarm can serve piece 0 soon: download/origin_head_gate.py), the stat of the origin reads the
content's first bytes too, and the answer starts as soon as the stat's headers are in, with those bytes as they
arrive, as a direct pull would, instead of waiting for piece 0 to cross the swarm (nor for the content file). They
are as trusted as a direct pull's; the rest of the body comes from verified pieces, and when piece 0 arrives its
first bytes must equal what was sent, else the connection is aborted (an origin that answers differently than the
swarm holds is caught, the body never completes).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

from aiohttp import web
from dragonfly_api import common_pb2

from dragonfly.common.byte_range import ByteRange, find_range_header
from dragonfly.common.netguard import find_refusal
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.download.task_download import HeadStarted, PieceDone, TaskStarted
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.errors import BackendError
from dragonfly.daemon.proxy.errors import download_error_response, error_response
from dragonfly.daemon.proxy.routing import HOP_BY_HOP
from dragonfly.daemon.storage import Storage

log = logging.getLogger(__name__)

# Stored origin headers that describe the stat answer (a 1-byte range), not the body this answer carries.
_STAT_HEADERS = HOP_BY_HOP | {"content-length", "content-range", "date"}


_Event = HeadStarted | TaskStarted | PieceDone


def _add_headers(response: web.StreamResponse, origin: dict[str, str], task_id: str, peer_id: str) -> None:
    for key, value in origin.items():
        if key.lower() not in _STAT_HEADERS:
            response.headers.add(key, value)
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["X-Dragonfly-Task-ID"] = task_id
    response.headers["X-Dragonfly-Peer-ID"] = peer_id


def _abort(
    request: web.BaseRequest, response: web.StreamResponse, task_id: str, sent_pieces: int, exc: Exception
) -> web.StreamResponse:
    """End an answer whose headers went out: the connection is aborted, so the body never looks complete."""
    log.warning("proxy stream aborted", extra={"task_id": task_id, "sent_pieces": sent_pieces, "error": repr(exc)})
    if request.transport is not None:
        request.transport.abort()
    return response


class HeadMismatch(ConnectionError):
    """The first bytes the origin sent differ from verified piece 0: the answer is aborted."""


class P2PResponder:
    """Streams task content to proxy clients."""

    def __init__(
        self,
        tasks: TaskManager,
        storage: Storage,
        executor: Executor,
        *,
        read_buffer_size: int,
        spawn: Callable[[AsyncIterator[object]], None],
        origin_head: int = 0,
    ) -> None:
        self._tasks = tasks
        self._origin_head = origin_head
        self._storage = storage
        self._executor = executor
        self._read_buffer_size = read_buffer_size
        self._spawn = spawn

    async def respond(
        self, request: web.BaseRequest, download: common_pb2.Download, *, prefetch: bool, remote: bool = False
    ) -> web.StreamResponse | BackendError:
        """Download ``download`` through the swarm and stream it as the answer to ``request``.

        An origin that refused the request with a 4xx status is returned as the error itself: the caller passes
        the origin's own answer to the client untouched (a registry's 401 challenge with its JSON body).
        """
        # ``remote``: the client is on another host, so the origin is reached through the SSRF guard.
        # A ranged request streams from its own start: the content's head is no use to it. A download that must not
        # fetch from the origin (proxy.disableBackToSource) sends none of the origin's bytes either.
        ranged = find_range_header(download.request_header) is not None
        head = 0 if ranged or download.disable_back_to_source else self._origin_head
        downloading = self._tasks.download(download, remote=remote, in_order=True, origin_head=head)
        async with contextlib.aclosing(downloading) as events:
            try:
                started = await anext(events)
            except StopAsyncIteration:
                return error_response(502, "dfdaemon", f"the download of {download.url} ended before it started")
            except BackendError as exc:
                if find_refusal(exc) is not None:
                    return error_response(403, "dfdaemon", str(exc))
                if exc.status_code is not None and 400 <= exc.status_code < 500:
                    return exc
                return download_error_response(exc)
            except Exception as exc:
                return download_error_response(exc)
            if isinstance(started, HeadStarted):
                return await self._stream_from_head(request, started, events)
            assert isinstance(started, TaskStarted)
            if prefetch and started.range is not None:
                self._prefetch(download, remote=remote)
            return await self._stream(request, started, events)

    def _prefetch(self, download: common_pb2.Download, *, remote: bool) -> None:
        """Fetch the whole object in the background after a ranged request (``proxy.prefetch``)."""
        whole = common_pb2.Download()
        whole.CopyFrom(download)
        whole.ClearField("range")
        for key in [k for k in whole.request_header if k.lower() == "range"]:
            del whole.request_header[key]
        self._spawn(self._tasks.download(whole, remote=remote))

    async def _stream_from_head(
        self, request: web.BaseRequest, started: HeadStarted, events: AsyncIterator[_Event]
    ) -> web.StreamResponse:
        """Answer with the origin's head as it arrives, then go on with the pieces (``_stream``)."""
        response = web.StreamResponse(status=200)
        _add_headers(response, started.response_header, started.task_id, started.peer_id)
        response.content_length = started.content_length
        try:
            await response.prepare(request)
            async for chunk in started.head.chunks():
                await response.write(chunk)
            try:
                task = await anext(events)
            except StopAsyncIteration:
                raise ConnectionError(f"the download of task {started.task_id} ended before it started") from None
            if not isinstance(task, TaskStarted) or task.content_length != started.content_length:
                raise ConnectionError(f"task {started.task_id} started unlike its stat")
        except Exception as exc:
            return _abort(request, response, started.task_id, 0, exc)
        return await self._stream(request, task, events, response=response, head=started.head.data)

    async def _stream(
        self,
        request: web.BaseRequest,
        started: TaskStarted,
        events: AsyncIterator[_Event],
        *,
        response: web.StreamResponse | None = None,
        head: bytes = b"",
    ) -> web.StreamResponse:
        """Stream the pieces in order; ``response`` was prepared already when the origin's ``head`` was sent."""
        byte_range = started.range
        wanted = byte_range or ByteRange(0, started.content_length)
        order = list(wanted.pieces(started.piece_length)) if wanted.length else []
        stored: set[int] = set()
        if response is None:
            response = web.StreamResponse(status=206 if byte_range is not None else 200)
            _add_headers(response, started.response_header, started.task_id, started.peer_id)
            if byte_range is not None:
                response.headers["Content-Range"] = byte_range.content_range(started.content_length)
            response.content_length = wanted.length
        # What is left to send once the head is out: piece 0 checked against it, then from its end.
        rest = ByteRange(len(head), wanted.length - len(head)) if head else wanted

        sent = 0
        try:
            while sent < len(order) or not response.prepared:
                if sent < len(order) and order[sent] in stored:
                    if not response.prepared:
                        await response.prepare(request)
                    if head and order[sent] == 0:
                        await self._check_head(started, head)
                    await self._send_piece(response, started, order[sent], rest)
                    sent += 1
                    continue
                if not order:
                    break
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    raise ConnectionError(
                        f"the download of task {started.task_id} ended without piece {order[sent]}"
                    ) from None
                if isinstance(event, PieceDone):
                    stored.add(event.piece.number)
            if not response.prepared:
                await response.prepare(request)
            # Drain the rest of the events: the download's end (and any late failure) is the requester's too.
            async for _event in events:
                pass
        except Exception as exc:
            if not response.prepared:
                return download_error_response(exc)
            return _abort(request, response, started.task_id, sent, exc)
        await response.write_eof()
        return response

    async def _check_head(self, started: TaskStarted, head: bytes) -> None:
        """Raise HeadMismatch unless verified piece 0 starts with the origin's bytes already sent."""
        with self._storage.content_fd(started.task_id) as fd:
            stored = await run_blocking(self._executor, os.pread, fd, len(head), 0)
        if stored != head:
            raise HeadMismatch(
                f"the origin's first {len(head)} bytes of task {started.task_id} differ from the swarm's piece 0"
            )

    async def _send_piece(
        self, response: web.StreamResponse, started: TaskStarted, number: int, wanted: ByteRange
    ) -> None:
        offset = max(number * started.piece_length, wanted.start)
        end = min((number + 1) * started.piece_length, wanted.end)
        with self._storage.content_fd(started.task_id) as fd:
            while offset < end:
                size = min(self._read_buffer_size, end - offset)
                chunk = await run_blocking(self._executor, os.pread, fd, size, offset)
                if len(chunk) != size:
                    raise OSError(f"content file of task {started.task_id} is shorter than its piece {number}")
                await response.write(chunk)
                offset += size

"""The scheduler from the daemon's side (``docs/reference/protocol.md#scheduler-protocol``): host announcements and
AnnouncePeer streams.

Host-level calls (AnnounceHost, DeleteHost) go to every scheduler; per-task calls go to the task's owner, picked
by consistent hashing of the task id. A scheduler that cannot be reached is retried soon rather than at the
full announce interval, so a daemon started before its scheduler joins the swarm within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from dragonfly_api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import duration_pb2

from dragonfly.common import tls
from dragonfly.common.hashring import HashRing

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
REQUEST_TIMEOUT = 10.0
# How soon an announcement that failed is tried again (capped by the configured interval).
_RETRY_INTERVAL = 2.0


def _is_refusal(exc: grpc.aio.AioRpcError) -> bool:
    # Refusals are configuration problems (a certificate that does not own the host id): always worth a warning.
    return exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


class AnnouncePeerStream:
    """One AnnouncePeer bidi stream: requests carry the envelope ids and are written in order by one writer task.

    Piece reports are queued without waiting, so a piece's download slot is free as soon as its bytes are stored;
    control messages (``send``) wait until they are written, and stay behind the reports queued before them.
    """

    def __init__(self, call: grpc.aio.StreamStreamCall, *, host_id: str, task_id: str, peer_id: str) -> None:
        self._call = call
        self.host_id = host_id
        self.task_id = task_id
        self.peer_id = peer_id
        self._queue: asyncio.Queue[tuple[scheduler_pb2.AnnouncePeerRequest, asyncio.Future[None] | None] | None] = (
            asyncio.Queue()
        )
        self._error: BaseException | None = None
        self._writer = asyncio.create_task(self._write_loop(), name=f"announce-peer-{task_id[:12]}")
        self.closed = False

    def _message(self, request: dict[str, object]) -> scheduler_pb2.AnnouncePeerRequest:
        return scheduler_pb2.AnnouncePeerRequest(
            host_id=self.host_id,
            task_id=self.task_id,
            peer_id=self.peer_id,
            **request,  # type: ignore[arg-type]
        )

    def request(self) -> scheduler_pb2.AnnouncePeerRequest:
        """Return a request with this stream's ids and nothing else: the caller fills its one request field in
        place (``report_request``), which spares the copy a constructor makes of a message passed to it."""
        return scheduler_pb2.AnnouncePeerRequest(host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id)

    async def _write_loop(self) -> None:
        while (item := await self._queue.get()) is not None:
            message, done = item
            if self._error is None:
                try:
                    # A timeout scope, not wait_for: wait_for wraps each write in a task of its own.
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        await self._call.write(message)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError, RuntimeError) as exc:
                    self._error = exc
                    log.debug("announce peer write failed", extra={"task_id": self.task_id, "error": repr(exc)})
            if done is not None and not done.done():
                if self._error is None:
                    done.set_result(None)
                else:
                    done.set_exception(self._broken())

    def _broken(self) -> ConnectionError:
        error = self._error
        if isinstance(error, grpc.aio.AioRpcError):
            return ConnectionError(f"scheduler stream failed: {error.code().name}: {error.details()}")
        return ConnectionError(f"scheduler stream failed: {error or 'closed'}")

    async def send(self, **request: object) -> None:
        """Send one request (``register_peer_request=...`` etc.) and wait until it is written."""
        if self.closed or self._error is not None:
            raise self._broken()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((self._message(request), done))
        await done

    def report(self, **request: object) -> None:
        """Queue a best-effort progress report; a broken stream is noticed by ``send`` or the response reader."""
        if not self.closed and self._error is None:
            self._queue.put_nowait((self._message(request), None))

    def report_request(self, request: scheduler_pb2.AnnouncePeerRequest) -> None:
        """Queue a best-effort progress report built from ``request()``, like ``report``."""
        if not self.closed and self._error is None:
            self._queue.put_nowait((request, None))

    async def recv(self, max_wait: float) -> scheduler_pb2.AnnouncePeerResponse | None:
        """Return the next response, or None when the scheduler closed the stream."""
        async with asyncio.timeout(max_wait):
            response = await self._call.read()
        if response is grpc.aio.EOF:
            return None
        assert isinstance(response, scheduler_pb2.AnnouncePeerResponse)
        return response

    async def close(self) -> None:
        """Write what is queued, half-close, give the scheduler a moment to read it all, then cancel."""
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError, RuntimeError):
            await asyncio.wait_for(asyncio.shield(self._writer), REQUEST_TIMEOUT)
            if self._error is None:
                await asyncio.wait_for(self._call.done_writing(), REQUEST_TIMEOUT)
                await asyncio.wait_for(self._drain(), 2.0)
        self._writer.cancel()
        self._call.cancel()

    async def _drain(self) -> None:
        while await self._call.read() is not grpc.aio.EOF:
            pass


class SchedulerClient:
    """Channels to the configured schedulers."""

    def __init__(
        self,
        addrs: list[str],
        *,
        host: Callable[[], common_pb2.Host],
        announce_interval: float,
        tls_files: tls.TLSFiles | None = None,
    ) -> None:
        if not addrs:
            raise ValueError("no scheduler address configured")
        self.addrs = list(addrs)
        self._host = host
        self._interval = announce_interval
        self._ring = HashRing(self.addrs)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, scheduler_pb2_grpc.SchedulerStub] = {}
        self._announced: set[str] = set()
        self._tls = tls_files

    def set_addrs(self, addrs: list[str]) -> None:
        """Use another scheduler list (the manager's answer changed); tasks hash onto the new ring from now on."""
        if not addrs:
            return
        self.addrs = list(addrs)
        self._ring = HashRing(self.addrs)
        self._announced.intersection_update(self.addrs)

    def _stub(self, addr: str) -> scheduler_pb2_grpc.SchedulerStub:
        stub = self._stubs.get(addr)
        if stub is None:
            channel = tls.aio_channel(
                addr,
                self._tls,
                options=[
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                    ("grpc.keepalive_time_ms", 300_000),
                ],
            )
            self._channels[addr] = channel
            stub = self._stubs[addr] = scheduler_pb2_grpc.SchedulerStub(channel)  # type: ignore[no-untyped-call]
        return stub

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()

    def task_stub(self, task_id: str) -> scheduler_pb2_grpc.SchedulerStub:
        """Return the stub of the scheduler that owns ``task_id``."""
        return self._stub(self.owner(task_id))

    def owner(self, task_id: str) -> str:
        """Return the scheduler that owns ``task_id``."""
        return self.addrs[0] if len(self.addrs) == 1 else self._ring.owner(task_id)

    async def announce_host(self, addr: str) -> bool:
        """Announce this host to one scheduler; return whether it accepted."""
        request = scheduler_pb2.AnnounceHostRequest(
            host=self._host(), interval=duration_pb2.Duration(seconds=int(self._interval))
        )
        try:
            await self._stub(addr).AnnounceHost(request, timeout=REQUEST_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if addr in self._announced or log.isEnabledFor(logging.DEBUG) or _is_refusal(exc):
                log.warning(
                    "announce host failed",
                    extra={"scheduler": addr, "code": exc.code().name, "error": exc.details()},
                )
            self._announced.discard(addr)
            return False
        if addr not in self._announced:
            log.info("host announced", extra={"scheduler": addr})
        self._announced.add(addr)
        return True

    async def announce_host_to_all(self) -> bool:
        results = await asyncio.gather(*(self.announce_host(addr) for addr in self.addrs))
        return all(results)

    def forget(self, addr: str) -> None:
        """Announce to ``addr`` again before its next task: it failed, and may have restarted without us."""
        self._announced.discard(addr)

    async def ensure_announced(self, addr: str) -> bool:
        """Announce to ``addr`` now unless it already knows this host (bounded by the connect timeout)."""
        if addr in self._announced:
            return True
        try:
            return await asyncio.wait_for(self.announce_host(addr), CONNECT_TIMEOUT)
        except TimeoutError:
            return False

    async def run_announcer(self) -> None:
        """Announce to every scheduler at the configured interval, retrying failed ones sooner."""
        while True:
            ok = await self.announce_host_to_all()
            await asyncio.sleep(self._interval if ok else min(self._interval, _RETRY_INTERVAL))

    async def delete_host(self, host_id: str) -> None:
        """Tell every scheduler this host is leaving (best effort, bounded)."""

        async def one(addr: str) -> None:
            try:
                await self._stub(addr).DeleteHost(
                    scheduler_pb2.DeleteHostRequest(host_id=host_id), timeout=CONNECT_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                log.info("delete host failed", extra={"scheduler": addr, "code": exc.code().name})

        await asyncio.gather(*(one(addr) for addr in self.addrs))

    async def delete_task(self, host_id: str, task_id: str) -> None:
        await self._stub(self.owner(task_id)).DeleteTask(
            scheduler_pb2.DeleteTaskRequest(host_id=host_id, task_id=task_id), timeout=REQUEST_TIMEOUT
        )

    async def stat_task(self, host_id: str, task_id: str, *, max_wait: float = REQUEST_TIMEOUT) -> common_pb2.Task:
        """Return what the owning scheduler knows of ``task_id`` (StatTask), within ``max_wait`` seconds."""
        task: common_pb2.Task = await self._stub(self.owner(task_id)).StatTask(
            scheduler_pb2.StatTaskRequest(host_id=host_id, task_id=task_id), timeout=max_wait
        )
        return task

    async def trusted_pieces(self, host_id: str, task_id: str) -> list[common_pb2.Piece]:
        """Return the pieces of ``task_id`` whose digests the owning scheduler trusts (StatTask, docs/security.md)."""
        task = await self._stub(self.owner(task_id)).StatTask(
            scheduler_pb2.StatTaskRequest(host_id=host_id, task_id=task_id), timeout=REQUEST_TIMEOUT
        )
        return list(task.pieces)

    def announce_peer(self, addr: str, *, host_id: str, task_id: str, peer_id: str) -> AnnouncePeerStream:
        """Open an AnnouncePeer stream to ``addr``; the first message must be the RegisterPeerRequest."""
        call = self._stub(addr).AnnouncePeer()
        return AnnouncePeerStream(call, host_id=host_id, task_id=task_id, peer_id=peer_id)


def describe_error(exc: BaseException) -> str:
    """Return ``exc`` in words for a log line or a report to the scheduler (a gRPC error by its code)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__

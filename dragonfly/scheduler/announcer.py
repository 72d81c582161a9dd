"""The scheduler's side of the manager (``docs/manager.md#grpc-managerv2``): register, keep alive, dynamic config.

With ``manager.addr`` set the scheduler registers (UpdateScheduler), holds a KeepAlive stream (a message every
``manager.keepAlive.interval``; on any failure it registers again after a back-off), and every
``dynConfig.refreshInterval`` fetches its cluster (GetScheduler) and the applications (ListApplications). The
cluster's parent limits and load limits replace the scheduler.yaml values; when the manager cannot be reached the
last good values stay. Without a manager nothing here runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from dragonfly_api import manager_pb2, manager_pb2_grpc

from dragonfly.common import tls
from dragonfly.common.patterns import Pattern, compile_pattern

if TYPE_CHECKING:
    from dragonfly.scheduler.server import SchedulerContext

log = logging.getLogger(__name__)

_CALL_TIMEOUT = 10.0
_MAX_BACKOFF = 30.0


def local_ip_towards(addr: str) -> str:
    """Return the local IP the kernel would use to reach ``addr`` (``host:port``); 127.0.0.1 if unknown."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, int(port or 65003)))
            ip: str = sock.getsockname()[0]
            return ip
    except (OSError, ValueError):
        return "127.0.0.1"


@dataclasses.dataclass(frozen=True, slots=True)
class ApplicationPriority:
    """An application's priority from the manager: URL regexes first, then the default value."""

    name: str
    value: int
    urls: tuple[tuple[Pattern, int], ...]

    def priority_for(self, url: str) -> int:
        """Return the priority level for a download of ``url``."""
        for pattern, value in self.urls:
            if pattern.search(url):
                return value
        return self.value


class ManagerAnnouncer:
    """Register with the manager, keep alive, refresh the dynamic config."""

    def __init__(self, ctx: SchedulerContext, *, ip: str, port: int, hostname: str | None = None) -> None:
        self.ctx = ctx
        config = ctx.config
        self.addr = config.manager.addr
        self.cluster_id = config.manager.scheduler_cluster_id
        self.ip = ip
        self.port = port
        self.hostname = hostname or socket.gethostname()
        self.base = config.scheduler
        self._channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.registered = asyncio.Event()
        self.refreshed = asyncio.Event()

    def start(self, features: list[str]) -> None:
        """Start the keep-alive and refresh loops (they retry on their own)."""
        self._channel = tls.aio_channel(self.addr, self.ctx.config.tls().manager)
        self._stub = manager_pb2_grpc.ManagerStub(self._channel)  # type: ignore[no-untyped-call]
        self._features = features
        self._tasks = [
            asyncio.create_task(self._keep_alive_loop(), name="manager-keep-alive"),
            asyncio.create_task(self._refresh_loop(), name="manager-dynconfig"),
        ]

    async def stop(self) -> None:
        """Stop the loops and close the channel (the manager marks this scheduler inactive when the stream ends)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def register(self) -> manager_pb2.Scheduler:
        """Call UpdateScheduler once."""
        interval_ns = int(self.ctx.config.manager.keep_alive.interval * 1e9)
        request = manager_pb2.UpdateSchedulerRequest(
            source_type=manager_pb2.SCHEDULER_SOURCE,
            hostname=self.hostname,
            scheduler_cluster_id=self.cluster_id,
            idc=self.ctx.config.host.idc,
            location=self.ctx.config.host.location,
            ip=self.ip,
            port=self.port,
            features=self._features,
            config=json.dumps({"manager_keep_alive_interval": interval_ns}).encode(),
        )
        result: manager_pb2.Scheduler = await self._stub.UpdateScheduler(request, timeout=_CALL_TIMEOUT)
        return result

    async def _keep_alive_loop(self) -> None:
        backoff = 0.5
        interval = float(self.ctx.config.manager.keep_alive.interval)
        while True:
            try:
                scheduler = await self.register()
                log.info(
                    "registered with the manager",
                    extra={"manager": self.addr, "cluster": self.cluster_id, "scheduler_id": scheduler.id},
                )
                self.apply(scheduler)

                async def beats() -> AsyncIterator[manager_pb2.KeepAliveRequest]:
                    message = manager_pb2.KeepAliveRequest(
                        source_type=manager_pb2.SCHEDULER_SOURCE,
                        hostname=self.hostname,
                        cluster_id=self.cluster_id,
                        ip=self.ip,
                    )
                    while True:
                        yield message
                        self.registered.set()
                        await asyncio.sleep(interval)

                backoff = 0.5
                await self._stub.KeepAlive(beats())
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.registered.clear()
                log.warning(
                    "manager unreachable; keeping the last config",
                    extra={"manager": self.addr, "code": exc.code().name, "error": exc.details()},
                )
            except Exception:
                self.registered.clear()
                log.exception("keep-alive with the manager failed")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _refresh_loop(self) -> None:
        interval = float(self.ctx.config.dyn_config.refresh_interval)
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    async def refresh(self) -> bool:
        """Fetch the cluster and the applications; return whether both came (else the last ones stay)."""
        try:
            scheduler = await self._stub.GetScheduler(
                manager_pb2.GetSchedulerRequest(
                    source_type=manager_pb2.SCHEDULER_SOURCE,
                    hostname=self.hostname,
                    scheduler_cluster_id=self.cluster_id,
                    ip=self.ip,
                ),
                timeout=_CALL_TIMEOUT,
            )
            self.apply(scheduler)
            try:
                apps = await self._stub.ListApplications(
                    manager_pb2.ListApplicationsRequest(
                        source_type=manager_pb2.SCHEDULER_SOURCE, hostname=self.hostname, ip=self.ip
                    ),
                    timeout=_CALL_TIMEOUT,
                )
                self.apply_applications(list(apps.applications))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                self.apply_applications([])
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "dynamic config refresh failed; keeping the last one",
                extra={"manager": self.addr, "code": exc.code().name, "error": exc.details()},
            )
            return False
        self.refreshed.set()
        return True

    def apply(self, scheduler: manager_pb2.Scheduler) -> None:
        """Use the cluster's parent and load limits (each only when present and in range)."""
        cluster = scheduler.scheduler_cluster
        config = _object(cluster.config)
        client = _object(cluster.client_config)
        changes: dict[str, int] = {}
        for key, field, low, high in (
            ("candidate_parent_limit", "candidate_parent_limit", 1, 20),
            ("filter_parent_limit", "filter_parent_limit", 10, 1000),
        ):
            value = _int_in(config.get(key), low, high)
            if value is not None:
                changes[field] = value
        value = _int_in(client.get("load_limit"), 1, 2000)
        if value is not None:
            changes["peer_concurrent_upload_limit"] = value
        for seed in scheduler.seed_peers:
            value = _int_in(_object(seed.seed_peer_cluster.config).get("load_limit"), 1, 50_000)
            if value is not None:
                changes["seed_peer_concurrent_upload_limit"] = value
                break
        current = self.ctx.config.scheduler
        new = dataclasses.replace(self.base, **changes)  # type: ignore[arg-type]
        if new == current:
            return
        self.ctx.config = dataclasses.replace(self.ctx.config, scheduler=new)
        self.ctx.scheduling.config = new
        self.ctx.resource.config = new
        log.info("dynamic config applied", extra={"cluster": cluster.id, **changes})

    def apply_applications(self, applications: list[manager_pb2.Application]) -> None:
        """Keep the applications' priorities for peers that do not ask for one."""
        out = []
        for app in applications:
            urls = []
            for entry in app.priority.urls:
                try:
                    urls.append((compile_pattern(entry.regex), int(entry.value)))
                except ValueError:
                    log.warning("application %s: bad URL regex ignored", app.name[:64])
            out.append(ApplicationPriority(app.name, int(app.priority.value), tuple(urls)))
        self.ctx.applications = {app.name: app for app in out}


def _object(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _int_in(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value

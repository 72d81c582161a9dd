"""Process wiring: the resource model, scheduling, seed peers, GC, metrics and the grpc.aio server."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dragonfly.common import grpc_decoding, tls
from dragonfly.common.authz import Authorizer
from dragonfly.common.http_server import start_http_server
from dragonfly.scheduler.config import Config
from dragonfly.scheduler.gc import GarbageCollector
from dragonfly.scheduler.metrics import Metrics
from dragonfly.scheduler.preheat.service import PreheatService
from dragonfly.scheduler.pygc import FreezingCollector
from dragonfly.scheduler.resource.manager import ResourceManager
from dragonfly.scheduler.scheduling.abnormal import AbnormalDetector
from dragonfly.scheduler.scheduling.scheduling import Scheduling
from dragonfly.scheduler.seed import SeedPeers
from dragonfly.scheduler.service import swarm
from dragonfly.scheduler.service.persistent_cache import PersistentCacheService
from dragonfly.scheduler.service.servicer import SchedulerServicer

if TYPE_CHECKING:
    from dragonfly.scheduler.announcer import ApplicationPriority, ManagerAnnouncer

log = logging.getLogger(__name__)

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
# The largest request is a RegisterPeerRequest (URL up to 64 KiB plus headers) or an AnnounceHost; 4 MiB bounds
# what one caller can make the scheduler buffer. Answers (ListHosts of a large cluster) may be bigger: no send limit.
_MAX_RECEIVE_LENGTH = 4 * 1024 * 1024
_MAX_PENDING_CALLS = 100_000


def format_address(host: str, port: int) -> str:
    """Return ``host:port``, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class SchedulerContext:
    """Everything a request handler needs."""

    config: Config
    resource: ResourceManager
    metrics: Metrics
    scheduling: Scheduling
    abnormal: AbnormalDetector
    seeds: SeedPeers
    authz: Authorizer
    # Bytes by source over the last day, for the console's overview (dragonfly.common.swarm).
    traffic: swarm.TrafficHistory = field(default_factory=swarm.TrafficHistory)
    # Application name -> priority, from the manager (empty when stand-alone).
    applications: dict[str, ApplicationPriority] = field(default_factory=dict)

    @classmethod
    def create(cls, config: Config) -> SchedulerContext:
        """Build the object graph of one scheduler."""
        resource = ResourceManager(config.scheduler)
        metrics = Metrics(resource)
        files = config.tls()
        seeds = SeedPeers(config.seed_peer, metrics, tls_files=files.seed_peer)
        resource.on_seed_hosts_changed = seeds.set_hosts
        return cls(
            config=config,
            resource=resource,
            metrics=metrics,
            scheduling=Scheduling(config.scheduler, config.block_list.upload, metrics),
            abnormal=AbnormalDetector(config.scheduler.bad_parent, metrics),
            seeds=seeds,
            authz=Authorizer(secure=files.server is not None),
        )


class SchedulerServer:
    """One scheduler: ``await start()`` binds the listeners, ``await stop()`` drains and closes them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = SchedulerContext.create(config)
        self.gc = GarbageCollector(config.scheduler.gc, self.ctx.resource)
        self.preheat = PreheatService(self.ctx)
        self.persistent_cache = PersistentCacheService(self.ctx)
        self.address = ""
        self.metrics_address: str | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.announcer: ManagerAnnouncer | None = None
        self._freezer: FreezingCollector | None = None

    async def start(self) -> None:
        """Bind the gRPC server (and the metrics endpoint) and start the background jobs."""
        server_config = self.config.server
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", _MAX_RECEIVE_LENGTH),
                ("grpc.max_connection_idle_ms", 10 * 60 * 1000),
                ("grpc.max_connection_age_ms", 12 * 3600 * 1000),
                ("grpc.max_connection_age_grace_ms", 5 * 60 * 1000),
                ("grpc.so_reuseport", 0),
                # grpc-core cancels calls the Python server has not picked up yet once more than 1,000 wait
                # (1 s soft rule, 3,000 hard); a burst of new AnnouncePeer streams must queue instead.
                ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", _MAX_PENDING_CALLS),
            ],
            maximum_concurrent_rpcs=server_config.max_concurrent_rpcs or None,
            interceptors=[grpc_decoding.interceptor()],
        )
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(  # type: ignore[no-untyped-call]
            SchedulerServicer(self.ctx, self.preheat, self.persistent_cache), server
        )
        # The console's swarm view (dragonfly.common.swarm): one JSON method beside Dragonfly's services.
        server.add_generic_rpc_handlers((swarm.handler(self.ctx),))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        host = server_config.listen_host
        files = self.config.tls().server
        if files is None:
            tls.warn_plaintext("scheduler")
        port = tls.add_port(server, format_address(host, server_config.port), files)
        await server.start()
        self._server = server
        self.address = format_address(host, port)
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.config.metrics.enable:
            await self._start_metrics()
        self.ctx.seeds.start()
        self.ctx.metrics.watch_gc()
        self.gc.start()
        gc_config = self.config.scheduler.gc
        if gc_config.python_freeze_interval > 0:
            self._freezer = FreezingCollector(gc_config.python_freeze_interval, gc_config.python_full_collect_interval)
            self._freezer.start()
        self.persistent_cache.start()
        if self.config.manager.addr:
            self._start_announcer(host, port)
        log.info("scheduler started", extra={"addr": self.address})

    def _start_announcer(self, host: str, port: int) -> None:
        from dragonfly.scheduler.announcer import ManagerAnnouncer, local_ip_towards

        manager = self.config.manager.addr
        ip = self.config.server.advertise_ip or (host if host not in ("0.0.0.0", "::") else local_ip_towards(manager))
        self.announcer = ManagerAnnouncer(self.ctx, ip=ip, port=port)
        # This scheduler runs preheat (scheduler.v2 PreheatImage/PreheatFile); Dragonfly's job queue it has not.
        self.announcer.start(["schedule", "preheat"])

    async def _start_metrics(self) -> None:
        config = self.config.metrics
        app = web.Application()
        app.router.add_get("/metrics", self.ctx.metrics.handle)
        runner, port = await start_http_server(app, config.host, config.port)
        self._metrics_runner = runner
        self.metrics_address = format_address(runner.addresses[0][0], port)

    async def stop(self) -> None:
        """Stop accepting work, give in-flight RPCs the grace period, then stop the background jobs."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.announcer is not None:
            await self.announcer.stop()
            self.announcer = None
        if self._server is not None:
            await self._server.stop(self.config.server.graceful_stop_timeout)
            self._server = None
        await self.gc.stop()
        if self._freezer is not None:
            await self._freezer.stop()
            self._freezer = None
        self.ctx.metrics.unwatch_gc()
        await self.preheat.close()
        await self.persistent_cache.close()
        await self.ctx.seeds.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        log.info("scheduler stopped", extra={"addr": self.address})

    async def __aenter__(self) -> SchedulerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

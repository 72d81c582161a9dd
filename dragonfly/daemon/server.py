"""Wire the daemon together: storage, origin backend, task manager, servers, announcer and GC.

Start-up order follows Dragonfly's (``docs/reference/protocol.md#start-up-order``): storage → backend → rate limiters →
task
manager → Vortex, metrics and health servers → announcer → upload gRPC → download gRPC (the local API is opened
last, so a client that can connect finds everything else running) → GC. Unlike Dragonfly, an unreachable
scheduler does not stop start-up: downloads go back to source until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from concurrent.futures import ThreadPoolExecutor

import grpc
from aiohttp import web
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dragonfly.common import grpc_decoding, ids, native, tls
from dragonfly.common.authz import Authorizer
from dragonfly.common.errors import ConfigError
from dragonfly.common.http_server import start_http_server
from dragonfly.common.identity import ROLE_PEER, ROLE_SEED_PEER, identity_from_pem
from dragonfly.common.netguard import AddressPolicy
from dragonfly.common.process import announce_listening
from dragonfly.daemon import compression, vortex_tls
from dragonfly.daemon.api.callers import CallerRelay
from dragonfly.daemon.api.download_server import DfdaemonDownloadService
from dragonfly.daemon.backends import Backends, object_storage, web_apis
from dragonfly.daemon.backends.file import FileBackend
from dragonfly.daemon.backends.http import HTTPBackend
from dragonfly.daemon.config import DfdaemonConfig, socket_gid
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.scheduler_client import SchedulerClient
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.host_info import HostInfo, TrafficMeter, detect_ip
from dragonfly.daemon.manager_client import SchedulerDiscovery, SeedPeerRegistration
from dragonfly.daemon.metrics import DaemonMetrics, health_app
from dragonfly.daemon.persistent_cache import PersistentCacheManager
from dragonfly.daemon.proxy.server import ProxyServer
from dragonfly.daemon.storage import Storage
from dragonfly.daemon.storage.gc import GarbageCollector
from dragonfly.daemon.upload.grpc_server import DfdaemonUploadService
from dragonfly.daemon.upload.vortex_server import VortexServer

log = logging.getLogger(__name__)

# gRPC server tuning from Dragonfly's client (``docs/reference/protocol.md#grpc-server-tuning``): bigger windows and
# frames than grpcio's defaults. Requests to either server are small (a Download, a task id and piece numbers), so
# 4 MiB bounds what a caller can make us buffer; answers of the local API carry whole pieces when asked to
# (need_piece_content, up to 64 MiB).
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.http2.max_frame_size", 256 * 1024),
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]
_LOCAL_API_OPTIONS = [*_GRPC_OPTIONS, ("grpc.max_send_message_length", 65 * 1024 * 1024)]
_UPLOAD_THREADS = 32


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Dfdaemon:
    """One dfdaemon process's services."""

    def __init__(self, config: DfdaemonConfig) -> None:
        self.config = config
        self.ip = config.host.ip or detect_ip()
        self.host_id = ids.host_id(self.ip, config.host.hostname, seed=config.seed_peer.enable)
        self.tls = config.tls()
        self._storage_executor = ThreadPoolExecutor(2, thread_name_prefix="dfdaemon-storage")
        self.storage = Storage(config.storage.dir, keep=config.storage.keep, executor=self._storage_executor)
        self._socket_path = os.path.abspath(config.download.server.socket_path)
        self.metrics = DaemonMetrics()
        self.upload_traffic = TrafficMeter()
        self.download_traffic = TrafficMeter()
        concurrency = config.download.concurrent_piece_count
        self._download_executor = ThreadPoolExecutor(2 * concurrency + 4, thread_name_prefix="dfdaemon-download")
        self._upload_executor = ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="dfdaemon-upload")
        self._address_policy = AddressPolicy.from_config(config.security.allowed_origin_networks)
        self.backend = HTTPBackend(
            request_header=config.backend.request_header,
            max_retries=config.backend.max_retries,
            piece_timeout=config.download.piece_timeout,
            executor=self._download_executor,
            cache_temporary_redirect=config.backend.enable_cache_temporary_redirect,
            cache_temporary_redirect_ttl=config.backend.cache_temporary_redirect_ttl,
            ca_cert=config.backend.ca_cert,
            insecure_skip_verify=config.backend.insecure_skip_verify,
            address_policy=self._address_policy,
        )
        objects = object_storage.ObjectStorageBackend(
            executor=self._download_executor,
            max_retries=config.backend.max_retries,
            piece_timeout=config.download.piece_timeout,
            address_policy=self._address_policy,
            addressing_style=config.backend.object_storage.addressing_style,
        )
        self.backends = Backends(
            self.backend,
            {
                "file": FileBackend(allowed_dirs=config.backend.file.allowed_dirs, executor=self._download_executor),
                **dict.fromkeys(object_storage.SCHEMES, objects),
                "hdfs": web_apis.WebHDFSBackend(self.backend),
                "hf": web_apis.HuggingFaceBackend(self.backend),
                "modelscope": web_apis.ModelScopeBackend(self.backend),
            },
        )
        self.channels = ParentChannels(self.tls.upload_client)
        # Persistent cache tasks (dfcache) are kept apart from URL tasks, whatever storage.keep says.
        self.persistent_cache = PersistentCacheManager(
            os.path.join(config.storage.dir, "persistent-cache"),
            scheduler=None,
            channels=self.channels,
            executor=self._download_executor,
            host_id=self.host_id,
            vortex_tls=tls.client_ssl_context(self.tls.upload_client) if self.tls.upload_client else None,
            concurrent_piece_count=concurrency,
            piece_timeout=config.download.piece_timeout,
            storage_executor=self._storage_executor,
            on_fetched=self.download_traffic.add,
            compression=config.download.persistent_cache_compression == "zstd" and compression.available(),
            # Copies are announced again to a scheduler that forgot them (a restart) as often as the host is.
            reconcile_interval=min(config.scheduler.announce_interval, 60.0),
            gc_policy=config.gc.policy,
            gc_interval=config.gc.interval,
            metrics_registry=self.metrics.registry,
        )
        self.scheduler: SchedulerClient | None = None
        self.discovery: SchedulerDiscovery | None = None
        self.seed_registration: SeedPeerRegistration | None = None
        self.tasks: TaskManager | None = None
        self.vortex: VortexServer | None = None
        self.proxy: ProxyServer | None = None
        self.host_info: HostInfo | None = None
        self.addresses: dict[str, str] = {}
        self._upload_server: grpc.aio.Server | None = None
        self._download_server: grpc.aio.Server | None = None
        self._callers = CallerRelay(self._socket_path)
        self._runners: list[web.AppRunner] = []
        self._background: list[asyncio.Task[None]] = []

    def _listening(self, service: str, addr: str) -> None:
        self.addresses[service] = addr
        announce_listening(service, addr)

    def _check_own_certificate(self) -> None:
        """Refuse to start with a certificate the cluster would refuse: it must own this host's id."""
        files = self.tls.scheduler or self.tls.upload_server
        if files is None:
            tls.warn_plaintext("dfdaemon")
            return
        _ca, chain, _key = files.read()
        try:
            identity = identity_from_pem(chain)
        except ValueError as exc:
            raise ConfigError(f"cannot parse the certificate {files.cert}: {exc}") from None
        role = ROLE_SEED_PEER if self.config.seed_peer.enable else ROLE_PEER
        problems = []
        if not identity.owns_host_id(self.host_id):
            problems.append(
                f"it does not own host id {self.host_id} (needs host.hostname {self.config.host.hostname!r} as CN or "
                f"DNS SAN and host.ip {self.ip} as IP SAN)"
            )
        if not identity.has_role(role):
            problems.append(f"it lacks the role {role} (subject OU)")
        if problems:
            raise ConfigError(
                f"certificate {files.cert} of {identity.describe()} cannot be used: {'; '.join(problems)}; "
                "`dragonfly certs issue` mints a matching one"
            )

    async def start(self) -> None:
        config = self.config
        self._check_own_certificate()
        self.storage.open()
        self.persistent_cache.open()
        await self.backend.start()
        await self.backends.start()
        upload_bucket = native.TokenBucket(config.upload.bandwidth_limit)

        storage_ip = config.storage.server.ip or self.ip
        upload_ip = config.upload.server.ip or self.ip
        self.vortex = VortexServer(
            self.storage,
            ip=storage_ip,
            port=config.storage.server.tcp_port,
            upload_bucket=upload_bucket,
            executor=self._upload_executor,
            timeout=config.download.piece_timeout,
            max_connections=self._vortex_connection_cap(),
            max_connections_per_host=config.storage.server.max_connections_per_host,
            on_served=self._on_served,
            ssl_context=(
                tls.server_ssl_context(self.tls.storage_server)
                if self.tls.storage_server and not config.storage.server.native_tls
                else None
            ),
            native_tls=(
                vortex_tls.native_server(self.tls.storage_server)
                if self.tls.storage_server and config.storage.server.native_tls
                else None
            ),
            persistent_cache=self.persistent_cache.storage,
            compression=self.persistent_cache.compression,
            on_corrupt=self.persistent_cache.evict_corrupt,
        )
        await self.vortex.start()
        vortex = self.vortex
        self.metrics.upload_connections.set_function(lambda: vortex.active_connections)
        self._listening("vortex", _host_port(storage_ip, self.vortex.port))

        self._upload_server = grpc.aio.server(options=_GRPC_OPTIONS, interceptors=[grpc_decoding.interceptor()])
        upload_port = tls.add_port(
            self._upload_server, _host_port(upload_ip, config.upload.server.port), self.tls.upload_server
        )
        self.host_info = HostInfo(
            config,
            host_id=self.host_id,
            ip=self.ip,
            upload_port=upload_port,
            upload_traffic=self.upload_traffic,
            download_traffic=self.download_traffic,
        )
        addrs = list(config.scheduler.addrs)
        if config.manager.addr:
            self.discovery = SchedulerDiscovery(
                config.manager.addr,
                host=self.host_info.host,
                cache_dir=config.storage.dir,
                manager_tls=self.tls.manager,
                scheduler_tls=self.tls.scheduler,
                cluster_id=config.manager.scheduler_cluster_id,
            )
            addrs = await self.discovery.initial(config.manager.start_timeout) or addrs
            if not addrs:
                log.warning(
                    "the manager named no healthy scheduler and none is saved: downloads go to the origin until "
                    "a restart finds one",
                    extra={"manager": config.manager.addr},
                )
        elif not addrs:
            # The dfdaemon command refuses such a config; an embedded daemon (tests, tools) runs without P2P.
            log.warning("neither manager.addr nor scheduler.addrs is set: no P2P, every download goes to the origin")
        if addrs:
            self.scheduler = SchedulerClient(
                addrs,
                host=self.host_info.host,
                announce_interval=config.scheduler.announce_interval,
                tls_files=self.tls.scheduler,
            )
        self.persistent_cache.scheduler = self.scheduler
        self.persistent_cache.start()
        self.tasks = TaskManager(
            config,
            storage=self.storage,
            backend=self.backend,
            backends=self.backends,
            scheduler=self.scheduler,
            channels=self.channels,
            executor=self._download_executor,
            metrics=self.metrics,
            download_traffic=self.download_traffic,
            host_id=self.host_id,
            ip=self.ip,
            vortex_tls=tls.client_ssl_context(self.tls.upload_client) if self.tls.upload_client else None,
            vortex_native_tls=(
                vortex_tls.native_client(self.tls.upload_client)
                if self.tls.upload_client and config.download.native_tls
                else None
            ),
        )

        await self._start_http("metrics", self.metrics.app(), config.metrics.server.ip, config.metrics.server.port)
        if config.proxy.enable:
            self.proxy = ProxyServer(
                config.proxy,
                tasks=self.tasks,
                storage=self.storage,
                executor=self._download_executor,
                read_timeout=config.download.piece_timeout,
                address_policy=self._address_policy,
            )
            await self.proxy.start()
            self.host_info.proxy_port = self.proxy.port
            self._listening("proxy", _host_port(config.proxy.server.ip, self.proxy.port))
        await self._start_http("health", health_app(), config.health.server.ip, config.health.server.port)

        upload_service = DfdaemonUploadService(
            storage=self.storage,
            tasks=self.tasks,
            host=self.host_info,
            vortex_port=self.vortex.port,
            authorizer=Authorizer(secure=self.tls.upload_server is not None),
            persistent_cache=self.persistent_cache,
        )
        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(  # type: ignore[no-untyped-call]
            upload_service, self._upload_server
        )
        await self._add_health(self._upload_server, "dfdaemon.v2.DfdaemonUpload")
        await self._upload_server.start()
        self._listening("upload", _host_port(upload_ip, upload_port))

        if self.scheduler is not None:
            # The first announcement is awaited briefly so a scheduler that is up knows this host before the
            # first download; one that is down is retried in the background.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.scheduler.announce_host_to_all(), 3.0)
            self._background.append(asyncio.create_task(self.scheduler.run_announcer(), name="announcer"))
            if self.discovery is not None:
                self._background.append(
                    asyncio.create_task(
                        self.discovery.run(config.dynconfig.refresh_interval, self.scheduler.set_addrs),
                        name="scheduler-discovery",
                    )
                )
        if config.manager.addr and config.seed_peer.enable:
            self.seed_registration = SeedPeerRegistration(
                config.manager.addr,
                host=self.host_info.host,
                cluster_id=config.seed_peer.cluster_id,
                interval=config.seed_peer.keepalive_interval,
                manager_tls=self.tls.manager,
                seed_type=config.seed_peer.type,
            )
            self._background.append(asyncio.create_task(self.seed_registration.run(), name="seed-registration"))

        socket_path = self._socket_path
        os.makedirs(os.path.dirname(socket_path), exist_ok=True)
        self._download_server = grpc.aio.server(options=_LOCAL_API_OPTIONS, interceptors=[grpc_decoding.interceptor()])
        dfdaemon_pb2_grpc.add_DfdaemonDownloadServicer_to_server(  # type: ignore[no-untyped-call]
            DfdaemonDownloadService(
                storage=self.storage,
                tasks=self.tasks,
                scheduler=self.scheduler,
                callers=self._callers,
                persistent_cache=self.persistent_cache,
            ),
            self._download_server,
        )
        await self._add_health(self._download_server, "dfdaemon.v2.DfdaemonDownload")
        reflection.enable_server_reflection(
            (dfdaemon_pb2.DESCRIPTOR.services_by_name["DfdaemonDownload"].full_name, reflection.SERVICE_NAME),
            self._download_server,
        )
        # gRPC listens on an internal abstract socket; the public socket is ours, so that every caller's
        # SO_PEERCRED is known to the handlers (dragonfly/daemon/api/callers.py).
        self._download_server.add_insecure_port(self._callers.internal_target)
        await self._download_server.start()
        server_config = config.download.server
        gid = socket_gid(server_config.socket_group) if server_config.socket_group is not None else None
        self._callers.start(server_config.socket_mode, gid)
        self._listening("download", socket_path)

        gc = GarbageCollector(self.storage, config.gc, is_busy=self.tasks.is_active, on_evict=self._on_evict)
        self._background.append(asyncio.create_task(gc.run(), name="gc"))

    def _vortex_connection_cap(self) -> int:
        """Return storage.server.maxConnections, lowered to half the open-file limit so other services keep fds."""
        configured = self.config.storage.server.max_connections
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or configured <= soft // 2:
            return configured
        log.warning(
            "storage.server.maxConnections lowered to half the open-file limit",
            extra={"configured": configured, "open_file_limit": soft, "used": max(soft // 2, 1)},
        )
        return max(soft // 2, 1)

    @staticmethod
    async def _add_health(server: grpc.aio.Server, service: str) -> None:
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        for name in ("", service):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _start_http(self, service: str, app: web.Application, ip: str, port: int) -> None:
        runner, bound = await start_http_server(app, ip, port)
        self._runners.append(runner)
        self._listening(service, _host_port(ip, bound))

    def _on_served(self, task_id: str, length: int) -> None:
        self.upload_traffic.add(length)
        self.metrics.record_upload(length)

    async def _on_evict(self, task_id: str) -> None:
        if self.scheduler is not None:
            await self.scheduler.delete_task(self.host_id, task_id)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking requests, finish in-flight pieces, tell the schedulers this host leaves, close."""
        await self._callers.stop()
        if self._download_server is not None:
            await self._download_server.stop(grace=1.0)
        if self.proxy is not None:
            await self.proxy.stop()
        if self.tasks is not None:
            await self.tasks.shutdown(grace)
        if self.vortex is not None:
            await self.vortex.stop(grace)
        if self._upload_server is not None:
            await self._upload_server.stop(grace=1.0)
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.scheduler is not None:
            await self.scheduler.delete_host(self.host_id)
            await self.scheduler.close()
        for client in (self.discovery, self.seed_registration):
            if client is not None:
                await client.close()
        for runner in self._runners:
            await runner.cleanup()
        await self.persistent_cache.close()
        await self.channels.close()
        await self.backends.close()
        await self.backend.close()
        self._download_executor.shutdown(wait=True)
        self._upload_executor.shutdown(wait=True)
        self.storage.close()
        self._storage_executor.shutdown(wait=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket_path)

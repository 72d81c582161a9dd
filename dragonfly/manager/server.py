"""One manager process: database (migrated, bootstrapped), REST on uvicorn, gRPC manager.v2."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

import grpc
import uvicorn
from dragonfly_api import manager_pb2, manager_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dragonfly.common import grpc_decoding, tls
from dragonfly.common.authz import Authorizer
from dragonfly.manager import bootstrap, db, queries
from dragonfly.manager.api.app import STARTUP_ERROR, Extension, create_app, load_extensions, wrap
from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.config import Config
from dragonfly.manager.context import ManagerContext

if TYPE_CHECKING:
    from dragonfly.manager.rpc.service import ManagerServicer

log = logging.getLogger(__name__)

# A stop (or one of its stages) that takes this long is logged with its duration.
_SLOW_STOP = 1.0

SERVICE_NAME = manager_pb2.DESCRIPTOR.services_by_name["Manager"].full_name


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its own signal handlers: the process's run_async owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        # uvicorn exits the process when the app's startup fails; a SystemExit in a task would stop the event loop
        # before ManagerServer.start could say why.
        raise RuntimeError(f"the REST server failed to start (uvicorn exit status {exc.code})") from None


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class ManagerServer:
    """Start and stop everything a manager runs."""

    def __init__(
        self, config: Config, *, extensions: Sequence[Extension] | None = None, out: TextIO | None = None
    ) -> None:
        self.config = config
        self._extensions = extensions
        self._out = out
        self.ctx: ManagerContext | None = None
        self._uvicorn: _Uvicorn | None = None
        self._rest_task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._servicer: ManagerServicer | None = None
        self._liveness: asyncio.Task[None] | None = None
        self.rest_address = ""
        self.grpc_address = ""

    async def start(self) -> None:
        """Migrate, bootstrap, then listen; raises OSError when a port is taken, ValueError on a bad database."""
        config = self.config
        # Their INFO lines (each migration plugin, uvicorn's start banner) say nothing an operator needs.
        for noisy in ("alembic", "uvicorn.error"):
            if logging.getLogger(noisy).getEffectiveLevel() < logging.WARNING:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        grpc_files = config.grpc_tls()  # a missing file setting fails before anything is created
        if config.database.type == "sqlite" and not config.database.url:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(config.data_dir, 0o700)
        url = db.database_url(config)
        engine = db.create_engine(url, wal=config.database.sqlite.wal, pool_size=config.database.pool_size)
        self.ctx = ctx = ManagerContext(
            config=config,
            engine=engine,
            sessions=db.session_factory(engine),
            signin_limiter=SigninLimiter(
                config.auth.signin_max_failures,
                config.auth.signin_window,
                config.auth.signin_max_failures_per_address,
            ),
        )
        await db.migrate(engine)
        if config.metrics.enable:
            from dragonfly.manager.metrics import ManagerMetrics

            ctx.metrics = ManagerMetrics()
        await bootstrap.bootstrap(ctx.sessions, config.root_password(), out=self._out)
        extensions = load_extensions() if self._extensions is None else list(self._extensions)
        app = create_app(ctx, extensions)
        rest = config.server.rest
        self._sock = _bind(rest.host, rest.port)
        host, port = self._sock.getsockname()[:2]
        self.rest_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        server = _Uvicorn(
            uvicorn.Config(
                wrap(app, ctx),
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_keep_alive=10,
                server_header=False,
                h11_max_incomplete_event_size=16 * 1024,
                # uvicorn believes X-Forwarded-For from loopback (and $FORWARDED_ALLOW_IPS) unless told otherwise:
                # only the proxies the operator names may say who the client is.
                proxy_headers=bool(rest.trusted_proxies),
                forwarded_allow_ips=list(rest.trusted_proxies),
            )
        )
        self._uvicorn = server
        self._rest_task = asyncio.create_task(_serve(server, self._sock))
        while not server.started:
            if self._rest_task.done():
                error = ctx.extras.get(STARTUP_ERROR)
                if isinstance(error, Exception):
                    # uvicorn ended with SystemExit(3) after logging it; the extension's own error says what to fix.
                    with contextlib.suppress(BaseException):
                        self._rest_task.result()
                    raise error
                self._rest_task.result()
                raise RuntimeError("REST server stopped while starting")
            await asyncio.sleep(0.01)
        await self._start_grpc(ctx, grpc_files)
        self._liveness = asyncio.create_task(self._expire_keep_alives(ctx))

    async def _start_grpc(self, ctx: ManagerContext, files: tls.TLSFiles | None) -> None:
        from dragonfly.manager.rpc.service import ManagerServicer

        grpc_config = self.config.server.grpc
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.max_connection_idle_ms", 10 * 60 * 1000),
                ("grpc.so_reuseport", 0),
            ],
            interceptors=[grpc_decoding.interceptor()],
        )
        self._servicer = ManagerServicer(ctx, Authorizer(secure=files is not None))
        manager_pb2_grpc.add_ManagerServicer_to_server(self._servicer, server)  # type: ignore[no-untyped-call]
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if files is None:
            tls.warn_plaintext("manager")
        host = grpc_config.listen_ip
        first, last = grpc_config.port.start, max(grpc_config.port.start, grpc_config.port.end)
        error: OSError | None = None
        for port in range(first, last + 1):
            try:
                bound = tls.add_port(server, _format(host, port), files)
            except OSError as exc:
                error = exc
                continue
            break
        else:
            assert error is not None
            raise error
        await server.start()
        self._grpc = server
        self.grpc_address = _format(host, bound)
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def _expire_keep_alives(self, ctx: ManagerContext) -> None:
        """Mark instances whose keep-alives stopped without their stream closing (a crashed host) inactive."""
        timeout = float(self.config.keep_alive.timeout)
        while True:
            await asyncio.sleep(timeout / 3)
            try:
                async with ctx.sessions() as session:
                    changed = await queries.expire_keep_alives(session, timeout)
                    if ctx.metrics is not None:
                        for kind, count in (await queries.instance_counts(session)).items():
                            ctx.metrics.instances.labels(*kind).set(count)
                if changed:
                    log.info("keep-alive expired", extra={"instances": changed})
            except Exception:
                log.exception("keep-alive expiry failed; retrying")

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests (briefly), close the database."""
        started = time.monotonic()
        try:
            await self._stop()
        finally:
            # Each stage has its own bound; a slow stop is logged so that one slower than a supervisor's patience
            # (LocalCluster waits 10 s) shows where it went (a quick one logs nothing: after a failed start the
            # reason stays the last line).
            took = time.monotonic() - started
            if took >= _SLOW_STOP:
                log.warning("manager stop was slow", extra={"seconds": round(took, 3)})

    async def _stop(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._liveness
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._grpc is not None:
            # Keep-alive streams end here and mark their instances inactive, so the database closes last.
            stage = time.monotonic()
            if self._servicer is not None:
                await self._servicer.end_keep_alives()
            await self._grpc.stop(3)
            self._grpc = None
            if (took := time.monotonic() - stage) >= _SLOW_STOP:
                log.warning("manager gRPC stop was slow", extra={"seconds": round(took, 3)})
        if self._uvicorn is not None and self._rest_task is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._rest_task), 10)
            if not self._rest_task.done():
                log.warning("manager REST still serving 10 s after the stop: forced")
                self._uvicorn.force_exit = True
                self._rest_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._rest_task
        if self._sock is not None:
            self._sock.close()
        if self.ctx is not None:
            await self.ctx.close_channels()
            await self.ctx.engine.dispose()

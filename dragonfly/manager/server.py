"""One manager process: database (migrated, bootstrapped), REST on uvicorn, gRPC manager.v2."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import TextIO

import uvicorn

from dragonfly.manager import bootstrap, db
from dragonfly.manager.api.app import Extension, create_app, load_extensions, wrap
from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.config import Config
from dragonfly.manager.context import ManagerContext

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its own signal handlers: the process's run_async owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
        self.rest_address = ""

    async def start(self) -> None:
        """Migrate, bootstrap, then listen; raises OSError when a port is taken, ValueError on a bad database."""
        config = self.config
        # Their INFO lines (each migration plugin, uvicorn's start banner) say nothing an operator needs.
        for noisy in ("alembic", "uvicorn.error"):
            if logging.getLogger(noisy).getEffectiveLevel() < logging.WARNING:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        if config.database.type == "sqlite" and not config.database.url:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(config.data_dir, 0o700)
        url = db.database_url(config)
        engine = db.create_engine(url, wal=config.database.sqlite.wal, pool_size=config.database.pool_size)
        self.ctx = ctx = ManagerContext(
            config=config,
            engine=engine,
            sessions=db.session_factory(engine),
            signin_limiter=SigninLimiter(config.auth.signin_max_failures, config.auth.signin_window),
        )
        await db.migrate(engine)
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
            )
        )
        self._uvicorn = server
        self._rest_task = asyncio.create_task(server.serve(sockets=[self._sock]))
        while not server.started:
            if self._rest_task.done():
                self._rest_task.result()
                raise RuntimeError("REST server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests (briefly), close the database."""
        if self._uvicorn is not None and self._rest_task is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._rest_task), 10)
            if not self._rest_task.done():
                self._uvicorn.force_exit = True
                self._rest_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._rest_task
        if self._sock is not None:
            self._sock.close()
        if self.ctx is not None:
            await self.ctx.engine.dispose()

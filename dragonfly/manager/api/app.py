"""The REST application: ``/api/v1`` routes, ``/healthy``, the OpenAPI spec, extensions and the console at ``/``.

Extension points (``docs/manager.md#extending-the-manager``):
- ``Extension.routers``: routers mounted under ``/api/v1`` (session or token auth) and ``Extension.open_routers``
  under ``/oapi/v1`` (Dragonfly's Open API for Harbor: personal access tokens);
- ``Extension.startup``/``shutdown``: coroutines run with the ManagerContext (start workers, queues);
- the console: a directory of built assets served at ``/`` (index.html for unknown non-API paths).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import dragonfly
from dragonfly.manager.api import errors
from dragonfly.manager.context import ManagerContext

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
OPEN_API_PREFIX = "/oapi/v1"
#: Built console assets shipped in the package (the console helper's build output).
PACKAGED_CONSOLE = Path(__file__).resolve().parent.parent / "console" / "dist"


@dataclass(frozen=True)
class Extension:
    """What a feature (preheat jobs, …) adds to the manager."""

    name: str
    routers: Sequence[APIRouter] = ()
    open_routers: Sequence[APIRouter] = ()
    startup: Callable[[ManagerContext], Awaitable[None]] | None = None
    shutdown: Callable[[ManagerContext], Awaitable[None]] | None = None
    #: API object name → token scope (see ``dragonfly.manager.auth.register_object``).
    objects: dict[str, str] = field(default_factory=dict)


#: ``ManagerContext.extras`` key of the exception an extension's startup raised.
STARTUP_ERROR = "startup_error"
#: Modules with a module-level ``extension() -> Extension``, loaded by ``load_extensions``. Add yours here.
EXTENSION_MODULES: list[str] = ["dragonfly.manager.swarm", "dragonfly.manager.jobs.api"]


def load_extensions(names: Sequence[str] | None = None) -> list[Extension]:
    """Import each extension module and return its Extension."""
    import importlib

    out = []
    for name in EXTENSION_MODULES if names is None else names:
        module = importlib.import_module(name)
        out.append(module.extension())
    return out


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"message": f"request body larger than {self.limit} bytes"}, status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def _console(app: FastAPI, directory: Path) -> None:
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    index = directory / "index.html"

    class SPAFiles(StaticFiles):
        """Static files; an unknown path that is not an API path gets index.html (client-side routes)."""

        async def get_response(self, path: str, scope: Scope) -> Response:
            try:
                return await super().get_response(path, scope)
            except StarletteHTTPException as exc:
                if exc.status_code != 404 or not index.is_file():
                    raise
                from starlette.responses import FileResponse

                return FileResponse(index)

    app.mount("/", SPAFiles(directory=directory, html=True), name="console")


def create_app(ctx: ManagerContext, extensions: Sequence[Extension] = ()) -> FastAPI:
    """Build the ASGI application of one manager process."""
    from contextlib import asynccontextmanager

    from dragonfly.manager import auth
    from dragonfly.manager.api import audit, clusters, resources, users

    for ext in extensions:
        for obj, scope in ext.objects.items():
            auth.register_object(obj, scope)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        started = []
        try:
            for ext in extensions:
                if ext.startup is not None:
                    try:
                        await ext.startup(ctx)
                    except Exception as exc:
                        # uvicorn only logs it and exits 3; ManagerServer.start raises it (a clear one-line error).
                        ctx.extras[STARTUP_ERROR] = exc
                        raise
                started.append(ext)
            yield
        finally:
            for ext in reversed(started):
                if ext.shutdown is not None:
                    try:
                        await ext.shutdown(ctx)
                    except Exception:
                        log.exception("extension %s failed to shut down", ext.name)

    app = FastAPI(
        title="Dragonfly manager",
        version=dragonfly.__version__,
        description="REST API of the manager (docs/manager.md): clusters, schedulers, seed peers, applications, "
        "users, roles, personal access tokens.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    errors.install(app)

    from dragonfly.manager.api.schemas import ERROR_RESPONSES

    api = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)
    api.include_router(users.router)
    api.include_router(audit.router)
    for router in resources.routers():
        api.include_router(router)
    api.include_router(clusters.router())
    for ext in extensions:
        for router in ext.routers:
            api.include_router(router)
    app.include_router(api)
    # Dragonfly's Open API: the same handlers, for personal access tokens (Harbor, scripts).
    open_api = APIRouter(prefix=OPEN_API_PREFIX, responses=ERROR_RESPONSES)
    open_api.include_router(clusters.router())
    for ext in extensions:
        for router in ext.open_routers:
            open_api.include_router(router)
    app.include_router(open_api)

    @app.get("/healthy", include_in_schema=False)
    async def healthy() -> dict[str, str]:
        return {"status": "ok"}

    if ctx.metrics is not None:
        metrics = ctx.metrics

        @app.get("/metrics", include_in_schema=False)
        async def prometheus() -> Response:
            from prometheus_client.exposition import CONTENT_TYPE_LATEST

            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.api_route(
        API_PREFIX + "/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
    )
    async def unknown_api(rest: str) -> JSONResponse:
        # Without it an unknown API path would fall through to the console's index.html.
        return JSONResponse({"message": "no such API route"}, status_code=404)

    console = Path(ctx.config.console.dir) if ctx.config.console.dir else PACKAGED_CONSOLE
    if ctx.config.console.enable and console.is_dir():
        _console(app, console)
    return app


def wrap(app: FastAPI, ctx: ManagerContext) -> ASGIApp:
    """Return ``app`` behind the audit log and the body-size limit."""
    from dragonfly.manager.api.audit import AuditLog

    return BodyLimit(AuditLog(app, ctx), int(ctx.config.server.rest.max_body_size))

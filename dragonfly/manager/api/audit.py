"""The audit log: one row per change made through the API (who, what, when, how it ended), and its list route.

Every request that is not a read (POST, PUT, PATCH, DELETE under ``/api/`` and ``/oapi/``) is recorded after its
answer, sign-in attempts included. Bodies and query strings are never stored (they may hold passwords or tokens).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dragonfly.manager import auth, models
from dragonfly.manager.api import schemas
from dragonfly.manager.api.deps import DB, Paging, Principal, paginate, require
from dragonfly.manager.context import ManagerContext

log = logging.getLogger(__name__)

_WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))

router = APIRouter(tags=["audits"])


@router.get("/audits", response_model=list[schemas.AuditOut], summary="List the audit log, newest first")
async def list_audits(
    request: Request,
    response: Response,
    session: DB,
    page: Paging,
    where: Annotated[schemas.AuditFilter, Query()],
    _p: Principal = Depends(require("audits", auth.ACTION_READ)),
) -> list[Any]:
    """Changes made through the API."""
    query = select(models.Audit).order_by(models.Audit.id.desc())
    for name, value in where.model_dump(exclude_none=True).items():
        query = query.where(getattr(models.Audit, name) == value)
    return await paginate(session, query, page, request, response)


class AuditLog:
    """ASGI middleware that records API writes once they are answered (and counts every request for metrics)."""

    def __init__(self, app: ASGIApp, ctx: ManagerContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        audited = scope.get("method") in _WRITES and path.startswith(("/api/", "/oapi/"))
        metrics = self.ctx.metrics
        if not audited and metrics is None:
            await self.app(scope, receive, send)
            return
        status = 500
        began = time.perf_counter()

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            if metrics is not None:
                method = str(scope.get("method", ""))[:16]
                metrics.requests.labels(method, str(status)).inc()
                metrics.request_duration.labels(method).observe(time.perf_counter() - began)
            if audited:
                await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        principal = (scope.get("state") or {}).get("principal")
        if isinstance(principal, Principal):
            actor_type, actor_name = ("PAT" if principal.kind == "pat" else "USER"), principal.user_name
        else:
            actor_type, actor_name = "UNKNOWN", ""
        row = models.Audit(
            actor_type=actor_type,
            actor_name=actor_name[:255],
            event_type="API",
            operation=str(scope.get("method", ""))[:16],
            path=str(scope.get("path", ""))[:1024],
            status_code=status,
            state="SUCCESS" if status < 400 else "FAILURE",
            detail="",
        )
        try:
            async with self.ctx.sessions() as session:
                session.add(row)
                await session.commit()
        except Exception:
            # The change itself is done; a lost audit row is logged, not turned into an error for the caller.
            log.exception("cannot write the audit row", extra={"path": row.path, "status": status})

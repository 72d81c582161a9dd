"""Request dependencies: the database session, who is calling (and may they), pagination."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dragonfly.manager import auth, models
from dragonfly.manager.api.errors import APIError
from dragonfly.manager.context import ManagerContext

T = TypeVar("T")

#: Seconds an authenticated token is trusted without a database lookup. Revoking, signing out, changing a password,
#: a user or a role in this process drops the whole cache at once; other managers see such changes within it.
AUTH_CACHE_TTL = 5.0
_AUTH_CACHE_MAX = 10_000

_bearer = HTTPBearer(
    auto_error=False, description="a session token (POST /api/v1/users/signin) or a personal access token"
)


def context(request: Request) -> ManagerContext:
    """Return the process's ManagerContext."""
    ctx: ManagerContext = request.app.state.ctx
    return ctx


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Yield one session per request; the handler commits, anything left open is rolled back."""
    async with context(request).sessions() as session:
        yield session


DB = Annotated[AsyncSession, Depends(db_session)]
Ctx = Annotated[ManagerContext, Depends(context)]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a user signed in with a session, or a personal access token of a user."""

    user_id: int
    user_name: str
    kind: str  # "session" or "pat"
    grants: frozenset[tuple[str, str]]
    # None for sessions; the token's scopes for PATs.
    scopes: frozenset[str] | None = None
    token_id: int | None = None

    @property
    def is_root(self) -> bool:
        """Return whether every action on every object is allowed (root role, not narrowed by scopes)."""
        return self.scopes is None and auth.permits(self.grants, "users", auth.ACTION_WRITE)

    def can(self, obj: str, action: str) -> bool:
        """Return whether the caller may do ``action`` on ``obj``."""
        if self.scopes is not None and auth.scope_of(obj) not in self.scopes:
            return False
        return auth.permits(self.grants, obj, action)


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, headers={"WWW-Authenticate": 'Bearer realm="dragonfly"'})


def _grants(user: models.User) -> frozenset[tuple[str, str]]:
    return frozenset((p.object, p.action) for role in user.roles for p in role.permissions)


async def authenticate(
    request: Request,
    session: DB,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Return the caller behind ``Authorization: Bearer <token>``; 401 without a valid one."""
    token = credentials.credentials if credentials is not None else request.query_params.get("access_token")
    if not token:
        raise _unauthorized("authentication required: send Authorization: Bearer <token>")
    now = models.utcnow()
    digest = auth.token_digest(token)
    cache = context(request).auth_cache
    cached = cache.get(digest)
    if cached is not None and time.monotonic() - cached[0] < AUTH_CACHE_TTL and cached[2] > now:
        request.state.principal = cached[1]
        principal: Principal = cached[1]
        return principal
    if token.startswith(auth.SESSION_PREFIX):
        row = await session.scalar(select(models.Session).where(models.Session.token_hash == digest))
        if row is None or row.expires_at <= now:
            raise _unauthorized("session token invalid or expired: sign in again")
        user = await session.get(models.User, row.user_id)
        if user is None or user.state != "enable":
            raise _unauthorized("user disabled or deleted")
        principal = Principal(user.id, user.name, "session", _grants(user))
        expires = row.expires_at
    elif token.startswith(auth.PAT_PREFIX):
        pat = await session.scalar(
            select(models.PersonalAccessToken).where(models.PersonalAccessToken.token_hash == digest)
        )
        if pat is None:
            raise _unauthorized("personal access token invalid")
        if pat.state != models.STATE_ACTIVE:
            raise _unauthorized("personal access token revoked")
        if pat.expired_at <= now:
            raise _unauthorized("personal access token expired")
        user = await session.get(models.User, pat.user_id)
        if user is None or user.state != "enable":
            raise _unauthorized("user disabled or deleted")
        # Touch at most once a minute: a busy script must not turn every read into a write.
        if pat.last_used_at is None or now - pat.last_used_at > dt.timedelta(minutes=1):
            pat.last_used_at = now
            await session.commit()
        principal = Principal(user.id, user.name, "pat", _grants(user), frozenset(pat.scopes), pat.id)
        expires = pat.expired_at
    else:
        raise _unauthorized("unknown token kind")
    if len(cache) >= _AUTH_CACHE_MAX:
        cache.clear()
    cache[digest] = (time.monotonic(), principal, expires)
    request.state.principal = principal
    return principal


def forget_tokens(request: Request) -> None:
    """Drop every cached authentication (a token, session, user or role changed)."""
    context(request).auth_cache.clear()


Caller = Annotated[Principal, Depends(authenticate)]


def require(obj: str, action: str) -> Callable[..., Awaitable[Principal]]:
    """Return a dependency that lets the call through only if the caller may do ``action`` on ``obj``."""

    async def check(principal: Caller) -> Principal:
        if not principal.can(obj, action):
            if principal.scopes is not None and auth.scope_of(obj) not in principal.scopes:
                raise APIError(403, f"token lacks the {auth.scope_of(obj)!r} scope needed for {obj}")
            raise APIError(403, f"permission denied: {action} on {obj}")
        return principal

    return check


@dataclass(frozen=True, slots=True)
class Page:
    """``page`` (1-based) and ``per_page`` of a list request."""

    page: int
    per_page: int


def pagination(
    page: Annotated[int, Query(ge=1, le=1_000_000, description="1-based page number")] = 1,
    per_page: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 10,
) -> Page:
    """Read the pagination parameters."""
    return Page(page, per_page)


Paging = Annotated[Page, Depends(pagination)]


def link_params(request: Request) -> dict[str, str]:
    """Return the query parameters a ``Link`` header repeats: all but ``access_token`` (a secret in a header that
    proxies log and browsers keep)."""
    return {name: value for name, value in request.query_params.items() if name != "access_token"}


async def paginate(
    session: AsyncSession, query: Select[Any], page: Page, request: Request, response: Response
) -> list[Any]:
    """Run ``query`` for one page; set ``X-Total-Count`` and an RFC 8288 ``Link`` header (first/prev/next/last)."""
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = (await session.scalars(query.offset((page.page - 1) * page.per_page).limit(page.per_page))).all()
    last = max(1, math.ceil(total / page.per_page))
    params = link_params(request)
    links = []
    for rel, number in (
        ("first", 1),
        ("prev", page.page - 1 if page.page > 1 else None),
        ("next", page.page + 1 if page.page < last else None),
        ("last", last),
    ):
        if number is None:
            continue
        params.update(page=str(number), per_page=str(page.per_page))
        links.append(f'<{request.url.path}?{urlencode(params)}>; rel="{rel}"')
    response.headers["X-Total-Count"] = str(total)
    response.headers["Link"] = ", ".join(links)
    return list(rows)

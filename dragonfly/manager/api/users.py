"""Sign-in and sign-out, users, roles and personal access tokens."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy import delete, select

from dragonfly.manager import auth, models
from dragonfly.manager.api import schemas
from dragonfly.manager.api.deps import DB, Caller, Ctx, Paging, Principal, forget_tokens, paginate, require
from dragonfly.manager.api.errors import APIError, not_found

Ident = Annotated[int, Path(ge=1, le=2**63 - 1)]
RoleName = Annotated[str, Path(pattern=schemas.NAME_PATTERN, max_length=255)]

router = APIRouter(tags=["users"])


def _user_out(user: models.User) -> schemas.UserOut:
    return schemas.UserOut.model_validate(user, from_attributes=True)


def _role_out(role: models.Role) -> schemas.RoleOut:
    return schemas.RoleOut.model_validate(role, from_attributes=True)


@router.post("/users/signin", response_model=schemas.SigninResponse, summary="Sign in; returns a session token")
async def signin(body: schemas.SigninRequest, request: Request, session: DB, ctx: Ctx) -> schemas.SigninResponse:
    """Check name and password; failures are rate-limited per client address and user name, and per address."""
    # The socket's peer, or the client a trusted proxy names (server.rest.trustedProxies, applied by uvicorn).
    client = request.client.host if request.client else "?"
    limiter = ctx.signin_limiter
    refusal = await limiter.begin(client, body.name)
    if refusal is not None:
        seconds = int(refusal.seconds) + 1
        what = "sign-ins being verified" if refusal.verifying else "failed sign-ins"
        raise APIError(
            429, f"too many {what} from {client}; try again in {seconds} s", headers={"Retry-After": str(seconds)}
        )
    failed: bool | None = None
    try:
        user = await session.scalar(select(models.User).where(models.User.name == body.name))
        ok = await auth.verify_password(user.encrypted_password if user is not None else None, body.password)
        failed = user is None or not ok
    finally:
        limiter.end(client, body.name, failed=failed)
    if user is None or not ok:
        raise APIError(401, "wrong user name or password")
    if user.state != "enable":
        raise APIError(403, "user disabled")
    # The audit log names who signed in.
    request.state.principal = Principal(user.id, user.name, "session", frozenset())
    token = auth.new_token(auth.SESSION_PREFIX)
    now = models.utcnow()
    expires = now + dt.timedelta(seconds=ctx.config.auth.session_ttl)
    session.add(models.Session(token_hash=auth.token_digest(token), user_id=user.id, expires_at=expires))
    # Sign-ins are a good moment to drop expired sessions of everyone.
    await session.execute(delete(models.Session).where(models.Session.expires_at <= now))
    await session.commit()
    return schemas.SigninResponse(token=token, expires_at=expires, user_id=user.id)


@router.post("/users/signout", status_code=204, summary="End the caller's session")
async def signout(principal: Caller, request: Request, session: DB) -> Response:
    """Delete the session of the token used (a personal access token is revoked with PATCH instead)."""
    if principal.kind != "session":
        raise APIError(400, "signout ends a session; revoke a personal access token with PATCH state=inactive")
    # The token the caller authenticated with, from the header or Dragonfly's ?access_token=.
    header = request.headers.get("authorization", "")
    token = header.partition(" ")[2].strip() or request.query_params.get("access_token", "")
    await session.execute(delete(models.Session).where(models.Session.token_hash == auth.token_digest(token)))
    await session.commit()
    forget_tokens(request)
    return Response(status_code=204)


@router.get("/users/me", response_model=schemas.UserOut, summary="The caller")
async def me(principal: Caller, session: DB) -> schemas.UserOut:
    """Return the signed-in user (any role)."""
    user = await session.get(models.User, principal.user_id)
    if user is None:
        raise not_found("user", principal.user_id)
    return _user_out(user)


@router.get("/users", response_model=list[schemas.UserOut], summary="List users")
async def list_users(
    request: Request,
    response: Response,
    session: DB,
    page: Paging,
    name: Annotated[str | None, Query(pattern=schemas.NAME_PATTERN, max_length=255)] = None,
    _p: Principal = Depends(require("users", auth.ACTION_READ)),
) -> list[schemas.UserOut]:
    """Users, by id."""
    query = select(models.User).order_by(models.User.id)
    if name is not None:
        query = query.where(models.User.name == name)
    return [_user_out(u) for u in await paginate(session, query, page, request, response)]


@router.get("/users/{ident}", response_model=schemas.UserOut, summary="Get a user")
async def get_user(ident: Ident, session: DB, principal: Caller) -> schemas.UserOut:
    """Anyone may read themselves; others need read on users."""
    if ident != principal.user_id and not principal.can("users", auth.ACTION_READ):
        raise APIError(403, "permission denied: read on users")
    user = await session.get(models.User, ident)
    if user is None:
        raise not_found("user", ident)
    return _user_out(user)


async def _roles(session: DB, names: list[str]) -> list[models.Role]:
    rows = list((await session.scalars(select(models.Role).where(models.Role.name.in_(names)))).all())
    missing = sorted(set(names) - {r.name for r in rows})
    if missing:
        raise APIError(422, f"role {', '.join(missing)} not found")
    return rows


@router.post("/users", response_model=schemas.UserOut, status_code=201, summary="Create a user")
async def create_user(
    body: schemas.UserCreate, session: DB, _p: Principal = Depends(require("users", auth.ACTION_WRITE))
) -> schemas.UserOut:
    """Create a user with roles (default guest)."""
    user = models.User(
        name=body.name,
        email=body.email,
        bio=body.bio,
        phone=body.phone,
        location=body.location,
        encrypted_password=await auth.hash_password(body.password),
    )
    user.roles = await _roles(session, body.roles)
    session.add(user)
    await session.commit()
    return _user_out(user)


@router.patch("/users/{ident}", response_model=schemas.UserOut, summary="Update a user")
async def update_user(
    ident: Ident, body: schemas.UserUpdate, session: DB, principal: Caller, request: Request
) -> schemas.UserOut:
    """A user may edit their own profile; state and other users need write on users."""
    fields = body.model_dump(exclude_unset=True)
    if principal.scopes is not None and "user" not in principal.scopes:
        # A token handed to Harbor (scope job) must not edit even its owner's profile.
        raise APIError(403, "token lacks the 'user' scope needed for users")
    if (ident != principal.user_id or "state" in fields) and not principal.can("users", auth.ACTION_WRITE):
        raise APIError(403, "permission denied: write on users")
    user = await session.get(models.User, ident)
    if user is None:
        raise not_found("user", ident)
    for name, value in fields.items():
        if value is not None:
            setattr(user, name, value)
    if fields.get("state") == "disable":
        await session.execute(delete(models.Session).where(models.Session.user_id == ident))
    await session.commit()
    forget_tokens(request)
    return _user_out(user)


@router.post("/users/{ident}/reset_password", status_code=204, summary="Change a user's password")
async def reset_password(
    ident: Ident, body: schemas.PasswordReset, session: DB, principal: Caller, request: Request
) -> Response:
    """Your own password needs the old one; another user's needs write on users. Ends the user's sessions."""
    user = await session.get(models.User, ident)
    if user is None:
        raise not_found("user", ident)
    if ident == principal.user_id and principal.kind == "session":
        if body.old_password is None or not await auth.verify_password(user.encrypted_password, body.old_password):
            raise APIError(403, "old_password is wrong")
    elif not principal.can("users", auth.ACTION_WRITE):
        raise APIError(403, "permission denied: write on users")
    user.encrypted_password = await auth.hash_password(body.new_password)
    await session.execute(delete(models.Session).where(models.Session.user_id == ident))
    await session.commit()
    forget_tokens(request)
    return Response(status_code=204)


@router.put("/users/{ident}/roles/{role}", status_code=204, summary="Give a user a role")
async def add_user_role(
    ident: Ident,
    role: RoleName,
    session: DB,
    request: Request,
    _p: Principal = Depends(require("users", auth.ACTION_WRITE)),
) -> Response:
    """Idempotent."""
    user = await session.get(models.User, ident)
    if user is None:
        raise not_found("user", ident)
    (row,) = await _roles(session, [role])
    if row not in user.roles:
        user.roles.append(row)
    await session.commit()
    forget_tokens(request)
    return Response(status_code=204)


@router.delete("/users/{ident}/roles/{role}", status_code=204, summary="Take a role from a user")
async def delete_user_role(
    ident: Ident,
    role: RoleName,
    session: DB,
    request: Request,
    principal: Principal = Depends(require("users", auth.ACTION_WRITE)),
) -> Response:
    """The last root keeps the root role."""
    user = await session.get(models.User, ident)
    if user is None:
        raise not_found("user", ident)
    if role == auth.ROLE_ROOT:
        roots = await session.scalars(
            select(models.User).join(models.User.roles).where(models.Role.name == auth.ROLE_ROOT)
        )
        if [u.id for u in roots.all()] == [ident]:
            raise APIError(409, "the last root user keeps the root role")
    user.roles = [r for r in user.roles if r.name != role]
    await session.commit()
    forget_tokens(request)
    return Response(status_code=204)


@router.get("/roles", response_model=list[schemas.RoleOut], summary="List roles")
async def list_roles(
    request: Request,
    response: Response,
    session: DB,
    page: Paging,
    _p: Principal = Depends(require("roles", auth.ACTION_READ)),
) -> list[schemas.RoleOut]:
    """Roles with their permissions."""
    query = select(models.Role).order_by(models.Role.id)
    return [_role_out(r) for r in await paginate(session, query, page, request, response)]


@router.post("/roles", response_model=schemas.RoleOut, status_code=201, summary="Create a role")
async def create_role(
    body: schemas.RoleCreate, session: DB, _p: Principal = Depends(require("roles", auth.ACTION_WRITE))
) -> schemas.RoleOut:
    """A role with (object, action) permissions."""
    role = models.Role(name=body.name, description=body.description)
    unique = {(p.object, p.action) for p in body.permissions}
    role.permissions = [models.Permission(object=o, action=a) for o, a in sorted(unique)]
    session.add(role)
    await session.commit()
    return _role_out(role)


@router.delete("/roles/{role}", status_code=204, summary="Delete a role")
async def delete_role(
    role: RoleName, session: DB, request: Request, _p: Principal = Depends(require("roles", auth.ACTION_WRITE))
) -> Response:
    """root and guest stay."""
    if role in (auth.ROLE_ROOT, auth.ROLE_GUEST):
        raise APIError(409, f"role {role} is built in")
    row = await session.scalar(select(models.Role).where(models.Role.name == role))
    if row is None:
        raise not_found("role", role)
    await session.delete(row)
    await session.commit()
    forget_tokens(request)
    return Response(status_code=204)


# --- personal access tokens ---

TOKENS = "personal-access-tokens"


async def _own_tokens(principal: Caller) -> Principal:
    """Every user manages their own tokens; a token reaches them only with the ``user`` scope."""
    if principal.scopes is not None and "user" not in principal.scopes:
        raise APIError(403, f"token lacks the 'user' scope needed for {TOKENS}")
    return principal


TokenCaller = Annotated[Principal, Depends(_own_tokens)]


async def _token(session: DB, ident: int, principal: Principal, action: str) -> models.PersonalAccessToken:
    row = await session.get(models.PersonalAccessToken, ident)
    # Someone else's token is "not found" unless the caller may act on every user's tokens.
    if row is None or (row.user_id != principal.user_id and not principal.can("users", auth.ACTION_WRITE)):
        raise not_found("personal access token", ident)
    return row


def _check_expiry(expired_at: dt.datetime) -> dt.datetime:
    if expired_at.tzinfo is None:
        raise APIError(422, "expired_at needs a time zone (for example 2030-01-01T00:00:00Z)")
    if expired_at <= models.utcnow():
        raise APIError(422, "expired_at is in the past")
    return expired_at


@router.get(f"/{TOKENS}", response_model=list[schemas.TokenOut], summary="List personal access tokens")
async def list_tokens(
    request: Request,
    response: Response,
    session: DB,
    page: Paging,
    principal: TokenCaller,
    user_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> list[Any]:
    """The caller's tokens (any user's, with write on users)."""
    query = select(models.PersonalAccessToken).order_by(models.PersonalAccessToken.id)
    if not principal.can("users", auth.ACTION_WRITE):
        user_id = principal.user_id
    if user_id is not None:
        query = query.where(models.PersonalAccessToken.user_id == user_id)
    return await paginate(session, query, page, request, response)


@router.get(f"/{TOKENS}/{{ident}}", response_model=schemas.TokenOut, summary="Get a personal access token")
async def get_token(ident: Ident, session: DB, principal: TokenCaller) -> Any:
    """Metadata only; the secret is shown once, at creation."""
    return await _token(session, ident, principal, auth.ACTION_READ)


@router.post(
    f"/{TOKENS}", response_model=schemas.TokenCreated, status_code=201, summary="Create a personal access token"
)
async def create_token(body: schemas.TokenCreate, session: DB, principal: TokenCaller) -> schemas.TokenCreated:
    """The answer carries the token once; store it, it cannot be read again."""
    owner = body.user_id or principal.user_id
    if owner != principal.user_id and not principal.can("users", auth.ACTION_WRITE):
        raise APIError(403, "permission denied: a token for another user needs write on users")
    if principal.kind == "pat" and principal.scopes is not None and not set(body.scopes) <= principal.scopes:
        raise APIError(403, "a token cannot create a token with scopes it does not have")
    if await session.get(models.User, owner) is None:
        raise APIError(422, f"user {owner} not found")
    token = auth.new_token(auth.PAT_PREFIX)
    row = models.PersonalAccessToken(
        name=body.name,
        bio=body.bio,
        token_hash=auth.token_digest(token),
        token_prefix=token[:10],
        scopes=sorted(set(body.scopes)),
        expired_at=_check_expiry(body.expired_at),
        user_id=owner,
    )
    session.add(row)
    await session.commit()
    out = schemas.TokenOut.model_validate(row, from_attributes=True)
    return schemas.TokenCreated(**out.model_dump(), token=token)


@router.patch(f"/{TOKENS}/{{ident}}", response_model=schemas.TokenOut, summary="Update or revoke a token")
async def update_token(
    ident: Ident,
    body: schemas.TokenUpdate,
    session: DB,
    principal: TokenCaller,
    request: Request,
) -> Any:
    """``state: inactive`` revokes it at once."""
    row = await _token(session, ident, principal, auth.ACTION_WRITE)
    fields = body.model_dump(exclude_unset=True)
    if principal.scopes is not None and ("scopes" in fields or fields.get("state") == models.STATE_ACTIVE):
        # As at creation: a token cannot widen a token (itself included) or revive a wider one it revoked.
        after = set(fields.get("scopes") or row.scopes)
        if not after <= principal.scopes:
            raise APIError(403, "a token cannot give a token scopes it does not have")
    if fields.get("expired_at") is not None:
        _check_expiry(fields["expired_at"])
    if fields.get("scopes") is not None:
        fields["scopes"] = sorted(set(fields["scopes"]))
    for name, value in fields.items():
        if value is not None:
            setattr(row, name, value)
    await session.commit()
    forget_tokens(request)
    return row


@router.delete(f"/{TOKENS}/{{ident}}", status_code=204, summary="Delete a personal access token")
async def delete_token(ident: Ident, session: DB, principal: TokenCaller, request: Request) -> Response:
    """Deleting revokes it."""
    row = await _token(session, ident, principal, auth.ACTION_WRITE)
    await session.delete(row)
    await session.commit()
    forget_tokens(request)
    return Response(status_code=204)


@router.get("/permissions", summary="Objects and actions a role can grant")
async def list_permissions(_p: Principal = Depends(require("roles", auth.ACTION_READ))) -> dict[str, Any]:
    """The API objects (with the token scope that reaches each) and the actions."""
    return {"actions": list(auth.ACTIONS), "objects": dict(sorted(auth.OBJECT_SCOPES.items()))}

"""List/get/create/update/delete routes for one table, with filters, pagination and permission checks.

No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at run time, and they refer
to the schema classes passed in.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dragonfly.manager import auth
from dragonfly.manager.api.deps import DB, Paging, Principal, paginate, require
from dragonfly.manager.api.errors import not_found

#: A row id in a path: bounded so it fits every database's 64-bit integer.
Ident = Annotated[int, Path(ge=1, le=2**63 - 1)]

#: ``async hook(session, row, body_fields, principal)`` run before a create or update is committed.
Hook = Callable[[AsyncSession, Any, dict[str, Any], Principal], Awaitable[None]]


def crud_router(
    *,
    obj: str,
    model: Any,
    noun: str,
    create: type[BaseModel],
    update: type[BaseModel],
    out: type[BaseModel],
    filters: type[BaseModel] | None = None,
    before_write: Hook | None = None,
    to_out: Callable[[Any], Any] | None = None,
    columns: dict[str, Any] | None = None,
    load_options: tuple[Any, ...] = (),
) -> APIRouter:
    """Return the five routes of ``/<obj>``; ``columns`` maps body fields to callables that build column values."""
    router = APIRouter(prefix=f"/{obj}", tags=[obj])
    read = Depends(require(obj, auth.ACTION_READ))
    write = Depends(require(obj, auth.ACTION_WRITE))
    render = to_out or (lambda row: row)
    convert = columns or {}

    async def load(session: AsyncSession, ident: int) -> Any:
        query = select(model).where(model.id == ident).options(*load_options)
        row = await session.scalar(query.execution_options(populate_existing=True))
        if row is None:
            raise not_found(noun, ident)
        return row

    def assign(row: Any, fields: dict[str, Any], body: BaseModel) -> None:
        for name, value in fields.items():
            if name in convert:
                setattr(row, name, convert[name](getattr(body, name)))
            elif hasattr(model, name):
                setattr(row, name, value)

    filter_model: Any = filters
    if filter_model is not None:

        @router.get("", response_model=list[out], summary=f"List {obj}")  # type: ignore[valid-type]
        async def list_rows(
            request: Request,
            response: Response,
            session: DB,
            page: Paging,
            where: Annotated[filter_model, Query()],
            _principal: Principal = read,
        ) -> list[Any]:
            query = select(model).order_by(model.id).options(*load_options)
            for name, value in where.model_dump(exclude_none=True).items():
                query = query.where(getattr(model, name) == value)
            rows = await paginate(session, query, page, request, response)
            return [render(row) for row in rows]

    else:

        @router.get("", response_model=list[out], summary=f"List {obj}")  # type: ignore[valid-type]
        async def list_all(
            request: Request, response: Response, session: DB, page: Paging, _principal: Principal = read
        ) -> list[Any]:
            rows = await paginate(
                session, select(model).order_by(model.id).options(*load_options), page, request, response
            )
            return [render(row) for row in rows]

    @router.get("/{ident}", response_model=out, summary=f"Get one of {obj}")
    async def get_row(ident: Ident, session: DB, _p: Principal = read) -> Any:
        return render(await load(session, ident))

    @router.post("", response_model=out, status_code=201, summary=f"Create one of {obj}")
    async def create_row(body: create, session: DB, principal: Principal = write) -> Any:  # type: ignore[valid-type]
        data = cast(BaseModel, body)
        row = model()
        fields = data.model_dump()
        assign(row, fields, data)
        if before_write is not None:
            await before_write(session, row, fields, principal)
        session.add(row)
        await session.commit()
        return render(await load(session, row.id))

    @router.patch("/{ident}", response_model=out, summary=f"Update one of {obj}")
    async def update_row(ident: Ident, body: update, session: DB, principal: Principal = write) -> Any:  # type: ignore[valid-type]
        data = cast(BaseModel, body)
        row = await load(session, ident)
        fields = data.model_dump(exclude_unset=True)
        assign(row, fields, data)
        if before_write is not None:
            await before_write(session, row, fields, principal)
        await session.commit()
        return render(await load(session, ident))

    @router.delete("/{ident}", status_code=204, summary=f"Delete one of {obj}")
    async def delete_row(ident: Ident, session: DB, _principal: Principal = write) -> Response:
        row = await load(session, ident)
        await session.delete(row)
        await session.commit()
        return Response(status_code=204)

    return router

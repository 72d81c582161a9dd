"""One error shape for every REST answer that is not a success: ``{"message": str, "errors"?: [...]}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered with ``status`` and ``{"message": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def not_found(what: str, ident: object) -> APIError:
    """Return the 404 for a missing row."""
    return APIError(404, f"{what} {ident} not found")


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo the input: it may be a password or a token.
    return [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in exc.errors()
    ]


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the common shape."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse({"message": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"message": "invalid request", "errors": _validation_errors(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        # Unique and foreign-key violations; the SQL text stays in the debug log.
        log.debug("integrity error", exc_info=exc)
        return JSONResponse(
            {"message": "conflict: a record with these unique fields exists, or a referenced record is missing"},
            status_code=409,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"message": "internal error"}, status_code=500)

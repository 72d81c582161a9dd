"""Error answers of the proxy: a status, a one-line text body and ``X-Dragonfly-Error-Type`` (docs/proxy.md).

The error type says who failed, as in Dragonfly: ``backend`` (the origin refused or was unreachable; its status
and headers are passed on), ``dfdaemon`` (the download itself failed) or ``proxy`` (the request was refused:
malformed, unauthenticated, over the rate limit, or an upstream that could not be reached).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from dragonfly.common.byte_range import InvalidRange, RangeNotSatisfiable
from dragonfly.common.errors import DigestMismatch
from dragonfly.common.ids import InvalidURL
from dragonfly.daemon.errors import BackendError, DownloadFailed, DownloadTimeout, NoSpace

ERROR_TYPE_HEADER = "X-Dragonfly-Error-Type"
# Origin headers that describe the origin's own body, not ours.
_BODY_HEADERS = frozenset(
    {"content-length", "content-type", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)


def error_response(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return an error answer with a plain-text body."""
    response = web.Response(status=status, text=" ".join(message.split()) + "\n", content_type="text/plain")
    for key, value in (headers or {}).items():
        if key.lower() not in _BODY_HEADERS:
            response.headers.add(key, value)
    response.headers[ERROR_TYPE_HEADER] = error_type
    return response


def download_error_response(exc: BaseException) -> web.Response:
    """Return the answer to a swarm download that failed before its first byte was sent."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, BackendError):
        status = exc.status_code if exc.status_code is not None and exc.status_code >= 400 else 502
        return error_response(status, "backend", message, exc.header if exc.status_code is not None else None)
    if isinstance(exc, RangeNotSatisfiable):
        return error_response(416, "dfdaemon", message, {"Content-Range": f"bytes */{exc.content_length}"})
    if isinstance(exc, InvalidRange | InvalidURL | ValueError):
        return error_response(400, "dfdaemon", message)
    if isinstance(exc, DownloadTimeout):
        return error_response(504, "dfdaemon", message)
    if isinstance(exc, NoSpace):
        return error_response(507, "dfdaemon", message)
    if isinstance(exc, DownloadFailed | DigestMismatch | ConnectionError | TimeoutError):
        return error_response(502, "dfdaemon", message)
    return error_response(500, "dfdaemon", message)

"""Back-to-source over HTTP(S): one stat per task, then one Range GET per piece (``dragonfly-protocol.md`` §3.8).

Like Dragonfly's reqwest backend: HTTP/1.1, TLS verification off, no transparent decompression (bytes are stored
as the origin sent them), redirects followed, transient failures retried with exponential backoff. Piece bytes
go from the socket buffer into a pooled buffer and then to the content file through the native writer on an
executor thread, which also yields the piece's CRC-32.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from dragonfly.common import native
from dragonfly.daemon.errors import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = "dragonfly/2.3.8"
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_CONNECT_TIMEOUT = 3.0
_BACKOFF_BASE = 0.2
# Statuses worth another try: the origin may recover; everything else 4xx is final.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class StatResult:
    """What one stat of the origin tells: the content length and the response headers."""

    content_length: int
    header: dict[str, str]


def _status_error(url: str, resp: aiohttp.ClientResponse) -> BackendError:
    reason = f" {resp.reason}" if resp.reason else ""
    return BackendError(
        f"origin returned HTTP {resp.status}{reason} for {url}",
        status_code=resp.status,
        header={k: v for k, v in resp.headers.items()},
    )


def _write_chunk(fd: int, offset: int, view: memoryview, crc: int, whole_piece: bool) -> int:
    """Write one buffered chunk at ``offset`` and return the piece CRC so far (runs on an executor thread)."""
    if whole_piece:
        return native.write_piece(fd, offset, view)
    native.write_piece(fd, offset, view)
    return native.crc32(view, crc)


class HTTPBackend:
    """The http/https origin backend."""

    def __init__(
        self,
        *,
        request_header: Mapping[str, str],
        max_retries: int,
        piece_timeout: float,
        executor: Executor,
    ) -> None:
        self._default_header = dict(request_header)
        self._max_retries = max_retries
        self._piece_timeout = piece_timeout
        self._executor = executor
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=32, ssl=False, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT, sock_read=self._piece_timeout),
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("backend is not started")
        return self._session

    def _headers(self, request_header: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
        headers = dict(self._default_header)
        headers.update((k, v) for k, v in request_header.items() if k.lower() != "range")
        headers.update(extra)
        return headers

    async def _retrying(self, what: str, attempt_fn: Callable[[], Awaitable[T]], url: str) -> T:
        """Run ``attempt_fn`` with retries on transient failures; raise BackendError at the end."""
        attempt = 0
        while True:
            try:
                return await attempt_fn()
            except BackendError as exc:
                if exc.status_code not in _TRANSIENT_STATUS or attempt >= self._max_retries:
                    raise
                error: Exception = exc
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if attempt >= self._max_retries:
                    detail = str(exc) or type(exc).__name__
                    raise BackendError(f"{what} {url} failed: {detail}") from exc
                error = exc
            attempt += 1
            delay = _BACKOFF_BASE * 2 ** (attempt - 1)
            log.info("retrying origin request", extra={"url": url, "attempt": attempt, "error": error})
            await asyncio.sleep(delay)

    async def stat(self, url: str, request_header: Mapping[str, str]) -> StatResult:
        """Return the content length with one ``GET Range: bytes=0-0`` (falling back as Dragonfly does)."""

        async def attempt() -> StatResult:
            async with asyncio.timeout(self._piece_timeout):
                headers = self._headers(request_header, {"Range": "bytes=0-0"})
                async with self.session.get(url, headers=headers) as resp:
                    if resp.status == 206:
                        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                        if match and match.group(3) != "*":
                            return StatResult(int(match.group(3)), dict(resp.headers))
                    elif resp.status == 200 and resp.content_length is not None:
                        return StatResult(resp.content_length, dict(resp.headers))
                    elif resp.status != 416 and resp.status >= 400:
                        raise _status_error(url, resp)
                # 416 (e.g. an empty object), or no usable length: ask again without a Range, then with HEAD.
                async with self.session.get(url, headers=self._headers(request_header, {})) as resp:
                    if resp.status >= 400:
                        raise _status_error(url, resp)
                    if resp.content_length is not None:
                        return StatResult(resp.content_length, dict(resp.headers))
                async with self.session.head(url, headers=self._headers(request_header, {})) as resp:
                    if resp.status < 400 and resp.content_length is not None:
                        return StatResult(resp.content_length, dict(resp.headers))
                raise BackendError(f"origin did not announce a content length for {url}")

        return await self._retrying("stat of", attempt, url)

    async def download_piece(
        self,
        url: str,
        request_header: Mapping[str, str],
        *,
        fd: int,
        offset: int,
        length: int,
        buffer: bytearray,
    ) -> int:
        """Fetch bytes ``[offset, offset+length)`` into the file at the same offset; return their CRC-32."""

        async def attempt() -> int:
            async with asyncio.timeout(self._piece_timeout):
                headers = self._headers(request_header, {"Range": f"bytes={offset}-{offset + length - 1}"})
                async with self.session.get(url, headers=headers) as resp:
                    if resp.status == 206:
                        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                        if not match or int(match.group(1)) != offset:
                            raise BackendError(
                                f"origin answered bytes={offset}-{offset + length - 1} of {url} with Content-Range "
                                f"{resp.headers.get('Content-Range')!r}"
                            )
                    elif resp.status == 200:
                        if offset != 0:
                            raise BackendError(f"origin ignored the Range header of a piece request for {url}")
                    else:
                        raise _status_error(url, resp)
                    return await self._write_body(url, resp, fd, offset, length, buffer)

        return await self._retrying("piece download from", attempt, url)

    async def _write_body(
        self, url: str, resp: aiohttp.ClientResponse, fd: int, offset: int, length: int, buffer: bytearray
    ) -> int:
        loop = asyncio.get_running_loop()
        view = memoryview(buffer)
        capacity = len(buffer)
        whole_piece = length <= capacity
        crc = 0
        written = 0
        filled = 0
        while written + filled < length:
            chunk = await resp.content.read(min(capacity - filled, length - written - filled))
            if not chunk:
                raise BackendError(
                    f"origin closed the body of {url} after {written + filled} of {length} bytes "
                    f"of the range starting at {offset} (content shorter than announced)"
                )
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            if filled == capacity or written + filled == length:
                crc = await loop.run_in_executor(
                    self._executor, _write_chunk, fd, offset + written, view[:filled], crc, whole_piece
                )
                written += filled
                filled = 0
        return crc

"""Back-to-source over HTTP(S): one stat per task, then one Range GET per piece
(``docs/reference/protocol.md#backends``).

Like Dragonfly's reqwest backend: HTTP/1.1, TLS verification off, no transparent decompression (bytes are stored
as the origin sent them), redirects followed (``307`` targets remembered per URL for a while, credentials dropped when
a redirect leaves the origin), ``User-Agent: dragonfly/<version>`` unless the request names one, no cookie jar
shared between requests, transient failures retried with exponential backoff. Piece bytes
go from the socket buffer into a pooled buffer and then to the content file through the native writer on an
executor thread, which also yields the piece's CRC-32.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

import dragonfly
from dragonfly.common import native
from dragonfly.daemon.errors import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = f"dragonfly/{dragonfly.__version__}"
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_CONNECT_TIMEOUT = 3.0
_BACKOFF_BASE = 0.2
# Statuses worth another try: the origin may recover; everything else 4xx is final.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_REDIRECT_CACHE_CAPACITY = 1000
# Credentials meant for one origin must not follow a redirect to another (reqwest and curl drop the same ones).
_SENSITIVE_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")


@dataclass(frozen=True, slots=True)
class StatResult:
    """What one stat of the origin tells: the content length and the response headers.

    ``supports_range`` is False when the origin answered the stat's ``Range`` with the whole body: its pieces cannot
    be asked for one by one, and the task is read as one streamed body instead (``open_stream``).
    """

    content_length: int
    header: dict[str, str]
    supports_range: bool = True


class RangeNotSupported(BackendError):
    """The origin answered a piece request with its whole body (200, not 206): it ignores ``Range``."""


class TemporaryRedirectCache:
    """Where each URL was last sent by ``307 Temporary Redirect``, for ``ttl`` seconds, for the latest URLs only.

    Origins that sign short-lived download URLs (object stores behind a registry) answer every piece request of a
    task with the same 307; remembering it saves a round trip per piece.
    """

    __slots__ = ("_capacity", "_clock", "_entries", "_ttl")

    def __init__(
        self, ttl: float, capacity: int = _REDIRECT_CACHE_CAPACITY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, url: str) -> str | None:
        """Return the remembered location of ``url`` unless it has expired."""
        entry = self._entries.get(url)
        if entry is None:
            return None
        location, expires_at = entry
        if expires_at <= self._clock():
            del self._entries[url]
            return None
        self._entries.move_to_end(url)
        return location

    def put(self, url: str, location: str) -> None:
        """Remember that ``url`` redirects to ``location``, evicting the least recently used URL when full."""
        self._entries[url] = (location, self._clock() + self._ttl)
        self._entries.move_to_end(url)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def discard(self, url: str) -> None:
        self._entries.pop(url, None)


def _same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


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
        cache_temporary_redirect: bool = True,
        cache_temporary_redirect_ttl: float = 600.0,
    ) -> None:
        self._default_header = dict(request_header)
        self._max_retries = max_retries
        self._piece_timeout = piece_timeout
        self._executor = executor
        self._session: aiohttp.ClientSession | None = None
        self.redirects = TemporaryRedirectCache(cache_temporary_redirect_ttl) if cache_temporary_redirect else None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=32, ssl=False, keepalive_timeout=60)
        # No cookie jar: a cookie one requester's download received must not go out with another's requests.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT, sock_read=self._piece_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
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

    def _headers(self, request_header: Mapping[str, str], extra: Mapping[str, str]) -> CIMultiDict[str]:
        # Case-insensitive, each later source replacing the earlier: a requester's "user-agent" replaces ours.
        headers: CIMultiDict[str] = CIMultiDict()
        for source in (self._default_header, request_header, extra):
            for key, value in source.items():
                if source is request_header and key.lower() == "range":
                    continue
                headers[key] = value
        headers.setdefault("User-Agent", USER_AGENT)
        return headers

    @contextlib.asynccontextmanager
    async def _open(self, method: str, url: str, headers: CIMultiDict[str]) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send ``method`` to ``url`` and yield the response after the redirects, using remembered 307 targets.

        A remembered target is only a shortcut: if asking it fails, the entries used are forgotten and the
        original URL is asked again.
        """
        used: list[str] = []
        try:
            resp = await self._follow(method, url, headers, used)
        except (aiohttp.ClientError, OSError):
            if not used:
                raise
            self._forget(used)
            resp = await self._follow(method, url, headers, None)
        else:
            if resp.status >= 400 and used:
                resp.release()
                self._forget(used)
                resp = await self._follow(method, url, headers, None)
        try:
            yield resp
        finally:
            resp.release()

    def _forget(self, urls: list[str]) -> None:
        if self.redirects is None:
            return
        for url in urls:
            self.redirects.discard(url)

    async def _follow(
        self, method: str, url: str, headers: CIMultiDict[str], used: list[str] | None
    ) -> aiohttp.ClientResponse:
        """Return the first response that is not a redirect.

        Remembered 307 targets are taken only when ``used`` is a list, which collects the URLs they were taken for.
        """
        headers = headers.copy()
        target = url
        for _ in range(_MAX_REDIRECTS + 1):
            if used is not None and self.redirects is not None and (cached := self.redirects.get(target)) is not None:
                used.append(target)
                self._strip_credentials(headers, URL(target), URL(cached))
                target = cached
                continue
            resp = await self.session.request(method, target, headers=headers, allow_redirects=False)
            location = resp.headers.get("Location")
            if resp.status not in _REDIRECT_STATUS or not location:
                return resp
            resp.release()
            next_url = resp.url.join(URL(location))
            if resp.status == 307 and self.redirects is not None:
                self.redirects.put(target, str(next_url))
            self._strip_credentials(headers, resp.url, next_url)
            target = str(next_url)
        raise BackendError(f"origin redirected {url} more than {_MAX_REDIRECTS} times")

    @staticmethod
    def _strip_credentials(headers: CIMultiDict[str], source: URL, destination: URL) -> None:
        if not _same_origin(source, destination):
            for name in _SENSITIVE_HEADERS:
                headers.popall(name, None)

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
                async with self._open("GET", url, headers) as resp:
                    if resp.status == 206:
                        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                        if match and match.group(3) != "*":
                            return StatResult(int(match.group(3)), dict(resp.headers))
                    elif resp.status == 200 and resp.content_length is not None:
                        return StatResult(resp.content_length, dict(resp.headers), supports_range=False)
                    elif resp.status != 416 and resp.status >= 400:
                        raise _status_error(url, resp)
                # 416 (e.g. an empty object), or no usable length: ask again without a Range, then with HEAD.
                async with self._open("GET", url, self._headers(request_header, {})) as resp:
                    if resp.status >= 400:
                        raise _status_error(url, resp)
                    if resp.content_length is not None:
                        return StatResult(resp.content_length, dict(resp.headers))
                async with self._open("HEAD", url, self._headers(request_header, {})) as resp:
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
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Fetch bytes ``[offset, offset+length)`` into the file at the same offset; return their CRC-32.

        ``progress`` is called with the size of each chunk as it arrives (again for a retried range).
        """

        async def attempt() -> int:
            async with asyncio.timeout(self._piece_timeout):
                headers = self._headers(request_header, {"Range": f"bytes={offset}-{offset + length - 1}"})
                async with self._open("GET", url, headers) as resp:
                    if resp.status == 206:
                        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                        if not match or int(match.group(1)) != offset:
                            raise BackendError(
                                f"origin answered bytes={offset}-{offset + length - 1} of {url} with Content-Range "
                                f"{resp.headers.get('Content-Range')!r}"
                            )
                    elif resp.status == 200:
                        if offset != 0:
                            raise RangeNotSupported(
                                f"origin ignored the Range header of a piece request for {url}", status_code=200
                            )
                    else:
                        raise _status_error(url, resp)
                    return await self._write_body(url, resp.content, fd, offset, length, buffer, progress)

        return await self._retrying("piece download from", attempt, url)

    @contextlib.asynccontextmanager
    async def open_stream(self, url: str, request_header: Mapping[str, str]) -> AsyncIterator[aiohttp.StreamReader]:
        """Open the whole body from its first byte (for an origin that ignores ``Range``) and yield its reader."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                resp = await stack.enter_async_context(self._open("GET", url, self._headers(request_header, {})))
            except (aiohttp.ClientError, OSError) as exc:
                raise BackendError(f"streamed download of {url} failed: {exc or type(exc).__name__}") from exc
            if resp.status != 200:
                raise _status_error(url, resp)
            yield resp.content

    async def read_stream_piece(
        self,
        url: str,
        reader: aiohttp.StreamReader,
        *,
        fd: int,
        offset: int,
        length: int,
        buffer: bytearray,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Cut the next ``length`` bytes of a streamed body into the file at ``offset``; return their CRC-32."""
        try:
            async with asyncio.timeout(self._piece_timeout):
                return await self._write_body(url, reader, fd, offset, length, buffer, progress)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            raise BackendError(f"streamed download of {url} failed at byte {offset}: {detail}") from exc

    async def _write_body(
        self,
        url: str,
        reader: aiohttp.StreamReader,
        fd: int,
        offset: int,
        length: int,
        buffer: bytearray,
        progress: Callable[[int], None] | None,
    ) -> int:
        loop = asyncio.get_running_loop()
        view = memoryview(buffer)
        capacity = len(buffer)
        whole_piece = length <= capacity
        crc = 0
        written = 0
        filled = 0
        while written + filled < length:
            chunk = await reader.read(min(capacity - filled, length - written - filled))
            if not chunk:
                raise BackendError(
                    f"origin closed the body of {url} after {written + filled} of {length} bytes "
                    f"of the range starting at {offset} (content shorter than announced)"
                )
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            if progress is not None:
                progress(len(chunk))
            if filled == capacity or written + filled == length:
                crc = await loop.run_in_executor(
                    self._executor, _write_chunk, fd, offset + written, view[:filled], crc, whole_piece
                )
                written += filled
                filled = 0
        return crc

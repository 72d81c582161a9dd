"""Back-to-source over HTTP(S): one stat per task, then one Range GET per piece
(``docs/reference/protocol.md#backends``). The registry of backends (``dragonfly.daemon.backends``, docs/backends.md)
reaches it through ``HTTPSource``; the HDFS and model hub backends send their requests through it too.

Like Dragonfly's reqwest backend: HTTP/1.1, no transparent decompression (bytes are stored as the origin sent them),
redirects followed (``307`` targets remembered per URL for a while, credentials dropped when a redirect leaves the
origin), ``User-Agent: dragonfly/<version>`` unless the request names one, no cookie jar shared between requests,
transient failures retried with exponential backoff. Piece bytes go from the socket buffer into a pooled buffer and
then to the content file through the native writer on an executor thread, which also yields the piece's CRC-32.

Unlike Dragonfly's, https origins are verified (system CAs, ``backend.caCert`` and the request's
``certificate_chain``) unless ``backend.insecureSkipVerify`` or the local caller says otherwise, and a download a
remote party asked for connects only to addresses the SSRF guard allows (``dragonfly.common.netguard``;
docs/security.md#origin-tls and #origin-addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

import dragonfly
from dragonfly.common.netguard import AddressPolicy, find_refusal, guarded_connector_args
from dragonfly.daemon.backends.body_socket import read_body, take_over
from dragonfly.daemon.backends.origin_head import OriginHead
from dragonfly.daemon.backends.piece_chunks import PieceDigest, write_chunk
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.errors import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = f"dragonfly/{dragonfly.__version__}"
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
# aiohttp's wording for a body shorter than its Content-Length; only the figures are shown.
_RECEIVED = re.compile(r"received (\d+) of (\d+) bytes")
_CONNECT_TIMEOUT = 3.0
_BACKOFF_BASE = 0.2
# Statuses worth another try: the origin may recover; everything else 4xx is final.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_REDIRECT_CACHE_CAPACITY = 1000
# Credentials meant for one origin must not follow a redirect to another (reqwest and curl drop the same ones).
_SENSITIVE_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")
# SSL contexts built for requests' own certificate chains, kept for the latest chains only.
_CHAIN_CONTEXTS = 16
# The most origin piece bodies read straight from their sockets at once, each on a thread of the shared download
# executor (2 x download.concurrentPieceCount + 4 threads): a seed on one origin link keeps one or two pieces in
# flight (SourceWindow), so this rarely binds, and a slow origin can hold no more than these.
_SOCKET_READERS = 4


@dataclass(frozen=True, slots=True)
class OriginOptions:
    """How one download may reach its origin: who asked decides the SSRF guard, the request adds trust roots.

    ``guarded``: the download was asked for by another host (the scheduler, a proxy client elsewhere), so it may
    connect only to addresses ``security.allowedOriginNetworks`` and the guard allow. ``certificate_chain``: DER
    certificates trusted for this request in addition to the system's and ``backend.caCert`` (Dragonfly's
    ``Download.certificate_chain``). ``insecure``: skip certificate verification (a local ``dfget
    --insecure-skip-verify``).
    """

    guarded: bool = False
    certificate_chain: tuple[bytes, ...] = ()
    insecure: bool = False


LOCAL = OriginOptions()


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


class OpenedPiece:
    """Piece 0's request, sent as the stat (``stat_with_first_piece``): the head of its ``206`` answer is in and
    checked; its body waits in the socket, the origin held back by TCP flow control, until ``download_piece`` reads
    it (``opened=``) or ``close`` drops the connection. Whoever holds one closes it."""

    __slots__ = ("_stack", "length", "response")

    def __init__(self, response: aiohttp.ClientResponse, length: int, stack: contextlib.AsyncExitStack) -> None:
        self.response = response
        self.length = length
        self._stack = stack

    async def close(self) -> None:
        # A body not read to its end closes its connection (aiohttp never pools it).
        await self._stack.aclose()


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


def _without_userinfo(url: str) -> URL | str:
    """Drop ``user:password@`` when the request carries its own Authorization header, which wins (as with curl).

    aiohttp refuses the combination with a ValueError of its own wording (issue 8 item 16).
    """
    parsed = URL(url)
    if parsed.user is None and parsed.password is None:
        return url
    return parsed.with_user(None)


def describe_origin_error(exc: BaseException) -> tuple[str, bool]:
    """Return what went wrong reaching an origin, in words a user reads, and whether another try could help.

    aiohttp's own wording ("Cannot connect to host x:443 ssl:default [...]") names its internals; this names the
    host and the cause.
    """
    refusal = find_refusal(exc)
    if refusal is not None:
        return str(refusal), False
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", None) or str(cert_error)
        return (
            f"the TLS certificate of {exc.host} could not be verified ({reason}); trust its CA with dfget --ca-cert "
            "or backend.caCert, or skip verification with dfget --insecure-skip-verify or backend.insecureSkipVerify",
            False,
        )
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        reason = getattr(exc.os_error, "reason", None) or exc.os_error.strerror or str(exc.os_error)
        return f"the TLS handshake with {exc.host}:{exc.port} failed ({reason})", False
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve the origin host {exc.host}", True
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        reason = os.strerror(os_error.errno) if os_error.errno else str(os_error) or type(os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port} ({reason.lower()})", True
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the origin closed the connection before answering", True
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return "the origin did not answer in time", True
    if isinstance(exc, aiohttp.ClientPayloadError):
        received = _RECEIVED.search(str(exc))
        detail = f" after {received.group(1)} of {received.group(2)} bytes" if received else ""
        return f"the origin closed the connection before the end of the body{detail}", True
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL {exc.url}", False
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower(), True
    return str(exc) or type(exc).__name__, True


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
        ca_cert: str | None = None,
        insecure_skip_verify: bool = False,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        self._default_header = dict(request_header)
        self._max_retries = max_retries
        self._piece_timeout = piece_timeout
        # Piece bodies being read from their sockets on executor threads now (body_socket).
        self._socket_readers = 0
        self._executor = executor
        self._ca_cert = ca_cert
        self._insecure = insecure_skip_verify
        self._policy = address_policy or AddressPolicy()
        self._session: aiohttp.ClientSession | None = None
        # Guarded downloads have a session of their own: a pooled connection to an internal address that a local
        # download opened must never carry a remote party's request.
        self._guarded_session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._chain_contexts: OrderedDict[tuple[bytes, ...], ssl.SSLContext] = OrderedDict()
        self.redirects = TemporaryRedirectCache(cache_temporary_redirect_ttl) if cache_temporary_redirect else None

    async def start(self) -> None:
        if self._insecure:
            log.warning(
                "backend.insecureSkipVerify is set: certificates of https origins are not verified, so whoever can "
                "intercept a connection to an origin chooses the bytes every peer gets"
            )
        self._ssl = self._context(())
        self._session = self._new_session(aiohttp.TCPConnector(limit=0, limit_per_host=32, keepalive_timeout=60))
        guard = guarded_connector_args(self._policy)
        self._guarded_session = self._new_session(
            aiohttp.TCPConnector(limit=0, limit_per_host=32, keepalive_timeout=60, **guard)
        )

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        # No cookie jar: a cookie one requester's download received must not go out with another's requests.
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT, sock_read=self._piece_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _context(self, chain: tuple[bytes, ...]) -> ssl.SSLContext:
        """Return the client context trusting the system CAs, ``backend.caCert`` and ``chain`` (DER certificates)."""
        context = ssl.create_default_context()
        if self._ca_cert:
            try:
                context.load_verify_locations(cafile=self._ca_cert)
            except (OSError, ssl.SSLError) as exc:
                raise BackendError(f"cannot load backend.caCert {self._ca_cert}: {exc}") from None
        if chain:
            try:
                context.load_verify_locations(cadata=b"".join(chain))
            except (ssl.SSLError, ValueError) as exc:
                raise BackendError(f"the request's certificate_chain is not DER certificates: {exc}") from None
        return context

    def _ssl_for(self, options: OriginOptions) -> ssl.SSLContext | bool:
        if self._insecure or options.insecure:
            return False
        if not options.certificate_chain:
            assert self._ssl is not None
            return self._ssl
        context = self._chain_contexts.get(options.certificate_chain)
        if context is None:
            context = self._chain_contexts[options.certificate_chain] = self._context(options.certificate_chain)
            while len(self._chain_contexts) > _CHAIN_CONTEXTS:
                self._chain_contexts.popitem(last=False)
        self._chain_contexts.move_to_end(options.certificate_chain)
        return context

    async def close(self) -> None:
        for session in (self._session, self._guarded_session):
            if session is not None:
                await session.close()
        self._session = self._guarded_session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("backend is not started")
        return self._session

    def _session_for(self, options: OriginOptions) -> aiohttp.ClientSession:
        session = self._guarded_session if options.guarded else self._session
        if session is None:
            raise RuntimeError("backend is not started")
        return session

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
    async def _open(
        self, method: str, url: str, headers: CIMultiDict[str], options: OriginOptions
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send ``method`` to ``url`` and yield the response after the redirects, using remembered 307 targets.

        A remembered target is only a shortcut: if asking it fails, the entries used are forgotten and the
        original URL is asked again.
        """
        used: list[str] = []
        try:
            resp = await self._follow(method, url, headers, used, options)
        except (aiohttp.ClientError, OSError):
            if not used:
                raise
            self._forget(used)
            resp = await self._follow(method, url, headers, None, options)
        else:
            if resp.status >= 400 and used:
                resp.release()
                self._forget(used)
                resp = await self._follow(method, url, headers, None, options)
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
        self, method: str, url: str, headers: CIMultiDict[str], used: list[str] | None, options: OriginOptions
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
            # Every hop goes through the same session: a redirect to an internal address meets the guard too.
            resp = await self._session_for(options).request(
                method,
                _without_userinfo(target) if "Authorization" in headers else target,
                headers=headers,
                allow_redirects=False,
                ssl=self._ssl_for(options),
            )
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
                detail, transient = describe_origin_error(exc)
                if not transient or attempt >= self._max_retries:
                    raise BackendError(f"{what} {url} failed: {detail}") from exc
                error = exc
            attempt += 1
            delay = _BACKOFF_BASE * 2 ** (attempt - 1)
            log.info("retrying origin request", extra={"url": url, "attempt": attempt, "error": error})
            await asyncio.sleep(delay)

    async def fetch_body(
        self, url: str, request_header: Mapping[str, str], options: OriginOptions = LOCAL, *, limit: int
    ) -> tuple[bytes, dict[str, str]]:
        """GET a small document (an API's JSON answer): its body, at most ``limit`` bytes, and response headers."""

        async def attempt() -> tuple[bytes, dict[str, str]]:
            async with asyncio.timeout(self._piece_timeout):
                async with self._open("GET", url, self._headers(request_header, {}), options) as resp:
                    if resp.status >= 300:
                        raise _status_error(url, resp)
                    chunks: list[bytes] = []
                    size = 0
                    while chunk := await resp.content.read(65536):
                        size += len(chunk)
                        if size > limit:
                            raise BackendError(f"the answer of {url} is larger than {limit} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks), dict(resp.headers)

        return await self._retrying("request to", attempt, url)

    async def stat(self, url: str, request_header: Mapping[str, str], options: OriginOptions = LOCAL) -> StatResult:
        """Return the content length with one ``GET Range: bytes=0-0`` (falling back as Dragonfly does)."""

        async def attempt() -> StatResult:
            async with asyncio.timeout(self._piece_timeout):
                headers = self._headers(request_header, {"Range": "bytes=0-0"})
                async with self._open("GET", url, headers, options) as resp:
                    if resp.status == 206:
                        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                        if match and match.group(3) != "*":
                            return StatResult(int(match.group(3)), dict(resp.headers))
                    elif resp.status == 200 and resp.content_length is not None:
                        return StatResult(resp.content_length, dict(resp.headers), supports_range=False)
                    elif resp.status != 416 and resp.status >= 400:
                        raise _status_error(url, resp)
                # 416 (e.g. an empty object), or no usable length: ask again without a Range, then with HEAD.
                async with self._open("GET", url, self._headers(request_header, {}), options) as resp:
                    if resp.status >= 400:
                        raise _status_error(url, resp)
                    if resp.content_length is not None:
                        return StatResult(resp.content_length, dict(resp.headers))
                async with self._open("HEAD", url, self._headers(request_header, {}), options) as resp:
                    if resp.status < 400 and resp.content_length is not None:
                        return StatResult(resp.content_length, dict(resp.headers))
                raise BackendError(f"origin did not announce a content length for {url}")

        return await self._retrying("stat of", attempt, url)

    async def _ranged_stat(
        self, url: str, request_header: Mapping[str, str], options: OriginOptions, last: int
    ) -> tuple[StatResult, int | None, int, aiohttp.ClientResponse, contextlib.AsyncExitStack] | None:
        """Stat ``url`` with ``GET Range: bytes=0-last``, its answer left open for the caller to keep or close.

        Returns the stat, the first and last byte of a ``206``'s ``Content-Range`` (None and the length for a
        ``200``, an origin that ignores ``Range``), the response and the stack that closes it; None when only the
        plain ``stat`` can answer (a 416, a ``*`` total, no usable length). Another status >= 400 is its error.
        """
        stack = contextlib.AsyncExitStack()
        try:
            async with asyncio.timeout(self._piece_timeout):
                headers = self._headers(request_header, {"Range": f"bytes=0-{last}"})
                resp = await stack.enter_async_context(self._open("GET", url, headers, options))
                if resp.status == 206:
                    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if match and match.group(3) != "*":
                        stat = StatResult(int(match.group(3)), dict(resp.headers))
                        return stat, int(match.group(1)), int(match.group(2)), resp, stack
                elif resp.status == 200 and resp.content_length is not None:
                    stat = StatResult(resp.content_length, dict(resp.headers), supports_range=False)
                    return stat, None, resp.content_length - 1, resp, stack
                elif resp.status != 416 and resp.status >= 400:
                    raise _status_error(url, resp)
        except BaseException:
            await stack.aclose()
            raise
        await stack.aclose()
        return None

    async def stat_with_first_piece(
        self, url: str, request_header: Mapping[str, str], options: OriginOptions = LOCAL, *, piece_length: int
    ) -> tuple[StatResult, OpenedPiece | None]:
        """Stat ``url`` with piece 0's request, ``GET Range: bytes=0-(piece_length-1)``, whose body is kept open.

        For a download that fetches from the origin right after its stat: one round trip instead of two, and piece
        0's bytes are on their way while the task is prepared and registered. The length is the origin's
        ``Content-Range`` total, as the 1-byte stat takes it. The body is kept only when the answer is exactly piece
        0 of that length at ``piece_length``: a ``206`` for ``bytes 0-(min(piece_length, total)-1)`` whose
        ``Content-Length``, if given, agrees; the caller still checks that the task's piece length is
        ``piece_length``. Anything else is answered as ``stat`` answers it: a ``200`` (an origin that ignores
        ``Range``) by its ``Content-Length``, with no body kept, and a 416, a ``*`` total or no usable length by
        ``stat`` itself.
        """

        async def attempt() -> tuple[StatResult, OpenedPiece | None] | None:
            answer = await self._ranged_stat(url, request_header, options, piece_length - 1)
            if answer is None:
                return None
            stat, first, last, resp, stack = answer
            length = min(piece_length, stat.content_length)
            if first == 0 and last == length - 1 and resp.content_length in (None, length):
                return stat, OpenedPiece(resp, length, stack)
            await stack.aclose()
            return stat, None

        answer = await self._retrying("stat of", attempt, url)
        if answer is None:
            return await self.stat(url, request_header, options), None
        return answer

    async def stat_with_head(
        self,
        url: str,
        request_header: Mapping[str, str],
        options: OriginOptions = LOCAL,
        *,
        head: int,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> tuple[StatResult, OriginHead | None]:
        """Stat ``url`` with ``GET Range: bytes=0-(head-1)``; its body becomes an OriginHead, filled while it arrives.

        One request instead of the 1-byte stat: a ``206`` gives the length in ``Content-Range``; a ``200`` (an
        origin that ignores ``Range``) gives ``Content-Length``, and only ``head`` bytes of its body are read before
        the connection is closed. The stat returns once the headers are in; ``spawn`` runs the body's reader in the
        background (within ``piece_timeout``). Anything else falls back to ``stat``, with no head.
        """

        async def attempt() -> tuple[StatResult, int, aiohttp.ClientResponse, contextlib.AsyncExitStack] | None:
            answer = await self._ranged_stat(url, request_header, options, head - 1)
            if answer is None:
                return None
            stat, first, last, resp, stack = answer
            if first in (None, 0):
                return stat, min(last + 1, head, stat.content_length), resp, stack
            await stack.aclose()
            return None

        answer = await self._retrying("stat of", attempt, url)
        if answer is None:
            return await self.stat(url, request_header, options), None
        stat, size, resp, stack = answer
        origin_head = OriginHead(size, stat.content_length, stat.header)
        spawn(self._read_head(url, resp, stack, origin_head))
        return stat, origin_head

    async def _read_head(
        self, url: str, resp: aiohttp.ClientResponse, stack: contextlib.AsyncExitStack, head: OriginHead
    ) -> None:
        try:
            async with asyncio.timeout(self._piece_timeout):
                while len(head) < head.size:
                    chunk = await resp.content.read(head.size - len(head))
                    if not chunk:
                        break
                    head.feed(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # What arrived is still the content's prefix; the rest comes from the pieces.
            log.info("the origin's head broke off", extra={"url": url, "bytes": len(head), "error": repr(exc)})
        finally:
            head.end()
            # A body read only in part is not reused: aiohttp closes its connection on release.
            await stack.aclose()

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
        options: OriginOptions = LOCAL,
        digest: PieceDigest | None = None,
        opened: OpenedPiece | None = None,
    ) -> int:
        """Fetch bytes ``[offset, offset+length)`` into the file at the same offset; return their CRC-32.

        ``progress`` is called with the size of each chunk as it arrives (again for a retried range); ``digest``
        is fed the bytes as they are written (restarted for a retried range). ``opened``, piece 0's request sent
        with the stat, is read first (and closed): if it is not this range or its body fails, the piece is asked
        for again as usual.
        """
        if opened is not None:
            try:
                if (offset, length) == (0, opened.length):
                    async with asyncio.timeout(self._piece_timeout):
                        return await self._receive_piece(
                            url, opened.response, fd, offset, length, buffer, progress, digest
                        )
            except (BackendError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                detail = exc.message if isinstance(exc, BackendError) else describe_origin_error(exc)[0]
                log.info(
                    "the piece request sent with the stat failed, asking again", extra={"url": url, "error": detail}
                )
            finally:
                await opened.close()

        async def attempt() -> int:
            async with asyncio.timeout(self._piece_timeout):
                headers = self._headers(request_header, {"Range": f"bytes={offset}-{offset + length - 1}"})
                async with self._open("GET", url, headers, options) as resp:
                    return await self._receive_piece(url, resp, fd, offset, length, buffer, progress, digest)

        return await self._retrying("piece download from", attempt, url)

    async def _receive_piece(
        self,
        url: str,
        resp: aiohttp.ClientResponse,
        fd: int,
        offset: int,
        length: int,
        buffer: bytearray,
        progress: Callable[[int], None] | None,
        digest: PieceDigest | None,
    ) -> int:
        """Check the answer to the request for ``[offset, offset+length)`` and write its body; return its CRC-32."""
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
        # At most _SOCKET_READERS bodies hold an executor thread at once: a slow or hostile origin must not take the
        # threads parent fetches and storage reads share; beyond that, aiohttp reads.
        body = take_over(resp, length) if self._socket_readers < _SOCKET_READERS else None
        if body is None:
            return await self._write_body(url, resp.content, fd, offset, length, buffer, progress, digest)
        self._socket_readers += 1
        try:
            return await read_body(
                self._executor, body, fd, offset, length, buffer, digest, self._piece_timeout, progress
            )
        finally:
            self._socket_readers -= 1
            # aiohttp's parser never saw the body: the connection cannot carry another request.
            resp.close()
            body.close()

    @contextlib.asynccontextmanager
    async def open_stream(
        self, url: str, request_header: Mapping[str, str], options: OriginOptions = LOCAL
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """Open the whole body from its first byte (for an origin that ignores ``Range``) and yield its reader."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                resp = await stack.enter_async_context(
                    self._open("GET", url, self._headers(request_header, {}), options)
                )
            except (aiohttp.ClientError, OSError) as exc:
                detail, _transient = describe_origin_error(exc)
                raise BackendError(f"streamed download of {url} failed: {detail}") from exc
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
        digest: PieceDigest | None = None,
    ) -> int:
        """Cut the next ``length`` bytes of a streamed body into the file at ``offset``; return their CRC-32."""
        try:
            async with asyncio.timeout(self._piece_timeout):
                return await self._write_body(url, reader, fd, offset, length, buffer, progress, digest)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail, _transient = describe_origin_error(exc)
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
        digest: PieceDigest | None,
    ) -> int:
        if digest is not None:
            digest.restart()
        view = memoryview(buffer)
        capacity = len(buffer)
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
                # run_blocking: if the piece times out or is cancelled meanwhile, the pooled buffer stays ours until
                # the thread has finished writing from it (issue 8 item 19).
                crc = await run_blocking(
                    self._executor, write_chunk, fd, offset + written, view[:filled], crc, written == 0, digest
                )
                written += filled
                filled = 0
        return crc

"""Requests that do not go through the swarm: forwarded to the upstream and answered with its reply, faithfully.

Method, target, headers (repeated ones kept, in order) and body go upstream as the client sent them, but for the
hop-by-hop headers and the proxy's own ``X-Dragonfly-*``; no header is added (no ``User-Agent``, no
``Accept-Encoding``), nothing is decompressed, redirects are not followed (the client sees the 3xx). The reply's
status, reason and headers come back the same way and its body streams through. If the upstream breaks off the
body, the client's connection is aborted, so a cut body never looks complete.

Upstream TLS is verified against the system's CAs plus ``proxy.registryMirror.cert``: a client that trusts the
proxy's CA for an intercepted host relies on the proxy to have checked the real one.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from dragonfly.common.netguard import AddressPolicy, find_refusal, guarded_connector_args
from dragonfly.daemon.proxy.errors import error_response
from dragonfly.daemon.proxy.routing import forwarded_headers, response_headers

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 10.0
_CHUNK = 256 * 1024
# Headers aiohttp's client would otherwise add on its own.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_NO_BODY_STATUS = frozenset({204, 304})


def upstream_ssl_context(extra_ca: str | None) -> ssl.SSLContext:
    """Return the client TLS context for upstreams: system CAs, plus ``extra_ca`` (a PEM bundle) when given."""
    context = ssl.create_default_context()
    if extra_ca:
        context.load_verify_locations(cafile=extra_ca)
    return context


class Forwarder:
    """The proxy's HTTP client for direct requests."""

    def __init__(
        self, *, extra_ca: str | None, read_timeout: float, address_policy: AddressPolicy | None = None
    ) -> None:
        self._ssl = upstream_ssl_context(extra_ca)
        self._read_timeout = read_timeout
        self._policy = address_policy or AddressPolicy()
        self._session: aiohttp.ClientSession | None = None
        # For clients on other hosts: the SSRF guard on every connection, in a pool of its own.
        self._guarded_session: aiohttp.ClientSession | None = None

    def _new_session(self, **guard: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=64, ssl=self._ssl, keepalive_timeout=60, **guard),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT, sock_read=self._read_timeout),
        )

    async def start(self) -> None:
        self._session = self._new_session()
        self._guarded_session = self._new_session(**guarded_connector_args(self._policy))

    async def close(self) -> None:
        for session in (self._session, self._guarded_session):
            if session is not None:
                await session.close()
        self._session = self._guarded_session = None

    async def forward(
        self,
        request: web.BaseRequest,
        url: str,
        *,
        error_type: str | None = None,
        guarded: bool = False,
        tee: Callable[[str, bytes], None] | None = None,
        tee_limit: int = 0,
    ) -> web.StreamResponse:
        """Send ``request`` to ``url`` and stream the reply back (through the SSRF guard when ``guarded``).

        ``error_type``, when given, is added as ``X-Dragonfly-Error-Type`` to an error reply (used when the swarm
        path was refused by the origin and its own answer is passed on). ``tee``, when given, is called with the
        ``Content-Type`` and the body of a ``200`` reply of at most ``tee_limit`` bytes once the client has all of it.
        """
        session = self._guarded_session if guarded else self._session
        assert session is not None, "forwarder not started"
        headers = forwarded_headers(request.headers)
        body = request.content if request.body_exists else None
        try:
            upstream = await session.request(
                request.method,
                # Sent as the client wrote it: no re-quoting of its path or query.
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except aiohttp.ClientError as exc:
            if (refusal := find_refusal(exc)) is not None:
                return error_response(403, "proxy", str(refusal))
            if isinstance(exc, aiohttp.ClientSSLError):
                return error_response(502, "proxy", f"TLS to the upstream of {url} failed: {exc}")
            return error_response(502, "proxy", f"cannot reach the upstream of {url}: {exc or type(exc).__name__}")
        except (OSError, TimeoutError) as exc:
            return error_response(502, "proxy", f"cannot reach the upstream of {url}: {exc or type(exc).__name__}")
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(response_headers(upstream.headers))
            if error_type is not None and upstream.status >= 400:
                response.headers["X-Dragonfly-Error-Type"] = error_type
            no_body = request.method == "HEAD" or upstream.status in _NO_BODY_STATUS or upstream.status < 200
            # Without a Content-Length, aiohttp answers an HTTP/1.1 client chunked: the end is explicit, a cut shows.
            await response.prepare(request)
            if no_body:
                await response.write_eof()
                return response
            kept: bytearray | None = bytearray() if tee is not None and upstream.status == 200 else None
            try:
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                    if kept is not None:
                        kept += chunk
                        if len(kept) > tee_limit:
                            kept = None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("upstream body broke off; aborting the client's answer", extra={"url": url, "error": exc})
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            if tee is not None and kept is not None:
                tee(upstream.headers.get("Content-Type", ""), bytes(kept))
            return response
        finally:
            upstream.release()

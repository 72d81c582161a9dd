"""The proxy's listener: one port for registry-mirror requests, forward-proxy requests and CONNECT tunnels.

A connection's first bytes decide what it is. ``CONNECT host:port`` is handled here: for a host listed under
``proxy.hijackHTTPS.hosts`` (and with a CA configured) TLS is terminated with a certificate minted for that host and
the requests inside are served like any other (https to that host); any other host gets a blind TCP tunnel, so its
clients see the host's own certificate. Every other connection is HTTP/1.1 served by aiohttp's low-level server.
Each request then passes the rate limit (429) and, when ``basicAuth`` is set, the ``Proxy-Authorization`` check
(407), and is routed (``routing.py``) either through the swarm (``p2p.py``) or straight upstream (``forward.py``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import socket
import time
import typing
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from dragonfly.common.byte_range import find_range_header
from dragonfly.common.errors import OriginAddressRefused
from dragonfly.common.netguard import AddressPolicy, is_remote_client
from dragonfly.common.patterns import compile_pattern
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.errors import BackendError
from dragonfly.daemon.proxy import manifest_blobs
from dragonfly.daemon.proxy.certs import LeafCertificates
from dragonfly.daemon.proxy.config import ProxyConfig
from dragonfly.daemon.proxy.errors import ERROR_TYPE_HEADER, error_response
from dragonfly.daemon.proxy.forward import Forwarder
from dragonfly.daemon.proxy.manifest_blobs import is_manifest_get
from dragonfly.daemon.proxy.p2p import P2PResponder
from dragonfly.daemon.proxy.routing import BadProxyRequest, build_download, is_host_port, route, wants_prefetch
from dragonfly.daemon.socket_relay import RelayEnd
from dragonfly.daemon.storage import Storage

log = logging.getLogger(__name__)

_CONNECT = b"CONNECT "
# A request head (line and headers) larger than this is refused; aiohttp applies similar limits to the others.
_MAX_HEAD = 64 * 1024
# A client must send its first request head, and finish a TLS handshake, within these.
_HEAD_TIMEOUT = 30.0
_HANDSHAKE_TIMEOUT = 30.0
_TUNNEL_CONNECT_TIMEOUT = 10.0
_AUTH_REALM = 'Basic realm="dragonfly"'


class RequestRateLimiter:
    """A token bucket of requests: ``rate`` a second, bursts of up to one second's worth."""

    __slots__ = ("_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._tokens = rate
        self._clock = clock
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class ProxyServer:
    """The proxy and registry mirror of one dfdaemon."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        tasks: TaskManager,
        storage: Storage,
        executor: Executor,
        read_timeout: float,
        address_policy: AddressPolicy | None = None,
    ) -> None:
        self._config = config
        self._policy = address_policy or AddressPolicy()
        self._limiter = RequestRateLimiter(config.server.request_rate_limit)
        auth = config.server.basic_auth
        self._expected_auth = (
            None
            if auth is None
            else "Basic " + base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode("ascii")
        )
        self._certs: LeafCertificates | None = None
        if config.server.ca_cert is not None and config.server.ca_key is not None:
            self._certs = LeafCertificates(config.server.ca_cert, config.server.ca_key)
        self._hijack = [compile_pattern(host.regex) for host in config.hijack_https.hosts]
        self._forwarder = Forwarder(
            extra_ca=config.registry_mirror.cert, read_timeout=read_timeout, address_policy=self._policy
        )
        self._p2p = P2PResponder(
            tasks,
            storage,
            executor,
            read_buffer_size=config.read_buffer_size,
            spawn=self._spawn_drain,
            origin_head=config.origin_head,
        )
        self._tasks = tasks
        # Only a whole-blob GET that may read the origin's head has a gate to prepare (p2p.py).
        self._prepares_heads = config.origin_head > 0 and not config.disable_back_to_source
        self._http = web.Server(self._handle, access_log=None)
        self._tunnel_servers: set[web.Server] = set()
        self._raw: set[asyncio.BaseTransport] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        await self._forwarder.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Sniffer(self, None), self._config.server.ip, self._config.server.port, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening, end open connections (in-flight answers get ``grace`` seconds), release everything."""
        if self._server is not None:
            self._server.close()
        for transport in list(self._raw):
            transport.close()
        for server in [self._http, *self._tunnel_servers]:
            await server.shutdown(grace)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._forwarder.close()
        if self._certs is not None:
            self._certs.close()

    # ------------------------------------------------------------------ requests

    def _authorized(self, value: str | None) -> bool:
        if self._expected_auth is None:
            return True
        return value is not None and hmac.compare_digest(value.strip().encode(), self._expected_auth.encode())

    async def _handle(self, request: web.BaseRequest, tunnel: str | None = None) -> web.StreamResponse:
        if not self._limiter.allow():
            return error_response(429, "proxy", "too many requests: over proxy.server.requestRateLimit")
        # A tunnel was authenticated by its CONNECT; its inner requests carry no proxy credentials.
        if tunnel is None and not self._authorized(request.headers.get("Proxy-Authorization")):
            return error_response(407, "proxy", "proxy authentication required", {"Proxy-Authenticate": _AUTH_REALM})
        if request.method == "CONNECT":
            return error_response(400, "proxy", "CONNECT must be the first request of a connection")
        try:
            target = route(request.method, request.raw_path, request.headers, self._config, tunnel=tunnel)
            download = build_download(target.url, request.headers, target.rule, self._config) if target.p2p else None
            prefetch = (
                download is not None
                and find_range_header(request.headers) is not None
                and wants_prefetch(request.headers, self._config)
            )
        except BadProxyRequest as exc:
            return error_response(400, "proxy", str(exc))
        # A client on another host gets the SSRF guard (docs/security.md#origin-addresses); this host's own
        # processes can reach its loopback services anyway.
        remote = is_remote_client(request.transport.get_extra_info("peername") if request.transport else None)
        if download is None:
            tee = None
            if self._prepares_heads and is_manifest_get(request.method, request.raw_path):
                tee = functools.partial(self._prepare_blobs, request, tunnel)
            return await self._forwarder.forward(
                request, target.url, guarded=remote, tee=tee, tee_limit=manifest_blobs.MAX_SIZE
            )
        answer = await self._p2p.respond(request, download, prefetch=prefetch, remote=remote)
        if isinstance(answer, BackendError):
            # The origin refused: pass its own answer on untouched (a registry's 401 challenge and JSON body).
            return await self._forwarder.forward(request, target.url, error_type="backend", guarded=remote)
        return answer

    def _prepare_blobs(self, request: web.BaseRequest, tunnel: str | None, content_type: str, body: bytes) -> None:
        """An image manifest went to the client: its blob GETs come next, so their origin-head gates ask now."""
        # A blob no larger than the head gains nothing from it: its GET, if any, asks for itself.
        for digest in manifest_blobs.blob_digests(content_type, body, larger_than=self._config.origin_head):
            target = manifest_blobs.blob_target(request.raw_path, digest)
            try:
                blob = route("GET", target, request.headers, self._config, tunnel=tunnel)
                if blob.p2p:
                    self._tasks.prepare_origin_head(build_download(blob.url, request.headers, blob.rule, self._config))
            except ValueError:
                # A hint only (BadProxyRequest included): the blob's own GET gets the request's error, if any.
                return

    def _spawn_drain(self, events: AsyncIterator[object]) -> None:
        async def drain() -> None:
            try:
                async for _event in events:
                    pass
            except Exception as exc:
                log.info("background prefetch failed", extra={"error": repr(exc)})

        self._track(asyncio.ensure_future(drain()))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ connections

    def serve_http(self, transport: asyncio.Transport, data: bytes, tunnel: str | None) -> None:
        """Hand a connection (and the bytes read so far) to aiohttp."""
        if tunnel is None:
            server = self._http
        else:
            server = _TunnelServer(functools.partial(self._handle, tunnel=tunnel), self._tunnel_servers.discard)
            self._tunnel_servers.add(server)
        handler = server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def connect(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        self._raw.add(transport)
        self._track(asyncio.ensure_future(self._connect(transport, head, rest)))

    async def _connect(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        try:
            await self._open_tunnel(transport, head, rest)
        except Exception as exc:
            log.info("CONNECT failed", extra={"error": repr(exc)})
            transport.abort()
        finally:
            self._raw.discard(transport)

    async def _open_tunnel(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        if not self._limiter.allow():
            _reply(transport, 429, "Too Many Requests", "too many requests: over proxy.server.requestRateLimit")
            return
        if not self._authorized(headers.get("proxy-authorization")):
            _reply(transport, 407, "Proxy Authentication Required", "proxy authentication required", _AUTH_REALM)
            return
        if len(parts) != 3 or ":" not in parts[1] or not is_host_port(parts[1]):
            _reply(transport, 400, "Bad Request", f"CONNECT needs a host:port target, got {lines[0][:200]!r}")
            return
        authority = parts[1]
        host, _, port = authority.rpartition(":")
        if self._certs is not None and any(pattern.search(authority) for pattern in self._hijack):
            await self._intercept(transport, authority, host.strip("[]"), rest)
            return
        loop = asyncio.get_running_loop()
        client = RelayEnd()
        try:
            address = host.strip("[]")
            if is_remote_client(transport.get_extra_info("peername")):
                address = await self._allowed_address(address, int(port))
            upstream, upstream_pipe = await asyncio.wait_for(
                loop.create_connection(RelayEnd, address, int(port)), _TUNNEL_CONNECT_TIMEOUT
            )
        except OriginAddressRefused as exc:
            _reply(transport, 403, "Forbidden", str(exc))
            return
        except (OSError, TimeoutError) as exc:
            _reply(transport, 502, "Bad Gateway", f"cannot connect to {authority}: {exc or type(exc).__name__}")
            return
        transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        transport.set_protocol(client)
        client.connection_made(transport)
        client.link(upstream)
        upstream_pipe.link(transport)
        if rest:
            upstream.write(rest)
        transport.resume_reading()

    async def _allowed_address(self, host: str, port: int) -> str:
        """Resolve a tunnel's host once and return an address the SSRF guard allows (connected to as is)."""
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), _TUNNEL_CONNECT_TIMEOUT
        )
        addresses = [str(info[4][0]) for info in infos]
        for address in addresses:
            if self._policy.refusal(address) is None:
                return address
        self._policy.check(addresses[0] if addresses else host, host)
        raise OSError(f"cannot resolve {host}")

    async def _intercept(self, transport: asyncio.Transport, authority: str, host: str, rest: bytes) -> None:
        assert self._certs is not None
        if rest:
            # A client must wait for the 200 before its TLS handshake; bytes before it cannot be TLS for us.
            transport.abort()
            return
        context = self._certs.context(host)
        transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        inner = _Sniffer(self, authority)
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport, inner, context, server_side=True, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake of an intercepted CONNECT failed", extra={"host": authority, "error": repr(exc)})
            transport.abort()
            return
        if tls is None:
            return
        inner.connection_made(tls)


class _TunnelServer(web.Server):
    """aiohttp's server for the one connection inside an intercepted tunnel; forgotten when it closes."""

    def __init__(self, handler: Callable[[web.BaseRequest], Any], on_closed: Callable[[web.Server], None]) -> None:
        super().__init__(handler, access_log=None)
        self._on_closed = on_closed

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._on_closed(self)


class _Sniffer(asyncio.Protocol):
    """Reads a connection's first bytes: a CONNECT head goes to the proxy, anything else to aiohttp."""

    def __init__(self, proxy: ProxyServer, tunnel: str | None) -> None:
        self._proxy = proxy
        self._tunnel = tunnel
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they have its interface.
        self._transport = typing.cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(_HEAD_TIMEOUT, self._transport.abort)
        if self._buffer:
            self._examine()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._transport is not None and not self._done:
            self._examine()

    def _examine(self) -> None:
        assert self._transport is not None
        transport = self._transport
        if self._tunnel is None:
            prefix = bytes(self._buffer[: len(_CONNECT)]).upper()
            if len(prefix) < len(_CONNECT) and _CONNECT.startswith(prefix):
                return
            if prefix == _CONNECT:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > _MAX_HEAD:
                        self._finish()
                        _reply(transport, 431, "Request Header Fields Too Large", "CONNECT head too large")
                    return
                head, rest = bytes(self._buffer[:end]), bytes(self._buffer[end + 4 :])
                self._finish()
                transport.pause_reading()
                self._proxy.connect(transport, head, rest)
                return
        data = bytes(self._buffer)
        self._finish()
        self._proxy.serve_http(transport, data, self._tunnel)

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        self._buffer.clear()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _reply(
    transport: asyncio.Transport, status: int, reason: str, message: str, authenticate: str | None = None
) -> None:
    """Answer a CONNECT with an error and close the connection."""
    body = (" ".join(message.split()) + "\n").encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"{ERROR_TYPE_HEADER}: proxy",
        "Connection: close",
    ]
    if authenticate is not None:
        head.append(f"Proxy-Authenticate: {authenticate}")
    transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    transport.close()

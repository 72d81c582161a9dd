"""The ``proxy:`` section of dfdaemon.yaml: Dragonfly's keys and defaults (docs/proxy.md).

Differences from Dragonfly, each for safety: the proxy listens on 127.0.0.1 unless told otherwise (it faces the
local container runtime; Dragonfly binds 0.0.0.0), HTTPS is only intercepted for the hosts listed under
``hijackHTTPS.hosts`` and only with a configured CA (every other CONNECT is tunnelled untouched), and by default
OCI blob URLs go through the swarm (the rule Dragonfly's Helm chart installs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dragonfly.common.config import Size
from dragonfly.common.patterns import compile_pattern
from dragonfly.common.piece import MIN_PIECE_LENGTH

#: Dragonfly's Helm chart rule: OCI layer and config blobs go through the swarm; manifests and tokens do not.
DEFAULT_RULE_REGEX = r"blobs/sha256.*"
_MAX_BASIC_AUTH = 20
#: ``originHead`` default: enough for a client's first reads, small enough that 3 peers pulling an image cost its
#: registry a few percent more than the image (bench pull).
ORIGIN_HEAD_DEFAULT = 256 * 1024
#: ``originHeadMaxPeers`` default: the first peers of a rollout all get a direct pull's first byte; the origin serves
#: at most this many heads of a blob (2 MiB with the default head) however many peers pull it.
ORIGIN_HEAD_MAX_PEERS_DEFAULT = 8
#: A smaller head than this does not cover a client's first read (64 KiB).
MIN_ORIGIN_HEAD = 64 * 1024


def _compile(name: str, pattern: str) -> None:
    # RE2: these patterns meet request URLs and CONNECT targets (dragonfly.common.patterns).
    try:
        compile_pattern(pattern)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@dataclass(frozen=True, slots=True)
class BasicAuthConfig:
    """Credentials clients must send in ``Proxy-Authorization: Basic``."""

    # User name clients send (1 to 20 characters).
    username: str = ""
    # Password clients send (1 to 20 characters).
    password: str = ""

    def validate(self) -> None:
        for name, value in (("username", self.username), ("password", self.password)):
            if not 1 <= len(value) <= _MAX_BASIC_AUTH:
                raise ValueError(f"{name} must be 1 to {_MAX_BASIC_AUTH} characters")


@dataclass(frozen=True, slots=True)
class ProxyServerConfig:
    """Where the proxy listens, how many requests a second it takes, and the CA it signs intercepted hosts with."""

    # Listen address. 127.0.0.1 by default: the proxy serves the local container runtime (Dragonfly binds 0.0.0.0).
    ip: str = "127.0.0.1"
    # Listen port (0 picks a free one; `dragonfly up` does that and prints it).
    port: int = 4001
    # Requests per second the proxy takes (bursts of one second's worth); beyond: 429.
    request_rate_limit: int = 4000
    # PEM CA certificate that signs the certificates of intercepted HTTPS hosts (hijackHTTPS.hosts).
    ca_cert: str | None = None
    # PEM private key of caCert.
    ca_key: str | None = None
    # When set, every request (and CONNECT) must carry these credentials in Proxy-Authorization: Basic.
    basic_auth: BasicAuthConfig | None = None

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535 (0 picks a free port), got {self.port}")
        if self.request_rate_limit < 1:
            raise ValueError(f"requestRateLimit must be >= 1 request per second, got {self.request_rate_limit}")
        if (self.ca_cert is None) != (self.ca_key is None):
            raise ValueError("caCert and caKey must be set together")


@dataclass(frozen=True, slots=True)
class ProxyRule:
    """Requests whose URL (without query) matches ``regex`` go through the swarm.

    ``useTLS`` fetches them over https, ``redirect`` replaces the URL's authority (host:port) for the download,
    ``filteredQueryParams`` are left out of the task id (default: Dragonfly's list of signing parameters).
    """

    # RE2 regular expression (Go's syntax) searched in the URL without its query.
    regex: str = ""
    # Download matching URLs over https.
    use_tls: bool = field(default=False, metadata={"key": "useTLS"})
    # host[:port] that replaces the URL's authority for the download (a closer copy of the origin).
    redirect: str | None = None
    # Query parameters left out of the task id; empty: Dragonfly's list of URL-signing parameters (and ns).
    filtered_query_params: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.regex:
            raise ValueError("regex must not be empty")
        _compile("regex", self.regex)
        if self.redirect is not None and ("/" in self.redirect or not self.redirect):
            raise ValueError(f"redirect must be a host or host:port, got {self.redirect!r}")


@dataclass(frozen=True, slots=True)
class RegistryMirrorConfig:
    """The upstream of registry-mirror requests that name none (no ``X-Dragonfly-Registry``, no ``ns=``).

    ``cert`` is an extra CA bundle trusted for upstream TLS (a private registry's CA). ``plainHTTPHosts`` are the
    registries (``host`` or ``host:port``) reached over http when a client names only a host (containerd's
    ``ns=`` parameter); every other named host is reached over https.
    """

    # Upstream of registry-mirror requests that name none (no X-Dragonfly-Registry header, no ns= parameter).
    addr: str = "https://index.docker.io"
    # Extra PEM CA bundle trusted for upstream TLS, besides the system's (a private registry's CA).
    cert: str | None = None
    # Task id of a blob URL = its digest, so a layer is shared across registries, repositories and tags.
    enable_task_id_based_blob_digest: bool = field(default=False, metadata={"key": "enableTaskIDBasedBlobDigest"})
    # Registries (host or host:port) reached over plain http when a client names only a host (containerd's ns=).
    plain_http_hosts: list[str] = field(default_factory=list, metadata={"key": "plainHTTPHosts"})

    def validate(self) -> None:
        scheme, sep, rest = self.addr.partition("://")
        if not sep or scheme not in ("http", "https") or not rest.strip("/"):
            raise ValueError(f"addr must be an http:// or https:// URL, got {self.addr!r}")


@dataclass(frozen=True, slots=True)
class HijackHost:
    """CONNECT targets (``host:port``) matching ``regex`` are intercepted; every other one is tunnelled."""

    # RE2 regular expression searched in the CONNECT target host:port (anchor it: ^registry\.example\.com:443$).
    regex: str = field(default="", metadata={"aliases": ("regx",)})

    def validate(self) -> None:
        if not self.regex:
            raise ValueError("regex must not be empty")
        _compile("regex", self.regex)


@dataclass(frozen=True, slots=True)
class HijackHTTPSConfig:
    """Which HTTPS hosts the proxy terminates TLS for (with certificates from ``server.caCert``)."""

    # CONNECT targets whose TLS is terminated (with certificates from server.caCert); all others are tunnelled.
    hosts: list[HijackHost] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The HTTP(S) proxy and registry mirror of dfdaemon."""

    # Run the proxy (Dragonfly always does).
    enable: bool = True
    server: ProxyServerConfig = field(default_factory=ProxyServerConfig)
    # GETs whose URL matches the first rule go through the swarm (default: OCI blobs, as Dragonfly's Helm chart).
    rules: list[ProxyRule] = field(default_factory=lambda: [ProxyRule(regex=DEFAULT_RULE_REGEX)])
    registry_mirror: RegistryMirrorConfig = field(default_factory=RegistryMirrorConfig)
    hijack_https: HijackHTTPSConfig = field(default_factory=HijackHTTPSConfig, metadata={"key": "hijackHTTPS"})
    # Proxied downloads never fetch from the origin themselves (only from peers).
    disable_back_to_source: bool = False
    # On a ranged request, also fetch the whole object in the background (X-Dragonfly-Prefetch overrides).
    prefetch: bool = False
    # Chunk size when streaming stored pieces to a client.
    read_buffer_size: Size = Size(512 * 1024)
    # First bytes of a swarm download's answer read from the origin by the request that learns its size, and sent
    # at once (checked against the swarm's piece 0 before the rest); 0 turns it off. Costs up to this much registry
    # egress per blob for each peer that starts it before the swarm can serve its piece 0 (originHeadMaxPeers).
    origin_head: Size = Size(ORIGIN_HEAD_DEFAULT)
    # The head is read only while the scheduler does not know the blob, or its piece 0 is not yet in the swarm and
    # fewer peers than this are on it (the origin's extra egress per blob is at most this many heads); 0: no limit.
    origin_head_max_peers: int = ORIGIN_HEAD_MAX_PEERS_DEFAULT

    def validate(self) -> None:
        if self.hijack_https.hosts and self.server.ca_cert is None:
            raise ValueError(
                "hijackHTTPS.hosts needs server.caCert and server.caKey: intercepted hosts get certificates "
                "signed by that CA (clients must trust it)"
            )
        if self.read_buffer_size < 4096:
            raise ValueError(f"readBufferSize must be at least 4KiB, got {self.read_buffer_size}")
        if self.origin_head != 0 and not MIN_ORIGIN_HEAD <= self.origin_head <= MIN_PIECE_LENGTH:
            raise ValueError(
                f"originHead must be 0 (off) or between 64KiB and 4MiB (within the smallest piece 0), "
                f"got {self.origin_head}"
            )
        if self.origin_head_max_peers < 0:
            raise ValueError(f"originHeadMaxPeers must be 0 (no limit) or more, got {self.origin_head_max_peers}")

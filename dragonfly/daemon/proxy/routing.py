"""Where a proxied request goes: the upstream URL, whether it goes through the swarm, and the Download it becomes.

Pure functions of the request line, its headers and the ``proxy:`` config (docs/proxy.md):

- registry-mirror mode (an origin-form target such as ``GET /v2/...``): the upstream is the ``X-Dragonfly-Registry``
  header, else containerd's ``ns=`` query parameter, else ``proxy.registryMirror.addr``;
- forward-proxy mode (an absolute target ``GET http://host/...``, or any request inside an intercepted CONNECT
  tunnel, which is https to the tunnel's authority);
- a GET whose URL without query matches the first ``proxy.rules[].regex`` (or that carries
  ``X-Dragonfly-Use-P2P: true``) goes through the swarm; everything else goes straight to the upstream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from dragonfly_api import common_pb2
from multidict import CIMultiDict, CIMultiDictProxy

from dragonfly.common.config import parse_size
from dragonfly.common.errors import DragonflyError
from dragonfly.common.ids import DEFAULT_FILTERED_QUERY_PARAMS
from dragonfly.common.patterns import cached_pattern
from dragonfly.common.piece import MAX_PIECE_LENGTH, MIN_PIECE_LENGTH
from dragonfly.daemon.proxy.config import ProxyConfig, ProxyRule

#: Headers of one connection, never forwarded (RFC 9110 §7.6.1), plus the proxy's own credentials.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
REGISTRY_HEADER = "X-Dragonfly-Registry"
_DRAGONFLY_PREFIX = "x-dragonfly-"
# containerd names Docker Hub "docker.io"; its registry API lives on this host.
_DOCKER_HUB = {"docker.io": "registry-1.docker.io", "index.docker.io": "index.docker.io"}
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


class BadProxyRequest(DragonflyError, ValueError):
    """The client's request cannot be routed (bad target, bad X-Dragonfly-* header); answered with 400."""


@dataclass(frozen=True, slots=True)
class Route:
    """The upstream URL of a request and, when it goes through the swarm, the rule that sent it there."""

    url: str
    mirror: bool
    p2p: bool
    rule: ProxyRule | None


def is_host_port(value: str) -> bool:
    """Tell whether ``value`` is ``host`` or ``host:port`` (no scheme, no path)."""
    match = _HOST_PORT.match(value)
    if match is None:
        return False
    return match.group(2) is None or 0 < int(match.group(2)[1:]) <= 65535


def upstream_base(name: str, config: ProxyConfig) -> str:
    """Return ``scheme://host[:port]`` of a registry named by a URL or by a bare host (scheme from the config)."""
    name = name.strip().rstrip("/")
    if "://" in name:
        parts = urlsplit(name)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise BadProxyRequest(f"registry {name!r} must be http(s)://host[:port] or host[:port]")
        return f"{parts.scheme}://{parts.netloc}"
    if not is_host_port(name):
        raise BadProxyRequest(f"registry {name!r} must be http(s)://host[:port] or host[:port]")
    host = _DOCKER_HUB.get(name, name)
    scheme = "http" if name in config.registry_mirror.plain_http_hosts else "https"
    return f"{scheme}://{host}"


def route(
    method: str, target: str, headers: Mapping[str, str], config: ProxyConfig, *, tunnel: str | None = None
) -> Route:
    """Return where a request goes; ``tunnel`` is the ``host:port`` of the intercepted CONNECT it came through."""
    mirror = False
    if tunnel is not None:
        if not target.startswith("/"):
            raise BadProxyRequest(f"request target {target[:200]!r} inside a tunnel must be a path")
        url = f"https://{tunnel}{target}"
    elif target.startswith(("http://", "https://")):
        url = target
    elif target.startswith("/"):
        mirror = True
        registry = headers.get(REGISTRY_HEADER)
        if not registry:
            namespace = dict(parse_qsl(urlsplit(target).query)).get("ns")
            registry = namespace or config.registry_mirror.addr
        url = upstream_base(registry, config) + target
    else:
        raise BadProxyRequest(f"request target {target[:200]!r} is neither a path nor an http(s) URL")
    parts = urlsplit(url)
    if not parts.hostname:
        raise BadProxyRequest(f"request target {target[:200]!r} names no host")
    rule = None
    p2p = False
    if method == "GET":
        without_query = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        rule = next((r for r in config.rules if cached_pattern(r.regex).search(without_query)), None)
        p2p = rule is not None or headers.get("X-Dragonfly-Use-P2P", "").strip().lower() == "true"
    return Route(url, mirror, p2p, rule)


def forwarded_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Return the request headers to send upstream: all of them, repeated ones kept, but for hop-by-hop ones,
    the ones ``Connection`` names, and the proxy's own ``X-Dragonfly-*`` control headers."""
    named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    result: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in named or lower.startswith(_DRAGONFLY_PREFIX) or lower == "host":
            continue
        result.add(key, value)
    return result


def response_headers(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Return upstream response headers minus the hop-by-hop ones (repeated ones kept)."""
    named = set()
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    result: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in HOP_BY_HOP and key.lower() not in named:
            result.add(key, value)
    return result


def _flag(headers: Mapping[str, str], name: str) -> bool | None:
    value = headers.get(name)
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise BadProxyRequest(f"{name} must be true or false, got {value[:100]!r}")
    return lowered == "true"


def p2p_url(url: str, rule: ProxyRule | None) -> str:
    """Return the URL the swarm downloads: the rule's ``useTLS`` and ``redirect`` applied."""
    if rule is None:
        return url
    parts = urlsplit(url)
    scheme = "https" if rule.use_tls else parts.scheme
    netloc = rule.redirect or parts.netloc
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


def build_download(
    url: str, headers: CIMultiDictProxy[str] | CIMultiDict[str], rule: ProxyRule | None, config: ProxyConfig
) -> common_pb2.Download:
    """Return the Download of a request going through the swarm, with the ``X-Dragonfly-*`` headers applied.

    Every request header but the hop-by-hop ones, ``Host`` and ``X-Dragonfly-*`` reaches the origin (a registry's
    ``Authorization`` included; the backend drops it on a redirect to another host); repeated headers are joined
    with commas, as HTTP allows. ``X-Dragonfly-Output-Path`` is refused: a network client never chooses a path on
    this host.
    """
    download = common_pb2.Download(
        url=p2p_url(url, rule),
        type=common_pb2.STANDARD,
        priority=common_pb2.LEVEL6,
        disable_back_to_source=config.disable_back_to_source,
    )
    joined: dict[str, str] = {}
    for key, value in forwarded_headers(headers).items():
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    download.request_header.update(joined)
    if headers.get("X-Dragonfly-Output-Path"):
        raise BadProxyRequest("X-Dragonfly-Output-Path is not accepted: the proxy never writes files for clients")
    if (tag := headers.get("X-Dragonfly-Tag")) is not None:
        download.tag = tag
    if (application := headers.get("X-Dragonfly-Application")) is not None:
        download.application = application
    if (priority := headers.get("X-Dragonfly-Priority")) is not None:
        if not priority.strip().isdigit() or not 0 <= int(priority) <= 6:
            raise BadProxyRequest(f"X-Dragonfly-Priority must be 0..6, got {priority[:100]!r}")
        download.priority = int(priority)  # type: ignore[assignment]
    if (piece_length := headers.get("X-Dragonfly-Piece-Length")) is not None:
        try:
            length = parse_size(piece_length)
        except ValueError as exc:
            raise BadProxyRequest(f"X-Dragonfly-Piece-Length: {exc}") from None
        if not MIN_PIECE_LENGTH <= length <= MAX_PIECE_LENGTH:
            raise BadProxyRequest("X-Dragonfly-Piece-Length must be between 4MiB and 64MiB")
        download.piece_length = length
    if (content := headers.get("X-Dragonfly-Content-For-Calculating-Task-ID")) is not None:
        download.content_for_calculating_task_id = content
    blob_digest = _flag(headers, "X-Dragonfly-Enable-Task-ID-Based-Blob-Digest")
    download.enable_task_id_based_blob_digest = (
        config.registry_mirror.enable_task_id_based_blob_digest if blob_digest is None else blob_digest
    )
    filtered = headers.get("X-Dragonfly-Filtered-Query-Params")
    if filtered is not None:
        download.filtered_query_params.extend(p.strip() for p in filtered.split(",") if p.strip())
    elif rule is not None and rule.filtered_query_params:
        download.filtered_query_params.extend(rule.filtered_query_params)
    else:
        download.filtered_query_params.extend(DEFAULT_FILTERED_QUERY_PARAMS)
    return download


def wants_prefetch(headers: Mapping[str, str], config: ProxyConfig) -> bool:
    """Tell whether a ranged request should also fetch the whole object in the background."""
    flag = _flag(headers, "X-Dragonfly-Prefetch")
    return config.prefetch if flag is None else flag

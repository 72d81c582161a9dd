"""The proxy's routing, Download building, config and request rate limit, as pure functions."""

from __future__ import annotations

import pytest
from dragonfly_api import common_pb2
from multidict import CIMultiDict

from dragonfly.common.errors import ConfigError
from dragonfly.common.ids import DEFAULT_FILTERED_QUERY_PARAMS
from dragonfly.daemon.config import load_dfdaemon_config
from dragonfly.daemon.proxy.config import ProxyConfig, ProxyRule
from dragonfly.daemon.proxy.routing import (
    BadProxyRequest,
    build_download,
    forwarded_headers,
    p2p_url,
    response_headers,
    route,
    upstream_base,
)
from dragonfly.daemon.proxy.server import RequestRateLimiter

BLOB = "/v2/library/alpine/blobs/sha256:" + "ab" * 32


def proxy_config(**proxy: object) -> ProxyConfig:
    return load_dfdaemon_config(None, overrides={"proxy": proxy}).proxy


def test_defaults_are_safe_and_follow_dragonfly() -> None:
    config = proxy_config()
    assert (config.server.ip, config.server.port) == ("127.0.0.1", 4001)
    assert config.server.request_rate_limit == 4000
    assert [rule.regex for rule in config.rules] == ["blobs/sha256.*"]
    assert config.rules[0].filtered_query_params == []  # Dragonfly's default list
    assert config.registry_mirror.addr == "https://index.docker.io"
    assert config.hijack_https.hosts == []
    assert config.origin_head == 256 * 1024
    assert proxy_config(originHead=0).origin_head == 0
    assert config.origin_head_max_peers == 8
    assert proxy_config(originHeadMaxPeers=0).origin_head_max_peers == 0


@pytest.mark.parametrize(
    ("proxy", "match"),
    [
        ({"hijackHTTPS": {"hosts": [{"regex": "r:443"}]}}, "hijackHTTPS.hosts needs server.caCert"),
        ({"server": {"caCert": "/ca.crt"}}, "caCert and caKey must be set together"),
        ({"rules": [{"regex": "("}]}, "not a regular expression RE2 accepts"),
        ({"rules": [{"regex": "x", "redirect": "http://h/"}]}, "redirect must be a host or host:port"),
        ({"registryMirror": {"addr": "index.docker.io"}}, "addr must be an http:// or https:// URL"),
        ({"server": {"basicAuth": {"username": "u", "password": ""}}}, "password must be 1 to 20 characters"),
        ({"server": {"requestRateLimit": 0}}, "requestRateLimit must be >= 1"),
        ({"originHead": "32KiB"}, "originHead must be 0 .off. or between 64KiB and 4MiB"),
        ({"originHead": "8MiB"}, "originHead must be 0 .off. or between 64KiB and 4MiB"),
        ({"originHeadMaxPeers": -1}, "originHeadMaxPeers must be 0 .no limit. or more"),
    ],
)
def test_config_errors_name_the_problem(proxy: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        proxy_config(**proxy)


def test_hijack_hosts_accept_dragonfly_go_spelling() -> None:
    config = proxy_config(
        server={"caCert": "/ca.crt", "caKey": "/ca.key"}, hijackHTTPS={"hosts": [{"regx": "registry:443"}]}
    )
    assert config.hijack_https.hosts[0].regex == "registry:443"


def test_mirror_mode_upstream_from_header_then_ns_then_config() -> None:
    config = proxy_config(registryMirror={"addr": "http://mirror:5000", "plainHTTPHosts": ["127.0.0.1:5000"]})
    by_header = route("GET", BLOB, {"X-Dragonfly-Registry": "https://r.example:8443"}, config)
    assert by_header.url == "https://r.example:8443" + BLOB
    assert by_header.mirror
    assert by_header.p2p
    assert (
        route("GET", BLOB + "?ns=127.0.0.1:5000", {}, config).url
        == "http://127.0.0.1:5000" + BLOB + "?ns=127.0.0.1:5000"
    )
    assert route("GET", BLOB + "?ns=ghcr.io", {}, config).url == "https://ghcr.io" + BLOB + "?ns=ghcr.io"
    assert route("GET", BLOB + "?ns=docker.io", {}, config).url.startswith("https://registry-1.docker.io/v2/")
    assert route("GET", "/v2/", {}, config).url == "http://mirror:5000/v2/"


def test_forward_and_tunnel_targets() -> None:
    config = proxy_config()
    assert route("GET", "http://h:81" + BLOB, {}, config).url == "http://h:81" + BLOB
    assert not route("GET", "http://h:81" + BLOB, {}, config).mirror
    assert route("GET", BLOB, {}, config, tunnel="r.example:443").url == "https://r.example:443" + BLOB
    with pytest.raises(BadProxyRequest, match="inside a tunnel must be a path"):
        route("GET", "http://other/x", {}, config, tunnel="r.example:443")
    with pytest.raises(BadProxyRequest, match="neither a path nor an http"):
        route("GET", "ftp://h/x", {}, config)
    with pytest.raises(BadProxyRequest, match="must be http"):
        route("GET", BLOB, {"X-Dragonfly-Registry": "r/evil/path"}, config)


def test_only_matching_gets_go_through_the_swarm() -> None:
    config = proxy_config()
    assert route("GET", "http://r" + BLOB, {}, config).p2p
    assert route("GET", "http://r" + BLOB + "?x=blobs/sha256:1", {}, config).p2p
    assert not route("HEAD", "http://r" + BLOB, {}, config).p2p
    assert not route("GET", "http://r/v2/library/alpine/manifests/latest", {}, config).p2p
    assert not route("GET", "http://r/token?scope=blobs/sha256:1", {}, config).p2p  # the query is not matched
    assert route("GET", "http://r/file.iso", {"X-Dragonfly-Use-P2P": "true"}, config).p2p


def test_download_of_a_request() -> None:
    config = proxy_config(registryMirror={"enableTaskIDBasedBlobDigest": True})
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("Host", "r")
    headers.add("Accept", "application/vnd.oci.image.layer.v1.tar+gzip")
    headers.add("Accept", "application/octet-stream")
    headers.add("Authorization", "Bearer t0ken")
    headers.add("Proxy-Authorization", "Basic eDp5")
    headers.add("Connection", "keep-alive, X-Secret")
    headers.add("X-Secret", "hop")
    headers.add("X-Dragonfly-Tag", "t")
    headers.add("X-Dragonfly-Priority", "3")
    headers.add("X-Dragonfly-Piece-Length", "8MiB")
    download = build_download("http://r" + BLOB, headers, config.rules[0], config)
    assert download.url == "http://r" + BLOB
    assert dict(download.request_header) == {
        "Accept": "application/vnd.oci.image.layer.v1.tar+gzip, application/octet-stream",
        "Authorization": "Bearer t0ken",
    }
    assert (download.tag, download.priority, download.piece_length) == ("t", 3, 8 * 1024 * 1024)
    assert download.enable_task_id_based_blob_digest
    assert list(download.filtered_query_params) == list(DEFAULT_FILTERED_QUERY_PARAMS)
    assert download.type == common_pb2.STANDARD


@pytest.mark.parametrize(
    ("header", "value", "match"),
    [
        ("X-Dragonfly-Output-Path", "/etc/passwd", "never writes files"),
        ("X-Dragonfly-Priority", "9", "must be 0..6"),
        ("X-Dragonfly-Piece-Length", "1MiB", "between 4MiB and 64MiB"),
        ("X-Dragonfly-Enable-Task-ID-Based-Blob-Digest", "yes", "must be true or false"),
    ],
)
def test_bad_dragonfly_headers_are_refused(header: str, value: str, match: str) -> None:
    config = proxy_config()
    with pytest.raises(BadProxyRequest, match=match):
        build_download("http://r" + BLOB, CIMultiDict({header: value}), None, config)


def test_rule_redirect_and_tls() -> None:
    rule = ProxyRule(regex="x", use_tls=True, redirect="cache.internal:8443")
    assert p2p_url("http://r:5000/v2/x?a=1", rule) == "https://cache.internal:8443/v2/x?a=1"
    assert p2p_url("http://r:5000/v2/x", None) == "http://r:5000/v2/x"


def test_pass_through_keeps_repeated_headers_and_drops_hop_by_hop() -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        [("Accept", "a"), ("Accept", "b"), ("Keep-Alive", "5"), ("X-Dragonfly-Registry", "r"), ("Host", "h")]
    )
    assert list(forwarded_headers(headers).items()) == [("Accept", "a"), ("Accept", "b")]
    answer: CIMultiDict[str] = CIMultiDict(
        [("Www-Authenticate", 'Bearer realm="x"'), ("Link", "1"), ("Link", "2"), ("Transfer-Encoding", "chunked")]
    )
    assert list(response_headers(answer).items()) == [
        ("Www-Authenticate", 'Bearer realm="x"'),
        ("Link", "1"),
        ("Link", "2"),
    ]
    assert upstream_base("127.0.0.1:5000", proxy_config()) == "https://127.0.0.1:5000"


def test_request_rate_limiter() -> None:
    now = [0.0]
    limiter = RequestRateLimiter(2, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert [limiter.allow() for _ in range(2)] == [True, False]

"""The SSRF guard: which addresses are refused, and that an aiohttp connector built with it never connects to one."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from dragonfly.common.errors import OriginAddressRefused
from dragonfly.common.netguard import AddressPolicy, find_refusal, guarded_connector_args, parse_networks


@pytest.mark.parametrize(
    ("ip", "what"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        # IPv6 spellings of IPv4 addresses reach the same place.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ],
)
def test_internal_addresses_are_refused(ip: str, what: str) -> None:
    assert AddressPolicy().refusal(ip) == what
    with pytest.raises(OriginAddressRefused, match=f"a {what} address"):
        AddressPolicy().check(ip, "origin.example")


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.1.1", "172.16.0.1", "8.8.8.8", "2001:db8::1", "fd12::1"])
def test_ordinary_addresses_pass(ip: str) -> None:
    # Private networks are where internal registries live: not refused by default.
    assert AddressPolicy().refusal(ip) is None


def test_allowed_networks_take_precedence() -> None:
    policy = AddressPolicy.from_config(["127.0.0.2/32", "::1", "169.254.0.0/16"])
    assert policy.refusal("127.0.0.2") is None
    assert policy.refusal("127.0.0.1") == "loopback"
    assert policy.refusal("::1") is None
    assert policy.refusal("::ffff:127.0.0.2") is None
    assert policy.refusal("169.254.169.254") is None


def test_host_names_are_not_networks() -> None:
    with pytest.raises(ValueError, match="'localhost' is not an IP network"):
        parse_networks(["localhost"])


@pytest.fixture
async def local_server() -> AsyncIterator[int]:
    async def internal(request: web.Request) -> web.Response:
        return web.Response(text="internal")

    app = web.Application()
    app.router.add_get("/", internal)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    yield site._server.sockets[0].getsockname()[1]
    await runner.cleanup()


async def _get(policy: AddressPolicy, url: str) -> str:
    connector = aiohttp.TCPConnector(**guarded_connector_args(policy))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as resp:
        return await resp.text()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_guarded_connector_never_connects_to_a_refused_address(local_server: int, host: str) -> None:
    # A literal address meets the socket factory, a name the resolver; both end in the same refusal.
    with pytest.raises(aiohttp.ClientError) as caught:
        await _get(AddressPolicy(), f"http://{host}:{local_server}/")
    refusal = find_refusal(caught.value)
    assert refusal is not None, repr(caught.value)
    assert refusal.what == "loopback"
    assert host in str(refusal)


async def test_a_guarded_connector_connects_where_allowed(local_server: int) -> None:
    assert await _get(AddressPolicy.from_config(["127.0.0.0/8", "::1"]), f"http://localhost:{local_server}/") == (
        "internal"
    )


async def test_a_resolver_answer_with_internal_addresses_keeps_only_the_others() -> None:
    from aiohttp.abc import AbstractResolver, ResolveResult

    from dragonfly.common.netguard import guarded_resolver

    class Fixed(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [
                ResolveResult(hostname=host, host=ip, port=port, family=socket.AF_INET, proto=0, flags=0)
                for ip in ("127.0.0.1", "10.0.0.9", "169.254.169.254")
            ]

        async def close(self) -> None:
            pass

    resolver = guarded_resolver(AddressPolicy(), Fixed())
    assert [r["host"] for r in await resolver.resolve("rebind.example", 80)] == ["10.0.0.9"]

"""The SSRF guard: which addresses an origin request made on a remote party's behalf may connect to.

A scheduler-triggered seed download or a proxy request from another host names a URL of someone else's choosing;
without a guard the daemon fetches its own ``/metrics``, a cloud metadata service or anything else only it can
reach, and then serves the bytes back over Vortex (docs/security.md#origin-addresses).

The check is on the address a connection is actually made to, never on the URL's text: a name that resolves to
``127.0.0.1``, a redirect to an internal address and DNS rebinding between two lookups all end at the same two
hooks of an aiohttp connector, the resolver (names: internal answers are dropped, an all-internal answer is an
error naming the host) and the socket factory (every connect, literal IP URLs included). Any HTTP client built
on aiohttp's ``TCPConnector`` gets both from ``guarded_connector_args``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dragonfly.common.errors import OriginAddressRefused

if TYPE_CHECKING:
    from aiohttp.abc import AbstractResolver, ResolveResult

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Refused unless allowed, with the word the error uses for each.
BLOCKED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), what)
    for cidr, what in (
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        # 169.254.169.254 is the metadata service of AWS, GCP, Azure, Oracle and OpenStack.
        ("169.254.169.254/32", "cloud metadata"),
        ("169.254.0.0/16", "link-local"),
        ("100.100.100.200/32", "cloud metadata"),  # Alibaba Cloud
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fd00:ec2::254/128", "cloud metadata"),  # AWS metadata over IPv6
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)

# IPv6 forms that carry an IPv4 address the kernel (or a NAT64 gateway) connects to.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_networks(entries: Iterable[str], *, key: str = "allowedOriginNetworks") -> tuple[IPNetwork, ...]:
    """Parse CIDRs and single addresses (``127.0.0.0/8``, ``::1``); ValueError names the bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{key}: {entry!r} is not an IP network or address (entries are CIDRs such as 127.0.0.0/8 or single "
                "addresses; host names are not accepted since the check is on the address connected to)"
            ) from None
    return tuple(networks)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Loopback, link-local, unspecified, multicast and cloud metadata addresses are refused unless ``allowed``."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_config(cls, entries: Iterable[str]) -> AddressPolicy:
        return cls(parse_networks(entries))

    def refusal(self, ip: str) -> str | None:
        """Return why connecting to ``ip`` is refused (``"loopback"``, ...), or None when it is allowed."""
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return "unparseable"
        candidates: list[IPAddress] = [address]
        if (inner := _embedded_ipv4(address)) is not None:
            candidates.append(inner)
        for candidate in candidates:
            if any(candidate in network for network in self.allowed):
                return None
        for candidate in candidates:
            for network, what in BLOCKED_NETWORKS:
                if candidate.version == network.version and candidate in network:
                    return what
        return None

    def check(self, ip: str, host: str | None = None) -> None:
        """Raise OriginAddressRefused if ``ip`` (an address of ``host``) is refused."""
        what = self.refusal(ip)
        if what is not None:
            raise OriginAddressRefused(host or ip, ip, what)


def is_remote_client(peername: Any) -> bool:
    """Tell whether a connection's peer (``transport.get_extra_info("peername")``) is on another host.

    Unix sockets and unknown peers count as local: they cannot come from another host.
    """
    if not isinstance(peername, tuple) or not peername:
        return False
    try:
        address = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
    except ValueError:
        return False
    inner = _embedded_ipv4(address)
    return not (address.is_loopback or (inner is not None and inner.is_loopback))


def guarded_socket_factory(policy: AddressPolicy) -> Callable[[Any], socket.socket]:
    """Return an aiohttp/aiohappyeyeballs socket factory that refuses to create sockets to refused addresses."""

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _canonname, sockaddr = addr_info
        policy.check(str(sockaddr[0]))
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


def guarded_resolver(policy: AddressPolicy, inner: AbstractResolver | None = None) -> AbstractResolver:
    """Return an aiohttp resolver that drops refused addresses and fails, naming the host, when none is left."""
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import DefaultResolver

    class GuardedResolver(AbstractResolver):
        def __init__(self, resolver: AbstractResolver) -> None:
            self._inner = resolver

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            results = await self._inner.resolve(host, port, family)
            kept = [result for result in results if policy.refusal(result["host"]) is None]
            if not kept and results:
                policy.check(results[0]["host"], host)
            return kept

        async def close(self) -> None:
            await self._inner.close()

    return GuardedResolver(inner if inner is not None else DefaultResolver())


def guarded_connector_args(policy: AddressPolicy) -> dict[str, Any]:
    """Return the ``aiohttp.TCPConnector`` keyword arguments that apply ``policy`` to every connection."""
    return {"resolver": guarded_resolver(policy), "socket_factory": guarded_socket_factory(policy)}


def find_refusal(exc: BaseException) -> OriginAddressRefused | None:
    """Return the OriginAddressRefused behind ``exc`` (aiohttp wraps it in its connector errors), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OriginAddressRefused):
            return current
        seen.add(id(current))
        os_error = getattr(current, "os_error", None)
        if isinstance(os_error, OriginAddressRefused):
            return os_error
        current = current.__cause__ or current.__context__
    return None

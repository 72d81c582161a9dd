"""Which scheduler cluster serves a host: scores of its scopes against the host (Dragonfly's searcher weights).

A cluster scores 0.3 if the host's IP is in one of its CIDRs, 0.3 if one of its hostname regexes matches, 0.25 if
its IDC (``|``-separated alternatives) names the host's IDC, up to 0.14 for the share of the host's location path
(``country|province|city|...``, first 5 elements) it shares as a prefix, and 0.01 for being the default cluster.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any

from dragonfly.common.patterns import Pattern, compile_pattern

CIDR_WEIGHT = 0.3
HOSTNAME_WEIGHT = 0.3
IDC_WEIGHT = 0.25
LOCATION_WEIGHT = 0.14
DEFAULT_WEIGHT = 0.01
MAX_LOCATION_ELEMENTS = 5


@functools.lru_cache(maxsize=4096)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _regex(text: str) -> Pattern | None:
    try:
        return compile_pattern(text)
    except ValueError:
        return None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def location_share(scope: str, location: str) -> float:
    """Return the share (0..1) of the host's location elements that the scope's location has as a prefix."""
    if not scope or not location:
        return 0.0
    want = scope.split("|")[:MAX_LOCATION_ELEMENTS]
    have = location.split("|")[:MAX_LOCATION_ELEMENTS]
    same = 0
    for a, b in zip(want, have, strict=False):
        if a != b:
            break
        same += 1
    return same / MAX_LOCATION_ELEMENTS


def score(scopes: Mapping[str, Any], is_default: bool, *, ip: str, hostname: str, idc: str, location: str) -> float:
    """Return how well a cluster with ``scopes`` fits the host (higher is better)."""
    total = 0.0
    address = _ip(ip)
    if address is not None:
        for text in scopes.get("cidrs") or ():
            net = _network(str(text))
            if net is not None and address.version == net.version and address in net:
                total += CIDR_WEIGHT
                break
    if hostname:
        for text in scopes.get("hostnames") or ():
            pattern = _regex(str(text))
            if pattern is not None and pattern.search(hostname):
                total += HOSTNAME_WEIGHT
                break
    scope_idc = str(scopes.get("idc") or "")
    if idc and scope_idc and idc in scope_idc.split("|"):
        total += IDC_WEIGHT
    total += LOCATION_WEIGHT * location_share(str(scopes.get("location") or ""), location)
    if is_default:
        total += DEFAULT_WEIGHT
    return total

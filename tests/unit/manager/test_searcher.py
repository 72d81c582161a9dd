"""Which scheduler cluster fits a host: the searcher's scope scores (Dragonfly's weights)."""

from __future__ import annotations

import pytest

from dragonfly.manager import searcher


def score(scopes: dict[str, object], default: bool = False, **host: str) -> float:
    fields = {"ip": "10.0.0.1", "hostname": "node-1", "idc": "", "location": "", **host}
    return round(searcher.score(scopes, default, **fields), 4)


def test_each_scope_adds_its_weight() -> None:
    assert score({}) == 0
    assert score({}, default=True) == 0.01
    assert score({"cidrs": ["10.0.0.0/8"]}) == 0.3
    assert score({"cidrs": ["192.168.0.0/16", "10.0.0.0/24"]}) == 0.3
    assert score({"cidrs": ["10.0.0.0/8"]}, ip="fd00::1") == 0
    assert score({"hostnames": ["^node-\\d+$"]}) == 0.3
    assert score({"hostnames": ["^web-"]}) == 0
    assert score({"idc": "idc-a|idc-b"}, idc="idc-b") == 0.25
    assert score({"idc": "idc-a"}, idc="idc-ab") == 0
    assert score({"cidrs": ["10.0.0.0/8"], "hostnames": ["node"], "idc": "x"}, idc="x", default=True) == 0.86


@pytest.mark.parametrize(
    ("scope", "location", "share"),
    [
        ("cn|zj|hz", "cn|zj|hz", 3 / 5),
        ("cn|zj|hz", "cn|zj|nb", 2 / 5),
        ("cn", "cn|zj|hz", 1 / 5),
        ("us", "cn|zj", 0),
        ("a|b|c|d|e|f", "a|b|c|d|e|f", 1),
        ("", "cn", 0),
    ],
)
def test_location_is_a_shared_prefix_of_up_to_five_elements(scope: str, location: str, share: float) -> None:
    assert searcher.location_share(scope, location) == share
    assert score({"location": scope}, location=location) == round(0.14 * share, 4)


def test_bad_scopes_never_raise() -> None:
    assert score({"cidrs": ["not-a-cidr"], "hostnames": ["("]}, ip="not-an-ip") == 0

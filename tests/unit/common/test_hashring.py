from collections import Counter

import pytest

from dragonfly.common.hashring import HashRing, select_scheduler

KEYS = [f"{i:064x}" for i in range(20000)]


def test_owner_is_deterministic_and_order_independent():
    a = HashRing(["s1:8002", "s2:8002", "s3:8002"])
    b = HashRing(["s3:8002", "s1:8002", "s2:8002", "s1:8002"])
    assert all(a.owner(k) == b.owner(k) for k in KEYS[:500])
    assert select_scheduler(KEYS[0], ["s2:8002", "s1:8002", "s3:8002"]) == a.owner(KEYS[0])


def test_spread_is_even():
    ring = HashRing([f"s{i}" for i in range(4)])
    counts = Counter(ring.owner(k) for k in KEYS)
    assert len(counts) == 4
    assert max(counts.values()) / min(counts.values()) < 1.35


def test_adding_a_node_moves_only_its_share():
    before = HashRing([f"s{i}" for i in range(4)])
    after = HashRing([f"s{i}" for i in range(5)])
    moved = [k for k in KEYS if before.owner(k) != after.owner(k)]
    assert all(after.owner(k) == "s4" for k in moved)
    assert 0.12 < len(moved) / len(KEYS) < 0.28


def test_removing_a_node_moves_only_its_keys():
    before = HashRing([f"s{i}" for i in range(4)])
    after = HashRing([f"s{i}" for i in range(3)])
    assert all(before.owner(k) == after.owner(k) for k in KEYS if before.owner(k) != "s3")


def test_empty_ring_raises():
    with pytest.raises(LookupError, match="no nodes"):
        HashRing([]).owner("x")

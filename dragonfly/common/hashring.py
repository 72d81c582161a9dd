"""Consistent hashing of task ids onto schedulers, so each task is owned by one scheduler of a cluster.

Each node gets ``replicas`` points on a 2^32 ring (MurmurHash3 of ``"{node}#{i}"``); a key belongs to the first
point clockwise from its own hash. Adding or removing one of N nodes moves only about 1/N of the keys, so a peer
that learns of a new scheduler keeps talking to the same one for most of its tasks.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import mmh3


class HashRing:
    """An immutable consistent-hash ring over string node names."""

    __slots__ = ("_hashes", "_owners", "nodes")

    def __init__(self, nodes: Iterable[str], *, replicas: int = 160) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.nodes: tuple[str, ...] = tuple(sorted(set(nodes)))
        points = sorted((mmh3.hash(f"{node}#{i}", signed=False), node) for node in self.nodes for i in range(replicas))
        self._hashes = [h for h, _ in points]
        self._owners = [node for _, node in points]

    def owner(self, key: str) -> str:
        """Return the node that owns ``key``."""
        if not self._hashes:
            raise LookupError("the hash ring has no nodes")
        index = bisect.bisect_left(self._hashes, mmh3.hash(key, signed=False))
        return self._owners[index % len(self._owners)]

    def __len__(self) -> int:
        return len(self.nodes)


def select_scheduler(task_id: str, addrs: Iterable[str]) -> str:
    """Return the scheduler address (``host:port``) that owns ``task_id`` among ``addrs``."""
    return HashRing(addrs).owner(task_id)

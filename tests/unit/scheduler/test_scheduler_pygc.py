"""Freezing the survivors of CPython's collector: frozen cycles wait for the periodic full collection."""

from __future__ import annotations

import gc
import weakref

from dragonfly.scheduler.pygc import FreezingCollector


class Node:
    """A cycle only the cyclic collector can free."""

    def __init__(self) -> None:
        self.itself = self


def test_frozen_cycles_are_freed_by_the_full_collection_only():
    now = [0.0]
    collector = FreezingCollector(1.0, 60.0, clock=lambda: now[0])
    try:
        young = Node()
        young_ref = weakref.ref(young)
        del young
        node = Node()
        node_ref = weakref.ref(node)
        assert not collector.tick()
        assert young_ref() is None, "garbage already unreachable is collected, not frozen"
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert node_ref() is not None, "a frozen cycle is out of the collector's reach"
        now[0] = 59.0
        assert not collector.tick()
        assert node_ref() is not None
        now[0] = 60.0
        assert collector.tick()
        assert node_ref() is None
        assert not collector.tick(), "the next full collection is an interval away"
    finally:
        gc.unfreeze()


async def test_stop_hands_every_frozen_object_back():
    collector = FreezingCollector(3600.0, 3600.0)
    collector.start()
    collector.tick()
    assert gc.get_freeze_count() > 0
    await collector.stop()
    assert gc.get_freeze_count() == 0

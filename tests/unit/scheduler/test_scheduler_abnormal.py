"""Bad-parent marks from children's reports: slow pieces, repeated failures, digest mismatches."""

from __future__ import annotations

import pytest

from dragonfly.scheduler.resource import peer as p
from dragonfly.scheduler.scheduling.abnormal import AbnormalDetector


@pytest.fixture
def setup(make_world):
    world = make_world(badParent={"minSwarmSamples": 3, "failureThreshold": 3, "coolDown": 30})
    detector = AbnormalDetector(world.config.bad_parent, world.metrics)
    return world, detector


def _marks(world, reason):
    return world.metrics.bad_parent_marks.labels(reason)._value.get()


def test_slow_piece_marks_the_parent_only_after_enough_swarm_samples(setup):
    world, detector = setup
    fast = world.peer("fast", state=p.RUNNING, pieces=[0])
    slow = world.peer("slow", state=p.RUNNING, pieces=[0])
    detector.piece_served(fast, 0.01, world.now)
    detector.piece_served(fast, 0.01, world.now)
    detector.piece_served(slow, 0.75, world.now)
    assert not slow.is_bad(world.now), "two samples are too few to judge"
    detector.piece_served(fast, 0.01, world.now)
    detector.piece_served(slow, 5.0, world.now)
    assert slow.is_bad(world.now)
    assert slow.bad_reason == "slow: served a piece in 5.000s, swarm mean 0.195s"
    detector.piece_served(slow, 5.0, world.now + 1)
    assert world.config.bad_parent.min_swarm_samples == 3
    assert len(slow.task.cost_window) == 4, "costs of a parent marked bad stay out of the swarm's window"
    assert not fast.is_bad(world.now)
    assert _marks(world, "slow") == 1
    assert not slow.is_bad(world.now + 32)


def test_repeated_failures_within_the_cool_down_mark_the_parent(setup):
    world, detector = setup
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    detector.piece_failed(parent, temporary=True, now=world.now)
    detector.piece_failed(parent, temporary=True, now=world.now + 40)
    detector.piece_failed(parent, temporary=True, now=world.now + 41)
    assert not parent.is_bad(world.now + 41), "the first failure is older than the cool-down"
    detector.piece_failed(parent, temporary=True, now=world.now + 42)
    assert parent.is_bad(world.now + 42)
    assert parent.bad_reason == "piece_failures: 3 piece failures within 30s"


def test_a_permanent_failure_marks_at_once(setup):
    world, detector = setup
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    detector.piece_failed(parent, temporary=False, now=world.now)
    assert parent.is_bad(world.now)


def test_digest_mismatch_marks_and_repeated_marks_count_once(setup):
    world, detector = setup
    parent = world.peer("parent", state=p.RUNNING, pieces=[0])
    detector.digest_mismatch(parent, 3, "crc32:1", "crc32:2", world.now)
    detector.digest_mismatch(parent, 4, "crc32:1", "crc32:2", world.now + 1)
    assert parent.bad_reason == "digest_mismatch: piece 4 digest crc32:2, origin's crc32:1"
    assert parent.bad_until == world.now + 31
    assert _marks(world, "digest_mismatch") == 1

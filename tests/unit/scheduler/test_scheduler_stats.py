"""Rolling cost windows and Dragonfly's abnormal-cost rule."""

from __future__ import annotations

import statistics

import pytest

from dragonfly.scheduler.resource.pieces import PieceSet
from dragonfly.scheduler.resource.stats import RollingWindow


def test_mean_and_population_std_over_the_last_samples():
    window = RollingWindow(4)
    for value in (100.0, 1.0, 2.0, 3.0, 4.0):
        window.add(value)
    assert len(window) == 4
    assert window.mean() == pytest.approx(2.5)
    assert window.std() == pytest.approx(statistics.pstdev([1, 2, 3, 4]))


def test_outlier_rule_while_filling_and_when_full():
    window = RollingWindow(5)
    assert not window.is_outlier(1e9), "no samples: nothing to judge against"
    window.add(0.01)
    assert window.is_outlier(0.2001)
    assert not window.is_outlier(0.2)
    for value in (0.01, 0.02, 0.01, 0.02):
        window.add(value)
    limit = window.mean() + 3 * window.std()
    assert window.is_outlier(limit + 1e-6)
    assert not window.is_outlier(limit - 1e-6)


def test_last_sample_is_judged_against_the_others():
    window = RollingWindow(2000)
    window.add(0.01)
    assert not window.last_is_outlier(), "fewer than two samples"
    window.add(0.5)
    assert window.last_is_outlier()
    window.add(0.01)
    assert not window.last_is_outlier()


def test_window_size_must_allow_a_comparison():
    with pytest.raises(ValueError, match="window size must be >= 2"):
        RollingWindow(1)


def test_piece_set_with_known_and_unknown_counts():
    fixed = PieceSet(10, 1000)
    assert fixed.add(3)
    assert not fixed.add(3)
    assert fixed.count == 1
    assert 3 in fixed
    assert 4 not in fixed
    with pytest.raises(ValueError, match="piece number 10 out of range: the task has 10 pieces"):
        fixed.add(10)
    growing = PieceSet(0, 1000)
    for number in (0, 70, 500):
        growing.add(number)
    assert growing.numbers() == [0, 70, 500]
    assert growing.count == 3
    with pytest.raises(ValueError, match="out of range"):
        growing.add(1000)


def test_pieces_needed_from_a_parent():
    child, parent = PieceSet(8, 100), PieceSet(8, 100)
    for number in (0, 1, 2, 5):
        parent.add(number)
    child.add(1)
    assert child.needed_from(parent) == 3
    assert PieceSet(0, 100).needed_from(parent) == 4

"""Rolling statistics of piece costs (Dragonfly's ``pkg/stats`` rolling window: running sum and sum of squares)."""

from __future__ import annotations

import math
from array import array

# Dragonfly's thresholds: 20x the mean while the window fills, mean + 3 sigma once it is full.
FILLING_FACTOR = 20.0
SIGMA_FACTOR = 3.0


class RollingWindow:
    """The last ``size`` samples with O(1) add, mean and population standard deviation."""

    __slots__ = ("_next", "_size", "_sum", "_sumsq", "_values", "last")

    def __init__(self, size: int) -> None:
        if size < 2:
            raise ValueError(f"window size must be >= 2, got {size}")
        self._size = size
        # Grows with the samples, so an idle peer costs almost nothing.
        self._values = array("d")
        self._next = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self.last: float | None = None

    def __len__(self) -> int:
        return len(self._values)

    @property
    def size(self) -> int:
        """Return the capacity."""
        return self._size

    def add(self, value: float) -> None:
        """Append a sample, evicting the oldest once full."""
        values = self._values
        if len(values) < self._size:
            values.append(value)
        else:
            old = values[self._next]
            self._sum -= old
            self._sumsq -= old * old
            values[self._next] = value
            self._next = (self._next + 1) % self._size
        self._sum += value
        self._sumsq += value * value
        self.last = value

    def mean(self) -> float:
        """Return the mean (0 when empty)."""
        n = len(self._values)
        return self._sum / n if n else 0.0

    def std(self) -> float:
        """Return the population standard deviation (0 when empty)."""
        n = len(self._values)
        if not n:
            return 0.0
        mean = self._sum / n
        return math.sqrt(max(self._sumsq / n - mean * mean, 0.0))

    def is_outlier(self, value: float) -> bool:
        """Return whether ``value`` (not yet added) is abnormal against this window, by Dragonfly's rule."""
        n = len(self._values)
        if n == 0:
            return False
        if n < self._size:
            return value > FILLING_FACTOR * self.mean()
        return value > self.mean() + SIGMA_FACTOR * self.std()

    def last_is_outlier(self) -> bool:
        """Return whether the latest sample is abnormal against the others
        (``docs/reference/scheduler.md#abnormal-parents``)."""
        n = len(self._values)
        if n < 2 or self.last is None:
            return False
        last = self.last
        others = n - 1
        mean = (self._sum - last) / others
        if n < self._size:
            return last > FILLING_FACTOR * mean
        variance = max((self._sumsq - last * last) / others - mean * mean, 0.0)
        return last > mean + SIGMA_FACTOR * math.sqrt(variance)

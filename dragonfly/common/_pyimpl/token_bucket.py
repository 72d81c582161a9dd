"""Token bucket for host-level rate limits: the twin of ``token_bucket.rs``."""

from __future__ import annotations

import math
import threading
import time

from dragonfly.common._pyimpl.checks import non_negative


def _rate_and_burst(rate: float, burst: float | None) -> tuple[float, float]:
    rate = float(rate)
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError("rate must be a finite number >= 0")
    burst = rate if burst is None else float(burst)
    if not (math.isfinite(burst) and burst >= 0):
        raise ValueError("burst must be a finite number >= 0")
    return rate, burst


class TokenBucket:
    """Token bucket for host-level rate limits (bytes/s, 0 = unlimited), shared by threads.

    Tokens may go negative: a reservation succeeds at once and returns how long to wait for the debt to be repaid.
    """

    __slots__ = ("_burst", "_last", "_lock", "_origin", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate, self._burst = _rate_and_burst(rate, burst)
        self._tokens = self._burst
        self._origin = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def reserve(self, n: int) -> float:
        """Take ``n`` tokens now and return the seconds the caller must wait before using them."""
        n = non_negative("n", n)
        now = time.monotonic() - self._origin
        with self._lock:
            if self._rate == 0:
                return 0.0
            self._refill(now)
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def acquire(self, n: int) -> None:
        """Take ``n`` tokens, blocking until they are covered."""
        wait = self.reserve(n)
        if wait > 0:
            time.sleep(wait)

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` tokens only if they are available now."""
        n = non_negative("n", n)
        now = time.monotonic() - self._origin
        with self._lock:
            if self._rate == 0:
                return True
            self._refill(now)
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate and burst; tokens accrued so far count at the old rate, and debt is kept."""
        rate, burst = _rate_and_burst(rate, burst)
        now = time.monotonic() - self._origin
        with self._lock:
            self._refill(now)
            if self._rate == 0:
                self._tokens = burst
            self._rate = rate
            self._burst = burst
            self._tokens = min(self._tokens, burst)
            self._last = max(self._last, now)

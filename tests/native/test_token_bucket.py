"""The token bucket, native and twin: accuracy over time, a rate shared by threads, reservations, GIL release."""

from __future__ import annotations

import threading
import time
from types import ModuleType

import pytest

from dragonfly.common import native

IMPLS = native.implementations("piece_io")
MIB = 1024 * 1024


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def test_never_more_than_the_rate_allows(impl: ModuleType) -> None:
    # Load on the machine can only make a caller slower, never let it take more: this bound cannot flake. How close
    # to the rate a caller gets (within a few percent over a second) is a timing claim, measured by
    # bench/micro/test_bench_piece_io.py::test_token_bucket_accuracy.
    bucket = impl.TokenBucket(100 * MIB, burst=4 * MIB)
    bucket.acquire(4 * MIB)  # drain the initial burst so the window measures the rate alone
    acquired = 0
    started = time.monotonic()
    while time.monotonic() - started < 0.5:
        bucket.acquire(256 * 1024)
        acquired += 256 * 1024
    elapsed = time.monotonic() - started
    assert acquired <= 100 * MIB * elapsed + 4 * MIB + 256 * 1024


def test_waits_add_up_to_the_rate(impl: ModuleType) -> None:
    """The debt of back-to-back reservations grows by n / rate each; only the time between calls may shave it."""
    bucket = impl.TokenBucket(100 * MIB, burst=MIB)
    started = time.monotonic()
    assert bucket.reserve(MIB) == 0.0
    waits = [bucket.reserve(MIB) for _ in range(10)]
    between = time.monotonic() - started
    for k, wait in enumerate(waits, 1):
        assert k * 0.01 - between - 1e-6 <= wait <= k * 0.01 + 1e-6


def test_threads_share_the_rate(impl: ModuleType) -> None:
    bucket = impl.TokenBucket(40 * MIB, burst=2 * MIB)
    bucket.acquire(2 * MIB)
    per_thread = [0] * 4
    deadline = time.monotonic() + 1.0

    def acquire_until_deadline(index: int) -> None:
        while time.monotonic() < deadline:
            bucket.acquire(128 * 1024)
            per_thread[index] += 128 * 1024

    started = time.monotonic()
    threads = [threading.Thread(target=acquire_until_deadline, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads)
    # Together they never exceed the rate (each may overshoot by the one chunk it was granted last) ...
    assert sum(per_thread) <= 40 * MIB * elapsed + 2 * MIB + 4 * 128 * 1024
    # ... and reservations queue in order, so no thread starves.
    assert min(per_thread) > 0


def test_reserve_charges_debt_in_order(impl: ModuleType) -> None:
    bucket = impl.TokenBucket(MIB, burst=MIB)
    assert bucket.reserve(MIB) == 0.0
    first = bucket.reserve(MIB // 2)
    second = bucket.reserve(MIB // 2)
    # Waits sum: the second reservation queues behind the first.
    assert first == pytest.approx(0.5, abs=0.05)
    assert second == pytest.approx(1.0, abs=0.05)
    assert not bucket.try_acquire(1)


def test_request_larger_than_burst_waits_n_over_rate(impl: ModuleType) -> None:
    bucket = impl.TokenBucket(10 * MIB, burst=MIB)
    assert bucket.reserve(MIB) == 0.0
    assert bucket.reserve(5 * MIB) == pytest.approx(0.5, abs=0.05)


def test_zero_rate_is_unlimited(impl: ModuleType) -> None:
    bucket = impl.TokenBucket(0)
    assert (bucket.rate, bucket.burst) == (0.0, 0.0)
    assert bucket.reserve(2**62) == 0.0
    assert bucket.try_acquire(2**62)
    # Unlimited: returns at once. A limited bucket would block for years; the thread's bound catches that.
    acquirer = threading.Thread(target=bucket.acquire, args=(2**62,), daemon=True)
    acquirer.start()
    acquirer.join(60)
    assert not acquirer.is_alive()


def test_burst_defaults_to_one_second_and_set_rate_changes_both(impl: ModuleType) -> None:
    bucket = impl.TokenBucket(1000)
    assert (bucket.rate, bucket.burst) == (1000.0, 1000.0)
    assert bucket.try_acquire(1000)
    assert not bucket.try_acquire(100)
    bucket.set_rate(2000, burst=500)
    assert (bucket.rate, bucket.burst) == (2000.0, 500.0)
    bucket.set_rate(0)
    assert bucket.try_acquire(10**9)
    bucket.set_rate(100)
    # Leaving unlimited mode starts with a full bucket.
    assert bucket.try_acquire(100)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1,), "rate must be a finite number >= 0"),
        ((float("nan"),), "rate must be a finite number >= 0"),
        ((1, -1), "burst must be a finite number >= 0"),
        ((1, float("inf")), "burst must be a finite number >= 0"),
    ],
)
def test_invalid_rates_raise_value_error(impl: ModuleType, args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        impl.TokenBucket(*args)
    with pytest.raises(ValueError, match=f"^{message}$"):
        impl.TokenBucket(1).set_rate(*args)


def test_negative_count_raises_value_error(impl: ModuleType) -> None:
    bucket = impl.TokenBucket(1)
    for method in (bucket.acquire, bucket.reserve, bucket.try_acquire):
        with pytest.raises(ValueError, match=r"^n must be non-negative, got -1$"):
            method(-1)


def test_acquire_releases_the_gil(impl: ModuleType) -> None:
    bucket = impl.TokenBucket(MIB, burst=0)
    counter = [0]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        before = counter[0]
        started = time.monotonic()
        bucket.acquire(MIB // 2)
        elapsed = time.monotonic() - started
        during = counter[0] - before
    finally:
        stop.set()
        thread.join(timeout=5)
    assert elapsed >= 0.45  # half a MiB at 1 MiB/s with an empty bucket; a loaded machine only makes it later
    assert during > 1000

"""The sliding window behind the sign-in and job limits: counts survive a client that sprays keys, and attempts in
flight count (the limits themselves are tested on a manager process: tests/integration/manager)."""

from __future__ import annotations

import asyncio

from dragonfly.manager.auth import SigninLimiter
from dragonfly.manager.ratelimit import SlidingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_sprayed_past_the_table_size_never_end_a_lock_out_or_reset_a_count() -> None:
    clock = Clock()
    window = SlidingWindow(60.0, max_keys=100, clock=clock)
    for _ in range(3):
        window.add("locked", 3)
    window.add("counted", 3)
    assert window.wait("locked", 3) == 60.0
    for index in range(1000):  # ten times the table, within the window
        clock.now += 0.01
        window.add(f"sprayed-{index}", 3)
    assert window.wait("locked", 3) > 0, "the locked-out key was evicted"
    window.add("counted", 3)
    window.add("counted", 3)
    assert window.wait("counted", 3) > 0, "the partial count was reset"


def test_keys_whose_window_is_empty_are_swept_when_the_table_is_full() -> None:
    clock = Clock()
    window = SlidingWindow(60.0, max_keys=100, clock=clock)
    for index in range(100):
        window.add(f"old-{index}", 3)
    clock.now += 30
    window.add("recent", 3)  # a full table with nothing to sweep yet: it grows
    assert len(window._events) == 101
    clock.now += 31
    window.add("new", 3)
    assert sorted(window._events) == ["new", "recent"]
    assert window.wait("recent", 1) > 0


async def test_concurrent_guesses_cannot_all_pass_before_the_first_failure_is_counted() -> None:
    limiter = SigninLimiter(max_failures=2, window=60.0, max_address_failures=3)
    assert await limiter.begin("10.0.0.7", "root") is None
    assert await limiter.begin("10.0.0.7", "root") is None
    queued = [asyncio.create_task(limiter.begin("10.0.0.7", "root")) for _ in range(2)]
    assert await limiter.begin("10.0.0.8", "root") is None, "another address has its own budget"
    await asyncio.sleep(0)
    assert not any(task.done() for task in queued), "two attempts being verified fill the pair's limit"
    limiter.end("10.0.0.7", "root", failed=True)
    limiter.end("10.0.0.7", "root", failed=True)
    refusals = await asyncio.gather(*queued)
    assert [(r.verifying, 59 <= r.seconds <= 60) for r in refusals if r] == [(False, True)] * 2, refusals
    assert await limiter.begin("10.0.0.7", "alice") is None, "the address has one failure left"
    limiter.end("10.0.0.7", "alice", failed=False)
    assert await limiter.begin("10.0.0.7", "carol") is None, "a success keeps the address's count, here 2 of 3"
    limiter.end("10.0.0.7", "carol", failed=True)
    refusal = await limiter.begin("10.0.0.7", "alice")
    assert refusal is not None, "and the address is locked out at 3"
    assert not refusal.verifying


async def test_a_burst_of_right_passwords_is_verified_in_turn() -> None:
    limiter = SigninLimiter(max_failures=2, window=60.0)
    signed_in = []

    async def sign_in(index: int) -> None:
        assert await limiter.begin("10.0.0.7", "ci") is None
        await asyncio.sleep(0)  # the verification
        signed_in.append(index)
        limiter.end("10.0.0.7", "ci", failed=False)

    await asyncio.wait_for(asyncio.gather(*(sign_in(index) for index in range(6))), 10)
    assert sorted(signed_in) == list(range(6))


async def test_an_attempt_that_waits_in_vain_is_told_so() -> None:
    limiter = SigninLimiter(max_failures=1, window=60.0, patience=0.05)
    assert await limiter.begin("10.0.0.7", "root") is None
    refusal = await limiter.begin("10.0.0.7", "root")
    assert refusal == (1.0, True)
    limiter.end("10.0.0.7", "root", failed=None)
    assert await limiter.begin("10.0.0.7", "root") is None, "an attempt that ended otherwise counted nothing"


async def test_an_ipv6_client_is_counted_by_its_64_and_an_ipv4_mapped_one_as_ipv4() -> None:
    limiter = SigninLimiter(max_failures=5, window=60.0, max_address_failures=2)
    for address in ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe"):  # two addresses of one /64
        assert await limiter.begin(address, f"user-{address}") is None
        limiter.end(address, f"user-{address}", failed=True)
    assert await limiter.begin("2001:db8:1:2::abcd", "root"), "a third address of the /64 starts with none left"
    assert await limiter.begin("2001:db8:1:3::1", "root") is None, "the next /64 has its own"
    limiter.end("2001:db8:1:3::1", "root", failed=None)
    for _ in range(2):
        assert await limiter.begin("::ffff:10.0.0.7", "root") is None
        limiter.end("::ffff:10.0.0.7", "root", failed=True)
    assert await limiter.begin("10.0.0.7", "root")
    assert await limiter.begin("10.0.0.8", "root") is None, "IPv4 addresses are counted one by one"


async def test_the_attempts_waiting_for_room_are_bounded_per_client() -> None:
    """Each ending attempt wakes its client's waiting ones to check again: without a bound, a client holding
    thousands of requests open (a valid account's successes are not counted) made every end cost that many checks."""
    limiter = SigninLimiter(max_failures=5, window=60.0, max_address_failures=20)
    for index in range(20):
        assert await limiter.begin("10.0.0.7", f"user-{index}") is None
    waiting = [asyncio.create_task(limiter.begin("10.0.0.7", f"more-{index}")) for index in range(100)]
    for _ in range(3):
        await asyncio.sleep(0)
    refused = [task.result() for task in waiting if task.done()]
    assert refused == [(1.0, True)] * 80, refused
    assert await limiter.begin("10.0.0.8", "root") is None, "another client neither waits nor is refused"
    for index in range(20):
        limiter.end("10.0.0.7", f"user-{index}", failed=False)
    admitted = await asyncio.wait_for(asyncio.gather(*(task for task in waiting if not task.done())), 10)
    assert admitted == [None] * 20

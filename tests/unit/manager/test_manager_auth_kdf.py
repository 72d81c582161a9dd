"""Password hashing is open to anyone through sign-in: at most KDF_CONCURRENCY argon2 computations run at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dragonfly.manager import auth
from tests.waiting import eventually


async def test_a_flood_of_sign_ins_runs_at_most_two_password_checks_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    lock = threading.Lock()
    release = threading.Event()
    running = 0
    most = 0
    entered = 0

    def verify(_encoded: str, _password: str) -> bool:
        nonlocal running, most, entered
        with lock:
            running += 1
            entered += 1
            most = max(most, running)
        release.wait(timeout=30)
        with lock:
            running -= 1
        return False

    monkeypatch.setattr(auth, "verify_password_sync", verify)
    checks = [asyncio.create_task(auth.verify_password("$argon2id$x", f"guess-{i}")) for i in range(6)]
    try:
        await eventually(lambda: running == auth.KDF_CONCURRENCY, 30, "two checks running")
        # The others wait for a slot, on the event loop, not in threads.
        await eventually(lambda: sum(not task.done() for task in checks) == 6, 5, "six checks pending")
        assert entered == auth.KDF_CONCURRENCY
    finally:
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*checks), 30)
    assert results == [False] * 6
    assert entered == 6
    assert most == auth.KDF_CONCURRENCY

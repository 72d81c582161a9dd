"""The tests' blocking-call detector (loop_guard.no_blocking_calls): what it reports and what it lets through."""

from __future__ import annotations

import gc
import os
import time
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from blockbuster import BlockingError
from loop_guard import no_blocking_calls

import dragonfly
from dragonfly.daemon.blocking import run_blocking


class _Executor(ThreadPoolExecutor):
    """Runs ``on_submit`` on the loop's thread when the package's run_blocking hands it a call (so below a frame of
    the ``dragonfly`` package, as the daemon's own code is)."""

    def __init__(self, on_submit: Callable[[], None]) -> None:
        super().__init__(1)
        self._on_submit = on_submit

    def submit(self, fn: Callable[..., object], /, *args: object, **kwargs: object) -> Future[object]:
        self._on_submit()
        return super().submit(fn, *args, **kwargs)


class _Garbage:
    """An object in a reference cycle whose finalizer blocks (as gRPC's last aio channel does: it joins a thread)."""

    def __init__(self, outcome: list[str]) -> None:
        self.outcome = outcome
        self.cycle = self

    def __del__(self) -> None:
        try:
            time.sleep(0)
        except BlockingError:
            self.outcome.append("reported")
        else:
            self.outcome.append("let through")


async def test_a_blocking_call_below_package_code_on_the_loop_is_reported() -> None:
    with _Executor(lambda: time.sleep(0)) as executor, no_blocking_calls(), pytest.raises(BlockingError):
        await run_blocking(executor, int)


async def test_a_finalizer_the_garbage_collector_runs_is_not_the_code_under_test() -> None:
    """The collector may start on any allocation and finalize any test's garbage: what those finalizers do is not
    what the guarded code does, and a check that fails only when a collection starts in the block would be a flake."""
    outcome: list[str] = []
    gc.disable()  # the collection happens below, inside the package's frame, not at some allocation before it
    try:
        _Garbage(outcome)
        with _Executor(gc.collect) as executor, no_blocking_calls():
            await run_blocking(executor, int)
    finally:
        gc.enable()
    assert outcome == ["let through"]


# A generator of the package's own (its code carries a file name inside dragonfly/, as the daemon's code does) whose
# finally block makes a blocking call: dropped in a cycle, the collector runs that block, on the loop's thread.
_PACKAGE_FINALLY = compile(
    """
def holding(box):
    try:
        yield
    finally:
        try:
            time.sleep(0)
        except BlockingError:
            box.outcome.append("reported")
        else:
            box.outcome.append("let through")
""",
    os.path.join(dragonfly.__path__[0], "_loop_guard_probe.py"),
    "exec",
)


class _Box:
    def __init__(self, outcome: list[str]) -> None:
        self.outcome = outcome
        namespace: dict[str, object] = {"time": time, "BlockingError": BlockingError}
        exec(_PACKAGE_FINALLY, namespace)
        holding = typing.cast(Callable[[_Box], Iterator[None]], namespace["holding"])
        self.generator = holding(self)  # its frame holds the box: a cycle
        next(self.generator)


async def test_package_code_the_garbage_collector_runs_is_still_checked() -> None:
    """Our own coroutine or generator dropped in a cycle runs its finally blocks inside a collection, on the loop: a
    blocking call there is ours, so only what lies between a finalizer and the collection's start decides."""
    outcome: list[str] = []
    gc.disable()
    try:
        _Box(outcome)
        with _Executor(gc.collect) as executor, no_blocking_calls():
            await run_blocking(executor, int)
    finally:
        gc.enable()
    assert outcome == ["reported"]

"""A blocking-call detector around the parts of a test that run on the event loop like the daemon does.

blockbuster (PyPI) patches the blocking functions of the stdlib while active and raises BlockingError when one is
called from the thread running the event loop, from code of the ``dragonfly`` package. Tests set things up first
(storage, files, fixtures: start-up work a daemon does once) and guard the work a daemon does while it serves.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from blockbuster import BlockBuster

import dragonfly

# Calls the daemon makes on the loop on purpose, each cheap and bounded: path arithmetic (abspath may call getcwd)
# and metadata syscalls on the output path and content files (stat, access, exists, rename: no data moves), and
# SQLite's metadata writes, batched and on the loop by design (dragonfly/daemon/storage/metadata.py).
ALLOWED = (
    "os.path.abspath",
    "os.stat",
    "os.path.exists",
    "os.path.lexists",
    "os.access",
    "os.rename",
    "sqlite3.Connection.execute",
    "sqlite3.Connection.executemany",
    "sqlite3.Connection.commit",
    "sqlite3.Cursor.execute",
    "sqlite3.Cursor.executemany",
)


_active: list[BlockBuster] = []

# The cyclic garbage collection running now: its thread and the frame that was running when it started. The
# finalizers a collection runs belong to whatever garbage it found, often objects an earlier test dropped, not to the
# code under test that happened to allocate when it started: the last gRPC aio channel of an earlier test, freed so,
# shuts gRPC's aio engine down and joins its poller thread (a blocking lock.acquire) from the frame of the package code
# on the loop below it. Such a check fails only when a collection happens to start inside the guarded block, so a
# call made by a finalizer is let through, unless package code stands between it and the collection's start: a
# coroutine or generator of ours dropped in a cycle runs its finally blocks there, on the loop, and those are ours. A
# finalizer run as its object's last reference goes (no collector involved) is checked as usual.
_PACKAGE = dragonfly.__path__[0]
_collection: tuple[int, FrameType | None] | None = None


def _on_collection(phase: str, _info: dict[str, Any]) -> None:
    global _collection
    if phase == "start":
        here = sys._getframe(0)
        _collection = (threading.get_ident(), here.f_back)
    else:
        _collection = None  # the frame is not kept past the collection


def _finalized_outside_package(collection: tuple[int, FrameType | None] | None) -> bool:
    """Whether the blocking call being checked is made on a collection's thread with no package frame between it and
    the frame the collection started on (a finalizer of foreign garbage)."""
    if collection is None or collection[0] != threading.get_ident():
        return False
    started_on = collection[1]
    frame = sys._getframe(1)
    while frame is not None and frame is not started_on:
        if frame.f_code.co_filename.startswith(_PACKAGE):
            return False
        frame = frame.f_back
    return True


def _unless_collecting(predicate: Callable[..., bool]) -> Callable[..., bool]:
    def can_block(*args: Any, **kwargs: Any) -> bool:
        return _finalized_outside_package(_collection) or predicate(*args, **kwargs)

    return can_block


@contextlib.contextmanager
def no_blocking_calls() -> Iterator[None]:
    """Fail with BlockingError when package code blocks the event loop inside the ``with`` block.

    Re-entrant: concurrent downloads in one test share one detector (blockbuster patches module functions, so two
    detectors deactivated out of order would leave one patched).
    """
    if not _active:
        detector = BlockBuster(scanned_modules=["dragonfly"])
        for function in detector.functions.values():
            function.can_block_predicate = _unless_collecting(function.can_block_predicate)
        gc.callbacks.append(_on_collection)
        detector.activate()
        for name in ALLOWED:
            function = detector.functions.get(name)
            if function is not None:
                function.deactivate()
        _active.append(detector)
    else:
        _active.append(_active[0])
    try:
        yield
    finally:
        detector = _active.pop()
        if not _active:
            detector.deactivate()
            gc.callbacks.remove(_on_collection)

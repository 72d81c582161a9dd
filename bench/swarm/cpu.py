"""CPU seconds that the processes of one system consume during its run, which machine load does not distort.

Every process a system runs is a descendant of the benchmark process (``ip netns exec`` execs, it does not fork):
long-running ones (scheduler, daemons, nginx, the seeding aria2c, trackers) are read before and after; short ones
(dfget, curl, aria2c peers) are counted when their parent waits for them (``RUSAGE_CHILDREN`` of that parent, or
of this process).
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

import psutil

#: What a competing process runs: one core's worth of pure computation, as a compile on the same node would.
_SPIN = "while True: pass"


def _label(process: psutil.Process) -> str:
    """Return the module of ``python -m module`` (the seed's dfdaemon apart), else the executable's name."""
    try:
        argv = process.cmdline()
    except psutil.Error:
        return "?"
    if "-m" in argv[:-1]:
        label = argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
        # The seed peer's daemon apart from the peers': it alone reads the origin and serves every first copy.
        if (
            label == "dfdaemon"
            and "--config" in argv[:-1]
            and Path(argv[argv.index("--config") + 1]).parent.name == "seed"
        ):
            return "dfdaemon (seed)"
        return label
    return argv[0].rsplit("/", 1)[-1] if argv else "?"


def _tree(exclude: Collection[int] = ()) -> dict[int, tuple[str, float]]:
    """Return (label, user + system seconds own and of reaped children) of every live descendant of this process."""
    seconds: dict[int, tuple[str, float]] = {}
    for process in psutil.Process().children(recursive=True):
        if process.pid in exclude:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total = times.user + times.system + times.children_user + times.children_system
        seconds[process.pid] = (_label(process), total)
    return seconds


def _reaped() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds of this process's descendants between ``start()`` and ``stop()`` (this process excluded).

    ``exclude``: pids not counted (the competing processes of ``CpuHogs``, which must outlive ``stop()``).
    """

    def __init__(self, exclude: Collection[int] = ()) -> None:
        self._exclude = frozenset(exclude)
        self._before: dict[int, tuple[str, float]] = {}
        self._reaped_before = 0.0
        #: After ``stop()``: seconds by process label (short-lived processes under their parent's, or "reaped").
        self.by_process: dict[str, float] = {}

    def start(self) -> None:
        self._before = _tree(self._exclude)
        self._reaped_before = _reaped()

    def stop(self) -> float:
        after = _tree(self._exclude)
        by_process: dict[str, float] = {"reaped": _reaped() - self._reaped_before}
        for pid, (label, seconds) in after.items():
            by_process[label] = by_process.get(label, 0.0) + seconds - self._before.get(pid, ("", 0.0))[1]
        # A process alive at the start and reaped since is counted whole (by its parent's children times or by
        # ours): take off what it had used before the start.
        for pid, (_, seconds) in self._before.items():
            if pid not in after:
                by_process["reaped"] -= seconds
        self.by_process = {label: round(max(s, 0.0), 3) for label, s in by_process.items()}
        return max(sum(by_process.values()), 0.0)


class CpuHogs:
    """``count`` processes that each keep one core busy while a system runs (``bench swarm --cpu-hogs``).

    They stand for the workloads of a real node: the daemons then get what the kernel's fair share leaves them.
    """

    def __init__(self, count: int) -> None:
        self._procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdin=subprocess.DEVNULL) for _ in range(count)]

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait(timeout=10)
        self._procs = []

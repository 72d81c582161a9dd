"""CPU of every process a system runs, over time: which one was short of CPU when the swarm stalled.

``CpuMeter`` gives each process's total; a stall of a few seconds (a seed peer whose uploads slow down while its
origin read goes on) needs the share of a core each process got in each moment. A thread samples the user +
system seconds of every descendant of the benchmark every ``interval`` seconds; a daemon is named by its host
(``dfdaemon seed``, ``dfdaemon p3``: each runs with ``--config <workdir>/<host>/dfdaemon.yaml``), so the seed, the
seed's first child and the rest can be told apart. Processes that live shorter than an interval may be missed:
their CPU is in ``CpuMeter``'s totals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from pathlib import PurePath

import psutil

from bench.swarm.cpu import _label


def host_label(argv: list[str], fallback: str) -> str:
    """Return ``dfdaemon <host>`` for a daemon run with ``--config <dir>/<host>/dfdaemon.yaml``, else ``fallback``."""
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1].endswith("dfdaemon") and "--config" in argv[:-1]:
        host = PurePath(argv[argv.index("--config") + 1]).parent.name
        if host:
            return f"dfdaemon {host}"
    return fallback


class CpuSampler:
    """Share of a core each descendant process used per interval, from ``start()`` to ``stop()``."""

    def __init__(self, interval: float = 0.5, exclude: Collection[int] = ()) -> None:
        self._interval = interval
        self._exclude = frozenset(exclude)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._processes: dict[int, tuple[psutil.Process, str]] = {}
        self._last: dict[int, float] = {}
        self._last_time = 0.0
        #: label -> [[wall time at the interval's end, cores used in it], ...]
        self.samples: dict[str, list[list[float]]] = {}

    def start(self) -> None:
        self._sample(record=False)
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, list[list[float]]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.samples

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample(record=True)

    def _sample(self, *, record: bool) -> None:
        now = time.time()
        # Under load the thread wakes late: divide by the time that really passed.
        elapsed = max(now - self._last_time, 1e-3)
        seen: dict[int, float] = {}
        shares: dict[str, float] = {}
        for process in psutil.Process().children(recursive=True):
            if process.pid in self._exclude:
                continue
            try:
                if process.pid not in self._processes:
                    self._processes[process.pid] = (process, host_label(process.cmdline(), _label(process)))
                times = self._processes[process.pid][0].cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            seen[process.pid] = used
            if record:
                label = self._processes[process.pid][1]
                # A process born within the interval counts from its start.
                shares[label] = shares.get(label, 0.0) + (used - self._last.get(process.pid, 0.0)) / elapsed
        self._last, self._last_time = seen, now
        for label, share in shares.items():
            self.samples.setdefault(label, []).append([now, round(share, 3)])

"""The swarm's CPU meter counts descendants that run through the window and those that end within it."""

from __future__ import annotations

import subprocess
import sys

import psutil

from bench.swarm.cpu import CpuHogs, CpuMeter
from tests.waiting import wait_for

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n{after}"


def test_cpu_of_live_and_finished_children_is_counted_once() -> None:
    before = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=1.0, after="")])
    before.wait()  # reaped before the window: not counted
    live = subprocess.Popen(
        [sys.executable, "-c", BURN.format(seconds=0.2, after="import sys; sys.stdin.read()")], stdin=subprocess.PIPE
    )
    meter = CpuMeter()
    meter.start()
    subprocess.run([sys.executable, "-c", BURN.format(seconds=0.4, after="")], check=True)
    assert live.stdin is not None
    live.stdin.close()
    live.wait()
    seconds = meter.stop()
    # The short child's 0.4 s, the live one's share within the window (0 to 0.2 s) and interpreter start-ups;
    # never the 1 s of the child reaped before the window.
    assert 0.4 <= seconds < 0.4 + 0.2 + 0.4


def test_cpu_is_reported_by_process() -> None:
    meter = CpuMeter()
    meter.start()
    subprocess.run([sys.executable, "-c", BURN.format(seconds=0.2, after="")], check=True)
    total = meter.stop()
    assert meter.by_process["reaped"] >= 0.2
    assert abs(total - sum(meter.by_process.values())) < 0.01


def test_competing_processes_are_not_counted_and_end_when_stopped() -> None:
    hogs = CpuHogs(1)
    [pid] = hogs.pids
    hog = psutil.Process(pid)
    meter = CpuMeter(exclude=hogs.pids)
    meter.start()
    subprocess.run([sys.executable, "-c", BURN.format(seconds=0.2, after="")], check=True)
    # Until the hog has burnt more than the measured child, so that counting it would show.
    wait_for(lambda: sum(hog.cpu_times()[:2]) >= 0.5, 60, "the competing process to burn 0.5 s of CPU")
    seconds = meter.stop()
    hogs.stop()
    assert not psutil.pid_exists(pid) or hog.status() == psutil.STATUS_ZOMBIE
    assert 0.2 <= seconds < 0.5


class _Cmdline:
    def __init__(self, argv: list[str]) -> None:
        self._argv = argv

    def cmdline(self) -> list[str]:
        return self._argv


def test_the_seed_peers_daemon_is_counted_apart_from_the_peers() -> None:
    from bench.swarm.cpu import _label

    def label(*argv: str) -> str:
        return _label(_Cmdline(list(argv)))  # type: ignore[arg-type]

    assert (
        label("python", "-m", "dragonfly.cli.dfdaemon", "--config", "/w/ours/seed/dfdaemon.yaml") == "dfdaemon (seed)"
    )
    assert label("python", "-m", "dragonfly.cli.dfdaemon", "--config", "/w/ours/p1/dfdaemon.yaml") == "dfdaemon"
    assert label("python", "-m", "dragonfly.cli.scheduler", "--config", "/w/seed/scheduler.yaml") == "scheduler"
    assert label("/usr/sbin/nginx", "-c", "/w/nginx.conf") == "nginx"

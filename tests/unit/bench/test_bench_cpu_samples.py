"""The swarm's CPU sampler: the share of a core each process got over time, daemons named by their host."""

from __future__ import annotations

import subprocess
import sys

import psutil

from bench.swarm.cpu_samples import CpuSampler, host_label

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def test_daemons_are_named_by_the_host_directory_of_their_config() -> None:
    daemon = ["python", "-m", "dragonfly.cli.dfdaemon", "--config", "/w/ours/p3/dfdaemon.yaml"]
    assert host_label(daemon, "dfdaemon") == "dfdaemon p3"
    assert host_label(["python", "-m", "dragonfly.cli.scheduler", "--config", "/w/s.yaml"], "scheduler") == "scheduler"
    assert host_label(["nginx", "-c", "/w/nginx.conf"], "nginx") == "nginx"


def test_each_sample_is_the_cpu_a_process_used_since_the_one_before() -> None:
    # The child burns 0.3 s of CPU between two samples, whenever the machine lets it. It says "ready" once its
    # interpreter has started, so the start-up's CPU (tens of ms, more under load) falls before the first sample.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
         + BURN.format(seconds=0.3) + "print('burnt')\nsys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        # Only this child: the test session may have other children of its own (servers, daemons) busy meanwhile.
        others = {process.pid for process in psutil.Process().children(recursive=True)} - {child.pid}
        sampler = CpuSampler(exclude=others)
        sampler._sample(record=False)
        before = sampler._last_time
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "burnt\n"
        sampler._sample(record=True)
    finally:
        child.stdin.close()
        child.stdout.close()
        child.wait(timeout=30)
    [[(at, cores)]] = sampler.samples.values()
    used = cores * (at - before)
    # /proc counts CPU time in clock ticks (10 ms): the two readings may each be a tick short.
    assert 0.3 - 0.02 <= used < 0.3 + 0.1

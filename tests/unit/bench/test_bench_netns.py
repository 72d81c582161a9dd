"""Namespace topology and cleanup: creates real namespaces (root and iproute2 needed), removes them again."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.swarm import hosts
from bench.swarm.hosts import NetnsTopology, Shaping, cleanup_leftovers, list_namespaces, probe_namespaces, run_prefix

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module", autouse=True)
def _needs_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    reason = probe_namespaces()
    if reason:
        pytest.skip(reason)


def _ours(prefix: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(prefix)]


def test_topology_connects_shapes_and_cleans_up(tmp_path: Path) -> None:
    shaping = Shaping(upload={"a": 1e6}, download={"a": 2e6, "b": 0})
    topology = NetnsTopology(["a", "b"], tmp_path, shaping)
    try:
        assert sorted(_ours(topology.prefix)) == sorted([f"{topology.prefix}a", f"{topology.prefix}b", topology.router])
        a, b = topology.hosts["a"], topology.hosts["b"]
        assert (a.ip, b.ip) == ("10.77.0.2", "10.77.0.3")
        # b reaches a across the bridge.
        server = topology.popen(a, [sys.executable, "-m", "http.server", "--bind", a.ip, "8000"])
        probe = (
            "import socket,time\nend=time.monotonic()+10\nwhile True:\n"
            f"    try: socket.create_connection(({a.ip!r},8000),timeout=1).close(); break\n"
            "    except OSError:\n        assert time.monotonic()<end\n        time.sleep(0.05)\n"
        )
        assert subprocess.run(b.command([sys.executable, "-c", probe]), timeout=20).returncode == 0
        qdiscs = subprocess.run(["tc", "-n", a.netns, "class", "show", "dev", "eth0"], capture_output=True, text=True)
        assert "rate 8Mbit" in qdiscs.stdout
        counters = topology.interface_counters()
        assert set(counters) == {"a", "b"}
        assert counters["b"][0] > 0  # b's SYN went out through its veth
    finally:
        topology.close()
    assert _ours(topology.prefix) == []
    assert server.poll() is not None
    assert not topology.workdir.exists()


def test_leftovers_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from bench.swarm.hosts import NetnsTopology
        topology = NetnsTopology(["x"], Path({str(tmp_path)!r}))
        print(topology.prefix, flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            prefix = child.stdout.readline().strip()
            assert prefix == run_prefix(child.pid)
            assert len(_ours(prefix)) == 2
        finally:
            child.kill()
            child.wait(timeout=10)
    # SIGKILL left the namespaces behind; the next run's start-up cleanup finds them by the dead pid.
    assert len(_ours(prefix)) == 2
    removed = cleanup_leftovers()
    assert sorted(removed) == sorted([f"{prefix}x", f"{prefix}rt"])
    assert _ours(prefix) == []


def test_sigterm_cleans_up(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import signal, time
        from pathlib import Path
        from bench.swarm.hosts import NetnsTopology
        from bench.swarm.runner import _raise_interrupt
        signal.signal(signal.SIGTERM, _raise_interrupt)
        topology = NetnsTopology(["y"], Path({str(tmp_path)!r}))
        try:
            topology.popen(topology.hosts["y"], ["sleep", "60"])
            print(topology.prefix, flush=True)
            time.sleep(60)
        finally:
            topology.close()
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        prefix = child.stdout.readline().strip()
        assert len(_ours(prefix)) == 2
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) != 0
    assert _ours(prefix) == []


def test_shaping_errors_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_shape(netns: str, dev: str, rate: float, delay_ms: float) -> None:
        raise hosts.NamespacesUnavailable(f"tc failed on {netns}/{dev}: nope")

    monkeypatch.setattr(hosts, "_shape", failing_shape)
    prefix = run_prefix()
    with pytest.raises(hosts.NamespacesUnavailable, match=r"tc failed on .*/eth0: nope"):
        NetnsTopology(["z"], tmp_path, Shaping(upload={"z": 1e6}, download={}))
    # A failed build removes what it had made.
    assert _ours(prefix) == []

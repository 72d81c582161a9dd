"""Test hosts for the swarm benchmark: one network namespace per host on a shaped bridge, or plain loopback.

Everything a run creates is named with ``PREFIX<pid>-`` so that cleanup can find it again: the namespaces, the
processes inside them (found with ``ip netns pids``) and the work directory. ``cleanup_leftovers()`` removes what a
killed earlier run left behind (its pid is gone); a run's own ``Topology.close()`` removes its own, and the runner
calls it from ``finally`` and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "dfbench"
SUBNET = "10.77.0"
BRIDGE = "br0"
_ROUTER = "rt"
#: How long a process gets after SIGTERM before SIGKILL.
_TERM_GRACE = 3.0


class NamespacesUnavailable(RuntimeError):
    """Raised when this machine does not let us create namespaces, veths, a bridge or tc qdiscs."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=timeout)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        return _run(["ip", *args], check=check)
    except subprocess.CalledProcessError as exc:
        raise NamespacesUnavailable(f"`ip {' '.join(args)}` failed: {exc.stderr.strip()}") from exc


def run_prefix(pid: int | None = None) -> str:
    """Return the name prefix of the run of process `pid` (default: this process)."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}-"


def list_namespaces() -> list[str]:
    """Return the names of all network namespaces on this machine."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_pids(pids: Iterable[int], grace: float = _TERM_GRACE) -> None:
    """SIGTERM the given processes, wait up to `grace` seconds, then SIGKILL the ones still alive."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _pid_alive(p) and not _reap(p)]
        if pids:
            time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)


def _reap(pid: int) -> bool:
    """Reap `pid` if it is our exited child; return True if it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def delete_namespace(name: str) -> None:
    """Kill every process inside namespace `name`, then delete it (its veths go with it)."""
    pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
    kill_pids(int(p) for p in pids)
    _run(["ip", "netns", "del", name], check=False)


def cleanup_prefix(prefix: str) -> list[str]:
    """Delete every namespace and work directory named with `prefix`; return the namespaces removed."""
    removed = [ns for ns in list_namespaces() if ns.startswith(prefix)]
    # Hosts first, the router (holding the bridge and the host-side veth ends) last.
    for ns in sorted(removed, key=lambda n: n.endswith(_ROUTER)):
        delete_namespace(ns)
    for base in (Path("/dev/shm"), Path("/var/tmp")):
        for path in base.glob(f"{prefix}*"):
            shutil.rmtree(path, ignore_errors=True)
    return removed


def cleanup_leftovers() -> list[str]:
    """Remove what earlier runs left behind (runs whose process no longer exists); return namespaces removed."""
    removed: list[str] = []
    owners = {ns[len(PREFIX) :].split("-", 1)[0] for ns in list_namespaces() if ns.startswith(PREFIX)}
    for base in (Path("/dev/shm"), Path("/var/tmp")):
        owners |= {p.name[len(PREFIX) :].split("-", 1)[0] for p in base.glob(f"{PREFIX}*")}
    for owner in owners:
        if owner.isdigit() and not _pid_alive(int(owner)):
            removed += cleanup_prefix(run_prefix(int(owner)))
    return removed


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Host:
    """One test host: where its processes run and the address others reach it at."""

    name: str
    ip: str
    netns: str | None = None
    _ports: dict[int, int] = field(default_factory=dict)

    def command(self, argv: Sequence[str]) -> list[str]:
        """Return `argv` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def port(self, base: int) -> int:
        """Return the port this host uses for a service whose usual port is `base` (free ports on loopback)."""
        if self.netns:
            return base
        return self._ports.setdefault(base, free_port())


@dataclass(frozen=True)
class Shaping:
    """Per-host link rates in bytes/s (0 = unshaped) and an optional one-way delay added on each host's link."""

    upload: Mapping[str, float]
    download: Mapping[str, float]
    delay_ms: float = 0.0


class Topology:
    """A set of hosts and the processes started on them; `close()` stops and removes all of it."""

    mode = "loopback"

    def __init__(self, names: Sequence[str], workdir_base: Path) -> None:
        self.prefix = run_prefix()
        self.workdir = workdir_base / f"{self.prefix}work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts = {name: Host(name, "127.0.0.1") for name in names}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._started: list[subprocess.Popen[bytes]] = []

    def popen(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` on `host` in its own session; stderr (and stdout unless piped) go to `log`."""
        sink = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen(
                host.command(argv),
                stdout=stdout if stdout is not None else sink,
                stderr=sink,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        finally:
            if log:
                sink.close()  # type: ignore[union-attr]
        self.track(proc)
        return proc

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        """Make `close()` stop `proc` too."""
        self._procs.append(proc)
        self._started.append(proc)

    def mark(self) -> int:
        """Return a marker for `started_since`."""
        return len(self._started)

    def started_since(self, mark: int) -> list[subprocess.Popen[bytes]]:
        """Return the processes started after `mark()` returned `mark`."""
        return self._started[mark:]

    def stop(self, procs: Iterable[subprocess.Popen[bytes]] | None = None) -> None:
        """Stop the given processes (default: all started here) and reap them."""
        targets = list(self._procs if procs is None else procs)
        kill_pids(p.pid for p in targets if p.poll() is None)
        for p in targets:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=1)
            if p in self._procs:
                self._procs.remove(p)

    def interface_counters(self) -> dict[str, tuple[int, int]] | None:
        """Return {host: (bytes uploaded, bytes downloaded)} on the wire, or None where there is no wire."""
        return None

    def close(self) -> None:
        """Stop every process and remove the work directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class NetnsTopology(Topology):
    """One namespace per host, each with one veth into a bridge that lives in a private router namespace.

    Upload is shaped on the host's own veth end (its egress), download on the router's end of the same veth
    (the router's egress towards the host), so no IFB device is needed and both directions are plain HTB.
    """

    mode = "netns"

    def __init__(self, names: Sequence[str], workdir_base: Path, shaping: Shaping | None = None) -> None:
        if len(names) > 250:
            raise ValueError("at most 250 hosts fit the test subnet")
        super().__init__(names, workdir_base)
        self.router = f"{self.prefix}{_ROUTER}"
        self.hosts = {name: Host(name, f"{SUBNET}.{i + 2}", f"{self.prefix}{name}") for i, name in enumerate(names)}
        self._veth = {name: f"v{i}" for i, name in enumerate(names)}
        try:
            self._create(shaping)
        except BaseException:
            self.close()
            raise

    def _create(self, shaping: Shaping | None) -> None:
        _ip("netns", "add", self.router)
        _ip("-n", self.router, "link", "set", "lo", "up")
        _ip("-n", self.router, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.router, "link", "set", BRIDGE, "up")
        for name, host in self.hosts.items():
            assert host.netns is not None
            veth = self._veth[name]
            _ip("netns", "add", host.netns)
            _ip("-n", self.router, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _ip("-n", self.router, "link", "set", veth, "master", BRIDGE, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            if shaping:
                delay = shaping.delay_ms
                _shape(host.netns, "eth0", shaping.upload.get(name, 0), delay)
                _shape(self.router, veth, shaping.download.get(name, 0), delay)

    def interface_counters(self) -> dict[str, tuple[int, int]]:
        """Return {host: (bytes the host sent, bytes delivered to it)} from the router's veth ends."""
        counters = read_counters(self.router)
        return {name: counters[veth] for name, veth in self._veth.items() if veth in counters}

    def veth_names(self) -> dict[str, str]:
        """Return {host: name of its veth end in the router namespace}."""
        return dict(self._veth)

    def close(self) -> None:
        """Stop every process, delete all namespaces of this run, remove the work directory."""
        super().close()
        cleanup_prefix(self.prefix)


def _shape(netns: str, dev: str, rate: float, delay_ms: float) -> None:
    """Shape the egress of `dev` to `rate` bytes/s with HTB (plus netem delay), or only delay it."""
    if rate <= 0 and delay_ms <= 0:
        return
    tc = ["tc", "-n", netns]
    try:
        if rate > 0:
            bits = int(rate * 8)
            # The burst must hold a whole GSO super-packet (64 KiB) or HTB stalls; quantum likewise.
            burst = max(256 * 1024, int(rate / 500))
            _run([*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"])
            _run(
                [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
                 "rate", f"{bits}bit", "ceil", f"{bits}bit", "burst", str(burst), "cburst", str(burst),
                 "quantum", "65536"]
            )  # fmt: skip
            parent = ["parent", "1:1", "handle", "10:"]
        else:
            parent = ["root", "handle", "10:"]
        if delay_ms > 0:
            _run([*tc, "qdisc", "add", "dev", dev, *parent, "netem", "delay", f"{delay_ms}ms", "limit", "100000"])
    except subprocess.CalledProcessError as exc:
        raise NamespacesUnavailable(f"tc failed on {netns}/{dev}: {exc.stderr.strip()}") from exc


def read_counters(netns: str | None) -> dict[str, tuple[int, int]]:
    """Return {interface: (rx_bytes, tx_bytes)} of namespace `netns` (None: this one), from /proc/net/dev."""
    argv = ["cat", "/proc/net/dev"]
    text = _run(["ip", "netns", "exec", netns, *argv] if netns else argv).stdout
    return parse_proc_net_dev(text)


def parse_proc_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """Parse /proc/net/dev into {interface: (rx_bytes, tx_bytes)}."""
    counters = {}
    for line in text.splitlines()[2:]:
        name, _, fields = line.partition(":")
        values = fields.split()
        if len(values) >= 9:
            counters[name.strip().split("@")[0]] = (int(values[0]), int(values[8]))
    return counters


def probe_namespaces() -> str | None:
    """Return None if namespaces, veths, a bridge and HTB work here, else the reason they do not."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed; run scripts/bench-deps.sh"
    probe = f"{run_prefix()}probe"
    try:
        _ip("netns", "add", probe)
        _ip("-n", probe, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        _ip("-n", probe, "link", "add", "pbr", "type", "bridge")
        _run(["tc", "-n", probe, "qdisc", "add", "dev", "pa", "root", "handle", "1:", "htb", "default", "1"])
    except (NamespacesUnavailable, subprocess.CalledProcessError, OSError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        return f"network namespaces or tc are not permitted here ({detail})"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None

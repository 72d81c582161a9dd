"""Helpers of the interop suite: Dragonfly's own binaries next to ours (issue 10, docs/interop.md).

The binaries are built by scripts/interop-deps.sh into ``$INTEROP_BIN`` (default ``$INTEROP_CACHE/bin``, i.e.
``~/.cache/dragonfly-p2p/interop/bin``): ``go/scheduler`` (dragonflyoss/dragonfly) and ``rust/bin/dfdaemon``,
``rust/bin/dfget`` (crates.io dragonfly-client). A test that needs one that is absent is skipped and says how to
build it. Everything runs in plaintext on loopback; our daemons use ``download.pieceVerification: compatible``
(docs/security.md): Dragonfly's peers report CRC-32 digests only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from dragonfly.cli.cluster import LocalCluster, OriginProcess, free_ports
from tests.waiting import listening, wait_for

CACHE = Path(
    os.environ.get("INTEROP_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dragonfly-p2p" / "interop"
)
BIN = Path(os.environ.get("INTEROP_BIN") or CACHE / "bin")
GO_SCHEDULER = BIN / "go" / "scheduler"
RUST_BIN = BIN / "rust" / "bin"
RUST_DFDAEMON = RUST_BIN / "dfdaemon"
RUST_DFGET = RUST_BIN / "dfget"
#: Our daemons' settings for a cluster with Dragonfly's parts (see the module docstring).
COMPATIBLE = {"download": {"pieceVerification": "compatible"}}
MiB = 1024 * 1024


def missing(path: Path, what: str, part: str) -> str | None:
    """Return why a test cannot run without ``path``, or None when it is there."""
    if os.access(path, os.X_OK):
        return None
    return f"{what} not built ({path} is missing): run scripts/interop-deps.sh {part}"


GO_MISSING = missing(GO_SCHEDULER, "Dragonfly's Go scheduler", "go")
RUST_MISSING = missing(RUST_DFDAEMON, "Dragonfly's Rust dfdaemon", "rust") or missing(
    RUST_DFGET, "Dragonfly's Rust dfget", "rust"
)
needs_go = pytest.mark.skipif(GO_MISSING is not None, reason=GO_MISSING or "")
needs_rust = pytest.mark.skipif(RUST_MISSING is not None, reason=RUST_MISSING or "")


def _need(path: Path, what: str, part: str) -> None:
    reason = missing(path, what, part)
    if reason is not None:
        pytest.skip(reason)


def version_of(binary: Path, *args: str) -> str:
    """Return the first version-looking string a binary prints for ``args``."""
    out = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
    found = re.search(r"v?\d+\.\d+\.\d+[\w.+-]*", out.stdout + out.stderr)
    return found.group(0) if found else "unknown"


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"exited before listening on {port}:\n{log.read_text()[-3000:]}")
        return listening(port)

    try:
        wait_for(up, timeout, f"something to listen on {port}", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text()[-3000:]}") from None


class GoScheduler:
    """Dragonfly's Go scheduler without a manager, on loopback."""

    def __init__(self, workdir: Path) -> None:
        _need(GO_SCHEDULER, "Dragonfly's Go scheduler", "go")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (self.port,) = free_ports(1)
        config = {
            "server": {
                "advertiseIP": "127.0.0.1",
                "advertisePort": self.port,
                "listenIP": "127.0.0.1",
                "port": self.port,
                "host": "localhost",
                "logDir": str(workdir / "log"),
                "pluginDir": str(workdir / "plugins"),
                "cacheDir": str(workdir / "cache"),
                "dataDir": str(workdir / "data"),
            },
            "job": {"enable": False},
            "metrics": {"enable": False},
        }
        (workdir / "scheduler.yaml").write_text(yaml.safe_dump(config))
        self.log = workdir / "scheduler.out"
        self.argv = [
            str(GO_SCHEDULER),
            "--config",
            str(workdir / "scheduler.yaml"),
            "--dynconfig",
            str(workdir / "dynconfig.yaml"),
        ]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> GoScheduler:
        with self.log.open("wb") as log:
            self._popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self._popen, self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        self._popen.terminate()
        try:
            self._popen.wait(15)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(5)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted((self.workdir / "log").rglob("*.log")))


class RustDaemon:
    """Dragonfly's Rust dfdaemon (peer or seed peer) registered to a scheduler, on loopback."""

    def __init__(self, workdir: Path, name: str, scheduler_addr: str, *, seed: bool = False) -> None:
        _need(RUST_DFDAEMON, "Dragonfly's Rust dfdaemon", "rust")
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(7)
        self.upload_port, proxy, self.metrics_port, health, stats, self.vortex_port, quic = ports
        self.socket_path = str(workdir / "dfdaemon.sock")
        config: dict[str, Any] = {
            "host": {"hostname": name, "ip": "127.0.0.1"},
            "server": {"pluginDir": str(workdir / "plugins"), "cacheDir": str(workdir / "cache")},
            "download": {"server": {"socketPath": self.socket_path}},
            "upload": {"server": {"ip": "127.0.0.1", "port": self.upload_port}},
            "proxy": {"server": {"ip": "127.0.0.1", "port": proxy}},
            "metrics": {"server": {"ip": "127.0.0.1", "port": self.metrics_port}},
            "health": {"server": {"ip": "127.0.0.1", "port": health}},
            "stats": {"server": {"ip": "127.0.0.1", "port": stats}},
            "storage": {
                "dir": str(workdir / "storage"),
                "server": {"ip": "127.0.0.1", "tcpPort": self.vortex_port, "quicPort": quic},
            },
            "seedPeer": {"enable": seed, "type": "super"},
        }  # fmt: skip
        (workdir / "dfdaemon.yaml").write_text(yaml.safe_dump(config))
        (workdir / "dynconfig.yaml").write_text(yaml.safe_dump({"scheduler": {"addrs": [scheduler_addr]}}))
        self.log = workdir / "dfdaemon.out"
        self.argv = [
            str(RUST_DFDAEMON),
            "--config",
            str(workdir / "dfdaemon.yaml"),
            "--dynconfig",
            str(workdir / "dynconfig.yaml"),
            "--log-dir",
            str(workdir / "log"),
        ]
        # The parent of each piece is logged at debug level by the task module only: keep the rest at info.
        self.env = {**os.environ, "RUST_LOG": "dragonfly_client::resource::task=debug"}

    def __enter__(self) -> RustDaemon:
        with self.log.open("wb") as log:
            self._popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )
        wait_port(self.upload_port, self._popen, self.log)
        try:
            wait_for(lambda: os.path.exists(self.socket_path), 30, f"a socket at {self.socket_path}", interval=0.1)
        except AssertionError as exc:
            self.__exit__()
            raise AssertionError(f"{exc}:\n{self.log.read_text()[-3000:]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM (the daemon leaves its scheduler), SIGKILL after 20 s; a no-op once stopped."""
        if self._popen.poll() is not None:
            return
        self._popen.terminate()
        try:
            self._popen.wait(20)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(5)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted((self.workdir / "log").rglob("*")) if p.is_file()
        )

    def metric(self, name: str, labels: str = "") -> float:
        return metric(f"127.0.0.1:{self.metrics_port}", name, labels)

    def pieces_by_parent(self) -> dict[str, int]:
        """Count the pieces this daemon fetched from each parent peer id, from its log."""
        counts: dict[str, int] = {}
        for parent in re.findall(r'finished piece \S+ from parent Some\("([^"]+)"\)', self.logs()):
            counts[parent] = counts.get(parent, 0) + 1
        return counts


def metric(addr: str, name: str, labels: str = "") -> float:
    """Sum a Prometheus counter's samples (those whose labels contain ``labels``) at ``http://addr/metrics``."""
    import urllib.request

    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.split("{", 1)[0] == name and labels in sample:
            total += float(value)
    return total


def rust_dfget(socket_path: str, url: str, output: Path) -> subprocess.CompletedProcess[str]:
    _need(RUST_DFGET, "Dragonfly's Rust dfget", "rust")
    return subprocess.run(
        [str(RUST_DFGET), "-e", socket_path, url, "-O", str(output), "--console"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def our_dfget(socket_path: str, url: str, output: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """Run our dfget; return the process and its bytes by source (origin, seed, peers, local) and by parent peer
    id (keys ``parent:<id>``, from ``--log-level debug``)."""
    result = subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.dfget", url, "-O", str(output), "-e", socket_path, "--no-progress",
         "--log-level", "debug"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    found = re.search(r"from origin=(\d+) seed=(\d+) peers=(\d+) local=(\d+)", result.stderr)
    sources = dict(zip(("origin", "seed", "peers", "local"), map(int, found.groups()), strict=True)) if found else {}
    for parent, length in re.findall(r"^dfget: from parent (\S+): (\d+) bytes$", result.stderr, re.MULTILINE):
        sources[f"parent:{parent}"] = int(length)
    return result, sources


def is_peer_of(peer_id: str, *hostnames: str) -> bool:
    """Tell whether a peer id is one of these hosts' on loopback: ``127.0.0.1-<hostname>-<uuid>[-seed]`` (ours and
    Dragonfly's form alike)."""
    return any(peer_id.startswith(f"127.0.0.1-{hostname}-") for hostname in hostnames)


def bytes_from(sources: Mapping[str, int], *hostnames: str) -> int:
    """Return the bytes of ``our_dfget``'s sources whose parent peer is on one of ``hostnames``."""
    return sum(
        length
        for key, length in sources.items()
        if key.startswith("parent:") and is_peer_of(key.removeprefix("parent:"), *hostnames)
    )


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OriginProcess]:
    directory = tmp_path / "origin"
    directory.mkdir()
    with OriginProcess(directory, tmp_path / "origin.log") as server:
        yield server


def make_file(origin: OriginProcess, name: str, size: int) -> str:
    """Write ``size`` random bytes at the origin; return the file's sha256."""
    import hashlib

    data = os.urandom(size)
    (origin.directory / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def our_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Our scheduler in plaintext, no daemons yet (tests add ours with add_daemon, pointing where they like)."""
    with LocalCluster(
        tmp_path / "ours", peers=0, seed_peer=False, tls=False, daemon_config=COMPATIBLE, start_timeout=60
    ) as cluster:
        yield cluster


def daemon_overrides(scheduler_addr: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"scheduler": {"addrs": [scheduler_addr]}, **COMPATIBLE}
    config.update(extra or {})
    return config

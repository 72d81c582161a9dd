"""Run a whole cluster on 127.0.0.1 as real processes: 1 scheduler, 1 seed peer and N peers (plus a demo origin).

``dragonfly up`` and the integration and end-to-end tests share this; it is the only launcher of real processes.
Every process gets its config file, its log file (stdout and stderr together) and its storage under one work
directory; start-up waits for the process's ``dragonfly: <component> ready`` line with a timeout, and a process
that dies first is reported with the tail of its log. The addresses a process prints before that line
(``dragonfly: <service> listening on <addr>``) are in ``ManagedProcess.listening`` keyed by service, e.g.
``scheduler``, ``scheduler metrics``, ``download``, ``upload``, ``vortex``, ``metrics``, ``origin``.

Mutual TLS is on unless ``tls=False``: the cluster mints a throwaway CA under ``<workdir>/pki`` and one certificate
per process (hostname = process name, IP 127.0.0.1, role by kind), so every test and ``dragonfly up`` run the
secure default path. Tests that talk to the processes directly get certificates from ``client_files`` /
``issue_cert``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml

import dragonfly
from dragonfly.common import pki
from dragonfly.common.identity import ROLE_MANAGER, ROLE_PEER, ROLE_SCHEDULER, ROLE_SEED_PEER
from dragonfly.common.tls import TLSFiles

_SUMMARY = re.compile(r"from origin=(\d+) seed=(\d+) peers=(\d+) local=(\d+)")
_LISTENING = re.compile(r"^dragonfly: (.+) listening on (\S+)$")
_READY = re.compile(r"^dragonfly: (.+) ready$")
# sun_path is 108 bytes on Linux; longer socket paths cannot be bound at all.
_MAX_SOCKET_PATH = 100
SCHEDULER = "scheduler"
SEED_PEER = "seed-peer"
MANAGER = "manager"
#: Where dfget says a download's bytes came from, in the order of its summary line.
SOURCES = ("origin", "seed", "peers", "local")
# The networks a local cluster's daemons may fetch origins from on other hosts' request (loopback).
LOCAL_ORIGIN_NETWORKS = ("127.0.0.0/8", "::1/128")


class ProcessStartError(RuntimeError):
    """A cluster process exited or stayed silent instead of announcing that it is ready."""


@dataclass(frozen=True, slots=True)
class DfgetResult:
    """What one dfget run did: exit status (None if it overran), stderr, wall seconds, bytes by source."""

    returncode: int | None
    stderr: str
    seconds: float
    traffic: dict[str, int] | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str | None:
        """Return dfget's last stderr line when it failed."""
        if self.ok:
            return None
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else f"dfget exited with status {self.returncode}"


def run_dfget(
    socket_path: str,
    url: str,
    output: str | os.PathLike[str],
    *extra: str,
    timeout: float = 600.0,
    env: Mapping[str, str] | None = None,
) -> DfgetResult:
    """Run the dfget CLI as a child process against one daemon and parse its summary line."""
    argv = [sys.executable, "-m", "dragonfly.cli.dfget", url, "-O", str(output), "-e", socket_path, "--no-progress"]
    began = time.monotonic()
    try:
        # dfget's own --timeout (in extra) should fire first; this bound only stops a hung child.
        proc = subprocess.run([*argv, *extra], capture_output=True, text=True, env=_child_env(env), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return DfgetResult(None, stderr + f"\ndfget did not finish within {timeout:g}s", timeout, None)
    match = _SUMMARY.search(proc.stderr)
    traffic = dict(zip(SOURCES, map(int, match.groups()), strict=True)) if match else None
    return DfgetResult(proc.returncode, proc.stderr, time.monotonic() - began, traffic)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct ports that were free a moment ago (all held open together so none repeats)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, recursing into nested mappings."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # Children must import this very checkout, installed or not.
    package_root = str(Path(dragonfly.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ManagedProcess:
    """One child process with its log file; started in its own session so a terminal's Ctrl-C reaches only us.

    As a context manager it starts, waits up to ``ready_timeout`` seconds for the ready line, and stops on exit.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = _child_env(env)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.listening: dict[str, str] = {}
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def start(self) -> None:
        """Spawn the process, appending to its log file."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.listening = {}

    def wait_ready(self, timeout: float) -> None:
        """Wait for the ``ready`` line, recording every ``listening on`` line before it."""
        deadline = time.monotonic() + timeout
        offset = self._log_offset
        pending = b""
        while True:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                data = log.read()
            offset += len(data)
            *lines, pending = (pending + data).split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if match := _LISTENING.match(line):
                    self.listening[match.group(1)] = match.group(2)
                elif _READY.match(line):
                    return
            if not self.running:
                raise ProcessStartError(
                    f"{self.name} exited with status {self.returncode} during start-up; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{self.name} did not print 'dragonfly: ... ready' within {timeout:.0f}s; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the log, indented for quoting in an error."""
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return "    (no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the process is still running."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for exit; return whether it exited."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if still alive after ``timeout`` seconds; return the exit status (None if killed)."""
        self.signal(signal.SIGTERM)
        if not self.wait(timeout):
            self.kill()
            return None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        self.wait(10.0)

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OriginProcess(ManagedProcess):
    """The demo origin (``dragonfly.cli.demo_origin``) as a child process, with a client for its control API."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        ready_timeout: float = 30.0,
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "dragonfly.cli.demo_origin",
            "--dir",
            str(directory),
            "--host",
            host,
            "--port",
            "0",
        ]
        if tls is not None:
            argv += ["--cert", str(tls[0]), "--key", str(tls[1])]
        super().__init__("origin", argv, log_path, ready_timeout=ready_timeout)
        self.directory = Path(directory)
        self.scheme = "https" if tls is not None else "http"
        self._control_context: ssl.SSLContext | None = None
        if tls is not None:
            # The control API is the test's own: its certificate is not what is under test.
            self._control_context = ssl.create_default_context()
            self._control_context.check_hostname = False
            self._control_context.verify_mode = ssl.CERT_NONE

    @property
    def addr(self) -> str:
        return self.listening["origin"]

    def url(self, path: str) -> str:
        """Return the URL of a file served from the origin directory."""
        return f"{self.scheme}://{self.addr}/{path.lstrip('/')}"

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.scheme}://{self.addr}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10, context=self._control_context) as response:
            return json.loads(response.read() or b"{}")

    def stats(self) -> dict[str, Any]:
        """Return ``{"bytes_total", "paths", "requests"}`` counted since the last reset."""
        result: dict[str, Any] = self._call("GET", "/_stats")
        return result

    def bytes_served(self, path: str | None = None) -> int:
        """Return body bytes served in total or for one path (``/name``)."""
        stats = self.stats()
        if path is None:
            return int(stats["bytes_total"])
        return int(stats["paths"].get("/" + path.lstrip("/"), 0))

    def reset_stats(self) -> None:
        self._call("DELETE", "/_stats")

    def set_fault(self, path: str, mode: str, **options: Any) -> None:
        """Arm a fault (``404``, ``500``, ``reset``, ``short``, ``slow``, ``redirect``, ``corrupt``) for one file."""
        self._call("POST", "/_faults", {"path": "/" + path.lstrip("/"), "mode": mode, **options})

    def clear_faults(self) -> None:
        self._call("DELETE", "/_faults")


class LocalCluster:
    """1 scheduler + 1 seed peer + N peers on 127.0.0.1, each a real process with its own config and log.

    Names: ``scheduler``, ``seed-peer``, ``peer-1`` … ``peer-N``; each daemon uses its name as ``host.hostname``.
    ``daemon_config`` is merged into every dfdaemon.yaml, ``peer_configs[name]`` into that daemon's only.
    ``seed_peer=False`` with ``peers=0`` runs the scheduler alone. ``add_daemon`` starts more daemons later.
    ``tls=False`` runs every process in explicit plaintext mode (``security.enable: false``); ``ca`` is the CA
    to mint the processes' certificates with (default: a new one). ``daemon_ips`` gives daemons loopback
    addresses of their own (``{"peer-2": "127.0.0.3"}``; the default is 127.0.0.1), so hosts differ by IP.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        peers: int = 3,
        seed_peer: bool = True,
        daemon_config: Mapping[str, Any] | None = None,
        peer_configs: Mapping[str, Mapping[str, Any]] | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        tls: bool = True,
        ca: pki.CertificateAuthority | None = None,
        daemon_ips: Mapping[str, str] | None = None,
        manager: bool = False,
        manager_config: Mapping[str, Any] | None = None,
    ) -> None:
        if peers < 0:
            raise ValueError(f"peers must be >= 0, got {peers}")
        self.workdir = Path(workdir).resolve()
        self.peer_names = [f"peer-{i}" for i in range(1, peers + 1)]
        self.daemon_names = [SEED_PEER, *self.peer_names] if seed_peer else list(self.peer_names)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._daemon_config = dict(daemon_config or {})
        self._peer_configs = dict(peer_configs or {})
        self._scheduler_config = dict(scheduler_config or {})
        unknown = set(self._peer_configs) - set(self.daemon_names)
        if unknown:
            raise ValueError(f"peer_configs names unknown daemons: {', '.join(sorted(unknown))}")
        self._daemon_ips = dict(daemon_ips or {})
        self._env = dict(env or {})
        self._run_dir: Path | None = None
        self._own_run_dir = False
        self.scheduler_port = 0
        # With a manager (SQLite in the work dir): the scheduler registers with it and the daemons find the
        # scheduler through it (manager.addr), as in a Dragonfly cluster; "manager" starts first and stops last.
        self.manager = manager
        self._manager_config = dict(manager_config or {})
        self.manager_grpc_port = 0
        self.manager_rest_port = 0
        self.processes: dict[str, ManagedProcess] = {}
        self.tls = tls
        self._ca = ca
        self._ca_written = False
        self._issued: dict[str, TLSFiles] = {}

    # Configuration -------------------------------------------------------------------------------------------

    @property
    def scheduler_addr(self) -> str:
        return f"127.0.0.1:{self.scheduler_port}"

    @property
    def manager_addr(self) -> str:
        """Return the manager's gRPC address (manager.v2)."""
        return f"127.0.0.1:{self.manager_grpc_port}"

    @property
    def manager_url(self) -> str:
        """Return the manager's REST base URL."""
        return f"http://127.0.0.1:{self.manager_rest_port}"

    def socket_path(self, name: str) -> str:
        """Return the unix socket of a daemon's local API (what ``dfget -e`` takes)."""
        assert self._run_dir is not None, "cluster not configured yet"
        return str(self._run_dir / f"{name}.sock")

    def config_path(self, name: str) -> Path:
        kind = name if name in (SCHEDULER, MANAGER) else "dfdaemon"
        return self.workdir / name / f"{kind}.yaml"

    def storage_dir(self, name: str) -> Path:
        return self.workdir / name / "storage"

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def process(self, name: str) -> ManagedProcess:
        return self.processes[name]

    # Certificates -------------------------------------------------------------------------------------------

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_cert_path(self) -> Path:
        """Return the cluster CA certificate (exists once the configs are written with TLS on)."""
        return self.pki_dir / "ca.crt"

    def _authority(self) -> pki.CertificateAuthority:
        if self._ca is None:
            # A fresh CA per cluster: nothing minted for an earlier run of the same work dir stays trusted.
            self._ca = pki.create_ca(f"dragonfly local cluster CA ({self.workdir.name})", days=30)
        if not self._ca_written:
            self._ca.write(self.pki_dir)
            self._ca_written = True
        return self._ca

    def issue_cert(
        self, name: str, *, roles: tuple[str, ...], hostname: str | None = None, ips: tuple[str, ...] = ("127.0.0.1",)
    ) -> TLSFiles:
        """Mint a certificate of this cluster's CA (files ``pki/<name>.crt|.key``); for processes and tests."""
        host = pki.issue(self._authority(), hostname or name, ips=ips, roles=roles, days=30)
        cert, key = host.write(self.pki_dir, name)
        files = TLSFiles(ca_cert=str(self.ca_cert_path), cert=str(cert), key=str(key))
        self._issued[name] = files
        return files

    def tls_files(self, name: str) -> TLSFiles | None:
        """Return the files a process (or an earlier ``issue_cert``) uses; None when the cluster is plaintext."""
        return self._issued.get(name) if self.tls else None

    def client_files(self, name: str = "test-admin", roles: tuple[str, ...] = (ROLE_MANAGER,)) -> TLSFiles | None:
        """Return a client certificate for tests that call the processes directly (None in plaintext mode).

        The default is an operator's certificate (manager role): it may read everything and delete any host,
        but owns no host id, so it cannot announce hosts or peers.
        """
        if not self.tls:
            return None
        return self._issued.get(name) or self.issue_cert(name, roles=roles)

    def daemon_ip(self, name: str) -> str:
        """Return the address a daemon announces and serves on."""
        return self._daemon_ips.get(name, "127.0.0.1")

    def _security(self, name: str, roles: tuple[str, ...], ip: str = "127.0.0.1") -> dict[str, Any]:
        if not self.tls:
            return {"enable": False}
        files = self.issue_cert(name, roles=roles, ips=(ip,))
        return {"enable": True, "caCert": files.ca_cert, "cert": files.cert, "key": files.key}

    def _choose_run_dir(self) -> None:
        run_dir = self.workdir / "run"
        if len(str(run_dir / "seed-peer.sock")) + 8 > _MAX_SOCKET_PATH:
            run_dir = Path(tempfile.mkdtemp(prefix="dragonfly-run-"))
            self._own_run_dir = True
        run_dir.mkdir(parents=True, exist_ok=True)
        self._run_dir = run_dir

    def _daemon_yaml(
        self, name: str, upload_port: int, vortex_port: int, overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        ip = self.daemon_ip(name)
        config: dict[str, Any] = {
            "host": {"hostname": name, "ip": ip},
            "seedPeer": {"enable": name == SEED_PEER, "type": "super"},
            "scheduler": {"addrs": [self.scheduler_addr]},
            "download": {"server": {"socketPath": self.socket_path(name)}},
            "upload": {"server": {"ip": ip, "port": upload_port}},
            # keep: a restarted daemon must still serve what it finished before (Dragonfly's default wipes).
            "storage": {
                "dir": str(self.storage_dir(name)),
                "keep": True,
                "server": {"ip": ip, "tcpPort": vortex_port},
            },
            "metrics": {"server": {"ip": "127.0.0.1", "port": 0}},
            "health": {"server": {"ip": "127.0.0.1", "port": 0}},
            "security": {
                **self._security(name, (ROLE_SEED_PEER,) if name == SEED_PEER else (ROLE_PEER,), ip),
                # Every origin of a local cluster (the demo's included) is on loopback, and the seed peer fetches
                # it on the scheduler's request: allowed explicitly, as the SSRF guard refuses it otherwise.
                "allowedOriginNetworks": list(LOCAL_ORIGIN_NETWORKS),
            },
            "proxy": {"server": {"ip": "127.0.0.1", "port": 0}},
        }
        if self.manager:
            config["scheduler"] = {"addrs": []}
            config["manager"] = {"addr": self.manager_addr}
            config["seedPeer"]["keepaliveInterval"] = "5s"
        for layer in (self._daemon_config, self._peer_configs.get(name, {}), overrides or {}):
            config = deep_merge(config, layer)
        return config

    def write_configs(self) -> None:
        """Pick free ports and write every process's config file (done by ``start``; idempotent)."""
        if self.processes:
            return
        self._choose_run_dir()
        ports = free_ports(1 + 2 * len(self.daemon_names))
        self.scheduler_port = ports[0]
        scheduler_base: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.scheduler_port, "advertiseIP": "127.0.0.1"},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "security": self._security(SCHEDULER, (ROLE_SCHEDULER,)),
        }
        if self.manager:
            self.manager_grpc_port, self.manager_rest_port = free_ports(2)
            manager_yaml = deep_merge(
                {
                    "server": {
                        "dataDir": str(self.workdir / MANAGER / "data"),
                        "rest": {"addr": f"127.0.0.1:{self.manager_rest_port}"},
                        "grpc": {
                            "listenIP": "127.0.0.1",
                            "advertiseIP": "127.0.0.1",
                            "port": {"start": self.manager_grpc_port, "end": self.manager_grpc_port},
                        },
                    },
                    "security": self._security(MANAGER, (ROLE_MANAGER,)),
                },
                self._manager_config,
            )
            self._configure(MANAGER, manager_yaml)
            scheduler_base["manager"] = {"addr": self.manager_addr, "schedulerClusterID": 1}
        scheduler_yaml = deep_merge(scheduler_base, self._scheduler_config)
        self._configure(SCHEDULER, scheduler_yaml)
        for i, name in enumerate(self.daemon_names):
            self._configure(name, self._daemon_yaml(name, ports[1 + 2 * i], ports[2 + 2 * i]))

    def _configure(self, name: str, config: Mapping[str, Any]) -> ManagedProcess:
        """Write one process's config file and set up (not start) its process."""
        binary = name if name in (SCHEDULER, MANAGER) else "dfdaemon"
        if binary == "dfdaemon":
            self.storage_dir(name).mkdir(parents=True, exist_ok=True)
        self._write(name, config)
        self.processes[name] = ManagedProcess(
            name,
            [sys.executable, "-m", f"dragonfly.cli.{binary}", "--config", str(self.config_path(name))],
            self.log_path(name),
            env=self._env,
        )
        return self.processes[name]

    def _write(self, name: str, config: Mapping[str, Any]) -> None:
        path = self.config_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# Written by dragonfly.cli.cluster for the local cluster in {self.workdir}\n"
        path.write_text(header + yaml.safe_dump(dict(config), sort_keys=False))
        if name == MANAGER:
            path.chmod(0o600)  # it may hold the root user's initial password

    # Lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler, then every daemon at once, waiting for each; stop all on failure."""
        self.write_configs()
        try:
            # The scheduler registers with the manager, and every daemon's first AnnounceHost must reach the
            # scheduler: manager, scheduler, daemons.
            if self.manager:
                self._start_group([MANAGER])
            self._start_group([SCHEDULER])
            self._start_group(self.daemon_names)
        except BaseException:
            self.stop()
            raise

    def _start_group(self, names: list[str]) -> None:
        for name in names:
            self.processes[name].start()
        deadline = time.monotonic() + self.start_timeout
        for name in names:
            self.processes[name].wait_ready(max(deadline - time.monotonic(), 0.1))

    def stop(self) -> None:
        """SIGTERM peers, then the seed peer, then the scheduler (so DeleteHost reaches it); SIGKILL stragglers."""
        for group in (self.peer_names, [SEED_PEER], [SCHEDULER], [MANAGER]):
            procs = [self.processes[n] for n in group if n in self.processes]
            for proc in procs:
                proc.signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for proc in procs:
                if not proc.wait(max(deadline - time.monotonic(), 0.0)):
                    proc.kill()
        if self._own_run_dir and self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._own_run_dir = False

    def add_daemon(self, name: str, config: Mapping[str, Any] | None = None) -> ManagedProcess:
        """Start one more peer in the running cluster and wait until it is ready.

        ``config`` is merged over the cluster's dfdaemon.yaml for this daemon only, e.g.
        ``{"scheduler": {"addrs": ["127.0.0.1:1"]}}`` for a daemon whose scheduler is unreachable.
        """
        if not self.processes:
            raise RuntimeError("start the cluster before adding daemons")
        if name in self.processes:
            raise ValueError(f"a process named {name!r} already exists")
        upload_port, vortex_port = free_ports(2)
        proc = self._configure(name, self._daemon_yaml(name, upload_port, vortex_port, config or {}))
        self.peer_names.append(name)
        self.daemon_names.append(name)
        proc.start()
        proc.wait_ready(self.start_timeout)
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL one process (a crash, for fault tests)."""
        self.processes[name].kill()

    def terminate(self, name: str) -> int | None:
        """Stop one process gracefully; return its exit status (None if SIGKILL after the stop timeout was needed)."""
        return self.processes[name].stop(self.stop_timeout)

    def restart(self, name: str) -> int | None:
        """Stop one process if it runs, start it again with the same config and ports, and wait until ready.

        Return the exit status of the run that was stopped (None if it had to be killed).
        """
        proc = self.processes[name]
        status = proc.stop(self.stop_timeout)
        with open(proc.log_path, "ab") as log:
            log.write(f"---- restarted by LocalCluster at {time.strftime('%H:%M:%S')} ----\n".encode())
        proc.start()
        proc.wait_ready(self.start_timeout)
        return status

    def check_alive(self) -> list[str]:
        """Return a description of every process that has exited."""
        return [
            f"{name} exited with status {proc.returncode}; see {proc.log_path}"
            for name, proc in self.processes.items()
            if not proc.running
        ]

    def describe(self) -> dict[str, Any]:
        """Return where everything listens, for printing."""
        return {
            "workdir": str(self.workdir),
            "scheduler": {"addr": self.scheduler_addr, "log": str(self.log_path(SCHEDULER))},
            "daemons": {
                name: {
                    "seed": name == SEED_PEER,
                    "socket": self.socket_path(name),
                    "listening": dict(self.processes[name].listening),
                    "config": str(self.config_path(name)),
                    "log": str(self.log_path(name)),
                }
                for name in self.daemon_names
            },
            **(
                {"manager": {"grpc": self.manager_addr, "rest": self.manager_url, "log": str(self.log_path(MANAGER))}}
                if self.manager
                else {}
            ),
        }

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""``dragonfly up`` and the ``dragonfly`` dispatcher, run as the user runs them."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

import dragonfly
from dragonfly.cli.cluster import LocalCluster
from tests.waiting import wait_for

PACKAGE_ROOT = str(Path(dragonfly.__file__).resolve().parent.parent)


def dragonfly_cmd(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    return subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.dragonfly", *args], capture_output=True, text=True, env=env, **kwargs
    )  # type: ignore[call-overload,no-any-return]


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _what_is_left(tmp_path: Path, up_pid: int) -> str:
    """up.out and every process still running from the work dir (with its state), for a failure message."""
    lines = ["---- up.out:", (tmp_path / "up.out").read_text(errors="replace"), "---- processes left:"]
    with contextlib.suppress(psutil.Error):
        up = psutil.Process(up_pid)
        lines.append(f"{up.pid} {up.status()} dragonfly up; signals ignored: {_sig_ignored(up_pid)}")
    for proc in processes_mentioning(str(tmp_path / "w")):
        with contextlib.suppress(psutil.Error):
            lines.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())}")
    return "\n".join(lines)


def _sig_ignored(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return line.split()[1]
    except OSError:
        pass
    return "?"


def test_version() -> None:
    result = dragonfly_cmd("--version", timeout=30)
    assert (result.returncode, result.stdout) == (0, f"dragonfly {dragonfly.__version__}\n")


def test_manager_with_a_missing_config_file() -> None:
    result = dragonfly_cmd("manager", "--config", "x.yaml", timeout=30)
    assert result.returncode == 2
    assert "x.yaml" in result.stderr
    assert "cannot read config file" in result.stderr


def test_unknown_command() -> None:
    result = dragonfly_cmd("frobnicate", timeout=30)
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr


@pytest.mark.slow
def test_up_demo_json(tmp_path: Path) -> None:
    result = dragonfly_cmd(
        "up", "--demo", "--json", "--peers", "2", "--size", "24MiB", "--workdir", str(tmp_path), timeout=240
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["file"]["size"] == 24 * 1024 * 1024
    assert [p["name"] for p in report["peers"]] == ["peer-1", "peer-2"]
    for peer in report["peers"]:
        assert (peer["ok"], peer["sha256_ok"], peer["exit_status"]) == (True, True, 0), peer
        assert sum(peer["bytes"].values()) == 24 * 1024 * 1024, peer
    assert report["origin_bytes_served"] <= 1.05 * 24 * 1024 * 1024
    assert processes_mentioning(str(tmp_path)) == []
    # The default path is the secure one: a throwaway CA, mutual TLS in every config.
    assert (tmp_path / "pki" / "ca.crt").exists()
    assert "security:\n  enable: true\n" in (tmp_path / "peer-1" / "dfdaemon.yaml").read_text()
    assert "security:\n  enable: true\n" in (tmp_path / "scheduler" / "scheduler.yaml").read_text()
    # The peers found their scheduler through the manager (no scheduler.addrs of their own).
    peer_yaml = (tmp_path / "peer-1" / "dfdaemon.yaml").read_text()
    assert "manager:\n  addr: 127.0.0.1:" in peer_yaml
    assert "schedulers from the manager" in (tmp_path / "logs" / "peer-1.log").read_text()
    assert (tmp_path / "manager" / "manager.yaml").stat().st_mode & 0o077 == 0


def test_up_demo_plaintext_is_explicit(tmp_path: Path) -> None:
    argv = ["up", "--demo", "--json", "--plaintext", "--peers", "1", "--size", "4MiB", "--workdir", str(tmp_path)]
    result = dragonfly_cmd(*argv, timeout=240)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
    assert "--plaintext: every port speaks plaintext" in result.stderr
    assert "security:\n  enable: false\n" in (tmp_path / "peer-1" / "dfdaemon.yaml").read_text()
    assert not (tmp_path / "pki").exists()


@pytest.mark.slow
def test_up_runs_until_interrupted_and_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    log = open(tmp_path / "up.out", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dragonfly.cli.dragonfly", "up", "--peers", "1", "--workdir", str(tmp_path / "w")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for(lambda: "Ctrl-C stops the cluster." in (tmp_path / "up.out").read_text(), 60, "the cluster to start")
        text = (tmp_path / "up.out").read_text()
        assert "scheduler   127.0.0.1:" in text
        # The manager's REST API answers with the printed root password.
        match = re.search(r"manager     REST and console (\S+)/ \(user root, password (\S+)\)", text)
        assert match is not None, text
        request = urllib.request.Request(
            match.group(1) + "/api/v1/users/signin",
            data=json.dumps({"name": "root", "password": match.group(2)}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["token"].startswith("dfs_")
        children = [p for p in processes_mentioning(str(tmp_path / "w")) if p.pid != proc.pid]
        assert len(children) == 4  # manager, scheduler, seed peer, peer-1
        proc.send_signal(signal.SIGINT)
        # `dragonfly up` stops the processes one after the other, each given LocalCluster's stop timeout before it
        # is killed: twice that per process is the bound (the test is about a clean stop, not a quick one).
        stop_timeout = inspect.signature(LocalCluster).parameters["stop_timeout"].default
        try:
            status = proc.wait(2 * stop_timeout * len(children) + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`dragonfly up` still runs after SIGINT\n{_what_is_left(tmp_path, proc.pid)}")
        assert status == 0, _what_is_left(tmp_path, proc.pid)
        assert processes_mentioning(str(tmp_path / "w")) == [], _what_is_left(tmp_path, proc.pid)
    finally:
        if proc.poll() is None:
            proc.terminate()  # `dragonfly up` stops its cluster on SIGTERM too
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for leftover in processes_mentioning(str(tmp_path / "w")):
            leftover.kill()
        log.close()

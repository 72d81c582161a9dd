"""Discovery end to end, all real processes: daemons with only manager.addr find their cluster's scheduler, move
when it stops, and keep downloading (and restart) while the manager is down."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from dragonfly.cli.cluster import LocalCluster, ManagedProcess, OriginProcess, free_ports, run_dfget
from tests.waiting import wait_for

ROOT_PASSWORD = "discovery-root-pw"
MiB = 1 << 20


def _rest(cluster: LocalCluster, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(
        cluster.manager_url + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _wait_for_line(path: Path, text: str, timeout: float = 30) -> str:
    """Wait for a log line of another process (nothing to wait on but its log)."""

    def line() -> str | None:
        return next((line for line in path.read_text(errors="replace").splitlines() if text in line), None)

    try:
        found: str = wait_for(line, timeout, f"a line with {text!r} in {path.name}", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{path.read_text()[-2000:]}") from None
    return found


@pytest.mark.slow
def test_daemons_find_move_and_survive_the_manager(tmp_path: Path, origin: OriginProcess) -> None:
    (tmp_path / "origin" / "a.bin").write_bytes(os.urandom(3 * MiB))
    (tmp_path / "origin" / "b.bin").write_bytes(os.urandom(3 * MiB))
    cluster = LocalCluster(
        tmp_path / "cluster",
        peers=1,
        tls=False,
        manager=True,
        manager_config={"auth": {"rootPassword": ROOT_PASSWORD}, "keepAlive": {"timeout": "3s"}},
        scheduler_config={"manager": {"keepAlive": {"interval": "1s"}}},
        daemon_config={"dynconfig": {"refreshInterval": "1s"}},
    )
    west_scheduler: ManagedProcess | None = None
    with cluster:
        # peer-1 matches no scope: the default cluster's scheduler, which it downloads through.
        line = _wait_for_line(cluster.log_path("peer-1"), "schedulers from the manager")
        assert cluster.scheduler_addr in line
        result = run_dfget(cluster.socket_path("peer-1"), origin.url("a.bin"), tmp_path / "a.out", timeout=120)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "a.out").read_bytes() == (tmp_path / "origin" / "a.bin").read_bytes()
        # A second cluster for hosts named west-*, with its own scheduler.
        token = _rest(cluster, "POST", "/api/v1/users/signin", {"name": "root", "password": ROOT_PASSWORD})["token"]
        west = _rest(
            cluster, "POST", "/api/v1/scheduler-clusters", {"name": "west", "scopes": {"hostnames": ["^west-"]}}, token
        )
        port = free_ports(1)[0]
        config_path = tmp_path / "west-scheduler.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "server": {"host": "127.0.0.1", "port": port, "advertiseIP": "127.0.0.1"},
                    "metrics": {"enable": False},
                    "security": {"enable": False},
                    "manager": {
                        "addr": cluster.manager_addr,
                        "schedulerClusterID": west["id"],
                        "keepAlive": {"interval": "1s"},
                    },
                }
            )
        )
        west_scheduler = ManagedProcess(
            "west-scheduler",
            [sys.executable, "-m", "dragonfly.cli.scheduler", "--config", str(config_path)],
            tmp_path / "west-scheduler.log",
        )
        with west_scheduler:
            _wait_for_line(cluster.log_path("manager"), f"cluster={west['id']}")
            cluster.add_daemon("west-1", {"host": {"hostname": "west-1"}})
            line = _wait_for_line(cluster.log_path("west-1"), "schedulers from the manager")
            assert f"127.0.0.1:{port}" in line
            # The west scheduler stops: it turns inactive and west-1 moves to the default cluster's scheduler.
            assert west_scheduler.stop() == 0
            line = _wait_for_line(cluster.log_path("west-1"), "schedulers changed")
            assert cluster.scheduler_addr in line.split("after=")[1]
        # The manager goes away: downloads go on, and a restarted daemon uses the list it saved.
        assert cluster.terminate("manager") == 0
        result = run_dfget(cluster.socket_path("peer-1"), origin.url("b.bin"), tmp_path / "b.out", timeout=120)
        assert result.returncode == 0, result.stderr
        cluster.processes["peer-1"].stop()
        cluster.processes["peer-1"].start()
        cluster.processes["peer-1"].wait_ready(90)
        _wait_for_line(cluster.log_path("peer-1"), "using the last schedulers the manager gave")
        result = run_dfget(
            cluster.socket_path("peer-1"), origin.url("b.bin"), tmp_path / "b2.out", "--overwrite", timeout=120
        )
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "b2.out").read_bytes() == (tmp_path / "origin" / "b.bin").read_bytes()

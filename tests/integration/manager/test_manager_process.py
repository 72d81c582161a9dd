"""`dragonfly manager` as a process: start-up lines, the root password, restarts on the same SQLite file."""

from __future__ import annotations

import json
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from dragonfly.cli.cluster import ManagedProcess


def _manager(tmp_path: Path, name: str, config: dict[str, Any], env: dict[str, str] | None = None) -> ManagedProcess:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "dragonfly.cli.dragonfly", "manager", "--config", str(path)]
    return ManagedProcess(name, argv, tmp_path / f"{name}.log", env=env, ready_timeout=60)


def _call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_manager_process_generated_root_password_and_restart(tmp_path: Path) -> None:
    config = {
        "server": {
            "dataDir": str(tmp_path / "data"),
            "rest": {"addr": "127.0.0.1:0"},
            # Not the default 65003 on every address: other tests (and other managers) on this host may hold it.
            "grpc": {"listenIP": "127.0.0.1", "port": {"start": 0, "end": 0}},
        },
        "security": {"enable": False},
    }
    with _manager(tmp_path, "manager", config, env={"DRAGONFLY_INITIAL_ROOT_PASSWORD": ""}) as manager:
        base = "http://" + manager.listening["manager REST"]
        log = manager.log_path.read_text()
        lines = [line for line in log.splitlines() if "created user 'root' with password" in line]
        assert len(lines) == 1
        password = lines[0].split("with password ")[1].split()[0]
        assert log.count(password) == 1  # printed once, never logged
        assert _call(base, "GET", "/healthy") == (200, {"status": "ok"})
        status, body = _call(base, "POST", "/api/v1/users/signin", {"name": "root", "password": password})
        assert status == 200
        token = body["token"]
        status, _ = _call(base, "POST", "/api/v1/scheduler-clusters", {"name": "east"}, token)
        assert status == 201
        status, body = _call(base, "GET", "/api/v1/openapi.json")
        assert status == 200
        assert "/api/v1/scheduler-clusters" in body["paths"]
        assert manager.stop() == 0
    # The data survives; the password is not printed again; the token still works.
    with _manager(tmp_path, "manager", config) as manager:
        base = "http://" + manager.listening["manager REST"]
        status, body = _call(base, "GET", "/api/v1/scheduler-clusters", token=token)
        assert status == 200
        assert [c["name"] for c in body] == ["cluster-1", "east"]
        assert manager.log_path.read_text().count("created user 'root'") == 1
    database = tmp_path / "data" / "manager.db"
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        stored = [row[0] for row in conn.execute("SELECT token_hash FROM session")]
        assert token not in stored
        assert len(stored[0]) == 64
    assert (tmp_path / "data").stat().st_mode & 0o077 == 0


def test_manager_refuses_a_bad_config(tmp_path: Path) -> None:
    config = {"server": {"dataDir": str(tmp_path / "data")}, "database": {"type": "oracle"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.dragonfly", "manager", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "database" in result.stderr
    assert "oracle" in result.stderr


def test_an_unreadable_job_secret_key_stops_the_manager_with_the_reason(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "data").mkdir()
    key = tmp_path / "data" / "job-secret.key"
    key.write_text("not a key\n")
    config = {
        "server": {
            "dataDir": str(tmp_path / "data"),
            "rest": {"addr": "127.0.0.1:0"},
            "grpc": {"listenIP": "127.0.0.1", "port": {"start": 0, "end": 0}},
        },
        "security": {"enable": False},
        "auth": {"rootPassword": "root-password-1"},
    }
    path = tmp_path / "manager.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.dragonfly", "manager", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == (
        f"dragonfly manager: {key}: not a base64 key (expected 32 random bytes in base64)"
    )


def test_dfdaemon_without_manager_or_schedulers_is_refused(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "dfdaemon.yaml"
    path.write_text(yaml.safe_dump({"storage": {"dir": str(tmp_path / "storage")}, "security": {"enable": False}}))
    result = subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.dfdaemon", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "neither manager.addr nor scheduler.addrs is set" in result.stderr
    # Dragonfly's Helm-chart form of the manager address loads without a warning about it.
    path.write_text(yaml.safe_dump({"manager": {"addr": "http://dragonfly-manager:65003"}}))
    from dragonfly.daemon.config import load_dfdaemon_config
    from dragonfly.daemon.manager_client import manager_target

    assert manager_target(load_dfdaemon_config(path).manager.addr) == "dragonfly-manager:65003"

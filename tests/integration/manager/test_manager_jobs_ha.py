"""Two manager processes on one PostgreSQL and one Redis: 10 preheat jobs submitted to both run exactly once
each, and the jobs of a manager killed mid-job (SIGKILL) are finished by the other.

All real processes: PostgreSQL (Debian's, started by the tests), redis-server, two ``dragonfly manager``, a
scheduler registered with the first, a seed peer and a peer, the demo origin. "Exactly once" is read from the
queue's claim counter each job records (``progress.attempt``): a job is claimed again only when the manager that
held it died, and then by the other manager; every job ends SUCCESS once (the database's conditional update).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from dragonfly.cli.cluster import LocalCluster, ManagedProcess, OriginProcess, free_ports
from dragonfly.cli.services import RedisProcess
from tests.postgres import PostgresServer
from tests.waiting import wait_for

ROOT_PASSWORD = "ha-root-password"
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


def rest(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.loads(response.read() or b"null")


def second_manager(cluster: LocalCluster, workdir: Path) -> tuple[ManagedProcess, str]:
    """Start another manager with the first one's config (same database, Redis, identity), its own ports."""
    config = yaml.safe_load(cluster.config_path("manager").read_text())
    rest_port, grpc_port = free_ports(2)
    config["server"]["rest"]["addr"] = f"127.0.0.1:{rest_port}"
    config["server"]["grpc"]["port"] = {"start": grpc_port, "end": grpc_port}
    config["server"]["dataDir"] = str(workdir / "data")
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "manager.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    process = ManagedProcess(
        "manager-2", [sys.executable, "-m", "dragonfly.cli.manager", "--config", str(path)], workdir / "manager.log"
    )
    process.start()
    process.wait_ready(60)
    return process, f"http://127.0.0.1:{rest_port}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_managers_run_10_jobs_once_and_survive_a_kill(
    tmp_path: Path, origin: OriginProcess, postgres: PostgresServer, redis_server: RedisProcess
) -> None:
    database = postgres.create_database()
    cluster = LocalCluster(
        tmp_path / "cluster",
        peers=1,
        manager=True,
        manager_config={
            "auth": {"rootPassword": ROOT_PASSWORD},
            "database": {"url": database, "redis": {"addrs": [f"127.0.0.1:{redis_server.port}"]}},
            # The scheduler keeps alive with the first manager only; the second must not expire it when it dies.
            "keepAlive": {"timeout": "10m"},
            # The second manager (same config) takes the killed one's jobs over once this lapses (default 30 s;
            # a live manager stalled this long would lose its jobs too).
            "job": {"lease": "15s"},
        },
    )
    slow = [f"slow-{i}.bin" for i in range(4)]
    for name in slow:
        (origin.directory / name).write_bytes(os.urandom(6 * MIB))
        origin.set_fault(f"/{name}", "slow", rate=256 * 1024)
    for i in range(6):
        (origin.directory / f"fast-{i}.bin").write_bytes(os.urandom(1 * MIB))
    with cluster:
        other, other_url = second_manager(cluster, tmp_path / "manager-2")
        try:
            first_url = cluster.manager_url
            session = rest(first_url, "POST", "/api/v1/users/signin", {"name": "root", "password": ROOT_PASSWORD})
            wait_for(
                lambda: any(
                    s["state"] == "active" for s in rest(other_url, "GET", "/api/v1/schedulers", token=session["token"])
                ),
                60,
                "the scheduler to become active",
                interval=0.2,
            )
            expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
            token = rest(
                first_url,
                "POST",
                "/api/v1/personal-access-tokens",
                {"name": "ha", "scopes": ["job"], "expired_at": expires},
                token=session["token"],
            )["token"]

            names = slow + [f"fast-{i}.bin" for i in range(6)]
            ids = []
            for i, name in enumerate(names):
                body = {"type": "preheat", "args": {"type": "file", "url": origin.url(name)}}
                ids.append(rest((first_url, other_url)[i % 2], "POST", "/oapi/v1/jobs", body, token=token)["id"])
            assert len(set(ids)) == 10

            # Kill the first manager while it runs a job.
            killed_name = f"{os.uname().nodename}-{cluster.process('manager').pid}"

            def running_on_the_first_manager() -> set[int]:
                jobs = rest(other_url, "GET", "/oapi/v1/jobs?per_page=100&state=PENDING", token=token)
                return {
                    job["id"]
                    for job in jobs
                    if job["progress"].get("manager") == killed_name and job["progress"].get("phase") == "running"
                }

            wait_for(running_on_the_first_manager, 60, "the first manager to run a job", interval=0.1)
            cluster.kill("manager")
            # What it was running when it died, read before any lease (15 s) lapses: a job listed before the kill
            # may have ended in between, and one may have started; a dead manager's rows stay as they were. It may
            # also have claimed a job it had not yet marked running: that one runs again too.
            held = running_on_the_first_manager()
            origin.clear_faults()

            # The second manager takes the jobs over once their leases (15 s) lapse.
            def every_job_ended() -> list[dict[str, Any]] | None:
                jobs = [rest(other_url, "GET", f"/oapi/v1/jobs/{i}", token=token) for i in ids]
                return jobs if all(job["state"] != "PENDING" for job in jobs) else None

            jobs = wait_for(every_job_ended, 300, "the second manager to end every job", interval=1.0)
        finally:
            other.stop()
    assert [job["state"] for job in jobs] == ["SUCCESS"] * 10, [(j["id"], j["result"]) for j in jobs]
    attempts = {job["id"]: job["progress"]["attempt"] for job in jobs}
    retried = {job_id for job_id, attempt in attempts.items() if attempt != 1}
    # The jobs the killed manager was running (and any it had just claimed) ran again, once, on the survivor.
    assert held, "the first manager held no job when it was killed (every job it ran ended before the kill)"
    assert held <= retried
    assert all(attempts[job_id] == 2 for job_id in retried)
    assert len(retried) <= 4  # the killed manager's workers
    survivor = f"{os.uname().nodename}-{other.pid}"
    assert all(job["progress"]["manager"] == survivor for job in jobs if job["id"] in retried)


@pytest.mark.slow
def test_a_lone_manager_killed_mid_job_finishes_it_after_a_restart(tmp_path: Path, origin: OriginProcess) -> None:
    """No Redis: the job queue is in the process, the job row in SQLite; a restart queues it again."""
    (origin.directory / "restart.bin").write_bytes(os.urandom(6 * MIB))
    origin.set_fault("/restart.bin", "slow", rate=512 * 1024)
    cluster = LocalCluster(
        tmp_path / "cluster",
        peers=1,
        manager=True,
        manager_config={"auth": {"rootPassword": ROOT_PASSWORD}, "keepAlive": {"timeout": "10m"}},
    )
    with cluster:
        base = cluster.manager_url
        session = rest(base, "POST", "/api/v1/users/signin", {"name": "root", "password": ROOT_PASSWORD})["token"]
        wait_for(
            lambda: any(s["state"] == "active" for s in rest(base, "GET", "/api/v1/schedulers", token=session)),
            60,
            "the scheduler to become active",
            interval=0.2,
        )
        body = {"type": "preheat", "args": {"type": "file", "url": origin.url("restart.bin")}}
        job = rest(base, "POST", "/api/v1/jobs", body, token=session)

        def phase() -> str:
            return str(rest(base, "GET", f"/api/v1/jobs/{job['id']}", token=session)["progress"].get("phase"))

        wait_for(lambda: phase() == "running", 60, "the job to start", interval=0.1)
        first_pid = cluster.process("manager").pid
        cluster.kill("manager")
        origin.clear_faults()
        manager = cluster.process("manager")
        manager.start()
        manager.wait_ready(60)

        def ended() -> dict[str, Any] | None:
            current: dict[str, Any] = rest(base, "GET", f"/api/v1/jobs/{job['id']}", token=session)
            return current if current["state"] != "PENDING" else None

        done = wait_for(ended, 120, "the job to end after the restart", interval=0.3)
    assert done["state"] == "SUCCESS", done["result"]
    assert done["progress"]["manager"] == f"{os.uname().nodename}-{manager.pid}"
    assert manager.pid != first_pid

"""Secrets in URLs and headers appear nowhere but in memory (docs/security.md, "Secrets").

A download with credentials in the URL (userinfo and a signing parameter) and one with an Authorization header
go through the whole swarm (scheduler, seed peer, peer); then every log, every metadata DB, both metrics
endpoints and the StatTask answers of the scheduler and of each daemon are searched for the secrets.
"""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from swarm_helpers import MiB, dfget_on, make_file, sha256_of

from dragonfly.cli.cluster import SCHEDULER, SEED_PEER, LocalCluster, OriginProcess
from dragonfly.common import ids, tls

pytestmark = pytest.mark.slow

PASSWORD = "pw-0b5e7c9d"
SIGNATURE = "sig-4a1f22e8"
TOKEN = "tok-77c0ffee"
SECRETS = (PASSWORD, SIGNATURE, TOKEN)


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=1) as running:
        yield running


def _metrics(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
        return response.read().decode()


def test_no_secret_in_logs_db_metrics_or_answers(
    cluster: LocalCluster, origin: OriginProcess, module_dir: Path
) -> None:
    sha = make_file(origin, "secret.bin", 8 * MiB)
    plain = origin.url("secret.bin")
    with_userinfo = plain.replace("http://", f"http://user:{PASSWORD}@") + f"?X-Amz-Signature={SIGNATURE}"
    first = dfget_on(cluster, "peer-1", with_userinfo, module_dir / "one.bin")
    assert first.ok, first.stderr
    second = dfget_on(cluster, "peer-1", plain + "?v=2", module_dir / "two.bin", "-H", f"Authorization: Bearer {TOKEN}")
    assert second.ok, second.stderr
    assert sha256_of(module_dir / "one.bin") == sha256_of(module_dir / "two.bin") == sha

    places: dict[str, str] = {"dfget": first.stderr + second.stderr}
    for name in (SCHEDULER, SEED_PEER, "peer-1"):
        places[f"log of {name}"] = cluster.log_path(name).read_text(errors="replace")
    for name in (SEED_PEER, "peer-1"):
        storage = cluster.storage_dir(name)
        assert stat.S_IMODE(storage.stat().st_mode) == 0o700
        metadata = storage / "metadata"
        assert stat.S_IMODE((metadata / "dfdaemon.db").stat().st_mode) == 0o600
        for path in metadata.iterdir():
            places[f"{path} of {name}"] = path.read_bytes().decode("latin-1")
        # The DB as SQLite reads it (the WAL may not be checkpointed into the file yet).
        with contextlib.closing(sqlite3.connect(metadata / "dfdaemon.db")) as db:
            places[f"sqlite dump of {name}"] = "\n".join(db.iterdump())
        for content in (storage / "content").rglob("*"):
            if content.is_file():
                # Finished files are sealed read-only (docs/output-and-cache.md); only the 0700 directory leads there.
                assert stat.S_IMODE(content.stat().st_mode) in (0o600, 0o444), content
        places[f"metrics of {name}"] = _metrics(cluster.process(name).listening["metrics"])
    places["scheduler metrics"] = _metrics(cluster.process(SCHEDULER).listening["scheduler metrics"])

    tasks = [
        ids.task_id(with_userinfo, filtered_query_params=ids.DEFAULT_FILTERED_QUERY_PARAMS),
        ids.task_id(plain + "?v=2", filtered_query_params=ids.DEFAULT_FILTERED_QUERY_PARAMS),
    ]
    files = cluster.client_files()
    with tls.sync_channel(cluster.scheduler_addr, files) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for task_id in tasks:
            answer = stub.StatTask(scheduler_pb2.StatTaskRequest(host_id="test-client", task_id=task_id), timeout=10)
            assert answer.id == task_id
            places[f"scheduler StatTask {task_id}"] = str(answer)
    for name in (SEED_PEER, "peer-1"):
        with tls.sync_channel(cluster.process(name).listening["upload"], files) as channel:
            upload = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
            for task_id in tasks:
                answer = upload.StatTask(dfdaemon_pb2.StatTaskRequest(task_id=task_id), timeout=10)
                places[f"StatTask of {name} {task_id}"] = str(answer)
    # Metrics never name tasks.
    for task_id in tasks:
        assert task_id not in places["metrics of peer-1"] + places["scheduler metrics"]
    leaks = [f"{secret!r} in {where}" for where, text in places.items() for secret in SECRETS if secret in text]
    assert leaks == []

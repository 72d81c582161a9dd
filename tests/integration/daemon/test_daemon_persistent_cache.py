"""dfcache against real processes: a scheduler and three peers (mutual TLS), the dfcache CLI as a child process.

Import on one peer, export on the two others, restart the importer and export from it again; deletion by a
non-importer (its copy only) and by the importer (everywhere); TTL expiry; replication to the replica count; a
copy whose content was altered on disk is evicted and fetched again, never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc

from dragonfly.cli.cluster import LocalCluster
from tests.waiting import wait_for

MiB = 1024 * 1024
SIZE = 10 * MiB  # three 4 MiB pieces, the last one short
WAIT = 20.0


def pcache_cluster(workdir: Path, env: dict[str, str] | None = None) -> LocalCluster:
    """A scheduler and three peers, no seed peer (persistent cache tasks have no origin); hosts announce every 5 s."""
    return LocalCluster(
        workdir,
        peers=3,
        seed_peer=False,
        daemon_config={"scheduler": {"announceInterval": "5s"}},
        start_timeout=30,
        stop_timeout=20,
        env=env,
    )


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with pcache_cluster(module_dir / "pcache-cluster") as started:
        yield started


def dfcache(
    cluster: LocalCluster, peer: str, *args: str, check: bool = True, python_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *python_flags, "-m", "dragonfly.cli.dfcache", *args, "-e", cluster.socket_path(peer)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, f"dfcache {' '.join(args)} on {peer}: {proc.stderr}"
    return proc


def make_file(path: Path, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def make_compressible_file(path: Path, size: int) -> bytes:
    """Text-like content (log lines with random numbers): zstd shrinks it several times."""
    rng = random.Random(7)
    lines = []
    total = 0
    while total < size:
        line = f"10:{rng.randrange(60):02d} INFO request id={rng.randrange(10**6)} bytes={rng.randrange(10**5)}\n"
        lines.append(line)
        total += len(line)
    data = "".join(lines).encode()[:size]
    path.write_bytes(data)
    return data


def exported_wire_bytes(cluster: LocalCluster, peer: str, task_id: str) -> int:
    """Return the piece bytes that crossed the wire for the last export of ``task_id`` on ``peer`` (its log)."""
    lines = [
        line
        for line in cluster.log_path(peer).read_text().splitlines()
        if "persistent cache task exported" in line and task_id in line
    ]
    assert lines, f"no export of {task_id} in {peer}'s log"
    return int(re.search(r"wire_bytes=(\d+)", lines[-1]).group(1))  # type: ignore[union-attr]


def import_file(cluster: LocalCluster, peer: str, path: Path, *extra: str) -> str:
    return dfcache(cluster, peer, "import", str(path), *extra).stdout.strip()


def export(cluster: LocalCluster, peer: str, task_id: str, output: Path) -> set[str]:
    """Export through the local API; return the parent peer ids the pieces came from."""
    parents: set[str] = set()
    with grpc.insecure_channel(f"unix:{cluster.socket_path(peer)}") as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
        request = dfdaemon_pb2.DownloadPersistentCacheTaskRequest(task_id=task_id, output_path=str(output))
        for response in stub.DownloadPersistentCacheTask(request, timeout=60):
            if response.HasField("download_piece_finished_response"):
                parents.add(response.download_piece_finished_response.piece.parent_id)
    return parents


def local_ids(cluster: LocalCluster, peer: str) -> set[str]:
    with grpc.insecure_channel(f"unix:{cluster.socket_path(peer)}") as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
        response = stub.ListLocalPersistentCacheTasks(dfdaemon_pb2.ListLocalPersistentCacheTasksRequest(), timeout=10)
    return {task.task_id for task in response.tasks}


def metric(cluster: LocalCluster, peer: str, sample: str) -> float:
    """Return one sample of a daemon's Prometheus metrics (0 when absent), e.g. ``name{label="value"}``."""
    with urllib.request.urlopen(f"http://{cluster.process(peer).listening['metrics']}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", exposition, re.M)
    return float(match.group(1)) if match else 0.0


def test_import_export_restart_and_delete(cluster: LocalCluster, tmp_path: Path) -> None:
    data = make_file(tmp_path / "model.bin")
    task_id = import_file(cluster, "peer-1", tmp_path / "model.bin", "--persistent-replica-count", "1")
    # Dragonfly's id: sha256(content, tag, application, piece length, "PERSISTENT_CACHE").
    assert task_id == hashlib.sha256(data + b"4194304PERSISTENT_CACHE").hexdigest()

    for peer in ("peer-2", "peer-3"):
        output = tmp_path / f"{peer}.bin"
        dfcache(cluster, peer, "export", task_id, "-O", str(output))
        assert output.read_bytes() == data
    # To standard output: the daemon sends the verified bytes with the pieces.
    streamed = subprocess.run(
        [
            sys.executable,
            "-m",
            "dragonfly.cli.dfcache",
            "export",
            task_id,
            "-O",
            "-",
            "-e",
            cluster.socket_path("peer-3"),
        ],
        capture_output=True,
        timeout=120,
    )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == data
    # dfcache speaks to the daemon with dfget's own gRPC client: grpcio and the protobuf runtime cost more than the
    # call itself at every start (bench/RESULTS.md §3), and it imports neither.
    traced = dfcache(cluster, "peer-3", "stat", task_id, python_flags=("-X", "importtime"))
    modules = {line.rsplit("|", 1)[1].strip() for line in traced.stderr.splitlines() if line.startswith("import time:")}
    assert "dragonfly.cli.dfget.rpc" in modules
    assert not modules & {"grpc", "google.protobuf", "dragonfly_api", "asyncio", "typing"}
    stat = traced.stdout
    assert f"id: {task_id}" in stat
    assert "state: Succeeded" in stat
    assert f"content length: {SIZE}" in stat
    assert "persistent replicas: 1 of 1" in stat
    assert "other replicas: 2" in stat

    # The importer restarts and still serves: the other copies are dropped (by their hosts: only their own),
    # so peer-2's next export can only come from the importer.
    assert cluster.restart("peer-1") == 0
    for peer in ("peer-2", "peer-3"):
        dfcache(cluster, peer, "delete", task_id)
        assert task_id not in local_ids(cluster, peer)
    assert "other replicas: 0" in dfcache(cluster, "peer-2", "stat", task_id).stdout
    output = tmp_path / "again.bin"
    parents = export(cluster, "peer-2", task_id, output)
    assert output.read_bytes() == data
    assert len(parents) == 1
    assert next(iter(parents)).startswith("127.0.0.1-peer-1-")

    # The importer deletes it everywhere: the scheduler forgets it and peer-2 is told to drop its copy.
    dfcache(cluster, "peer-1", "delete", task_id)
    missing = dfcache(cluster, "peer-3", "stat", task_id, check=False)
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr
    wait_for(lambda: task_id not in local_ids(cluster, "peer-2"), WAIT, "peer-2 to drop its copy", interval=0.2)
    assert task_id not in local_ids(cluster, "peer-1")
    failed = dfcache(cluster, "peer-3", "export", task_id, "-O", str(tmp_path / "gone.bin"), check=False)
    assert failed.returncode == 1
    assert not (tmp_path / "gone.bin").exists()


def test_importing_the_same_content_again_elsewhere_joins_it(cluster: LocalCluster, tmp_path: Path) -> None:
    data = make_file(tmp_path / "twice.bin", 5 * MiB)
    task_id = import_file(cluster, "peer-1", tmp_path / "twice.bin", "--persistent-replica-count", "1")
    # Same content, same id: peer-2 keeps a persistent copy instead of failing.
    assert import_file(cluster, "peer-2", tmp_path / "twice.bin") == task_id
    assert "persistent replicas: 2 of 1" in dfcache(cluster, "peer-3", "stat", task_id).stdout
    # The same chosen id for other content is refused: the id is peer-1's.
    (tmp_path / "other.bin").write_bytes(os.urandom(MiB))
    chosen = import_file(cluster, "peer-1", tmp_path / "twice.bin", "--content-for-calculating-task-id", "v1")
    refused = dfcache(
        cluster, "peer-2", "import", str(tmp_path / "other.bin"), "--content-for-calculating-task-id", "v1", check=False
    )
    assert refused.returncode == 1
    assert "ALREADY_EXISTS" in refused.stderr
    output = tmp_path / "v1.bin"
    dfcache(cluster, "peer-3", "export", chosen, "-O", str(output))
    assert output.read_bytes() == data
    for task in (task_id, chosen):
        dfcache(cluster, "peer-1", "delete", task)


@pytest.fixture
def unvalidated_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster that takes requests outside Dragonfly's ranges: its rules want a TTL of at least 5 minutes."""
    with pcache_cluster(tmp_path / "pcache-ttl-cluster", {"DRAGONFLY_REQUEST_VALIDATION": "0"}) as started:
        yield started


def test_ttl_expiry(unvalidated_cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = unvalidated_cluster
    monkeypatch.setenv("DRAGONFLY_REQUEST_VALIDATION", "0")  # dfcache itself refuses a TTL under 5m otherwise
    data = make_file(tmp_path / "short.bin", 5 * MiB)
    task_id = import_file(cluster, "peer-1", tmp_path / "short.bin", "--ttl", "8s", "--persistent-replica-count", "1")
    dfcache(cluster, "peer-2", "export", task_id, "-O", str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == data
    # peer-2 kept a copy fetched from the swarm (not listed: on a loaded machine the TTL can run out first).
    assert metric(cluster, "peer-2", 'dragonfly_dfdaemon_persistent_cache_exports_total{source="swarm"}') == 1
    wait_for(lambda: task_id not in local_ids(cluster, "peer-2"), WAIT, "the copy on peer-2 to expire", interval=0.2)
    wait_for(lambda: task_id not in local_ids(cluster, "peer-1"), WAIT, "the copy on peer-1 to expire", interval=0.2)
    assert dfcache(cluster, "peer-3", "stat", task_id, check=False).returncode == 1
    assert dfcache(cluster, "peer-3", "export", task_id, "-O", str(tmp_path / "late.bin"), check=False).returncode == 1


def test_replicas_and_a_corrupted_copy(cluster: LocalCluster, tmp_path: Path) -> None:
    data = make_file(tmp_path / "replicated.bin")
    task_id = import_file(cluster, "peer-3", tmp_path / "replicated.bin", "--persistent-replica-count", "2")
    # The scheduler has one more host fetch it.
    wait_for(
        lambda: "persistent replicas: 2 of 2" in dfcache(cluster, "peer-3", "stat", task_id).stdout,
        WAIT,
        "a second replica",
        interval=0.2,
    )
    holders = [peer for peer in ("peer-1", "peer-2") if task_id in local_ids(cluster, peer)]
    assert len(holders) == 1
    holder = holders[0]

    # Flip a byte of the replica's content file: its next export evicts it and fetches it again.
    content = cluster.storage_dir(holder) / "persistent-cache" / "content" / "tasks" / task_id[:3] / task_id
    with open(content, "r+b") as f:
        f.seek(5 * MiB)
        byte = f.read(1)
        f.seek(5 * MiB)
        f.write(bytes([byte[0] ^ 0xFF]))
    output = tmp_path / "repaired.bin"
    dfcache(cluster, holder, "export", task_id, "-O", str(output))
    assert output.read_bytes() == data
    assert "no longer matches its digest" in cluster.log_path(holder).read_text()


def test_compressible_content_crosses_the_wire_compressed(cluster: LocalCluster, tmp_path: Path) -> None:
    """zstd between our peers (mutual TLS here): a text file crosses compressed, random bytes do not."""
    text = make_compressible_file(tmp_path / "text.log", SIZE)
    noise = make_file(tmp_path / "noise.bin", SIZE)
    for data, name in ((text, "text.log"), (noise, "noise.bin")):
        task_id = import_file(cluster, "peer-1", tmp_path / name, "--persistent-replica-count", "1")
        output = tmp_path / f"{name}.out"
        dfcache(cluster, "peer-2", "export", task_id, "-O", str(output))
        assert output.read_bytes() == data
        wire = exported_wire_bytes(cluster, "peer-2", task_id)
        if data is text:
            assert wire < SIZE // 2
        else:
            assert wire == SIZE
        dfcache(cluster, "peer-1", "delete", task_id)
    # The same figures in the daemon's metrics (content and wire bytes of fetched pieces).
    metrics_addr = cluster.process("peer-2").listening["metrics"]
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as response:
        exposition = response.read().decode()

    def sample(kind: str) -> float:
        match = re.search(rf'persistent_cache_piece_bytes_total\{{kind="{kind}"\}} (\S+)', exposition)
        assert match, exposition
        return float(match.group(1))

    assert sample("wire") < sample("content")
    assert 'persistent_cache_exports_total{source="swarm"}' in exposition


def test_a_lying_parent_is_found_out(cluster: LocalCluster, tmp_path: Path) -> None:
    """A holder serves bytes of its own with matching CRC-32s (its content and its piece records altered while it
    was stopped): the exporter's whole-content check catches it, and the content comes from the honest holder."""
    data = make_file(tmp_path / "guarded.bin")
    task_id = import_file(cluster, "peer-1", tmp_path / "guarded.bin", "--persistent-replica-count", "1")
    dfcache(cluster, "peer-2", "export", task_id, "-O", str(tmp_path / "first.bin"), "--persistent")

    liar = cluster.processes["peer-2"]
    assert cluster.terminate("peer-2") == 0
    store = cluster.storage_dir("peer-2") / "persistent-cache"
    content = store / "content" / "tasks" / task_id[:3] / task_id
    forged = bytearray(content.read_bytes())
    db = sqlite3.connect(store / "metadata" / "dfdaemon.db")
    with db:
        for number, offset, length in db.execute(
            "SELECT number, offset, length FROM pieces WHERE task_id = ?", (task_id,)
        ).fetchall():
            forged[offset] ^= 0xFF
            crc = zlib.crc32(forged[offset : offset + length])
            db.execute(
                "UPDATE pieces SET digest = ? WHERE task_id = ? AND number = ?", (f"crc32:{crc}", task_id, number)
            )
    content.write_bytes(forged)
    # A thorough liar also records the forged file as the one the task finished with, which every serve checks
    # (docs/output-and-cache.md#hard-linked-outputs).
    info = content.stat()
    with db:
        db.execute(
            "UPDATE tasks SET content_mtime_ns = ?, content_inode = ? WHERE id = ?",
            (info.st_mtime_ns, info.st_ino, task_id),
        )
    db.close()
    # And its record of the content's digest, which its own scrub at start would check.
    entries = sqlite3.connect(store / "metadata" / "entries.db")
    with entries:
        (body,) = entries.execute("SELECT body FROM entries WHERE id = ?", (task_id,)).fetchone()
        record = json.loads(body)
        record["content_digest"] = f"sha256:{hashlib.sha256(forged).hexdigest()}"
        entries.execute("UPDATE entries SET body = ? WHERE id = ?", (json.dumps(record), task_id))
    entries.close()
    liar.start()
    liar.wait_ready(cluster.start_timeout)

    output = tmp_path / "checked.bin"
    dfcache(cluster, "peer-3", "export", task_id, "-O", str(output))
    assert output.read_bytes() == data
    assert "failed the importer's digest" in cluster.log_path("peer-3").read_text()
    # Found out either alone or by comparing its pieces with the verified content: the scheduler no longer hands
    # it out for this task.
    wait_for(
        lambda: "persistent cache parent served bad content" in cluster.log_path("scheduler").read_text(),
        WAIT,
        "the scheduler to hear of the lying parent",
        interval=0.2,
    )
    dfcache(cluster, "peer-1", "delete", task_id)


def test_a_restarted_scheduler_learns_the_copies_again(cluster: LocalCluster, tmp_path: Path) -> None:
    """The scheduler keeps persistent cache tasks in memory: after its restart the importer declares its task
    again and the other holder registers its copy (every announce interval, 5 s here)."""
    data = make_file(tmp_path / "kept.bin", 5 * MiB)
    task_id = import_file(cluster, "peer-1", tmp_path / "kept.bin", "--persistent-replica-count", "1")
    dfcache(cluster, "peer-2", "export", task_id, "-O", str(tmp_path / "copy.bin"), "--persistent")
    assert cluster.restart("scheduler") == 0
    wait_for(
        lambda: "persistent replicas: 2 of 1" in dfcache(cluster, "peer-3", "stat", task_id, check=False).stdout,
        40.0,
        "both copies to be known again",
        interval=0.2,
    )
    output = tmp_path / "after.bin"
    dfcache(cluster, "peer-3", "export", task_id, "-O", str(output))
    assert output.read_bytes() == data
    dfcache(cluster, "peer-1", "delete", task_id)


def test_a_persistent_holder_declares_a_forgotten_task_when_its_importer_is_gone(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    data = make_file(tmp_path / "orphan.bin", 5 * MiB)
    task_id = import_file(cluster, "peer-1", tmp_path / "orphan.bin", "--persistent-replica-count", "1")
    dfcache(cluster, "peer-2", "export", task_id, "-O", str(tmp_path / "held.bin"), "--persistent")
    assert cluster.terminate("peer-1") == 0
    try:
        assert cluster.restart("scheduler") == 0
        # After a round in which the importer did not declare it, peer-2 does (every 5 s here).
        wait_for(
            lambda: dfcache(cluster, "peer-3", "stat", task_id, check=False).returncode == 0,
            40.0,
            "peer-2 to declare the task",
            interval=0.2,
        )
        output = tmp_path / "rescued.bin"
        dfcache(cluster, "peer-3", "export", task_id, "-O", str(output))
        assert output.read_bytes() == data
    finally:
        peer_1 = cluster.processes["peer-1"]
        peer_1.start()
        peer_1.wait_ready(cluster.start_timeout)
    dfcache(cluster, "peer-2", "delete", task_id)


def test_a_copy_damaged_while_the_daemon_was_down_is_evicted_at_start(cluster: LocalCluster, tmp_path: Path) -> None:
    data = make_file(tmp_path / "scrubbed.bin", 5 * MiB)
    task_id = import_file(cluster, "peer-1", tmp_path / "scrubbed.bin", "--persistent-replica-count", "1")
    dfcache(cluster, "peer-2", "export", task_id, "-O", str(tmp_path / "copy.bin"), "--persistent")
    holder = cluster.processes["peer-2"]
    assert cluster.terminate("peer-2") == 0
    content = cluster.storage_dir("peer-2") / "persistent-cache" / "content" / "tasks" / task_id[:3] / task_id
    damaged = bytearray(content.read_bytes())
    damaged[123] ^= 0x01
    content.write_bytes(damaged)
    holder.start()
    holder.wait_ready(cluster.start_timeout)
    wait_for(
        lambda: task_id not in local_ids(cluster, "peer-2"), WAIT, "the scrub to evict the damaged copy", interval=0.2
    )
    output = tmp_path / "fine.bin"
    dfcache(cluster, "peer-3", "export", task_id, "-O", str(output))
    assert output.read_bytes() == data
    dfcache(cluster, "peer-1", "delete", task_id)

"""Real processes: hdfs://, hf:// and modelscope:// URLs through a scheduler, a seed peer and two peers.

HDFS, the Hugging Face Hub and ModelScope cannot run here: ``stand_in_services.py`` stands in for them, a small
server (its own process) speaking the parts of their documented HTTP APIs the daemon uses (WebHDFS with its
NameNode→DataNode redirect, the Hub's resolve URLs with their CDN redirect, ModelScope's file API), with token
auth and revisions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from daemon_client import download
from dragonfly_api import common_pb2
from object_stores import stop

from dragonfly.cli.cluster import LocalCluster, run_dfget
from dragonfly.common import ids

TOKEN = "hf_stand-in-" + os.urandom(6).hex()
SIZE = 6 * 1024 * 1024 + 99  # above 4 MiB: small files skip P2P


class StandIn:
    def __init__(self, root: Path, log: Path) -> None:
        script = Path(__file__).with_name("stand_in_services.py")
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(root), TOKEN], stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # bounded: the server prints its port first, or exits
        if not line:
            stop(self.process)
            raise RuntimeError(f"stand-in server did not start: {log.read_text()[-2000:]}")
        self.port = json.loads(line)["port"]
        self.base = f"http://127.0.0.1:{self.port}"

    def served(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base}/_stats", timeout=10) as response:
            result: dict[str, int] = json.load(response)
        return result

    def close(self) -> None:
        stop(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def put(root: Path, relative: str, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture(scope="module")
def services(module_dir: Path) -> Iterator[tuple[StandIn, Path]]:
    root = module_dir / "stand-in"
    root.mkdir()
    server = StandIn(root, module_dir / "stand-in.log")
    try:
        yield server, root
    finally:
        server.close()


@pytest.fixture(scope="module")
def api_cluster(module_dir: Path) -> Iterator[LocalCluster]:
    daemon_config = {"scheduler": {"announceInterval": "5s"}, "download": {"collectedPieceTimeout": "10s"}}
    with LocalCluster(
        module_dir / "api-cluster", peers=2, daemon_config=daemon_config, start_timeout=30, stop_timeout=20
    ) as started:
        yield started


def test_hdfs_file_through_the_swarm_with_a_delegation_token(
    services: tuple[StandIn, Path], api_cluster: LocalCluster, tmp_path: Path
) -> None:
    server, root = services
    data = put(root, "hdfs/warehouse/part-0.parquet")
    url = f"hdfs://127.0.0.1:{server.port}/warehouse/part-0.parquet"
    first = download(api_cluster.socket_path("peer-1"), url, tmp_path / "out-1")
    assert (tmp_path / "out-1").read_bytes() == data
    assert first.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    assert first.task_id == ids.task_id(url)
    second = download(api_cluster.socket_path("peer-2"), url, tmp_path / "out-2")
    assert second.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    # Two pieces, each read once from a DataNode by the seed peer.
    assert server.served()["hdfs:/warehouse/part-0.parquet"] == 2

    secret = put(root, "hdfs/secure/keys.bin", 1000)
    result = run_dfget(
        api_cluster.socket_path("peer-1"),
        f"hdfs://127.0.0.1:{server.port}/secure/keys.bin",
        tmp_path / "secure",
        "--hdfs-delegation-token",
        TOKEN,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "secure").read_bytes() == secret
    # A daemon that holds the file serves it from its cache whatever the token (as Dragonfly: credentials are not
    # part of the task id); one that does not asks the service, which refuses a wrong token.
    result = run_dfget(
        api_cluster.socket_path("peer-2"),
        f"hdfs://127.0.0.1:{server.port}/secure/keys.bin",
        tmp_path / "refused",
        "--hdfs-delegation-token",
        "wrong-token",
        timeout=60,
    )
    assert result.returncode == 1
    assert f"hdfs://127.0.0.1:{server.port}/secure/keys.bin" in result.stderr
    assert "HTTP 401" in result.stderr, result.stderr
    assert "wrong-token" not in result.stderr
    with pytest.raises(grpc.RpcError) as info:
        download(api_cluster.socket_path("peer-1"), f"hdfs://127.0.0.1:{server.port}/missing", tmp_path / "m")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_hugging_face_files_by_revision_with_a_token(
    services: tuple[StandIn, Path], api_cluster: LocalCluster, tmp_path: Path
) -> None:
    server, root = services
    main = put(root, "hf/models/acme/private-llm/main/model.safetensors")
    tagged = put(root, "hf/models/acme/private-llm/v1.0/model.safetensors")
    url = "hf://acme/private-llm/model.safetensors"
    hub = common_pb2.HuggingFace(token=TOKEN, revision="v1.0", base_url=server.base)
    first = download(api_cluster.socket_path("peer-1"), url, tmp_path / "v1", hugging_face=hub)
    assert (tmp_path / "v1").read_bytes() == tagged
    assert first.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    # Dragonfly's task id: the revision is part of it (not the token).
    assert first.task_id == ids.task_id(url, revision="v1.0")

    flags = ["--hf-token", TOKEN, "--hf-base-url", server.base]
    result = run_dfget(api_cluster.socket_path("peer-2"), url, tmp_path / "main", *flags, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "main").read_bytes() == main

    # peer-1 holds only v1.0: for main it asks the Hub, which wants the token.
    result = run_dfget(
        api_cluster.socket_path("peer-1"), url, tmp_path / "no-token", "--hf-base-url", server.base, timeout=60
    )
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr, result.stderr
    result = run_dfget(
        api_cluster.socket_path("peer-2"), url, tmp_path / "bad-rev", *flags, "--hf-revision", "nope", timeout=60
    )
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr, result.stderr

    dataset = put(root, "hf/datasets/acme/corpus/main/train/0.jsonl", 2000)
    result = run_dfget(
        api_cluster.socket_path("peer-1"), "hf://datasets/acme/corpus/train/0.jsonl", tmp_path / "ds", *flags
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ds").read_bytes() == dataset


def test_modelscope_files_by_revision_with_a_token(
    services: tuple[StandIn, Path], api_cluster: LocalCluster, tmp_path: Path
) -> None:
    server, root = services
    data = put(root, "ms/models/qwen/private-7b/v2/weights.bin")
    url = "modelscope://qwen/private-7b/weights.bin"
    flags = ["--ms-token", TOKEN, "--ms-base-url", server.base, "--ms-revision", "v2"]
    result = run_dfget(api_cluster.socket_path("peer-1"), url, tmp_path / "w", *flags, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "w").read_bytes() == data
    assert result.traffic is not None
    assert result.traffic["origin"] == 0
    result = run_dfget(
        api_cluster.socket_path("peer-2"), url, tmp_path / "no", "--ms-base-url", server.base, "--ms-revision", "v2"
    )
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr, result.stderr
    # The tokens appear in no log or store of the cluster.
    for path in api_cluster.workdir.rglob("*"):
        if path.is_file() and path.stat().st_size < 64 * 1024 * 1024:
            assert TOKEN.encode() not in path.read_bytes(), path


def test_a_repository_with_r(services: tuple[StandIn, Path], api_cluster: LocalCluster, tmp_path: Path) -> None:
    server, root = services
    files = {
        "config.json": os.urandom(300),
        "weights/part-1.bin": os.urandom(5 * 1024 * 1024),
        "weights/part-2.bin": os.urandom(1000),
        "tokenizer/vocab.txt": os.urandom(50),
    }
    for name, data in files.items():
        put(root, f"hf/models/acme/private-repo/main/{name}", 0)
        (root / f"hf/models/acme/private-repo/main/{name}").write_bytes(data)
    out = tmp_path / "repo"
    out.mkdir()
    flags = ["--hf-token", TOKEN, "--hf-base-url", server.base]
    # The stand-in's tree API answers two entries a page: the listing follows its Link headers.
    result = run_dfget(api_cluster.socket_path("peer-1"), "hf://acme/private-repo", out, "-r", *flags, timeout=120)
    assert result.returncode == 0, result.stderr
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    weights = tmp_path / "weights"
    weights.mkdir()
    result = run_dfget(
        api_cluster.socket_path("peer-2"), "hf://models/acme/private-repo", weights, "-r", "-I", "weights", *flags
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in weights.rglob("*") if p.is_file()) == ["part-1.bin", "part-2.bin"]

    ms = {"configuration.json": b"{}", "model/w.bin": os.urandom(4000)}
    for name, data in ms.items():
        put(root, f"ms/models/qwen/private-small/master/{name}", 0)
        (root / f"ms/models/qwen/private-small/master/{name}").write_bytes(data)
    ms_out = tmp_path / "ms"
    ms_out.mkdir()
    result = run_dfget(
        api_cluster.socket_path("peer-1"),
        "modelscope://qwen/private-small",
        ms_out,
        "-r",
        "--ms-token",
        TOKEN,
        "--ms-base-url",
        server.base,
    )
    assert result.returncode == 0, result.stderr
    for name, data in ms.items():
        assert (ms_out / name).read_bytes() == data

    hdfs = {"logs/2026/a.log": os.urandom(100), "logs/b.log": os.urandom(200)}
    for name, data in hdfs.items():
        put(root, f"hdfs/{name}", 0)
        (root / f"hdfs/{name}").write_bytes(data)
    hdfs_out = tmp_path / "hdfs"
    hdfs_out.mkdir()
    result = run_dfget(api_cluster.socket_path("peer-2"), f"hdfs://127.0.0.1:{server.port}/logs", hdfs_out, "-r")
    assert result.returncode == 0, result.stderr
    for name, data in hdfs.items():
        assert (hdfs_out / name.removeprefix("logs/")).read_bytes() == data

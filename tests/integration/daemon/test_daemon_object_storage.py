"""Real processes: S3 URLs against moto's standalone S3 server (signatures checked), Azure Blob against Azurite and
GCS against fake-gcs-server, through a scheduler, a seed peer and three peers. The object leaves the store once;
bad credentials and a missing key fail with clear errors that never show the credentials (nor do the logs)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from daemon_client import download
from dragonfly_api import common_pb2
from object_stores import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    REGION,
    Azurite,
    FakeGCS,
    MotoS3,
    azurite_command,
    fake_gcs_command,
)

from dragonfly.cli.cluster import LocalCluster, run_dfget
from dragonfly.common import ids
from dragonfly.common.piece import calculate_piece_length, piece_count

SIZE = 40 * 1024 * 1024 + 4321
BUCKET = "models"


@pytest.fixture(scope="module")
def s3(module_dir: Path) -> Iterator[MotoS3]:
    server = MotoS3(module_dir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def s3_cluster(module_dir: Path) -> Iterator[LocalCluster]:
    daemon_config = {"scheduler": {"announceInterval": "5s"}, "download": {"collectedPieceTimeout": "10s"}}
    with LocalCluster(
        module_dir / "s3-cluster", peers=3, daemon_config=daemon_config, start_timeout=30, stop_timeout=20
    ) as started:
        yield started


def storage_flags(s3: MotoS3, secret: str | None = None) -> list[str]:
    return [
        "--storage-endpoint",
        s3.endpoint,
        "--storage-region",
        REGION,
        "--storage-access-key-id",
        s3.access_key_id,
        "--storage-access-key-secret",
        secret or s3.secret,
    ]


def test_an_object_leaves_the_store_once_for_three_peers(s3: MotoS3, s3_cluster: LocalCluster, tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    s3.client.create_bucket(Bucket=BUCKET)
    s3.client.put_object(Bucket=BUCKET, Key="llm/weights.bin", Body=data)
    url = f"s3://{BUCKET}/llm/weights.bin"
    storage = common_pb2.ObjectStorage(
        endpoint=s3.endpoint, region=REGION, access_key_id=s3.access_key_id, access_key_secret=s3.secret
    )
    first = download(s3_cluster.socket_path("peer-1"), url, tmp_path / "out-1", object_storage=storage)
    assert (tmp_path / "out-1").read_bytes() == data
    assert first.bytes_by_traffic == {"REMOTE_PEER": SIZE}
    # Credentials are not part of the task id: Dragonfly's rule on the URL alone.
    assert first.task_id == ids.task_id(url)
    for name in ("peer-2", "peer-3"):
        result = run_dfget(s3_cluster.socket_path(name), url, tmp_path / name, *storage_flags(s3), timeout=120)
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256((tmp_path / name).read_bytes()).digest() == hashlib.sha256(data).digest()
        assert result.traffic is not None
        assert result.traffic["origin"] == 0
    # One ranged GET per piece, by the seed peer only.
    assert s3.object_gets(BUCKET, "llm/weights.bin") == piece_count(SIZE, calculate_piece_length(SIZE))


def test_bad_credentials_and_missing_keys_fail_clearly(s3: MotoS3, s3_cluster: LocalCluster, tmp_path: Path) -> None:
    s3.client.create_bucket(Bucket="private")
    s3.client.put_object(Bucket="private", Key="small.bin", Body=b"x" * 1000)
    wrong = "WRONG-secret-" + os.urandom(8).hex()
    result = run_dfget(
        s3_cluster.socket_path("peer-1"),
        "s3://private/small.bin",
        tmp_path / "o1",
        *storage_flags(s3, wrong),
        "--log-level",
        "debug",
        timeout=60,
    )
    assert result.returncode == 1
    assert "access denied (HTTP 403)" in result.stderr, result.stderr
    # The store's own reason, which tells a wrong secret from a missing permission.
    assert "SignatureDoesNotMatch" in result.stderr
    assert not (tmp_path / "o1").exists()

    result = run_dfget(
        s3_cluster.socket_path("peer-1"), "s3://private/missing.bin", tmp_path / "o2", *storage_flags(s3), timeout=60
    )
    assert result.returncode == 1
    assert "no such object or bucket (HTTP 404)" in result.stderr, result.stderr

    with pytest.raises(grpc.RpcError) as info:
        download(
            s3_cluster.socket_path("peer-1"),
            "s3://no-such-bucket/x",
            tmp_path / "o3",
            object_storage=common_pb2.ObjectStorage(
                endpoint=s3.endpoint, region=REGION, access_key_id=s3.access_key_id, access_key_secret=s3.secret
            ),
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    # The secrets appear nowhere: not in what dfget printed (debug included), nor in any daemon's or the
    # scheduler's log, nor in their metadata stores.
    for secret in (wrong, s3.secret):
        assert secret not in result.stderr
        for path in s3_cluster.workdir.rglob("*"):
            if path.is_file() and path.stat().st_size < 64 * 1024 * 1024:
                assert secret.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def azurite(module_dir: Path) -> Iterator[Azurite]:
    command = azurite_command()
    if command is None:
        pytest.skip("azurite-blob is not installed (scripts/system-deps.sh installs it with npm)")
    server = Azurite(command, module_dir)
    try:
        yield server
    finally:
        server.close()


def test_azure_blob_through_the_swarm(azurite: Azurite, s3_cluster: LocalCluster, tmp_path: Path) -> None:
    data = os.urandom(6 * 1024 * 1024 + 7)
    azurite.put("models", "bert/model.bin", data)
    url = "abs://models/bert/model.bin"
    storage = common_pb2.ObjectStorage(
        endpoint=azurite.endpoint, access_key_id=AZURITE_ACCOUNT, access_key_secret=AZURITE_KEY
    )
    first = download(s3_cluster.socket_path("peer-1"), url, tmp_path / "out-1", object_storage=storage)
    assert (tmp_path / "out-1").read_bytes() == data
    assert first.bytes_by_traffic == {"REMOTE_PEER": len(data)}
    second = download(s3_cluster.socket_path("peer-2"), url, tmp_path / "out-2", object_storage=storage)
    assert second.bytes_by_traffic == {"REMOTE_PEER": len(data)}

    wrong = common_pb2.ObjectStorage(
        endpoint=azurite.endpoint, access_key_id=AZURITE_ACCOUNT, access_key_secret="A" * 4 + AZURITE_KEY[4:]
    )
    with pytest.raises(grpc.RpcError) as info:
        download(s3_cluster.socket_path("peer-3"), url, tmp_path / "out-3", object_storage=wrong)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "access denied (HTTP 403)" in (info.value.details() or "")


@pytest.fixture(scope="module")
def gcs(module_dir: Path) -> Iterator[FakeGCS]:
    command = fake_gcs_command()
    if command is None:
        pytest.skip("fake-gcs-server is not installed (scripts/system-deps.sh installs it with go install)")
    objects = {"datasets/train/part-0.bin": os.urandom(5 * 1024 * 1024 + 3)}
    server = FakeGCS(command, module_dir, objects)
    server.objects = objects  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.close()


def test_gcs_object_through_the_swarm(gcs: FakeGCS, s3_cluster: LocalCluster, tmp_path: Path) -> None:
    data = gcs.objects["datasets/train/part-0.bin"]  # type: ignore[attr-defined]
    url = "gs://datasets/train/part-0.bin"
    storage = common_pb2.ObjectStorage(endpoint=gcs.endpoint)
    first = download(s3_cluster.socket_path("peer-1"), url, tmp_path / "out-1", object_storage=storage)
    assert (tmp_path / "out-1").read_bytes() == data
    assert first.bytes_by_traffic == {"REMOTE_PEER": len(data)}
    with pytest.raises(grpc.RpcError) as info:
        download(s3_cluster.socket_path("peer-1"), "gs://datasets/missing", tmp_path / "o", object_storage=storage)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_prefix_with_r_each_file_its_own_task(s3: MotoS3, s3_cluster: LocalCluster, tmp_path: Path) -> None:
    s3.client.create_bucket(Bucket="datasets")
    objects = {
        "ds/train.bin": os.urandom(5 * 1024 * 1024 + 1),
        "ds/sub/b.bin": os.urandom(1000),
        "ds/sub/c.txt": b"c",
        "other/x.bin": b"not under the prefix",
    }
    for key, body in objects.items():
        s3.client.put_object(Bucket="datasets", Key=key, Body=body)
    out = tmp_path / "all"
    out.mkdir()
    result = run_dfget(s3_cluster.socket_path("peer-1"), "s3://datasets/ds", out, "-r", *storage_flags(s3))
    assert result.returncode == 0, result.stderr
    assert "saved 3 files" in result.stderr
    for key, body in objects.items():
        if key.startswith("ds/"):
            assert (out / key.removeprefix("ds/")).read_bytes() == body
    assert not (out / "x.bin").exists()
    # Each file was its own task: the big one is in the daemon under its own URL's task id.
    assert (s3_cluster.storage_dir("peer-1") / "content" / "tasks").exists()
    big = ids.task_id("s3://datasets/ds/train.bin")
    assert any(path.name == big for path in (s3_cluster.storage_dir("peer-1") / "content").rglob(big))

    some = tmp_path / "some"
    some.mkdir()
    result = run_dfget(
        s3_cluster.socket_path("peer-2"), "s3://datasets/ds/", some, "-r", "-I", "sub/*.bin", *storage_flags(s3)
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(some).as_posix() for p in some.rglob("*") if p.is_file()) == ["sub/b.bin"]

    result = run_dfget(
        s3_cluster.socket_path("peer-2"), "s3://datasets/ds", tmp_path, "-r", "--max-files", "2", *storage_flags(s3)
    )
    assert result.returncode == 1
    assert "holds 3 files, more than --max-files 2" in result.stderr

"""Origin TLS on a seed peer ordered by the scheduler: a preheat of an https origin whose CA is not the system's.

The seed verifies the origin like any download: the preheat fails with the host named unless the manager's
request trusts the CA (``certificate_chain``) or asks for ``insecure_skip_verify``, which the scheduler passes on
to the seed (gRPC metadata: the Download message has no field for it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
from preheat_helpers import preheat, scheduler_channel

from dragonfly.cli.cluster import SEED_PEER, LocalCluster, OriginProcess
from dragonfly.common import pki


@pytest.fixture(scope="module")
def ca_dir(module_dir: Path) -> Path:
    authority = pki.create_ca("private origin CA")
    authority.write(module_dir / "origin-ca")
    pki.issue(authority, "origin", ips=["127.0.0.1"]).write(module_dir / "origin-ca", "origin")
    return module_dir / "origin-ca"


@pytest.fixture(scope="module")
def https_origin(module_dir: Path, ca_dir: Path) -> Iterator[OriginProcess]:
    directory = module_dir / "https-origin"
    directory.mkdir()
    tls = (ca_dir / "origin.crt", ca_dir / "origin.key")
    with OriginProcess(directory, module_dir / "https-origin.log", tls=tls) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=0, start_timeout=60, stop_timeout=20) as running:
        yield running


@pytest.fixture
async def stub(cluster: LocalCluster) -> AsyncIterator[scheduler_pb2_grpc.SchedulerStub]:
    channel = scheduler_channel(cluster)
    yield scheduler_pb2_grpc.SchedulerStub(channel)
    await channel.close()


def _file(origin: OriginProcess, name: str) -> str:
    (origin.directory / name).write_bytes(os.urandom(1024 * 1024))
    return origin.url(name)


async def test_a_preheat_verifies_the_origin_unless_told_otherwise(
    cluster: LocalCluster, https_origin: OriginProcess, ca_dir: Path, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    url = _file(https_origin, "unknown-ca.bin")
    _plan, result = await preheat(
        stub, "PreheatFile", scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url=url)
    )
    assert result["success_tasks"] == []
    [failure] = result["failure_tasks"]
    assert "the TLS certificate of 127.0.0.1 could not be verified" in failure["description"], failure

    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes()).public_bytes(Encoding.DER)
    url = _file(https_origin, "trusted-ca.bin")
    request = scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url=url, certificate_chain=[ca])
    _plan, result = await preheat(stub, "PreheatFile", request)
    assert result["failure_tasks"] == []
    assert [task["hostname"] for task in result["success_tasks"]] == [SEED_PEER]

    url = _file(https_origin, "insecure.bin")
    request = scheduler_pb2.PreheatFileRequest(scope="single_seed_peer", url=url, insecure_skip_verify=True)
    _plan, result = await preheat(stub, "PreheatFile", request)
    assert result["failure_tasks"] == []
    assert [task["hostname"] for task in result["success_tasks"]] == [SEED_PEER]
    log = cluster.log_path(SEED_PEER).read_text()
    assert "the scheduler (a preheat) asked to skip the verification of the origin's TLS certificate" in log

"""The SSRF guard against a real cluster (issue 9): a download the scheduler orders on a seed peer may not reach
the seed's own loopback services or cloud metadata, directly or through a redirect; an allowed origin still works.

The seed peer allows only 127.0.0.2 (``security.allowedOriginNetworks``), where the origin listens; its own
metrics server is on 127.0.0.1. peer-1's proxy listens on every interface: a client on this host's non-loopback
address counts as another host (guarded), one on loopback as a local process (exempt).
"""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

from dragonfly.cli.cluster import SCHEDULER, SEED_PEER, LocalCluster, OriginProcess
from dragonfly.common import tls
from dragonfly.daemon.host_info import detect_ip

PEER = "peer-1"


@pytest.fixture(scope="module")
def outside_origin(module_dir: Path) -> Iterator[OriginProcess]:
    directory = module_dir / "outside"
    directory.mkdir()
    with OriginProcess(directory, module_dir / "outside.log", host="127.0.0.2") as server:
        yield server


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    allowed = {"security": {"allowedOriginNetworks": ["127.0.0.2/32"]}}
    proxy = {"proxy": {"server": {"ip": "0.0.0.0"}, "rules": [{"regex": "through-the-swarm"}]}}
    with LocalCluster(
        module_dir / "cluster",
        peers=1,
        peer_configs={SEED_PEER: allowed, PEER: {**allowed, **proxy}},
        start_timeout=60,
        stop_timeout=20,
    ) as running:
        yield running


def order_download(cluster: LocalCluster, url: str) -> None:
    """Order the seed peer to download ``url`` as the scheduler does (DownloadTask with its certificate)."""
    files = cluster.tls_files(SCHEDULER)
    assert files is not None
    with tls.sync_channel(cluster.process(SEED_PEER).listening["upload"], files) as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
        request = dfdaemon_pb2.DownloadTaskRequest(download=common_pb2.Download(url=url, need_back_to_source=True))
        for _ in stub.DownloadTask(request, timeout=60):
            pass


def test_the_seed_refuses_its_own_metrics_and_redirects_to_them(
    cluster: LocalCluster, outside_origin: OriginProcess
) -> None:
    metrics = f"http://{cluster.process(SEED_PEER).listening['metrics']}/metrics"
    assert metrics.startswith("http://127.0.0.1:")
    with pytest.raises(grpc.RpcError) as direct:
        order_download(cluster, metrics)
    assert direct.value.code() == grpc.StatusCode.PERMISSION_DENIED, direct.value
    assert "refused to connect to 127.0.0.1: a loopback address" in str(direct.value.details())
    assert "security.allowedOriginNetworks" in str(direct.value.details())

    outside_origin.set_fault("innocent.bin", "redirect", location=metrics)
    (outside_origin.directory / "innocent.bin").write_bytes(b"x")
    with pytest.raises(grpc.RpcError) as redirected:
        order_download(cluster, outside_origin.url("innocent.bin"))
    assert redirected.value.code() == grpc.StatusCode.PERMISSION_DENIED, redirected.value
    assert "refused to connect to 127.0.0.1: a loopback address" in str(redirected.value.details())

    with pytest.raises(grpc.RpcError) as metadata:
        order_download(cluster, "http://169.254.169.254/latest/meta-data/")
    assert metadata.value.code() == grpc.StatusCode.PERMISSION_DENIED, metadata.value
    assert "a cloud metadata address" in str(metadata.value.details())


def test_an_allowed_origin_is_fetched(cluster: LocalCluster, outside_origin: OriginProcess) -> None:
    data = os.urandom(2 * 1024 * 1024)
    (outside_origin.directory / "allowed.bin").write_bytes(data)
    outside_origin.reset_stats()
    order_download(cluster, outside_origin.url("allowed.bin"))
    assert outside_origin.bytes_served("allowed.bin") >= len(data)


def proxy_get(proxy: str, url: str) -> tuple[int, str]:
    host, port = proxy.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", url)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def proxy_connect(proxy: str, target: str) -> bytes:
    host, port = proxy.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(4096)


@pytest.mark.skipif(detect_ip() == "127.0.0.1", reason="needs a non-loopback address to be another host from")
def test_the_proxy_guards_clients_on_other_hosts_only(cluster: LocalCluster) -> None:
    metrics_addr = cluster.process(PEER).listening["metrics"]
    port = cluster.process(PEER).listening["proxy"].rsplit(":", 1)[1]
    remote, local = f"{detect_ip()}:{port}", f"127.0.0.1:{port}"
    for url in (f"http://{metrics_addr}/metrics", f"http://{metrics_addr}/metrics?through-the-swarm"):
        status, body = proxy_get(remote, url)
        assert status == 403, body
        assert f"refused to connect to {metrics_addr.split(':')[0]}: a loopback address" in body
    assert proxy_connect(remote, metrics_addr).startswith(b"HTTP/1.1 403")
    # A process on this host reaches its loopback services anyway: not guarded.
    status, body = proxy_get(local, f"http://{metrics_addr}/metrics")
    assert status == 200, body
    assert "dragonfly" in body
    assert proxy_connect(local, metrics_addr).startswith(b"HTTP/1.1 200")

"""The origin head of proxied blobs (``proxy.originHead``, docs/proxy.md#the-first-bytes-from-the-registry).

A scheduler, a seed peer and 3 peers: peer-1 with the default head (256 KiB), peer-2 with it off, peer-3 with the
default head but ``proxy.disableBackToSource`` (which turns it off: no origin bytes reach its clients). The registry
(Debian's docker-registry) logs every request with the bytes it sent, so "the peer read the head, and every blob
byte left the registry once" is measured. The demo origin serves a file differently to one request (its ``corrupt``
fault) to show that a head the swarm's piece 0 contradicts aborts the answer. A blob the swarm holds already is
pulled without a head (the peer asks the scheduler first, ``proxy.originHeadMaxPeers``), also when a manifest the
proxy forwarded had it ask ahead. ``python -m http.server`` is an origin that ignores ``Range``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dragonfly.cli.cluster import LocalCluster, OriginProcess, free_ports
from dragonfly.cli.registry import OCI_MANIFEST, Image, RegistryProcess, build_image, push
from tests.waiting import listening, wait_for

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("docker-registry", "skopeo")),
    reason="needs docker-registry and skopeo (scripts/system-deps.sh installs them)",
)

MIB = 1024 * 1024
HEAD = 256 * 1024  # proxy.originHead's default
REPOSITORY = "test/head"


@pytest.fixture(scope="module")
def image(module_dir: Path) -> Image:
    return build_image(module_dir / "layout", [12 * MIB, 10 * MIB, 9 * MIB, 11 * MIB, 8 * MIB])


@pytest.fixture(scope="module")
def registry(module_dir: Path, image: Image) -> Iterator[RegistryProcess]:
    with RegistryProcess(module_dir / "registry") as server:
        push(image, server, REPOSITORY)
        yield server


@pytest.fixture(scope="module")
def cluster(module_dir: Path, registry: RegistryProcess, origin: OriginProcess) -> Iterator[LocalCluster]:
    config = {
        "proxy": {"registryMirror": {"addr": registry.url, "enableTaskIDBasedBlobDigest": True}},
        "download": {"collectedPieceTimeout": "10s"},
    }
    with LocalCluster(
        module_dir / "cluster",
        peers=3,
        daemon_config=config,
        peer_configs={"peer-2": {"proxy": {"originHead": 0}}, "peer-3": {"proxy": {"disableBackToSource": True}}},
        start_timeout=60,
    ) as started:
        yield started


def proxy_addr(cluster: LocalCluster, name: str) -> tuple[str, int]:
    host, _, port = cluster.process(name).listening["proxy"].rpartition(":")
    return host, int(port)


def get(addr: tuple[str, int], target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*addr, timeout=120)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def blob_bytes(image: Image, digest: str) -> bytes:
    return (image.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def sent_for(registry: RegistryProcess, digest: str, size: int, extra: int) -> list[int]:
    """Bytes of every GET of the blob the registry logged, once it has logged ``size + extra`` (bounded wait)."""

    def logged() -> list[int] | None:
        sent = [sent for method, path, _status, sent in registry.served() if method == "GET" and path.endswith(digest)]
        return sent if sum(sent) >= size + extra else None

    return wait_for(logged, 30, f"the registry to log {size + extra} bytes of {digest}")


def test_a_blob_starts_with_the_origin_head_and_every_byte_leaves_the_registry_once_more(
    cluster: LocalCluster, registry: RegistryProcess, image: Image
) -> None:
    layer = image.layers[0]
    status, body = get(proxy_addr(cluster, "peer-1"), f"/v2/{REPOSITORY}/blobs/{layer.digest}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == layer.digest[7:]
    # peer-1's stat is the head (HEAD bytes), then the seed's pieces (its stat is piece 0's request): each byte once.
    sent = sent_for(registry, layer.digest, layer.size, HEAD)
    assert sent.count(HEAD) == 1, sent
    assert 1 not in sent, sent
    assert sum(sent) == layer.size + HEAD, sent


@pytest.mark.parametrize(("peer", "index"), [("peer-2", 1), ("peer-3", 3)])
def test_with_the_head_off_a_blob_costs_one_stat_of_one_byte(
    cluster: LocalCluster, registry: RegistryProcess, image: Image, peer: str, index: int
) -> None:
    layer = image.layers[index]
    status, body = get(proxy_addr(cluster, peer), f"/v2/{REPOSITORY}/blobs/{layer.digest}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == layer.digest[7:]
    # The peer's 1-byte stat; the seed's stat is its piece 0's request.
    sent = sent_for(registry, layer.digest, layer.size, 1)
    assert sent.count(1) == 1, sent
    assert sum(sent) == layer.size + 1, sent


def test_a_blob_the_swarm_holds_is_pulled_without_a_head(
    cluster: LocalCluster, registry: RegistryProcess, image: Image
) -> None:
    """peer-2 (head off) pulls the blob through the swarm first: the seed peer stores piece 0 and the scheduler
    trusts it. peer-1 then asks the scheduler before its stat, reads one byte of the registry and no head."""
    layer = image.layers[4]
    target = f"/v2/{REPOSITORY}/blobs/{layer.digest}"
    status, first = get(proxy_addr(cluster, "peer-2"), target)
    assert status == 200
    assert hashlib.sha256(first).hexdigest() == layer.digest[7:]
    sent_for(registry, layer.digest, layer.size, 1)
    status, body = get(proxy_addr(cluster, "peer-1"), target)
    assert status == 200
    assert body == first
    # peer-2's 1-byte stat, the seed's pieces (its stat is piece 0's request), peer-1's 1-byte stat: a head would add
    # HEAD - 1.
    sent = sent_for(registry, layer.digest, layer.size, 2)
    assert HEAD not in sent, sent
    assert sent.count(1) == 2, sent
    assert sum(sent) == layer.size + 2, sent


def test_a_manifest_through_the_proxy_asks_ahead_for_its_blobs_and_the_egress_bound_holds(
    cluster: LocalCluster, registry: RegistryProcess, tmp_path: Path
) -> None:
    """peer-1 forwards an image manifest, so its blobs' gates ask the scheduler before their GETs arrive
    (proxy/manifest_blobs.py). The answers are the same as asked at the GET: a blob nobody holds gets the head, one
    whose piece 0 the swarm holds (peer-2 pulled it) does not."""
    image = build_image(tmp_path / "layout", [6 * MIB, 5 * MIB])
    push(image, registry, "test/ahead")
    cold, held = image.layers
    status, body = get(proxy_addr(cluster, "peer-2"), f"/v2/test/ahead/blobs/{held.digest}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == held.digest[7:]
    sent_for(registry, held.digest, held.size, 1)
    addr = proxy_addr(cluster, "peer-1")
    status, manifest = get(addr, f"/v2/test/ahead/manifests/{image.tag}", {"Accept": OCI_MANIFEST})
    assert status == 200
    assert hashlib.sha256(manifest).hexdigest() == image.manifest.digest[7:]
    for layer in (cold, held):
        status, body = get(addr, f"/v2/test/ahead/blobs/{layer.digest}")
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == layer.digest[7:]
    # The cold blob: peer-1's head, the seed's pieces (its stat is piece 0's request). The held one: the peers'
    # 1-byte stats only, no head.
    sent = sent_for(registry, cold.digest, cold.size, HEAD)
    assert sent.count(HEAD) == 1, sent
    assert sum(sent) == cold.size + HEAD, sent
    sent = sent_for(registry, held.digest, held.size, 2)
    assert HEAD not in sent, sent
    assert sum(sent) == held.size + 2, sent


def test_a_ranged_request_reads_no_head_and_a_refusal_is_passed_on(
    cluster: LocalCluster, registry: RegistryProcess, image: Image
) -> None:
    addr = proxy_addr(cluster, "peer-1")
    layer = image.layers[2]
    status, body = get(addr, f"/v2/{REPOSITORY}/blobs/{layer.digest}", {"Range": "bytes=5000000-5999999"})
    assert status == 206
    assert body == blob_bytes(image, layer.digest)[5000000:6000000]
    sent = sent_for(registry, layer.digest, 4 * MIB, 2)
    assert HEAD not in sent, sent
    # The registry's 404 comes back as it is, as without the head.
    conn = http.client.HTTPConnection(*addr, timeout=60)
    try:
        conn.request("GET", f"/v2/{REPOSITORY}/blobs/sha256:{'2' * 64}")
        response = conn.getresponse()
        assert response.status == 404
        assert response.getheader("X-Dragonfly-Error-Type") == "backend"
        assert b"BLOB_UNKNOWN" in response.read()
    finally:
        conn.close()


def test_an_origin_head_that_piece_0_contradicts_aborts_the_answer(
    cluster: LocalCluster, origin: OriginProcess
) -> None:
    """The first request for the file (peer-1's stat with the head) gets every byte inverted; the seed's requests
    get the file. The client receives the wrong head, then the connection is aborted: never a complete body."""
    data = os.urandom(6 * MIB)
    (origin.directory / "two-faced.bin").write_bytes(data)
    origin.set_fault("two-faced.bin", "corrupt", count=1)
    conn = http.client.HTTPConnection(*proxy_addr(cluster, "peer-1"), timeout=60)
    try:
        conn.request("GET", origin.url("two-faced.bin"), headers={"X-Dragonfly-Use-P2P": "true"})
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.getheader("Content-Length") or -1) == len(data)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)) as caught:
            response.read()
    finally:
        conn.close()
    # What reached the client before the abort is at most the head (bytes still queued in the proxy are dropped).
    received = getattr(caught.value, "partial", b"")
    assert len(received) <= HEAD
    assert received == bytes(255 - b for b in data[: len(received)])
    # The task itself is fine: the swarm's bytes, verified, are served to the next request.
    status, body = get(proxy_addr(cluster, "peer-1"), origin.url("two-faced.bin"), {"X-Dragonfly-Use-P2P": "true"})
    assert (status, body == data) == (200, True)


def test_an_origin_without_range_support_gives_the_head_and_the_whole_body(
    cluster: LocalCluster, module_dir: Path
) -> None:
    directory = module_dir / "plain-origin"
    directory.mkdir()
    data = os.urandom(9 * MIB)
    (directory / "plain.bin").write_bytes(data)
    port = free_ports(1)[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: listening(port), 30, "python -m http.server to listen", interval=0.1)
        url = f"http://127.0.0.1:{port}/plain.bin"
        status, body = get(proxy_addr(cluster, "peer-1"), url, {"X-Dragonfly-Use-P2P": "true"})
        assert status == 200
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    finally:
        server.terminate()
        server.wait(10)

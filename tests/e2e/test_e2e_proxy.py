"""Container images through the swarm with real tools: docker-registry, skopeo and containerd (Debian packages).

One module-wide setup: a multi-layer image built here as an OCI layout and pushed with skopeo into a plain-HTTP
registry; two more registry processes on the same storage (TLS with a CA made here, and htpasswd basic auth); a
scheduler, a seed peer and 3 peers whose proxies mirror the plain registry and intercept the TLS one. The registry
counts the blob bytes it sends (its access log), so "each blob left the registry once" is measured, not assumed.

The image is 104 MiB (random, incompressible layers of 64 MiB, 40 MiB and 1000 bytes: few layers, as the suite runs
on two shared cores). Blobs of at most 4 MiB (the config, the small layer) go straight to the registry from every
daemon, as in Dragonfly, so only the larger layers are counted as "once".
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc
from tls_helpers import MadeCA, issuer_of, make_ca, make_server_cert

from dragonfly.cli.cluster import LocalCluster, free_ports, run_dfget
from dragonfly.cli.registry import OCI_MANIFEST, Image, RegistryProcess, build_image, push
from tests.waiting import listening, wait_for

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("docker-registry", "skopeo", "containerd", "ctr", "htpasswd")),
    reason="needs docker-registry, skopeo, containerd and apache2-utils (scripts/system-deps.sh installs them)",
)

MIB = 1024 * 1024
REPOSITORY = "test/app"
SMALL = 4 * MIB  # a bound kept loose for blobs up to this size (manifests and configs are fetched per request)
STATS = 16  # every daemon's stat of a blob reads one byte


@pytest.fixture(scope="module")
def cas(module_dir: Path) -> dict[str, MadeCA]:
    return {name: make_ca(module_dir / "ca", name) for name in ("registry-ca", "proxy-ca")}


@pytest.fixture(scope="module")
def image(module_dir: Path) -> Image:
    return build_image(module_dir / "layout", [64 * MIB, 40 * MIB, 1000])


@pytest.fixture(scope="module")
def registry(module_dir: Path, image: Image) -> Iterator[RegistryProcess]:
    with RegistryProcess(module_dir / "registry") as server:
        push(image, server, REPOSITORY)
        yield server


@pytest.fixture(scope="module")
def tls_registry(module_dir: Path, registry: RegistryProcess, cas: dict[str, MadeCA]) -> Iterator[RegistryProcess]:
    cert = make_server_cert(cas["registry-ca"], module_dir / "ca", "registry", ["127.0.0.1", "localhost"])
    with RegistryProcess(module_dir / "registry", storage=registry.storage, name="registry-tls", tls=cert) as server:
        yield server


@pytest.fixture(scope="module")
def auth_registry(module_dir: Path, registry: RegistryProcess) -> Iterator[RegistryProcess]:
    htpasswd = module_dir / "htpasswd"
    line = subprocess.run(["htpasswd", "-nbB", "puller", "s3cret"], capture_output=True, text=True, check=True)
    htpasswd.write_text(line.stdout.strip() + "\n")
    with RegistryProcess(
        module_dir / "registry", storage=registry.storage, name="registry-auth", htpasswd=htpasswd
    ) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(
    module_dir: Path,
    registry: RegistryProcess,
    tls_registry: RegistryProcess,
    auth_registry: RegistryProcess,
    cas: dict[str, MadeCA],
) -> Iterator[LocalCluster]:
    proxy = {
        "registryMirror": {
            "addr": registry.url,
            "cert": str(cas["registry-ca"].cert_path),
            "enableTaskIDBasedBlobDigest": True,
        },
        "server": {"caCert": str(cas["proxy-ca"].cert_path), "caKey": str(cas["proxy-ca"].key_path)},
        "hijackHTTPS": {"hosts": [{"regex": f"^127\\.0\\.0\\.1:{tls_registry.port}$"}]},
    }
    config = {"proxy": proxy, "scheduler": {"announceInterval": "5s"}, "download": {"collectedPieceTimeout": "10s"}}
    with LocalCluster(module_dir / "cluster", peers=3, daemon_config=config, start_timeout=60) as started:
        yield started


def proxy_addr(cluster: LocalCluster, name: str) -> tuple[str, int]:
    host, _, port = cluster.process(name).listening["proxy"].rpartition(":")
    return host, int(port)


def blob_bytes(image: Image, digest: str) -> bytes:
    return (image.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def request(
    addr: tuple[str, int], method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection(*addr, timeout=120)
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_skopeo_copies_through_three_mirrors_at_once(
    cluster: LocalCluster, registry: RegistryProcess, image: Image, tmp_path: Path
) -> None:
    assert image.size >= 100 * MIB
    before = registry.blob_bytes()
    copies = {}
    for name in cluster.peer_names[:3]:
        host, port = proxy_addr(cluster, name)
        copies[name] = subprocess.Popen(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{host}:{port}/{REPOSITORY}:latest",
                f"dir:{tmp_path / name}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for name, proc in copies.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"skopeo through {name}'s mirror failed: {output}"
    for name in copies:
        for blob in (*image.layers, image.config):
            copied = (tmp_path / name / blob.digest.split(":")[1]).read_bytes()
            assert "sha256:" + hashlib.sha256(copied).hexdigest() == blob.digest
    # The registry logs a request once its handler returned, which can be after the client read the last byte.
    large = [blob for blob in (*image.layers, image.config) if blob.size > SMALL]

    def logged_in_full() -> Counter[str] | None:
        counts = registry.blob_bytes()
        return counts if all(counts[b.digest] - before[b.digest] >= b.size for b in large) else None

    after = wait_for(logged_in_full, 30, "the registry to log each large blob it sent")
    for blob in (*image.layers, image.config):
        served = after[blob.digest] - before[blob.digest]
        if blob.size > SMALL:
            assert blob.size <= served <= 1.05 * blob.size + STATS, f"{blob.digest} left the registry {served} B"
        else:
            assert served <= 4 * blob.size + STATS


def test_containerd_pulls_with_the_config_dragonfly_init_wrote(
    cluster: LocalCluster, registry: RegistryProcess, image: Image, module_dir: Path, tmp_path: Path
) -> None:
    hosts_dir = tmp_path / "certs.d"
    host, port = proxy_addr(cluster, "peer-2")
    init = [sys.executable, "-m", "dragonfly.cli.dragonfly", "init", "containerd", "--config-dir", str(hosts_dir)]
    init += ["--registry", registry.url, "--proxy", f"http://{host}:{port}"]
    assert subprocess.run(init, capture_output=True, text=True, check=False).returncode == 0
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"df-containerd-{os.getpid()}"
    socket_path = root / "run" / "containerd.sock"
    (root / "run").mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{root / "root"}"\nstate = "{root / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket_path}"\n'
    )
    log = open(tmp_path / "containerd.log", "wb")  # noqa: SIM115 - closed in finally
    containerd = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        ctr = ["ctr", "-a", str(socket_path), "-n", "dragonfly-test"]

        def answers() -> bool:
            assert containerd.poll() is None, (tmp_path / "containerd.log").read_text()[-2000:]
            return subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode == 0

        wait_for(answers, 60, "containerd to answer", interval=0.2)
        fetch = subprocess.run(
            [*ctr, "content", "fetch", "--hosts-dir", str(hosts_dir), f"{registry.addr}/{REPOSITORY}:latest"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert fetch.returncode == 0, fetch.stdout + fetch.stderr
        for blob in (*image.layers, image.config, image.manifest):
            content = subprocess.run([*ctr, "content", "get", blob.digest], capture_output=True, check=True).stdout
            assert "sha256:" + hashlib.sha256(content).hexdigest() == blob.digest
    finally:
        containerd.send_signal(signal.SIGTERM)
        try:
            containerd.wait(30)
        except subprocess.TimeoutExpired:
            containerd.kill()
            containerd.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    # The layers went through peer-2's proxy: its daemon holds them as tasks named by their digests.
    with grpc.insecure_channel(f"unix:{cluster.socket_path('peer-2')}") as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
        for layer in image.layers:
            if layer.size > SMALL:
                stored = stub.StatLocalTask(dfdaemon_pb2.StatLocalTaskRequest(task_id=layer.digest[7:]), timeout=10)
                assert stored.content_length == layer.size
                assert stored.HasField("finished_at")


def test_https_is_intercepted_for_swarm_hosts_and_tunnelled_for_others(
    cluster: LocalCluster, tls_registry: RegistryProcess, image: Image, cas: dict[str, MadeCA]
) -> None:
    host, port = proxy_addr(cluster, "peer-1")
    layer = image.largest_layer
    trusts_proxy = ssl.create_default_context(cafile=str(cas["proxy-ca"].cert_path))
    conn = http.client.HTTPSConnection(host, port, context=trusts_proxy, timeout=120)
    conn.set_tunnel("127.0.0.1", tls_registry.port)
    try:
        conn.request("GET", f"/v2/{REPOSITORY}/blobs/{layer.digest}")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200
        assert body == blob_bytes(image, layer.digest)
        assert response.getheader("X-Dragonfly-Task-ID") == layer.digest[7:]
        assert conn.sock is not None
        assert issuer_of(conn.sock.getpeercert(binary_form=True)) == "proxy-ca"
        # A manifest inside the same tunnel goes straight to the registry (whose TLS the proxy verified).
        conn.request("GET", f"/v2/{REPOSITORY}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        response = conn.getresponse()
        assert response.read() == blob_bytes(image, image.manifest.digest)
        assert response.getheader("X-Dragonfly-Task-ID") is None
    finally:
        conn.close()

    # Another host (the same registry by another name) is tunnelled: the client sees the registry's own certificate.
    trusts_registry = ssl.create_default_context(cafile=str(cas["registry-ca"].cert_path))
    conn = http.client.HTTPSConnection(host, port, context=trusts_registry, timeout=60)
    conn.set_tunnel("localhost", tls_registry.port)
    try:
        conn.request("GET", f"/v2/{REPOSITORY}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        response = conn.getresponse()
        assert response.read() == blob_bytes(image, image.manifest.digest)
        assert conn.sock is not None
        assert issuer_of(conn.sock.getpeercert(binary_form=True)) == "registry-ca"
    finally:
        conn.close()
    conn = http.client.HTTPSConnection(host, port, context=trusts_proxy, timeout=60)
    conn.set_tunnel("localhost", tls_registry.port)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/v2/")
    conn.close()


def test_ranged_get_and_requests_that_bypass_the_swarm(
    cluster: LocalCluster, registry: RegistryProcess, image: Image
) -> None:
    addr = proxy_addr(cluster, "peer-3")
    layer = image.layers[1]
    url = f"{registry.url}/v2/{REPOSITORY}/blobs/{layer.digest}"
    response, body = request(addr, "GET", url, {"Range": "bytes=5000000-5000099"})
    assert response.status == 206
    assert body == blob_bytes(image, layer.digest)[5000000:5000100]
    assert response.getheader("Content-Range") == f"bytes 5000000-5000099/{layer.size}"
    assert response.getheader("X-Dragonfly-Task-ID") == layer.digest[7:]

    response, body = request(addr, "GET", url, {"Range": f"bytes={layer.size}-"})
    assert response.status == 416
    assert response.getheader("Content-Range") == f"bytes */{layer.size}"

    served = len(registry.served())
    response, body = request(addr, "HEAD", url)
    assert response.status == 200
    assert body == b""
    assert int(response.getheader("Content-Length") or -1) == layer.size
    assert response.getheader("X-Dragonfly-Task-ID") is None
    response, body = request(addr, "GET", f"{registry.url}/v2/{REPOSITORY}/manifests/latest", {"Accept": OCI_MANIFEST})
    assert body == blob_bytes(image, image.manifest.digest)
    assert response.getheader("X-Dragonfly-Task-ID") is None
    # Both reached the registry themselves.
    methods = [(method, path.split("/")[-2]) for method, path, _status, _sent in registry.served()[served:]]
    assert ("HEAD", "blobs") in methods
    assert ("GET", "manifests") in methods


def test_failures_give_an_error_status_never_a_clean_truncated_body(
    cluster: LocalCluster, registry: RegistryProcess, auth_registry: RegistryProcess, image: Image, tmp_path: Path
) -> None:
    addr = proxy_addr(cluster, "peer-1")
    missing = "sha256:" + "0" * 64
    response, body = request(addr, "GET", f"/v2/{REPOSITORY}/blobs/{missing}")
    assert response.status == 404
    assert response.getheader("X-Dragonfly-Error-Type") == "backend"
    assert b"BLOB_UNKNOWN" in body  # the registry's own answer

    # Registry down (a blob no daemon holds; one this daemon holds is served by digest, see the next test).
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    other = "sha256:" + "1" * 64
    response, body = request(addr, "GET", f"/v2/{REPOSITORY}/blobs/{other}", {"X-Dragonfly-Registry": dead})
    assert response.status == 502
    assert response.getheader("X-Dragonfly-Error-Type") == "backend"
    response, body = request(addr, "GET", f"/v2/{REPOSITORY}/manifests/latest", {"X-Dragonfly-Registry": dead})
    assert response.status == 502
    assert response.getheader("X-Dragonfly-Error-Type") == "proxy"
    assert b"cannot reach the upstream" in body

    # Without credentials the registry's 401 challenge comes back untouched; with them, the blob. (A private
    # image of its own: a blob this daemon already holds is served by digest, see docs/proxy.md.)
    private = build_image(tmp_path / "private", [6 * MIB])
    push(private, registry, "test/private")
    blob = f"/v2/test/private/blobs/{private.layers[0].digest}"
    registry_header = {"X-Dragonfly-Registry": auth_registry.url}
    response, body = request(addr, "GET", blob, registry_header)
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == 'Basic realm="dragonfly-test"'
    assert b"UNAUTHORIZED" in body
    credentials = {**registry_header, "Authorization": "Basic cHVsbGVyOnMzY3JldA=="}  # puller:s3cret
    response, body = request(addr, "GET", blob, credentials)
    assert response.status == 200
    assert body == blob_bytes(private, private.layers[0].digest)


def test_rate_limit_and_a_daemon_killed_mid_stream(
    cluster: LocalCluster, registry: RegistryProcess, image: Image
) -> None:
    cluster.add_daemon(
        "peer-limited",
        {"proxy": {"server": {"requestRateLimit": 3}}, "download": {"bandwidthLimit": "4MiB/s"}},
    )
    addr = proxy_addr(cluster, "peer-limited")
    statuses = [request(addr, "GET", "/v2/")[0].status for _ in range(12)]
    assert statuses[0] == 200
    assert 429 in statuses

    layer = image.largest_layer

    def admitted() -> tuple[http.client.HTTPConnection, http.client.HTTPResponse] | None:
        conn = http.client.HTTPConnection(*addr, timeout=120)
        conn.request("GET", f"/v2/{REPOSITORY}/blobs/{layer.digest}")
        answer = conn.getresponse()
        if answer.status != 429:
            return conn, answer
        answer.read()
        conn.close()
        return None

    # The bucket refills at 3 requests a second.
    conn, response = wait_for(admitted, 10, "the request rate limit to let a request through again", interval=0.2)
    assert response.status == 200
    assert int(response.getheader("Content-Length") or -1) == layer.size
    assert len(response.read(MIB)) == MIB
    cluster.kill("peer-limited")
    # The rest of the body never arrives complete: http.client reports the short body (or the reset).
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    conn.close()


def test_with_the_registry_down_a_blob_is_served_by_the_daemon_that_holds_it_only(
    cluster: LocalCluster, registry: RegistryProcess, tmp_path: Path
) -> None:
    """docs/proxy.md, known limits: by digest without the registry from this daemon's cache; a blob only another
    peer holds needs the registry's answer for its size first, so it fails (502) with the registry down."""
    held = build_image(tmp_path / "held", [2 * MIB])
    push(held, registry, "test/held")
    layer = held.layers[0]
    path = f"/v2/test/held/blobs/{layer.digest}"
    response, body = request(proxy_addr(cluster, "peer-1"), "GET", path)
    assert (response.status, body) == (200, blob_bytes(held, layer.digest))

    dead = {"X-Dragonfly-Registry": f"http://127.0.0.1:{free_ports(1)[0]}"}
    response, body = request(proxy_addr(cluster, "peer-1"), "GET", path, dead)
    assert (response.status, body) == (200, blob_bytes(held, layer.digest))
    assert response.getheader("X-Dragonfly-Task-ID") == layer.digest[7:]
    response, body = request(proxy_addr(cluster, "peer-2"), "GET", path, dead)
    assert response.status == 502
    assert response.getheader("X-Dragonfly-Error-Type") == "backend"


@pytest.mark.parametrize("origin", ["reachable", "gone"])
def test_the_parent_killed_mid_stream_never_yields_a_clean_truncated_body(
    module_dir: Path, registry: RegistryProcess, origin: str, tmp_path: Path
) -> None:
    """A client pulls a large blob through a peer's proxy while that peer's only parent is SIGKILLed.

    A cluster of its own without a seed peer, so the killed peer is the only holder; the child's bandwidth limit
    keeps its download running when the kill lands. With the registry reachable the daemon may fall back to it and
    finish (then the bytes must verify, and the registry counts what it sent). With the origin gone (the child asks
    a second registry process on the same storage, by X-Dragonfly-Registry, killed together with the parent: the
    task is the same, named by the digest) the client must see an error status or an aborted body. Never a success
    status with a short body.
    """
    blob_image = build_image(tmp_path / "layout", [48 * MIB])
    push(blob_image, registry, f"test/parent-{origin}")
    layer = blob_image.layers[0]
    expected = blob_bytes(blob_image, layer.digest)
    path = f"/v2/test/parent-{origin}/blobs/{layer.digest}"
    config = {
        "proxy": {"registryMirror": {"addr": registry.url, "enableTaskIDBasedBlobDigest": True}},
        "scheduler": {"announceInterval": "5s"},
        "download": {"collectedPieceTimeout": "10s"},
    }
    with LocalCluster(
        module_dir / f"parent-killed-{origin}",
        peers=2,
        seed_peer=False,
        daemon_config=config,
        peer_configs={"peer-2": {"download": {"bandwidthLimit": "4MiB/s"}}},
        start_timeout=60,
    ) as small:
        response, body = request(proxy_addr(small, "peer-1"), "GET", path)
        assert response.status == 200
        assert body == expected
        before = registry.blob_bytes()[layer.digest]

        doomed = RegistryProcess(tmp_path / "doomed", storage=registry.storage, name="registry-doomed")
        headers = {}
        if origin == "gone":
            doomed.start()
            doomed.wait_ready(60)
            headers = {"X-Dragonfly-Registry": doomed.url}
        conn = http.client.HTTPConnection(*proxy_addr(small, "peer-2"), timeout=60)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            if response.status != 200:  # an error status is an honest answer
                assert response.status >= 500, response.status
                return
            head = response.read(2 * MIB)
            assert head == expected[: len(head)]
            assert len(head) == 2 * MIB
            small.kill("peer-1")
            if origin == "gone":
                doomed.kill()
            try:
                rest = response.read()
            except (http.client.IncompleteRead, ConnectionError):
                return  # the abort the client can tell from a complete body
            assert origin == "reachable", f"a body of {len(head) + len(rest)} B with the origin gone"
            # Completed after the parent died: only through the origin, and the bytes are the blob's.
            assert hashlib.sha256(head + rest).hexdigest() == layer.digest[7:], "a truncated or corrupt 200 body"
            # The registry logs a request after its last byte left (bounded wait for the line).
            wait_for(
                lambda: registry.blob_bytes()[layer.digest] > before,
                30,
                "the registry to log a GET of the blob (completed without the parent and without the origin?)",
            )
        finally:
            conn.close()
            if doomed.running:
                doomed.kill()


class CountingRelay:
    """A TCP relay in front of an origin that counts the bytes the origin sends (python's http.server counts none)."""

    def __init__(self, target_port: int) -> None:
        self.sent = 0
        self._lock = threading.Lock()
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 20):
                # Counted before it is passed on: once the client holds the bytes, the count includes them.
                if count:
                    with self._lock:
                        self.sent += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # One side ended: end both directions; each socket is the source of one pump, which closes it.
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            source.close()

    def close(self) -> None:
        self._listener.close()


@pytest.mark.slow
def test_an_origin_without_range_support_serves_a_file_once_to_three_peers(
    cluster: LocalCluster, module_dir: Path
) -> None:
    directory = module_dir / "plain-origin"
    directory.mkdir()
    size = 256 * MIB
    digest = hashlib.sha256()
    with open(directory / "big.bin", "wb") as f:
        for _ in range(size // (16 * MIB)):
            chunk = os.urandom(16 * MIB)
            digest.update(chunk)
            f.write(chunk)
    port = free_ports(1)[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    relay = None
    try:
        wait_for(lambda: listening(port), 30, "python -m http.server to listen", interval=0.1)
        relay = CountingRelay(port)
        url = f"http://127.0.0.1:{relay.port}/big.bin"
        outputs = {name: module_dir / f"plain-{name}" for name in cluster.peer_names[:3]}
        with ThreadPoolExecutor(3) as pool:
            results = dict(
                zip(
                    outputs,
                    pool.map(
                        lambda name: run_dfget(
                            cluster.socket_path(name), url, outputs[name], "--digest", f"sha256:{digest.hexdigest()}"
                        ),
                        outputs,
                    ),
                    strict=True,
                )
            )
        for name, result in results.items():
            assert result.ok, f"{name}: {result.stderr}"
        # Once from the origin: each daemon's stat (a GET the origin answers with the whole body, closed after the
        # headers) costs at most some socket buffers.
        assert size <= relay.sent <= 1.05 * size, f"the origin sent {relay.sent} bytes for a {size}-byte file"
    finally:
        if relay is not None:
            relay.close()
        server.terminate()
        server.wait(10)

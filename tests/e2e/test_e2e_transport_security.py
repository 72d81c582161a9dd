"""Attacks on the transport, against a real cluster with mutual TLS on (the launcher's default), issue 9.

- a client without a cluster certificate (plaintext, TLS without a certificate, a certificate of another CA) is
  refused on every inter-host port: scheduler gRPC, each daemon's upload gRPC, each daemon's Vortex port;
- a cluster member cannot take over another host's id (AnnounceHost, AnnouncePeer, DeleteHost, DeleteTask),
  cannot pose as a seed peer, and cannot trigger or delete downloads on a daemon (DownloadTask, DeleteTask);
- the legitimate path keeps working after all of it: a download through the swarm verifies.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import duration_pb2

from dragonfly.cli.cluster import SCHEDULER, SEED_PEER, LocalCluster, OriginProcess, run_dfget
from dragonfly.common import ids, pki, tls
from dragonfly.common.identity import ROLE_PEER, ROLE_SEED_PEER

SIZE = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    with LocalCluster(module_dir / "cluster", peers=2, start_timeout=60, stop_timeout=20) as running:
        yield running


@pytest.fixture(scope="module")
def shared(cluster: LocalCluster, origin: OriginProcess, module_dir: Path) -> tuple[str, str]:
    """A file every peer has downloaded once: (url, sha256). Its pieces are on the seed peer and on peer-1."""
    data = os.urandom(SIZE)
    (origin.directory / "shared.bin").write_bytes(data)
    url = origin.url("shared.bin")
    for name in ("peer-1", "peer-2"):
        result = run_dfget(cluster.socket_path(name), url, module_dir / f"{name}-shared.bin", "--timeout", "120s")
        assert result.ok, result.stderr
    return url, hashlib.sha256(data).hexdigest()


def grpc_ports(cluster: LocalCluster) -> dict[str, str]:
    ports = {SCHEDULER: cluster.scheduler_addr}
    for name in cluster.daemon_names:
        ports[f"{name} upload"] = cluster.process(name).listening["upload"]
    return ports


def stranger_files(tmp_path: Path, name: str) -> tls.TLSFiles:
    """A well-formed peer certificate for ``name`` at 127.0.0.1 from a CA the cluster does not trust."""
    other = pki.create_ca("not the cluster's CA")
    ca_cert, _ = other.write(tmp_path / "other-ca")
    cert, key = pki.issue(other, name, ips=["127.0.0.1"], roles=[ROLE_PEER]).write(tmp_path, name)
    return tls.TLSFiles(ca_cert=str(ca_cert), cert=str(cert), key=str(key))


def call_health(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """Call grpc.health.v1 Check (every one of our gRPC servers has it); return the status code."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_grpc_ports_refuse_clients_without_a_cluster_certificate(cluster: LocalCluster, tmp_path: Path) -> None:
    ca = cluster.ca_cert_path.read_bytes()
    stranger = stranger_files(tmp_path, "stranger")
    _ca, chain, key = stranger.read()
    member = cluster.client_files()
    assert member is not None
    for name, target in grpc_ports(cluster).items():
        # Control: a member's certificate gets an answer on this very port.
        assert call_health(target, tls.channel_credentials(member)) == grpc.StatusCode.OK, name
        assert call_health(target, None) == grpc.StatusCode.UNAVAILABLE, f"{name}: plaintext was answered"
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
        assert call_health(target, anonymous) == grpc.StatusCode.UNAVAILABLE, f"{name}: no client certificate"
        foreign = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)
        assert call_health(target, foreign) == grpc.StatusCode.UNAVAILABLE, f"{name}: a foreign CA's certificate"


def vortex_request(task_id: str, number: int) -> bytes:
    value = task_id.encode() + struct.pack(">I", number)
    return struct.pack(">BBI", 0, 0, len(value)) + value


def read_all(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ssl.SSLError, ConnectionResetError):
        pass
    return data


def test_vortex_ports_refuse_clients_without_a_cluster_certificate(
    cluster: LocalCluster, shared: tuple[str, str], tmp_path: Path
) -> None:
    url, _sha = shared
    request = vortex_request(ids.task_id(url), 0)
    stranger = stranger_files(tmp_path, "stranger")
    foreign = tls.client_ssl_context(tls.TLSFiles(str(cluster.ca_cert_path), stranger.cert, stranger.key))
    for name in (SEED_PEER, "peer-1"):
        host, port = cluster.process(name).listening["vortex"].rsplit(":", 1)
        addr = (host, int(port))
        # Plaintext: the request bytes are not a TLS ClientHello; the server answers with no piece bytes.
        with socket.create_connection(addr, timeout=10) as sock:
            sock.sendall(request)
            answer = read_all(sock)
        assert len(answer) < 1024, f"{name}: {len(answer)} bytes answered to a plaintext request"
        assert b"crc32:" not in answer
        # TLS without a client certificate, and with a foreign CA's: the server ends the handshake with an alert
        # (with TLS 1.3 the client sees it at its first read); not one byte of an answer comes back.
        for label, context in (
            ("no certificate", _anonymous_context(cluster.ca_cert_path)),
            ("foreign CA", foreign),
        ):
            assert tls_exchange(addr, context, request) == b"", f"{name} ({label}) answered"
    # Control: a member's certificate gets the piece.
    member = cluster.client_files("vortex-member", roles=(ROLE_PEER,))
    assert member is not None
    host, port = cluster.process("peer-1").listening["vortex"].rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        tls.client_ssl_context(member).wrap_socket(raw, server_hostname=host) as sock,
    ):
        sock.sendall(request)
        header = sock.recv(6)
    assert header[1] == 1  # a PieceContent frame


def tls_exchange(addr: tuple[str, int], context: ssl.SSLContext, request: bytes) -> bytes:
    """Send ``request`` over TLS and return every byte answered before the connection ends or fails."""
    try:
        with (
            socket.create_connection(addr, timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=addr[0]) as sock,
        ):
            sock.sendall(request)
            return read_all(sock)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return b""


def _anonymous_context(ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca))
    return context


def host_message(name: str, ip: str, port: int, *, seed: bool = False) -> common_pb2.Host:
    return common_pb2.Host(
        id=ids.host_id(ip, name, seed=seed),
        type=1 if seed else 0,
        hostname=name,
        ip=ip,
        port=port,
        download_port=port,
        network=common_pb2.Network(max_tx_bandwidth=10**10),
    )


def scheduler_hosts(cluster: LocalCluster) -> dict[str, common_pb2.Host]:
    with tls.sync_channel(cluster.scheduler_addr, cluster.client_files()) as channel:
        response = scheduler_pb2_grpc.SchedulerStub(channel).ListHosts(scheduler_pb2.ListHostsRequest(), timeout=5)
    return {host.id: host for host in response.hosts}


def expect_denied(call: object, *args: object, **kwargs: object) -> str:
    """Make the call (draining a response stream) and return the details of its PERMISSION_DENIED error."""

    def run() -> None:
        result = call(*args, **kwargs)  # type: ignore[operator]
        for _ in result if hasattr(result, "__iter__") else ():
            pass

    with pytest.raises(grpc.RpcError) as info:
        run()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
    return str(info.value.details())


def test_a_member_cannot_take_over_another_hosts_id(cluster: LocalCluster, shared: tuple[str, str]) -> None:
    url, sha = shared
    victim_id = "127.0.0.1-peer-1"
    before = scheduler_hosts(cluster)[victim_id]
    attacker = cluster.issue_cert("attacker", roles=(ROLE_PEER,))
    with tls.sync_channel(cluster.scheduler_addr, attacker) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        # Its own host is fine ...
        own = host_message("attacker", "127.0.0.1", 40001)
        stub.AnnounceHost(scheduler_pb2.AnnounceHostRequest(host=own), timeout=5)
        # ... peer-1's id (pointing peers and seed triggers at the attacker's port) is not.
        hijack = host_message("peer-1", "127.0.0.1", 40001)
        details = expect_denied(
            stub.AnnounceHost,
            scheduler_pb2.AnnounceHostRequest(host=hijack, interval=duration_pb2.Duration(seconds=300)),
            timeout=5,
        )
        assert "does not own host id '127.0.0.1-peer-1'" in details
        assert "attacker (peer)" in details
        # Its own name with someone else's id, and posing as a seed peer, are refused too.
        mixed = host_message("attacker", "127.0.0.1", 40001)
        mixed.id = victim_id
        expect_denied(stub.AnnounceHost, scheduler_pb2.AnnounceHostRequest(host=mixed), timeout=5)
        fake_seed = host_message("attacker", "127.0.0.1", 40001, seed=True)
        assert "needs the seed-peer role" in expect_denied(
            stub.AnnounceHost, scheduler_pb2.AnnounceHostRequest(host=fake_seed), timeout=5
        )
        # Registering a peer as peer-1 (to claim pieces in its name) and deleting peer-1 are refused.
        register = scheduler_pb2.AnnouncePeerRequest(
            host_id=victim_id,
            task_id=ids.task_id(url),
            peer_id=ids.peer_id("127.0.0.1", "peer-1"),
            register_peer_request=scheduler_pb2.RegisterPeerRequest(download=common_pb2.Download(url=url)),
        )
        expect_denied(stub.AnnouncePeer, iter([register]), timeout=5)
        expect_denied(stub.DeleteHost, scheduler_pb2.DeleteHostRequest(host_id=victim_id), timeout=5)
        expect_denied(
            stub.DeleteTask, scheduler_pb2.DeleteTaskRequest(host_id=victim_id, task_id=ids.task_id(url)), timeout=5
        )
        stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=own.id), timeout=5)
    after = scheduler_hosts(cluster)[victim_id]
    assert (after.port, after.hostname, after.type) == (before.port, before.hostname, before.type)
    # The swarm still works with the real peer-1 as a parent.
    result = run_dfget(cluster.socket_path("peer-2"), url, cluster.workdir / "after-hijack.bin", "--timeout", "60s")
    assert result.ok, result.stderr
    assert hashlib.sha256((cluster.workdir / "after-hijack.bin").read_bytes()).hexdigest() == sha


def test_daemons_take_download_and_delete_orders_only_from_the_scheduler(
    cluster: LocalCluster, origin: OriginProcess, shared: tuple[str, str]
) -> None:
    url, _sha = shared
    (origin.directory / "ordered.bin").write_bytes(os.urandom(1024 * 1024))
    ordered = origin.url("ordered.bin")
    origin.reset_stats()
    target = cluster.process(SEED_PEER).listening["upload"]
    for roles in ((ROLE_PEER,), (ROLE_SEED_PEER,)):
        files = cluster.issue_cert(f"member-{roles[0]}", roles=roles)
        with tls.sync_channel(target, files) as channel:
            stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
            download = common_pb2.Download(url=ordered, need_back_to_source=True)
            details = expect_denied(stub.DownloadTask, dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=10)
            assert "DownloadTask needs a certificate with role scheduler or manager" in details
            expect_denied(stub.DeleteTask, dfdaemon_pb2.DeleteTaskRequest(task_id=ids.task_id(url)), timeout=10)
            # Reading what a parent has is what members do: allowed.
            stub.StatTask(dfdaemon_pb2.StatTaskRequest(task_id=ids.task_id(url)), timeout=10)
    assert origin.bytes_served("ordered.bin") == 0  # no order made the seed fetch anything
    # The scheduler's certificate may order a download (this is how seed peers are triggered).
    scheduler_files = cluster.tls_files(SCHEDULER)
    assert scheduler_files is not None
    with tls.sync_channel(target, scheduler_files) as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
        download = common_pb2.Download(url=ordered, need_back_to_source=True)
        for _ in stub.DownloadTask(dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=60):
            pass
    assert origin.bytes_served("ordered.bin") >= 1024 * 1024

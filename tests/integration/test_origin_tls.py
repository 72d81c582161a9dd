"""Origin TLS against a real https origin process (a CA made here) and real daemons, driven by dfget.

An unknown CA is refused with a message naming the host; ``dfget --ca-cert`` and the daemon's ``backend.caCert``
make it trusted; ``dfget --insecure-skip-verify`` is the explicit way around, with a warning.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dragonfly.cli.cluster import LocalCluster, OriginProcess, run_dfget
from dragonfly.common import pki


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    authority = pki.create_ca("origin test CA")
    authority.write(tmp_path / "ca")
    pki.issue(authority, "origin", ips=["127.0.0.1"]).write(tmp_path / "ca", "origin")
    return tmp_path / "ca"


@pytest.fixture
def https_origin(tmp_path: Path, ca_dir: Path) -> Iterator[OriginProcess]:
    directory = tmp_path / "https-origin"
    directory.mkdir()
    tls = (ca_dir / "origin.crt", ca_dir / "origin.key")
    with OriginProcess(directory, tmp_path / "https-origin.log", tls=tls) as server:
        yield server


def _file(origin: OriginProcess, name: str) -> tuple[str, str]:
    data = os.urandom(256 * 1024)
    (origin.directory / name).write_bytes(data)
    return origin.url(name), hashlib.sha256(data).hexdigest()


def test_origin_certificates_are_verified(
    make_cluster: Callable[..., LocalCluster], https_origin: OriginProcess, ca_dir: Path, tmp_path: Path
) -> None:
    cluster = make_cluster(
        peers=2, seed_peer=False, peer_configs={"peer-2": {"backend": {"caCert": str(ca_dir / "ca.crt")}}}
    )
    socket_1, socket_2 = cluster.socket_path("peer-1"), cluster.socket_path("peer-2")
    assert https_origin.url("x").startswith("https://127.0.0.1:")

    url, _sha = _file(https_origin, "unknown-ca.bin")
    result = run_dfget(socket_1, url, tmp_path / "refused.bin", "--timeout", "60s", timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.error is not None
    assert "the TLS certificate of 127.0.0.1 could not be verified" in result.error, result.stderr
    assert "--ca-cert" in result.error
    assert "ssl:default" not in result.stderr
    assert not (tmp_path / "refused.bin").exists()

    url, sha = _file(https_origin, "ca-cert-flag.bin")
    result = run_dfget(
        socket_1, url, tmp_path / "flag.bin", "--ca-cert", str(ca_dir / "ca.crt"), "--timeout", "60s", timeout=120
    )
    assert result.ok, result.stderr
    assert hashlib.sha256((tmp_path / "flag.bin").read_bytes()).hexdigest() == sha

    url, sha = _file(https_origin, "daemon-ca.bin")
    result = run_dfget(socket_2, url, tmp_path / "daemon-ca.bin", "--timeout", "60s", timeout=120)
    assert result.ok, result.stderr
    assert hashlib.sha256((tmp_path / "daemon-ca.bin").read_bytes()).hexdigest() == sha

    url, sha = _file(https_origin, "insecure.bin")
    result = run_dfget(socket_1, url, tmp_path / "insecure.bin", "--insecure-skip-verify", "--timeout", "60s")
    assert result.ok, result.stderr
    assert "certificate is not verified (--insecure-skip-verify)" in result.stderr
    assert hashlib.sha256((tmp_path / "insecure.bin").read_bytes()).hexdigest() == sha
    assert "asked to skip the verification of the origin's TLS certificate" in cluster.log_path("peer-1").read_text()


def test_a_ca_cert_that_is_not_pem_is_a_usage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    result = run_dfget(str(tmp_path / "none.sock"), "https://example.com/f", tmp_path / "f", "--ca-cert", str(bogus))
    assert result.returncode == 2, result.stderr
    assert "holds no PEM certificate" in result.stderr

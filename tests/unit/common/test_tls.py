"""Certificates, identities, TLS config resolution and SSL contexts (no processes; real TLS over socketpairs)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from dragonfly.cli import certs as certs_cli
from dragonfly.common import pki, tls
from dragonfly.common.config import load_config
from dragonfly.common.errors import ConfigError
from dragonfly.common.identity import identity_from_der, identity_from_pem, identity_of


@pytest.fixture(scope="module")
def authority() -> pki.CertificateAuthority:
    return pki.create_ca("unit CA")


def files_for(tmp_path: Path, ca: pki.CertificateAuthority, name: str, **kwargs: object) -> tls.TLSFiles:
    ca_cert, _ = ca.write(tmp_path / "ca")
    cert, key = pki.issue(ca, name, **kwargs).write(tmp_path, name)  # type: ignore[arg-type]
    return tls.TLSFiles(ca_cert=str(ca_cert), cert=str(cert), key=str(key))


def test_host_certificate_carries_names_ips_roles_and_both_key_usages(authority: pki.CertificateAuthority) -> None:
    host = pki.issue(authority, "peer-1", ips=["10.0.0.5", "::1"], dns_names=["peer-1.example"], roles=["peer"])
    identity = identity_of(host.cert)
    assert identity.common_name == "peer-1"
    assert identity.names == {"peer-1", "peer-1.example"}
    assert identity.ips == {"10.0.0.5", "::1"}
    assert identity.roles == {"peer"}
    usages = host.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usages} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    assert host.cert.issuer == authority.cert.subject
    # PEM and DER parse to the same identity (gRPC gives PEM, ssl gives DER).
    assert identity_from_pem(host.cert_pem) == identity
    from cryptography.hazmat.primitives import serialization

    assert identity_from_der(host.cert.public_bytes(serialization.Encoding.DER)) == identity


def test_host_ids_owned_follow_names_ips_and_the_seed_role(authority: pki.CertificateAuthority) -> None:
    peer = identity_of(pki.issue(authority, "Node-A", ips=["10.0.0.5"], roles=["peer"]).cert)
    assert peer.owns_host_id("10.0.0.5-node-a")
    assert peer.owns_host_id("10.0.0.5-Node-A")  # DNS names compare case-insensitively
    assert not peer.owns_host_id("10.0.0.5-node-a-seed")  # a seed id needs the seed-peer role
    assert not peer.owns_host_id("10.0.0.6-node-a")
    assert not peer.owns_host_id("10.0.0.5-node-b")
    assert not peer.owns_host_id("node-a")
    seed = identity_of(pki.issue(authority, "seed", ips=["10.0.0.9", "fe80::1"], roles=["seed-peer"]).cert)
    assert seed.owns_host_id("10.0.0.9-seed-seed")
    assert seed.owns_host_id("fe80:0:0::1-seed")  # IPs compare in canonical form
    assert seed.has_role("seed-peer")
    assert not seed.has_role("scheduler")


def test_unknown_roles_are_refused_and_foreign_ous_ignored(authority: pki.CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="unknown role"):
        pki.issue(authority, "x", ips=["127.0.0.1"], roles=["root"])
    # A certificate from another PKI with unrelated OUs has no role here.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "engineering"),
            x509.NameAttribute(NameOID.COMMON_NAME, "elsewhere"),
        ]
    )
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    identity = identity_of(cert)
    assert identity.roles == frozenset()
    assert identity.names == {"elsewhere"}
    assert not identity.host_ids


def test_key_files_are_private(tmp_path: Path, authority: pki.CertificateAuthority) -> None:
    (tmp_path / "ca.key").write_text("old")
    (tmp_path / "ca.key").chmod(0o644)
    _cert, key = authority.write(tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    assert pki.CertificateAuthority.load(tmp_path / "ca.crt", key).cert == authority.cert


def test_security_section_resolves_per_section_files_over_the_defaults() -> None:
    defaults = tls.SecurityConfig(ca_cert="/ca", cert="/host.crt", key="/host.key")
    assert defaults.files(None, "x") == tls.TLSFiles("/ca", "/host.crt", "/host.key")
    own = tls.TLSFilesConfig(cert="/server.crt", key="/server.key")
    assert defaults.files(own, "x") == tls.TLSFiles("/ca", "/server.crt", "/server.key")
    assert tls.SecurityConfig(enable=False).files(own, "x") is None
    assert tls.SecurityConfig(tls_policy="default").files(own, "x") is None
    with pytest.raises(ConfigError, match=r"upload\.server: .*caCert, cert, key is not set.*security\.enable: false"):
        tls.SecurityConfig().files(None, "upload.server")


@pytest.mark.parametrize(
    ("policy", "message"), [("prefer", "'prefer' .* is not supported"), ("sometimes", "must be 'force' or 'default'")]
)
def test_unsupported_tls_policies_are_config_errors(tmp_path: Path, policy: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"tlsPolicy: {policy}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tls.SecurityConfig, path)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> tuple[bytes | None, str]:
    """Run one TLS handshake over a socketpair; return the client cert the server saw (DER) and any error."""
    a, b = socket.socketpair()
    seen: list[bytes | None] = []
    errors: list[str] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as conn:
                seen.append(conn.getpeercert(binary_form=True))
                conn.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(f"server: {exc}")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b, server_hostname=server_hostname) as conn:
            conn.recv(2)
    except (ssl.SSLError, OSError) as exc:
        errors.append(f"client: {exc}")
    thread.join(10)
    return (seen[0] if seen else None), "; ".join(errors)


def test_ssl_contexts_do_mutual_tls_and_check_the_server_ip(
    tmp_path: Path, authority: pki.CertificateAuthority
) -> None:
    server_files = files_for(tmp_path, authority, "parent", ips=["127.0.0.1"], roles=["peer"])
    client_files = files_for(tmp_path, authority, "child", ips=["127.0.0.2"], roles=["peer"])
    server = tls.server_ssl_context(server_files)
    client = tls.client_ssl_context(client_files)

    der, error = _handshake(server, client, "127.0.0.1")
    assert not error
    assert der is not None
    assert identity_from_der(der).names == {"child"}

    # The server's certificate is not for 127.0.0.9: the client refuses it.
    _der, error = _handshake(server, client, "127.0.0.9")
    assert "client:" in error
    assert "IP address mismatch" in error

    # A client without a certificate is refused by the server.
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(server_files.ca_cert)
    der, error = _handshake(server, anonymous, "127.0.0.1")
    assert der is None
    assert error

    # A client whose certificate comes from another CA is refused too.
    stranger = files_for(tmp_path / "other", pki.create_ca("other"), "child", ips=["127.0.0.2"], roles=["peer"])
    other = tls.client_ssl_context(tls.TLSFiles(server_files.ca_cert, stranger.cert, stranger.key))
    der, error = _handshake(server, other, "127.0.0.1")
    assert der is None
    assert "server:" in error


def test_a_server_context_may_leave_client_certificates_optional(
    tmp_path: Path, authority: pki.CertificateAuthority
) -> None:
    server_files = files_for(tmp_path, authority, "manager", ips=["127.0.0.1"], roles=["manager"])
    server = tls.server_ssl_context(server_files, require_client_cert=False)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(server_files.ca_cert)
    der, error = _handshake(server, anonymous, "127.0.0.1")
    assert not error
    assert der is None  # served, and the server knows nobody presented a certificate


def test_unreadable_tls_files_are_config_errors(tmp_path: Path) -> None:
    missing = tls.TLSFiles(str(tmp_path / "ca"), str(tmp_path / "c"), str(tmp_path / "k"))
    with pytest.raises(ConfigError, match="cannot load TLS files"):
        tls.server_ssl_context(missing)
    with pytest.raises(ConfigError, match="cannot read caCert"):
        missing.read()


def test_certs_cli_mints_a_ca_and_a_host_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_cli.main(["ca", "--out", str(tmp_path / "ca")]) == 0
    assert certs_cli.main(["ca", "--out", str(tmp_path / "ca")]) == 1  # never overwrites a CA silently
    status = certs_cli.main(
        [
            "issue",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--hostname",
            "seed-1",
            "--ip",
            "10.1.2.3",
            "--role",
            "seed-peer",
            "--out",
            str(tmp_path / "hosts"),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "10.1.2.3-seed-1-seed" in out
    assert "roles       seed-peer" in out
    assert (tmp_path / "hosts" / "seed-1.key").stat().st_mode & 0o777 == 0o600
    assert certs_cli.main(["show", str(tmp_path / "hosts" / "seed-1.crt")]) == 0
    assert "host ids    10.1.2.3-seed-1, 10.1.2.3-seed-1-seed" in capsys.readouterr().out
    bad = ["issue", "--ca-dir", str(tmp_path / "ca"), "--hostname", "x", "--ip", "1.2.3.4", "--role", "admin"]
    assert certs_cli.main([*bad, "--out", str(tmp_path)]) == 1
    assert "unknown role(s) admin" in capsys.readouterr().err

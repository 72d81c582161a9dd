"""Leaf certificates for intercepted hosts: signed by the configured CA, for exactly the host, refused bad CAs."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dragonfly.daemon.proxy.certs import CertificateError, LeafCertificates


def write_ca(directory: Path, *, ca: bool = True) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test proxy CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def handshake(server_context: ssl.SSLContext, ca: Path, host: str) -> x509.Certificate:
    """Do a real TLS handshake against ``server_context`` as a client trusting only ``ca``; return the peer cert."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(ca))
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=host)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der)
    finally:
        server.close()
        await server.wait_closed()


async def test_minted_certificates_verify_against_the_ca(tmp_path: Path) -> None:
    cert_path, key_path = write_ca(tmp_path)
    leaves = LeafCertificates(str(cert_path), str(key_path))
    try:
        for host in ("registry.example", "127.0.0.1"):
            leaf = await handshake(leaves.context(host), cert_path, host)
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if host[0].isdigit():
                assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(host)]
            else:
                assert names.get_values_for_type(x509.DNSName) == [host]
        # A certificate is for its host only: presenting it for another name fails verification.
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(leaves.context("registry.example"), cert_path, "other.example")
        assert leaves.context("registry.example") is leaves.context("registry.example")  # cached
    finally:
        leaves.close()


@pytest.mark.parametrize("problem", ["not a CA", "wrong key", "missing"])
def test_unusable_cas_are_refused(tmp_path: Path, problem: str) -> None:
    cert_path, key_path = write_ca(tmp_path, ca=problem != "not a CA")
    if problem == "wrong key":
        other = tmp_path / "other"
        other.mkdir()
        _, key_path = write_ca(other)
    if problem == "missing":
        key_path = tmp_path / "absent.key"
    with pytest.raises(
        CertificateError,
        match={"not a CA": "is not a CA", "wrong key": "does not belong", "missing": "cannot read"}[problem],
    ):
        LeafCertificates(str(cert_path), str(key_path))

"""Mint a cluster CA and per-host certificates (``dragonfly certs``, the launcher, tests).

A host certificate says who the host is, in the form every component checks (``docs/security.md``):

- subject CN and a DNS SAN: the host's name (``host.hostname`` of a dfdaemon, the scheduler's host name);
- IP SANs: every address the host is reached at (``host.ip``; the scheduler's advertised IP);
- subject OU, one per role: ``scheduler``, ``seed-peer``, ``peer``, ``manager`` (see ``dragonfly.common.identity``);
- extended key usage serverAuth and clientAuth: every component is both a server and a client of others.

Keys are ECDSA P-256: cheap handshakes, and accepted by Dragonfly's Go and Rust components. Private keys are
written mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The organisation every certificate minted here carries (informational; roles are in OU).
ORGANIZATION = "dragonfly"
DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 365
# Clock skew between hosts must not make a fresh certificate "not yet valid".
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``ca.crt`` and ``ca.key`` (0600) into ``directory``; return their paths."""
        return _write_pair(Path(directory), "ca", self.cert_pem, self.key_pem)

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> CertificateAuthority:
        """Load a CA from PEM files (the key must be an EC key, as ``create_ca`` makes)."""
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: the CA key must be an EC private key")
        return cls(cert=cert, key=key)


@dataclass(frozen=True, slots=True)
class HostCertificate:
    """A leaf certificate, its key, and the CA that signed it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
        """Write ``<name>.crt`` and ``<name>.key`` (0600) into ``directory``; return their paths."""
        return _write_pair(Path(directory), name, self.cert_pem, self.key_pem)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_pair(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert_pem)
    # 0600 before the first byte is written, also when the file existed with other permissions.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    return cert_path, key_path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(common_name: str = "dragonfly cluster CA", *, days: int = DEFAULT_CA_DAYS) -> CertificateAuthority:
    """Return a new self-signed CA (path length 0: it signs host certificates only)."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def issue(
    ca: CertificateAuthority,
    hostname: str,
    *,
    ips: Iterable[str] = (),
    dns_names: Iterable[str] = (),
    roles: Iterable[str] = (),
    days: int = DEFAULT_CERT_DAYS,
) -> HostCertificate:
    """Return a certificate for ``hostname`` reachable at ``ips``, with ``roles`` (OU), signed by ``ca``."""
    from dragonfly.common.identity import ROLES

    if not hostname:
        raise ValueError("hostname must not be empty")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    role_list = list(dict.fromkeys(roles))
    unknown = [r for r in role_list if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(unknown)}: use {', '.join(ROLES)}")
    addresses = [ipaddress.ip_address(ip) for ip in dict.fromkeys(ips)]
    names = list(dict.fromkeys([hostname, *dns_names]))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            *(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role) for role in role_list),
            x509.NameAttribute(NameOID.COMMON_NAME, hostname),
        ]
    )
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    san += [x509.IPAddress(address) for address in addresses]
    now = _now()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return HostCertificate(cert=cert, key=key)

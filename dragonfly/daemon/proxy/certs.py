"""Certificates for intercepted HTTPS hosts, minted on demand and signed by the operator's CA (docs/proxy.md).

All CA handling of the proxy is here. The CA certificate and key come from ``proxy.server.caCert/caKey`` (PEM);
the CA must be trusted by the clients (containerd ``ca`` in hosts.toml, Docker's certs.d, the system store). Each
intercepted host gets a leaf certificate for exactly its name (a DNS name or an IP address), valid for a few days
and cached until shortly before it expires. All leaves share one P-256 key made at start-up, which never leaves the
process's memory except in a private temporary directory that ``ssl`` needs to load it from.

Why not ``dragonfly.common.pki``: that module mints the cluster's own identities (an EC CA it made, long-lived
certificates with roles and clientAuth for mutual TLS between components). Here the CA is the operator's, often
RSA, and the leaves are short-lived, serverAuth only and impersonate a third-party host for local clients.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import ssl
import tempfile
import threading
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAF_VALIDITY = datetime.timedelta(days=7)
# A leaf is replaced this long before it expires, so no handshake ever presents an expiring certificate.
_RENEW_BEFORE = datetime.timedelta(days=1)
# Clocks of clients may lag a little behind ours.
_BACKDATE = datetime.timedelta(hours=1)
_CACHE_CAPACITY = 256


class CertificateError(ValueError):
    """The configured CA cannot be used to sign certificates."""


def load_ca(cert_path: str, key_path: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    """Load and check a CA certificate and its private key (PEM)."""
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as exc:
        raise CertificateError(f"cannot read the proxy CA: {exc.strerror or exc}: {exc.filename}") from None
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"cannot load the proxy CA from {cert_path} and {key_path}: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(f"the proxy CA key {key_path} must be an RSA or EC key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertificateError(f"the proxy CA key {key_path} does not belong to the certificate {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertificateError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE is required)")
    return cert, key


def _subject_alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


class LeafCertificates:
    """Server-side SSL contexts for intercepted hosts, one per host name, signed by the CA."""

    def __init__(self, ca_cert_path: str, ca_key_path: str) -> None:
        self._ca_cert, self._ca_key = load_ca(ca_cert_path, ca_key_path)
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._dir = tempfile.mkdtemp(prefix="dragonfly-proxy-certs-")
        os.chmod(self._dir, 0o700)
        self._key_path = os.path.join(self._dir, "leaf.key")
        fd = os.open(self._key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                self._leaf_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def context(self, host: str) -> ssl.SSLContext:
        """Return the server SSL context presenting a certificate for ``host`` (minted on first use)."""
        now = datetime.datetime.now(datetime.UTC)
        with self._lock:
            entry = self._contexts.get(host)
            if entry is not None and entry[1] - _RENEW_BEFORE > now:
                self._contexts.move_to_end(host)
                return entry[0]
            context, expires = self._mint(host, now)
            self._contexts[host] = (context, expires)
            while len(self._contexts) > _CACHE_CAPACITY:
                self._contexts.popitem(last=False)
            return context

    def certificate_pem(self, host: str) -> bytes:
        """Return the PEM certificate (leaf then CA) presented for ``host`` (minting it if needed)."""
        self.context(host)
        with open(self._chain_path(host), "rb") as f:
            return f.read()

    def _chain_path(self, host: str) -> str:
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
        return os.path.join(self._dir, f"{safe}.pem")

    def _mint(self, host: str, now: datetime.datetime) -> tuple[ssl.SSLContext, datetime.datetime]:
        expires = min(now + LEAF_VALIDITY, self._ca_cert.not_valid_after_utc)
        ca_public = self._ca_cert.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._ca_cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(expires)
            .add_extension(x509.SubjectAlternativeName([_subject_alt_name(host)]), critical=False)
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
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public),  # type: ignore[arg-type]
                critical=False,
            )
        )
        leaf = builder.sign(self._ca_key, hashes.SHA256())
        chain = leaf.public_bytes(serialization.Encoding.PEM) + self._ca_cert.public_bytes(serialization.Encoding.PEM)
        path = self._chain_path(host)
        with open(path, "wb") as f:
            f.write(chain)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Only HTTP/1.1 is spoken inside an intercepted tunnel.
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(path, self._key_path)
        return context, expires

"""Who is on the other end of an mTLS connection, and what it may do (``docs/security.md#identities-and-host-ids``).

An ``Identity`` is read from the peer's verified certificate:

- names: the subject CN and every DNS SAN; IPs: every IP SAN;
- roles: every subject OU that is one of ``ROLES`` (other OUs are ignored).

A host id is ``<ip>-<hostname>`` (``-seed`` for a seed peer, ``dragonfly.common.ids.host_id``). A certificate
owns the ids made of one of its IPs and one of its names, and the ``-seed`` ids only with the ``seed-peer`` role;
the scheduler accepts announcements, peers and deletions of a host only from a certificate that owns its id.
Names compare case-insensitively (DNS names do), IPs in canonical form.

``Caller`` wraps the identity of one gRPC call for the servers: ``None`` identity means the server runs in
explicit plaintext mode (``security.enable: false``), where nothing can be checked and everything is allowed.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ROLE_SCHEDULER = "scheduler"
ROLE_SEED_PEER = "seed-peer"
ROLE_PEER = "peer"
ROLE_MANAGER = "manager"
#: Every role a certificate can carry (subject OU).
ROLES = (ROLE_SCHEDULER, ROLE_SEED_PEER, ROLE_PEER, ROLE_MANAGER)
#: Roles that run a dfdaemon and so announce a host of their own.
HOST_ROLES = frozenset((ROLE_PEER, ROLE_SEED_PEER))
_SEED_SUFFIX = "-seed"


def canonical_ip(text: str) -> str:
    """Return the canonical text of an IP address (IPv6 compressed), or ``text`` unchanged if it is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


@dataclass(frozen=True)  # not slotted: cached_property needs the instance __dict__
class Identity:
    """The names, IPs and roles of one verified certificate."""

    common_name: str
    names: frozenset[str]
    ips: frozenset[str]
    roles: frozenset[str]

    def has_role(self, *roles: str) -> bool:
        """Return whether the certificate carries any of ``roles``."""
        return not self.roles.isdisjoint(roles)

    def owns_name(self, hostname: str) -> bool:
        return hostname.lower() in self.names

    def owns_ip(self, ip: str) -> bool:
        return canonical_ip(ip) in self.ips

    @functools.cached_property
    def host_ids(self) -> frozenset[str]:
        """Return every host id this certificate owns (lower-cased)."""
        plain = {f"{ip}-{name}" for ip in self.ips for name in self.names}
        if ROLE_SEED_PEER in self.roles:
            return frozenset(plain | {f"{host_id}{_SEED_SUFFIX}" for host_id in plain})
        return frozenset(plain)

    def owns_host_id(self, host_id: str) -> bool:
        """Return whether ``host_id`` is ``<ip>-<name>[-seed]`` for an IP and a name of this certificate."""
        ip, sep, rest = host_id.partition("-")
        return bool(sep) and f"{canonical_ip(ip)}-{rest}".lower() in self.host_ids

    def describe(self) -> str:
        """Return a short text for logs and errors: ``CN (roles)``."""
        return f"{self.common_name} ({', '.join(sorted(self.roles)) or 'no role'})"


def identity_of(cert: Any) -> Identity:
    """Return the identity of a ``cryptography`` certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    def texts(oid: x509.ObjectIdentifier) -> list[str]:
        return [str(attr.value) for attr in cert.subject.get_attributes_for_oid(oid)]

    common_names = texts(NameOID.COMMON_NAME)
    names = {name.lower() for name in common_names}
    ips: set[str] = set()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names.update(name.lower() for name in san.get_values_for_type(x509.DNSName))
        ips.update(str(address) for address in san.get_values_for_type(x509.IPAddress))
    roles = frozenset(role for role in texts(NameOID.ORGANIZATIONAL_UNIT_NAME) if role in ROLES)
    return Identity(
        common_name=common_names[0] if common_names else "",
        names=frozenset(names),
        ips=frozenset(ips),
        roles=roles,
    )


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> Identity:
    """Return the identity of a PEM certificate (cached: every call on a connection presents the same one)."""
    from cryptography import x509

    return identity_of(x509.load_pem_x509_certificate(pem))


@functools.lru_cache(maxsize=1024)
def identity_from_der(der: bytes) -> Identity:
    """Return the identity of a DER certificate (what ``ssl.SSLSocket.getpeercert(True)`` returns)."""
    from cryptography import x509

    return identity_of(x509.load_der_x509_certificate(der))


def grpc_identity(context: Any) -> Identity | None:
    """Return the verified client identity of a gRPC call, or None on a plaintext connection."""
    auth = context.auth_context()
    pems: Iterable[bytes] = auth.get("x509_pem_cert") or ()
    for pem in pems:
        return identity_from_pem(bytes(pem))
    return None

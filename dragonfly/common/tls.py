"""Mutual TLS for every component: config sections, SSL contexts, gRPC credentials (``docs/security.md``).

Config follows Dragonfly's shape. A top-level ``security`` section turns TLS on or off for the whole process and
holds the default files; each server or client section may name its own ``caCert``/``cert``/``key`` (Dragonfly's
keys: dfdaemon ``upload.server``, ``upload.client``, ``scheduler``, ``manager``, ``storage.server``; scheduler
``server.tls``, ``seedPeer.tls``, ``manager.tls``), which win over the defaults::

    security:
      enable: true          # the default; false (or tlsPolicy: default) = plaintext everywhere, no authentication
      tlsPolicy: force      # force: mutual TLS on every port (the default); default: plaintext
      caCert: /etc/dragonfly/ca.crt
      cert: /etc/dragonfly/host.crt
      key: /etc/dragonfly/host.key

With TLS on, every server requires a client certificate signed by ``caCert`` and every client verifies the
server's certificate against ``caCert`` and the address it dialled (IP or DNS SAN). Dragonfly's ``prefer``
policy (TLS and plaintext on one port) is refused: a port here speaks one or the other, so a misconfigured
client fails at once instead of silently talking plaintext.
"""

from __future__ import annotations

import enum
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dragonfly.common.errors import ConfigError

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)

#: Printed (and logged) by every process that runs without TLS, so nobody does it by accident.
PLAINTEXT_WARNING = (
    "security.enable is false: every port speaks plaintext and no caller is authenticated; "
    "use this only on a trusted network or to talk to components without TLS"
)


class TLSPolicy(enum.Enum):
    """Dragonfly's ``security.tlsPolicy`` values that this implementation supports."""

    FORCE = "force"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class TLSFilesConfig:
    """``caCert``/``cert``/``key`` of one server or client section (PEM file paths); unset keys use ``security``."""

    # PEM file of the CA that signs the cluster's certificates (verifies the other side); unset: security.caCert.
    ca_cert: str | None = None
    # PEM file of this endpoint's certificate (chain); unset: security.cert.
    cert: str | None = None
    # PEM file of this endpoint's private key (keep it 0600); unset: security.key.
    key: str | None = None


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The three PEM files one endpoint uses, all present."""

    ca_cert: str
    cert: str
    key: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (CA, certificate chain, key) bytes; a missing or unreadable file raises ConfigError."""
        out = []
        for name, path in (("caCert", self.ca_cert), ("cert", self.cert), ("key", self.key)):
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise ConfigError(f"cannot read {name} {path}: {exc.strerror or exc}") from None
        return out[0], out[1], out[2]


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """The ``security`` section: TLS on or off for the whole process, and the default PEM files."""

    # Mutual TLS on every port (the secure default); false runs everything in plaintext, without authentication.
    enable: bool = True
    # `force`: mutual TLS (the default); `default`: plaintext, as `enable: false`. Dragonfly's `prefer` is refused.
    tls_policy: str = field(default=TLSPolicy.FORCE.value, metadata={"key": "tlsPolicy"})
    # PEM file of the cluster CA, for every endpoint that does not name its own (`docs/security.md`).
    ca_cert: str | None = None
    # PEM file of this host's certificate: CN/DNS SAN = host name, IP SAN = host IP, OU = role.
    cert: str | None = None
    # PEM file of this host's private key.
    key: str | None = None

    def validate(self) -> None:
        if self.tls_policy == "prefer":
            raise ValueError(
                "tlsPolicy 'prefer' (TLS and plaintext on one port) is not supported: use 'force' (mutual TLS, "
                "the default) or 'default' (plaintext)"
            )
        if self.tls_policy not in {p.value for p in TLSPolicy}:
            raise ValueError(f"tlsPolicy must be 'force' or 'default', got {self.tls_policy!r}")

    @property
    def plaintext(self) -> bool:
        """Return whether the operator asked for plaintext (``enable: false`` or ``tlsPolicy: default``)."""
        return not self.enable or self.tls_policy == TLSPolicy.DEFAULT.value

    def files(self, section: TLSFilesConfig | None, where: str) -> TLSFiles | None:
        """Return the files for one section (its own keys over ``security``'s), or None in plaintext mode.

        ``where`` is the section's dotted key, for the error when a file is missing.
        """
        if self.plaintext:
            return None
        own = section or TLSFilesConfig()
        ca_cert = own.ca_cert or self.ca_cert
        cert = own.cert or self.cert
        key = own.key or self.key
        missing = [name for name, value in (("caCert", ca_cert), ("cert", cert), ("key", key)) if not value]
        if missing:
            raise ConfigError(
                f"mutual TLS is on (security.enable) but {', '.join(missing)} is not set: set "
                f"security.caCert/cert/key (or {where}.caCert/cert/key); `dragonfly certs` mints a CA and host "
                "certificates; security.enable: false runs in plaintext",
                key=where,
            )
        return TLSFiles(ca_cert=str(ca_cert), cert=str(cert), key=str(key))


# SSL contexts (Vortex over TCP; the manager's REST server) -------------------------------------------------------


def _base_context(context: ssl.SSLContext, files: TLSFiles) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
        context.load_verify_locations(cafile=files.ca_cert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS files (caCert {files.ca_cert}, cert {files.cert}, key {files.key}): {exc}"
        ) from None
    return context


def server_ssl_context(files: TLSFiles, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """Return a server context that requires a client certificate signed by the cluster CA.

    ``require_client_cert=False`` is for servers that people reach with browsers or tokens (the manager's REST
    API): the server still proves who it is, and a client certificate, when offered, is still verified.
    """
    context = _base_context(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_ssl_context(files: TLSFiles) -> ssl.SSLContext:
    """Return a client context that presents this host's certificate and checks the server's name or IP."""
    context = _base_context(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), files)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# gRPC ----------------------------------------------------------------------------------------------------------


def server_credentials(files: TLSFiles) -> grpc.ServerCredentials:
    """Return gRPC server credentials that require and verify a client certificate."""
    import grpc

    ca, chain, key = files.read()
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=True)


def channel_credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    """Return gRPC channel credentials: this host's certificate, and the cluster CA to verify servers."""
    import grpc

    ca, chain, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)


def add_port(server: Any, target: str, files: TLSFiles | None) -> int:
    """Bind ``target`` on a grpc(.aio) server with mTLS (or plaintext when ``files`` is None); return the port.

    A bind failure raises OSError naming the address (grpc returns 0 or raises RuntimeError).
    """
    try:
        port: int = (
            server.add_insecure_port(target)
            if files is None
            else server.add_secure_port(target, server_credentials(files))
        )
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {target}: {exc}") from None
    if not port:
        raise OSError(f"cannot listen on {target}")
    return port


def aio_channel(target: str, files: TLSFiles | None, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """Return a grpc.aio channel to ``target``: mTLS with ``files``, plaintext when None."""
    import grpc

    if files is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, channel_credentials(files), options=options)


def sync_channel(target: str, files: TLSFiles | None, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """Return a blocking grpc channel to ``target`` (tools and tests): mTLS with ``files``, plaintext when None."""
    import grpc

    if files is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, channel_credentials(files), options=options)


def warn_plaintext(component: str) -> None:
    """Log, once at start-up, that ``component`` runs without TLS."""
    log.warning("%s: %s", component, PLAINTEXT_WARNING)

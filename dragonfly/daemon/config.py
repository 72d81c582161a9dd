"""dfdaemon configuration: Dragonfly's camelCase keys and defaults
(``docs/reference/protocol.md#dfdaemon-configuration-defaults``).

Only the keys this daemon implements are modelled; any other key is logged and ignored so Dragonfly's own
files load. ``scheduler.addrs`` is the static scheduler list used until dynamic discovery through the manager.
"""

from __future__ import annotations

import grp
import os
import socket
from dataclasses import dataclass, field

from dragonfly.common.config import Duration, Rate, Size, load_config
from dragonfly.common.netguard import parse_networks
from dragonfly.common.tls import SecurityConfig, TLSFiles, TLSFilesConfig
from dragonfly.daemon.proxy.config import ProxyConfig

#: Host.type values announced to the scheduler (Dragonfly's HostType enum).
SEED_PEER_TYPES = {"normal": 0, "super": 1, "strong": 2, "weak": 3}


def _check_port(name: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be between 0 and 65535 (0 picks a free port), got {port}")


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Who this daemon is: ``ip`` is the address peers and schedulers are told to connect to."""

    hostname: str = field(default_factory=socket.gethostname)
    ip: str | None = None
    idc: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class DownloadServerConfig:
    """The local gRPC API (DfdaemonDownload) on a unix socket."""

    socket_path: str = "/var/run/dragonfly/dfdaemon.sock"
    # Owner and group only (docs/security.md#local-users); Dragonfly's 0o777 let any local user make the daemon
    # download and write files.
    socket_mode: int = 0o660
    # Group (name or gid) of the socket: the users who may download through this daemon.
    socket_group: str | None = None

    def validate(self) -> None:
        if not self.socket_path:
            raise ValueError("socketPath must not be empty")
        if not 0 <= self.socket_mode <= 0o777:
            raise ValueError(f"socketMode must be a permission mode such as 0o660, got {self.socket_mode}")
        if self.socket_group is not None:
            socket_gid(self.socket_group)


def socket_gid(group: str) -> int:
    """Return the gid of ``download.server.socketGroup`` (a name or a number); ValueError names the key."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"socketGroup {group!r}: no such group") from None


@dataclass(frozen=True, slots=True)
class SlowPieceConfig:
    """When a piece transfer from a parent is abandoned and the piece asked of another parent.

    See docs/robustness.md#slow-and-silent-parents.
    """

    # share of the median piece rate (this download's, else the daemon's recent one) below which a transfer is
    # abandoned; 0 turns the relative floor off (pieceTimeout still bounds every transfer)
    ratio: float = 0.1
    # no transfer is abandoned for slowness sooner than this
    min_duration: Duration = Duration(2.0)
    # the floor per piece transfer while no piece rate is known yet (a fresh daemon); 0 leaves only pieceTimeout
    initial_floor: Rate = Rate(64 * 1024)

    def validate(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ValueError(f"ratio must be >= 0 and < 1, got {self.ratio}")
        if self.min_duration <= 0:
            raise ValueError(f"minDuration must be > 0, got {self.min_duration}")


@dataclass(frozen=True, slots=True)
class DownloadConfig:
    """How tasks are downloaded: concurrency, timeouts and bandwidth limits."""

    server: DownloadServerConfig = field(default_factory=DownloadServerConfig)
    protocol: str = "tcp"
    bandwidth_limit: Rate = Rate(50e9)
    back_to_source_bandwidth_limit: Rate = Rate(50e9)
    piece_timeout: Duration = Duration(360.0)
    collected_piece_timeout: Duration = Duration(360.0)
    # how long a parent may take to report its first piece on SyncPieces before it is dropped from the round
    first_collected_piece_timeout: Duration = Duration(10.0)
    concurrent_piece_count: int = 8
    # Which digests a piece from a parent must match (docs/security.md#the-childs-policy-downloadpieceverification):
    # "strict" (cryptographic digests vouched for by a seed peer) or "compatible" (Dragonfly's trust in parents).
    piece_verification: str = "strict"
    slow_piece: SlowPieceConfig = field(default_factory=SlowPieceConfig)
    # Persistent cache pieces between our peers (docs/dfcache.md#compression): "zstd" compresses those that shrink,
    # when both ends have the zstandard package; "off" never does. Dragonfly's peers are never sent any.
    persistent_cache_compression: str = "zstd"
    # Hard-link the output of the daemon's own user to the cached file when both are on one file system, copying
    # otherwise (Dragonfly's default): saves a pass over the file and its space. The cached file is read-only and
    # stamped, and is re-checked before every local hit and every piece served, so an edit in place through the
    # link is never served (docs/output-and-cache.md#hard-linked-outputs). false copies (reflinks where possible).
    hard_link_output: bool = True
    # Vortex downloads over mutual TLS through rustls in the native extension (same CA, certificate and checks as
    # Python's ssl; several TLS records per read, no Python per record); false uses Python's ssl. Serving is
    # storage.server.nativeTls (docs/security.md#vortex-over-tls).
    native_tls: bool = True

    def validate(self) -> None:
        if self.persistent_cache_compression not in ("zstd", "off"):
            raise ValueError(
                f"persistentCacheCompression must be zstd or off, got {self.persistent_cache_compression!r}"
            )
        if self.piece_verification not in ("strict", "compatible"):
            raise ValueError(f"pieceVerification must be strict or compatible, got {self.piece_verification!r}")
        if self.protocol != "tcp":
            raise ValueError(f"protocol {self.protocol!r} is not supported: only 'tcp' is")
        if self.concurrent_piece_count < 1:
            raise ValueError(f"concurrentPieceCount must be >= 1, got {self.concurrent_piece_count}")
        if self.piece_timeout <= 0 or self.collected_piece_timeout <= 0 or self.first_collected_piece_timeout <= 0:
            raise ValueError("pieceTimeout, collectedPieceTimeout and firstCollectedPieceTimeout must be > 0")


@dataclass(frozen=True, slots=True)
class UploadServerConfig(TLSFilesConfig):
    """The peer-facing gRPC server (DfdaemonUpload); ``ip`` unset = ``host.ip`` (never every interface by default)."""

    ip: str | None = None
    port: int = 4000

    def validate(self) -> None:
        _check_port("port", self.port)


@dataclass(frozen=True, slots=True)
class UploadConfig:
    """Serving pieces to other peers."""

    server: UploadServerConfig = field(default_factory=UploadServerConfig)
    # Dragonfly's "client configuration for remote peers' upload servers": SyncPieces and Vortex to parents.
    client: TLSFilesConfig = field(default_factory=TLSFilesConfig)
    disable_shared: bool = False
    bandwidth_limit: Rate = Rate(50e9)


@dataclass(frozen=True, slots=True)
class SchedulerConfig(TLSFilesConfig):
    """The schedulers this daemon announces itself to and registers its downloads with."""

    addrs: list[str] = field(default_factory=list)
    announce_interval: Duration = Duration(300.0)
    schedule_timeout: Duration = Duration(3 * 3600.0)
    max_schedule_count: int = 5

    def validate(self) -> None:
        for addr in self.addrs:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"addrs: expected host:port, got {addr!r}")
        if self.announce_interval <= 0 or self.schedule_timeout <= 0:
            raise ValueError("announceInterval and scheduleTimeout must be > 0")
        if self.max_schedule_count < 1:
            raise ValueError(f"maxScheduleCount must be >= 1, got {self.max_schedule_count}")


@dataclass(frozen=True, slots=True)
class ManagerConfig(TLSFilesConfig):
    """The manager this daemon gets its schedulers from (Dragonfly's ``manager.addr``; ``http://`` is accepted)."""

    addr: str = ""
    # Ask for the schedulers of this cluster only; 0: the manager picks by the host's IP, name, IDC and location.
    scheduler_cluster_id: int = field(default=0, metadata={"key": "schedulerClusterID"})
    # How long the first start waits for the manager to name a healthy scheduler before it uses the saved list.
    start_timeout: Duration = Duration(30.0)

    def validate(self) -> None:
        if self.scheduler_cluster_id < 0:
            raise ValueError("schedulerClusterID must be >= 0")


@dataclass(frozen=True, slots=True)
class DynconfigConfig:
    """How often the schedulers are asked of the manager again (Dragonfly: ``dynconfig.refreshInterval``)."""

    refresh_interval: Duration = Duration(60.0)

    def validate(self) -> None:
        if self.refresh_interval <= 0:
            raise ValueError("refreshInterval must be > 0")


@dataclass(frozen=True, slots=True)
class SeedPeerConfig:
    """Seed mode: the scheduler may ask this daemon to fetch tasks from the origin."""

    enable: bool = False
    type: str = "super"
    # The seed-peer cluster this seed peer registers in with the manager, and its keep-alive interval.
    cluster_id: int = field(default=1, metadata={"key": "clusterID"})
    keepalive_interval: Duration = Duration(15.0)

    def validate(self) -> None:
        if self.type not in SEED_PEER_TYPES:
            raise ValueError(f"type must be one of {', '.join(SEED_PEER_TYPES)}, got {self.type!r}")
        if self.cluster_id < 1 or self.keepalive_interval <= 0:
            raise ValueError("clusterID must be >= 1 and keepaliveInterval > 0")


@dataclass(frozen=True, slots=True)
class StorageServerConfig(TLSFilesConfig):
    """The Vortex TCP piece server; ``ip`` unset = ``host.ip``."""

    ip: str | None = None
    tcp_port: int = 4005
    # most connections served at once; beyond it the host holding the most loses one (docs/robustness.md);
    # never more than half the process's open-file limit
    max_connections: int = 1024
    # most connections one remote address may hold; a new one replaces its oldest idle one, else is refused
    max_connections_per_host: int = 64
    # Serve Vortex over mutual TLS through rustls in the native extension (same CA, certificate and checks as
    # Python's ssl; pread, encryption and several TLS records per system call without Python per chunk); false
    # uses Python's ssl (docs/security.md#vortex-over-tls).
    native_tls: bool = True

    def validate(self) -> None:
        _check_port("tcpPort", self.tcp_port)
        if self.max_connections < 1 or self.max_connections_per_host < 1:
            raise ValueError("maxConnections and maxConnectionsPerHost must be >= 1")


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where task content and metadata live."""

    server: StorageServerConfig = field(default_factory=StorageServerConfig)
    dir: str = "/var/lib/dragonfly/"
    keep: bool = False
    write_piece_timeout: Duration = Duration(360.0)
    write_buffer_size: Size = Size(512 * 1024)
    read_buffer_size: Size = Size(512 * 1024)

    def validate(self) -> None:
        if not self.dir:
            raise ValueError("dir must not be empty")
        if self.write_buffer_size < 4096 or self.read_buffer_size < 4096:
            raise ValueError("writeBufferSize and readBufferSize must be at least 4KiB")


@dataclass(frozen=True, slots=True)
class FileBackendConfig:
    """``file://`` sources: local and NAS paths this daemon reads for anyone who asks (docs/backends.md#file)."""

    # Absolute directories whose files (and subdirectories) file:// URLs may name; a path outside them, also through
    # a symlink, is not read here (a seed peer that may read it serves it). Empty: this daemon reads no file:// URL.
    allowed_dirs: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for directory in self.allowed_dirs:
            if not directory.startswith("/"):
                raise ValueError(f"allowedDirs entries must be absolute paths, got {directory!r}")
            if directory.rstrip("/") == "":
                raise ValueError("allowedDirs must not contain / (every file of the host)")


@dataclass(frozen=True, slots=True)
class ObjectStorageBackendConfig:
    """S3-compatible, GCS and Azure Blob sources (docs/backends.md#object-storage)."""

    # How S3-compatible buckets are addressed: path (endpoint/bucket/key), virtualHosted (bucket.endpoint/key) or
    # auto: path for s3:// with an endpoint (MinIO and the like), virtualHosted for AWS itself and for oss, obs, cos
    addressing_style: str = "auto"

    def validate(self) -> None:
        if self.addressing_style not in ("auto", "path", "virtualHosted"):
            raise ValueError(f"addressingStyle must be auto, path or virtualHosted, got {self.addressing_style!r}")


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """Origin (back-to-source) requests."""

    request_header: dict[str, str] = field(default_factory=dict)
    max_retries: int = 1
    enable_cache_temporary_redirect: bool = True
    cache_temporary_redirect_ttl: Duration = field(
        default=Duration(600.0), metadata={"key": "cacheTemporaryRedirectTTL"}
    )
    # PEM bundle of extra CAs trusted for https origins, in addition to the system's (docs/security.md#origin-tls)
    ca_cert: str | None = None
    # Skip the verification of https origins' certificates (logged as a warning at start): any host that can
    # intercept the connection then chooses the bytes
    insecure_skip_verify: bool = False
    file: FileBackendConfig = field(default_factory=FileBackendConfig)
    object_storage: ObjectStorageBackendConfig = field(default_factory=ObjectStorageBackendConfig)

    def validate(self) -> None:
        if self.ca_cert is not None and not os.path.isfile(self.ca_cert):
            raise ValueError(f"caCert: no such file {self.ca_cert!r}")
        if self.max_retries < 0:
            raise ValueError(f"maxRetries must be >= 0, got {self.max_retries}")
        if self.cache_temporary_redirect_ttl <= 0:
            raise ValueError(f"cacheTemporaryRedirectTTL must be > 0, got {self.cache_temporary_redirect_ttl}")


@dataclass(frozen=True, slots=True)
class GCPolicyConfig:
    """When stored tasks are evicted."""

    task_ttl: Duration = field(default=Duration(30 * 86400.0), metadata={"key": "taskTTL"})
    disk_threshold: Size = field(default=Size(0), metadata={"aliases": ("distThreshold",)})
    disk_high_threshold_percent: float = field(default=80.0, metadata={"aliases": ("distHighThresholdPercent",)})
    disk_low_threshold_percent: float = field(default=60.0, metadata={"aliases": ("distLowThresholdPercent",)})
    page_cache_idle_timeout: Duration = Duration(40 * 60.0)

    def validate(self) -> None:
        if self.page_cache_idle_timeout <= 0:
            raise ValueError(f"pageCacheIdleTimeout must be > 0, got {self.page_cache_idle_timeout}")
        if not 0 < self.disk_low_threshold_percent < self.disk_high_threshold_percent <= 100:
            raise ValueError(
                "need 0 < diskLowThresholdPercent < diskHighThresholdPercent <= 100, got "
                f"{self.disk_low_threshold_percent} and {self.disk_high_threshold_percent}"
            )


@dataclass(frozen=True, slots=True)
class GCConfig:
    """Garbage collection of stored tasks."""

    interval: Duration = Duration(900.0)
    policy: GCPolicyConfig = field(default_factory=GCPolicyConfig)

    def validate(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be > 0")


@dataclass(frozen=True, slots=True)
class ServerAddrConfig:
    """An HTTP side server (metrics or health): loopback unless the operator opens it up."""

    ip: str = "127.0.0.1"
    port: int = 0

    def validate(self) -> None:
        _check_port("port", self.port)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics at ``GET /metrics``."""

    server: ServerAddrConfig = field(default_factory=lambda: ServerAddrConfig(port=4002))


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Liveness at ``GET /healthy``."""

    server: ServerAddrConfig = field(default_factory=lambda: ServerAddrConfig(port=4003))


@dataclass(frozen=True, slots=True)
class DaemonSecurityConfig(SecurityConfig):
    """The ``security`` section: TLS of the cluster's ports, and which origin addresses other hosts may have fetched."""

    # Networks (CIDRs or single addresses) that origin requests asked for by other hosts (scheduler-triggered seed
    # downloads, preheat, proxy clients on other hosts) may connect to although they are loopback, link-local,
    # unspecified, multicast or cloud metadata addresses, which are refused otherwise
    # (docs/security.md#origin-addresses)
    allowed_origin_networks: list[str] = field(default_factory=list)

    def validate(self) -> None:
        SecurityConfig.validate(self)
        parse_networks(self.allowed_origin_networks)


@dataclass(frozen=True, slots=True)
class DfdaemonConfig:
    """The whole dfdaemon.yaml."""

    host: HostConfig = field(default_factory=HostConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    dynconfig: DynconfigConfig = field(default_factory=DynconfigConfig)
    seed_peer: SeedPeerConfig = field(default_factory=SeedPeerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    gc: GCConfig = field(default_factory=GCConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    security: DaemonSecurityConfig = field(default_factory=DaemonSecurityConfig)

    def tls(self) -> DaemonTLS:
        """Return the TLS files of each endpoint (all None in plaintext mode); ConfigError if one is missing.

        Not part of loading, so a config can be loaded and inspected before its certificates exist.
        """
        security = self.security
        return DaemonTLS(
            upload_server=security.files(self.upload.server, "upload.server"),
            upload_client=security.files(self.upload.client, "upload.client"),
            scheduler=security.files(self.scheduler, "scheduler"),
            storage_server=security.files(self.storage.server, "storage.server"),
            manager=security.files(self.manager, "manager") if self.manager.addr else None,
        )

    proxy: ProxyConfig = field(default_factory=ProxyConfig)

    @property
    def host_type(self) -> int:
        """Return the Host.type this daemon announces (0 for a normal peer)."""
        return SEED_PEER_TYPES[self.seed_peer.type] if self.seed_peer.enable else 0


@dataclass(frozen=True, slots=True)
class DaemonTLS:
    """The PEM files of each TLS endpoint of a daemon; None where it speaks plaintext."""

    upload_server: TLSFiles | None
    upload_client: TLSFiles | None
    scheduler: TLSFiles | None
    storage_server: TLSFiles | None
    manager: TLSFiles | None = None


def load_dfdaemon_config(
    path: str | os.PathLike[str] | None, *, overrides: dict[str, object] | None = None
) -> DfdaemonConfig:
    """Load and validate a dfdaemon.yaml (None = defaults)."""
    return load_config(DfdaemonConfig, path, overrides=overrides)

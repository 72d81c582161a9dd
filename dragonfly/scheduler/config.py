"""Scheduler configuration (``scheduler.yaml``): Dragonfly's keys and defaults
(``docs/reference/scheduler.md#configuration-defaults``) plus our own.

Keys Dragonfly reads from the manager's dynamic config (candidate/filter parent limits, upload load limits) are
plain keys of the ``scheduler`` section here, because this scheduler runs stand-alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dragonfly.common.config import Duration, load_config
from dragonfly.common.patterns import cached_pattern, compile_pattern
from dragonfly.common.tls import SecurityConfig, TLSFiles, TLSFilesConfig

#: Values of ``scheduler.pieceDigestSources``.
PIECE_DIGEST_SOURCES = ("seedPeers", "backToSourcePeers")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The gRPC listener; ``host`` unset = ``advertiseIP`` if set, else every interface (0.0.0.0)."""

    host: str | None = None
    port: int = 8002
    advertise_ip: str | None = field(default=None, metadata={"key": "advertiseIP"})
    # Concurrent RPCs (streams included) of the whole process; 0 = unlimited, as in Dragonfly.
    max_concurrent_rpcs: int = field(default=0, metadata={"key": "maxConcurrentRPCs"})
    # In-flight RPCs get this long on SIGTERM; open AnnouncePeer streams are cancelled after it.
    graceful_stop_timeout: Duration = Duration(5)
    # Dragonfly's server.tls: caCert/cert/key of the gRPC server (over security's defaults).
    tls: TLSFilesConfig = TLSFilesConfig()

    @property
    def listen_host(self) -> str:
        """Return the address to bind: ``host``, else the advertised IP, else every interface."""
        return self.host or self.advertise_ip or "0.0.0.0"

    def validate(self) -> None:
        """Check the port range."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_concurrent_rpcs < 0:
            raise ValueError("maxConcurrentRPCs must be >= 0 (0 = unlimited)")


@dataclass(frozen=True, slots=True)
class GCConfig:
    """Garbage collection intervals and TTLs (``docs/reference/scheduler.md#garbage-collection``)."""

    piece_download_timeout: Duration = Duration(30 * 60)
    peer_gc_interval: Duration = field(default=Duration(10), metadata={"key": "peerGCInterval"})
    peer_ttl: Duration = field(default=Duration(24 * 3600), metadata={"key": "peerTTL"})
    task_gc_interval: Duration = field(default=Duration(30 * 60), metadata={"key": "taskGCInterval"})
    host_gc_interval: Duration = field(default=Duration(5 * 60), metadata={"key": "hostGCInterval"})
    host_ttl: Duration = field(default=Duration(3600), metadata={"key": "hostTTL"})
    # Freeze what survives CPython's young collections at start and then this often, so its full collections walk
    # only what is new (0: CPython's own schedule; dragonfly/scheduler/pygc.py, bench/RESULTS.md §6).
    python_freeze_interval: Duration = field(default=Duration(1), metadata={"key": "pythonGCFreezeInterval"})
    # With freezing on: unfreeze and collect everything this often; each such collection walks every object (seconds
    # at 100,000 peers on a loaded machine). Cyclic garbage that took in frozen objects waits this long: ended streams
    # and refused calls leave none since 347008c (5 min while they left ~6 KiB a stream); what is left is grpc's
    # per-call handler lookup caught by a freeze mid-call (~0.13 objects per churned peer, bench/RESULTS.md §6).
    python_full_collect_interval: Duration = field(
        default=Duration(3600), metadata={"key": "pythonGCFullCollectInterval"}
    )

    def validate(self) -> None:
        """Intervals must be positive, or the runner would spin."""
        for name in ("peer_gc_interval", "task_gc_interval", "host_gc_interval", "python_full_collect_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.python_freeze_interval < 0:
            raise ValueError("python_freeze_interval must be >= 0 (0: off)")


@dataclass(frozen=True, slots=True)
class EvaluatorConfig:
    """Weights of the parent score; each sub-score is in [0, 1] (see ``scheduling/evaluator.py``)."""

    load_weight: float = 0.45
    piece_weight: float = 0.2
    idc_weight: float = field(default=0.15, metadata={"key": "idcWeight", "aliases": ("IDCWeight",)})
    location_weight: float = 0.1
    host_type_weight: float = 0.1

    def validate(self) -> None:
        """Weights are non-negative and not all zero."""
        weights = (self.load_weight, self.piece_weight, self.idc_weight, self.location_weight, self.host_type_weight)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("evaluator weights must be >= 0 and not all zero")


@dataclass(frozen=True, slots=True)
class BadParentConfig:
    """Abnormal-parent isolation (``docs/reference/scheduler.md#abnormal-parents``, plus cool-down, failure and digest
    rules of our own)."""

    cool_down: Duration = Duration(60)
    # Rolling window of piece costs, per peer and per task (Dragonfly: 2000 samples).
    window_size: int = 2000
    # Below this many samples in the task's window a served cost is not judged against the swarm.
    min_swarm_samples: int = 10
    # Piece failures reported against one parent (by any child) within coolDown that mark it bad.
    failure_threshold: int = 3

    def validate(self) -> None:
        """Window and thresholds are positive."""
        if self.window_size < 2 or self.min_swarm_samples < 2 or self.failure_threshold < 1:
            raise ValueError("windowSize and minSwarmSamples must be >= 2, failureThreshold >= 1")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Scheduling policy (``docs/reference/scheduler.md#scheduling-loop`` to ``#configuration-defaults``)."""

    algorithm: str = "default"
    back_to_source_count: int = 200
    retry_back_to_source_limit: int = 4
    retry_limit: int = 5
    retry_interval: Duration = Duration(0.5)
    candidate_parent_limit: int = 4
    filter_parent_limit: int = 15
    # How long a child waits for a triggered seed peer's first piece before another decision.
    seed_peer_wait_timeout: Duration = Duration(10)
    peer_concurrent_upload_limit: int = 200
    seed_peer_concurrent_upload_limit: int = 2000
    # Piece counts above this are refused at registration: the per-peer bitmap is sized by it.
    max_piece_count: int = 1 << 22
    # Whose back-to-source piece digests are handed to children as trusted (docs/security.md): "seedPeers", or
    # "backToSourcePeers" to also trust normal peers this scheduler itself sent to the origin (weaker).
    piece_digest_sources: str = "seedPeers"
    evaluator: EvaluatorConfig = EvaluatorConfig()
    bad_parent: BadParentConfig = BadParentConfig()
    gc: GCConfig = GCConfig()

    def validate(self) -> None:
        """Mirror Dragonfly's validation, plus ranges the manager enforces for dynamic config."""
        if self.algorithm in ("plugin", "ml"):
            # Dragonfly's other evaluators: accepting them would silently schedule with the default one.
            raise ValueError(f"algorithm {self.algorithm!r} is not supported by this scheduler; use 'default'")
        if self.algorithm != "default":
            raise ValueError(f"algorithm must be 'default', got {self.algorithm!r}")
        if self.back_to_source_count <= 0 or self.retry_back_to_source_limit <= 0:
            raise ValueError("backToSourceCount and retryBackToSourceLimit must be > 0")
        if self.retry_limit <= 0:
            raise ValueError("retryLimit must be > 0")
        if not 1 <= self.candidate_parent_limit <= 20:
            raise ValueError(f"candidateParentLimit must be in 1..20, got {self.candidate_parent_limit}")
        if not 1 <= self.filter_parent_limit <= 1000:
            raise ValueError(f"filterParentLimit must be in 1..1000, got {self.filter_parent_limit}")
        if self.peer_concurrent_upload_limit < 1 or self.seed_peer_concurrent_upload_limit < 1:
            raise ValueError("concurrent upload limits must be >= 1")
        if self.max_piece_count < 1:
            raise ValueError("maxPieceCount must be >= 1")
        if self.piece_digest_sources not in PIECE_DIGEST_SOURCES:
            raise ValueError(
                f"pieceDigestSources must be one of {', '.join(PIECE_DIGEST_SOURCES)}, "
                f"got {self.piece_digest_sources!r}"
            )


@dataclass(frozen=True, slots=True)
class SeedPeerConfig:
    """Seed-peer triggering (``docs/reference/scheduler.md#seed-peers``)."""

    enable: bool = True
    task_download_timeout: Duration = Duration(10 * 3600)
    # Health checks of announced seed hosts (Dragonfly: SeedPeerRefreshInterval 30 s).
    refresh_interval: Duration = Duration(30)
    connect_timeout: Duration = Duration(3)
    # Dragonfly's seedPeer.tls: the client files for seed peers' upload servers.
    tls: TLSFilesConfig = TLSFilesConfig()


@dataclass(frozen=True, slots=True)
class BlockRule:
    """Which tasks a block list matches: by application, URL regex (RE2, searched in the URL) or tag."""

    applications: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Reject URL patterns RE2 does not accept (they are matched against URLs peers send)."""
        for pattern in self.urls:
            try:
                compile_pattern(pattern)
            except ValueError as exc:
                raise ValueError(f"invalid URL regex: {exc}") from None

    def matches(self, url: str, application: str, tag: str) -> bool:
        """Return whether a task with these attributes is blocked."""
        return (
            (bool(application) and application in self.applications)
            or (bool(tag) and tag in self.tags)
            or any(cached_pattern(pattern).search(url) for pattern in self.urls)
        )


@dataclass(frozen=True, slots=True)
class UploadBlockRule(BlockRule):
    """Block-list rule for serving: also by host id or IP of the would-be parent."""

    hosts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BlockListConfig:
    """Manual block list: matching downloads are refused; matching parents are never handed out."""

    download: BlockRule = BlockRule()
    upload: UploadBlockRule = UploadBlockRule()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus endpoint (``/metrics``)."""

    enable: bool = True
    host: str = "127.0.0.1"
    port: int = 8000


@dataclass(frozen=True, slots=True)
class ManagerKeepAliveConfig:
    """How often the scheduler tells the manager it is alive (Dragonfly: 5 s)."""

    interval: Duration = Duration(5)

    def validate(self) -> None:
        """The interval is positive."""
        if self.interval <= 0:
            raise ValueError("interval must be > 0")


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    """The manager this scheduler registers with (``docs/manager.md#grpc-managerv2``); unset addr: stand-alone."""

    # host:port of the manager's gRPC (manager.v2).
    addr: str = ""
    scheduler_cluster_id: int = field(default=1, metadata={"key": "schedulerClusterID"})
    keep_alive: ManagerKeepAliveConfig = ManagerKeepAliveConfig()
    # Dragonfly's manager.tls: client files for the manager (over security's defaults).
    tls: TLSFilesConfig = TLSFilesConfig()

    def validate(self) -> None:
        """The cluster id is positive."""
        if self.scheduler_cluster_id < 1:
            raise ValueError("schedulerClusterID must be >= 1")


@dataclass(frozen=True, slots=True)
class DynConfigConfig:
    """How often the manager's cluster config (parent and load limits, applications) is fetched again."""

    refresh_interval: Duration = Duration(60)

    def validate(self) -> None:
        """The interval is positive."""
        if self.refresh_interval <= 0:
            raise ValueError("refreshInterval must be > 0")


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Where this scheduler is (sent to the manager; Dragonfly's ``host`` section)."""

    idc: str = field(default="", metadata={"key": "idc", "aliases": ("IDC",)})
    location: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole scheduler.yaml."""

    server: ServerConfig = ServerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    seed_peer: SeedPeerConfig = SeedPeerConfig()
    block_list: BlockListConfig = BlockListConfig()
    metrics: MetricsConfig = MetricsConfig()
    security: SecurityConfig = SecurityConfig()
    manager: ManagerConfig = ManagerConfig()
    dyn_config: DynConfigConfig = DynConfigConfig()
    host: HostConfig = HostConfig()

    def tls(self) -> SchedulerTLS:
        """Return the files of the gRPC server and of the seed-peer client (None in plaintext mode).

        A missing file setting raises ConfigError; not part of loading (the CLI checks it before starting).
        """
        return SchedulerTLS(
            server=self.security.files(self.server.tls, "server.tls"),
            seed_peer=self.security.files(self.seed_peer.tls, "seedPeer.tls"),
            manager=self.security.files(self.manager.tls, "manager.tls") if self.manager.addr else None,
        )


@dataclass(frozen=True, slots=True)
class SchedulerTLS:
    """The PEM files of the scheduler's TLS endpoints; None in plaintext mode."""

    server: TLSFiles | None
    seed_peer: TLSFiles | None
    manager: TLSFiles | None = None


def load(path: str | None, *, overrides: dict[str, object] | None = None) -> Config:
    """Load scheduler.yaml (None = defaults) with camelCase overrides."""
    return load_config(Config, path, overrides=overrides)

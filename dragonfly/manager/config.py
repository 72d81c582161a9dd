"""Manager configuration (``manager.yaml``): Dragonfly's key layout where it has one, plus our own keys.

Dragonfly's manager defaults to MySQL; this one defaults to an embedded SQLite file under ``dataDir`` (WAL mode),
so ``dragonfly manager`` runs with no database server. PostgreSQL and MySQL are chosen by ``database.type`` with
Dragonfly's ``database.postgres``/``database.mysql`` sections, or by a full SQLAlchemy URL in ``database.url``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from dragonfly.common.config import Duration, Size, load_config
from dragonfly.common.tls import SecurityConfig, TLSFiles, TLSFilesConfig

#: Values of ``database.type``.
DATABASE_TYPES = ("sqlite", "postgres", "mysql")
#: Environment variable with the root user's initial password (Dragonfly reads the same one).
ROOT_PASSWORD_ENV = "DRAGONFLY_INITIAL_ROOT_PASSWORD"
#: Bounds of ``job.lease``: below a few seconds an event-loop stall or a Redis fail-over costs a manager its jobs;
#: above an hour a dead manager's jobs wait that long for another.
MIN_JOB_LEASE = 5.0
MAX_JOB_LEASE = 3600.0
#: A lease is renewed this many times per lease period, so a renewal or two may fail (a Redis blip) without loss.
JOB_LEASE_RENEWALS = 6


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT or :PORT, got {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class RESTConfig:
    """The REST API, console and health endpoint (Dragonfly: ``server.rest.addr``, default ``:8080``)."""

    addr: str = ":8080"
    # Largest request body accepted; bigger bodies get 413 before they are read.
    max_body_size: Size = Size(1 << 20)
    # Reverse proxies (IPs or CIDRs) whose X-Forwarded-For is believed: the client is the rightmost address not in
    # this list. Empty: the header is ignored and the client is the socket's peer (behind a proxy, then, every
    # client shares the proxy's address and its sign-in limit).
    trusted_proxies: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        """Return the address to bind."""
        return _split_addr(self.addr)[0]

    @property
    def port(self) -> int:
        """Return the port to bind (0 = any free port)."""
        return _split_addr(self.addr)[1]

    def validate(self) -> None:
        """Check the address."""
        _host, port = _split_addr(self.addr)
        if not 0 <= port <= 65535:
            raise ValueError(f"addr port must be in 0..65535, got {port}")
        if self.max_body_size < 1024:
            raise ValueError("maxBodySize must be >= 1KiB")
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry)
            except ValueError as exc:
                raise ValueError(f"trustedProxies: {entry!r} is not an IP address or a CIDR ({exc})") from None


@dataclass(frozen=True, slots=True)
class PortRange:
    """Dragonfly's ``server.grpc.port`` ``{start, end}``; the first free port in the range is used."""

    start: int = 65003
    end: int = 65003

    def validate(self) -> None:
        """Check the range."""
        if not (0 <= self.start <= 65535 and 0 <= self.end <= 65535):
            raise ValueError("grpc port start and end must be in 0..65535")
        if self.end < self.start and self.start != 0:
            raise ValueError(f"grpc port end {self.end} is below start {self.start}")


@dataclass(frozen=True, slots=True)
class GRPCConfig:
    """gRPC ``manager.v2`` for schedulers and daemons."""

    listen_ip: str = field(default="0.0.0.0", metadata={"key": "listenIP"})
    advertise_ip: str | None = field(default=None, metadata={"key": "advertiseIP"})
    port: PortRange = PortRange()
    # caCert/cert/key of the gRPC server (over security's defaults).
    tls: TLSFilesConfig = TLSFilesConfig()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Listeners and the data directory."""

    name: str = "dragonfly-manager"
    # SQLite database, generated secrets and other state; Dragonfly keeps its state in MySQL instead.
    data_dir: str = "/var/lib/dragonfly/manager"
    rest: RESTConfig = RESTConfig()
    grpc: GRPCConfig = GRPCConfig()


@dataclass(frozen=True, slots=True)
class SQLServerConfig:
    """Dragonfly's ``database.mysql`` / ``database.postgres`` sections."""

    user: str = "dragonfly"
    password: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    dbname: str = field(default="manager", metadata={"key": "dbname", "aliases": ("dbName",)})
    # Postgres only: sslmode (disable, require, verify-full, ...).
    ssl_mode: str = field(default="disable", metadata={"key": "sslMode"})
    migrate: bool = True


@dataclass(frozen=True, slots=True)
class SQLiteConfig:
    """The embedded database (our default)."""

    # Database file; relative paths are under server.dataDir.
    path: str = "manager.db"
    # WAL lets readers run while one writer commits; off only for file systems without shared memory (NFS).
    wal: bool = True


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Dragonfly's ``database.redis``: the job queue when more than one manager runs (unset addrs: none)."""

    addrs: list[str] = field(default_factory=list)
    master_name: str = ""
    username: str = ""
    password: str = ""
    db: int = field(default=0, metadata={"key": "db", "aliases": ("DB",)})
    broker_db: int = field(default=1, metadata={"key": "brokerDB"})
    backend_db: int = field(default=2, metadata={"key": "backendDB"})


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Which database holds the manager's records."""

    type: str = "sqlite"
    # A full SQLAlchemy URL (postgresql://…, mysql://…, sqlite:///…) wins over the sections below.
    url: str = ""
    sqlite: SQLiteConfig = SQLiteConfig()
    postgres: SQLServerConfig = SQLServerConfig()
    mysql: SQLServerConfig = SQLServerConfig()
    redis: RedisConfig = RedisConfig()
    # Connections kept open per manager process (not used by SQLite).
    pool_size: int = 10

    def validate(self) -> None:
        """Check the type."""
        if self.type not in DATABASE_TYPES and self.type not in ("mariadb", "postgresql"):
            raise ValueError(f"type must be one of {', '.join(DATABASE_TYPES)}, got {self.type!r}")
        if self.pool_size < 1:
            raise ValueError("poolSize must be >= 1")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Users' sign-in sessions and the root user (Dragonfly: ``auth.jwt``)."""

    # Password of the root user created at the first start; unset: $DRAGONFLY_INITIAL_ROOT_PASSWORD, else a
    # generated one printed once on stderr. Ignored once the root user exists.
    root_password: str = ""
    # How long a sign-in session token is valid (Dragonfly's JWT timeout: 14 days).
    session_ttl: Duration = field(default=Duration(14 * 86400), metadata={"key": "sessionTTL"})
    # Failed sign-ins per client address and user name in signinWindow before further attempts get 429.
    signin_max_failures: int = 5
    # Failed sign-ins per client address, whatever the user name, in signinWindow before further attempts get 429.
    # The client address is the socket's peer, or the one server.rest.trustedProxies vouch for.
    signin_max_failures_per_address: int = 20
    signin_window: Duration = Duration(60)

    def validate(self) -> None:
        """Check lifetimes and limits."""
        if self.session_ttl <= 0 or self.signin_window <= 0:
            raise ValueError("sessionTTL and signinWindow must be > 0")
        if self.signin_max_failures < 1 or self.signin_max_failures_per_address < 1:
            raise ValueError("signinMaxFailures and signinMaxFailuresPerAddress must be >= 1")


@dataclass(frozen=True, slots=True)
class KeepAliveConfig:
    """Liveness of schedulers and seed peers."""

    # A scheduler or seed peer that sent no keep-alive for this long is marked inactive (Dragonfly: 3 × its
    # 5 s interval, checked by an hourly GC; this manager checks every timeout/3). A closed keep-alive stream marks
    # it inactive at once.
    timeout: Duration = Duration(15)

    def validate(self) -> None:
        """Check the timeout."""
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The web console, served at ``/`` from a directory of built assets (index.html and its files)."""

    # Unset: the assets shipped in the package (dragonfly/manager/console), if any.
    dir: str = ""
    enable: bool = True


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics, served on the REST port at ``/metrics`` when enabled."""

    enable: bool = False


@dataclass(frozen=True, slots=True)
class PreheatTLSConfig:
    """How schedulers verify the registries of image preheats (Dragonfly: ``job.preheat.tls``)."""

    # PEM file of CA certificates a registry's certificate may chain to, besides the system's roots (a Harbor with
    # a private CA); sent with each image preheat. Unset: the system's roots only.
    ca_cert: str = ""
    # Do not verify registries' certificates at all (tests only).
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class PreheatJobConfig:
    """Preheat jobs."""

    tls: PreheatTLSConfig = PreheatTLSConfig()


@dataclass(frozen=True, slots=True)
class JobRateLimitConfig:
    """Jobs created in a sliding window, per user and in all, on one manager; past either, creation gets 429."""

    # Jobs one user (a session or any of the user's tokens) may create in window; 0: no limit.
    per_user: int = 100
    # Jobs all users together may create in window; 0: no limit.
    total: int = 300
    window: Duration = Duration(60)

    def validate(self) -> None:
        """Check the limits and the window."""
        if self.per_user < 0 or self.total < 0:
            raise ValueError("perUser and total must be >= 0 (0: no limit)")
        if not 1 <= self.window <= 86400:
            raise ValueError(f"window must be between 1s and 1d, got {self.window:g}s")


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Jobs (preheat): run by workers of each manager, queued in Redis when ``database.redis`` is set."""

    # Jobs one manager runs at once.
    workers: int = 4
    # How many jobs may be created (each one fans out to schedulers and seed peers).
    rate_limit: JobRateLimitConfig = JobRateLimitConfig()
    preheat: PreheatJobConfig = PreheatJobConfig()
    # Key (32 random bytes in base64) sealing pending jobs' registry credentials in the database; the file must
    # exist. Unset: job-secret.key in dataDir, generated (0600) on the first start. Managers sharing a database
    # must use the same key.
    secret_key_file: str = ""
    # Keys used before a rotation: they still open jobs sealed with them, never seal new ones.
    previous_secret_key_files: list[str] = field(default_factory=list)
    # With Redis (several managers): how long a manager holds a job without renewing it (renewed every lease/6).
    # A manager that dies leaves its jobs to the others after this long; one whose process stalls for longer
    # (a long GC pause, a frozen VM) loses its jobs to another manager and stops them.
    lease: Duration = Duration(30)

    def validate(self) -> None:
        """Check the worker count, the lease and the CA and key files."""
        if not 1 <= self.workers <= 256:
            raise ValueError("workers must be between 1 and 256")
        if not MIN_JOB_LEASE <= self.lease <= MAX_JOB_LEASE:
            raise ValueError(f"lease must be between {MIN_JOB_LEASE:g}s and {MAX_JOB_LEASE:g}s, got {self.lease:g}s")
        # A key file named here must exist: generating a fresh key would hide a missing mount from the operator
        # and leave this manager unable to open the other managers' jobs.
        for name, path in [("secretKeyFile", self.secret_key_file)] + [
            ("previousSecretKeyFiles", old) for old in self.previous_secret_key_files
        ]:
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: {path} is not a file (the default, in dataDir, is generated)")
        if self.preheat.tls.ca_cert and not Path(self.preheat.tls.ca_cert).is_file():
            raise ValueError(f"preheat.tls.caCert: {self.preheat.tls.ca_cert} is not a file")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole manager.yaml."""

    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    auth: AuthConfig = AuthConfig()
    keep_alive: KeepAliveConfig = KeepAliveConfig()
    console: ConsoleConfig = ConsoleConfig()
    metrics: MetricsConfig = MetricsConfig()
    security: SecurityConfig = SecurityConfig()
    job: JobConfig = JobConfig()

    @property
    def data_dir(self) -> Path:
        """Return the data directory."""
        return Path(self.server.data_dir)

    def grpc_tls(self) -> TLSFiles | None:
        """Return the gRPC server's PEM files (None in plaintext mode); a missing setting raises ConfigError."""
        return self.security.files(self.server.grpc.tls, "server.grpc.tls")

    def job_secret_key_file(self) -> Path:
        """Return the file of the key that seals jobs' credentials (``job.secretKeyFile``, else in dataDir)."""
        from dragonfly.manager.jobs.sealing import DEFAULT_KEY_FILE

        return Path(self.job.secret_key_file) if self.job.secret_key_file else self.data_dir / DEFAULT_KEY_FILE

    def root_password(self) -> str:
        """Return the operator-set initial root password, or "" to generate one."""
        return self.auth.root_password or os.environ.get(ROOT_PASSWORD_ENV, "")


def load(path: str | None, *, overrides: dict[str, object] | None = None) -> Config:
    """Load manager.yaml (None = defaults) with camelCase overrides."""
    return load_config(Config, path, overrides=overrides)

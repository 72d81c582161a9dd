"""Generate docs/configuration.md from the config dataclasses: every key, its type, default and Dragonfly equivalent.

    .venv/bin/python scripts/config_reference.py            # rewrite docs/configuration.md
    .venv/bin/python scripts/config_reference.py --check    # exit 1 if it is stale (tests/unit/docs does this too)

The keys, types and defaults come from the dataclasses themselves (the same ones ``load_config`` reads); each
key's description is the comment block written right above its field (or on the same line), and a section's
description is its dataclass docstring. So a new config key is documented by writing its comment and running this
script. The Dragonfly column comes from ``DRAGONFLY`` below: add a line there when a key has a Dragonfly
counterpart (facts from docs/reference/protocol.md#dfdaemon-configuration-defaults and
docs/reference/scheduler.md#configuration-defaults).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import importlib
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "configuration.md"
COMMAND = ".venv/bin/python scripts/config_reference.py"

sys.path.insert(0, str(REPO))
from dragonfly.common.config import Duration, Rate, Size, camel_case  # noqa: E402


@dataclass(frozen=True)
class ConfigFile:
    """One binary's YAML file and the dataclass it loads into."""

    title: str
    file: str
    command: str
    module: str
    classes: tuple[str, ...]  # the first of these that the module defines is the root


FILES = (
    ConfigFile("dfdaemon (peer and seed peer)", "dfdaemon.yaml", "dfdaemon --config dfdaemon.yaml",
               "dragonfly.daemon.config", ("DfdaemonConfig",)),
    ConfigFile("scheduler", "scheduler.yaml", "dragonfly scheduler --config scheduler.yaml",
               "dragonfly.scheduler.config", ("Config", "SchedulerConfig")),
    ConfigFile("manager", "manager.yaml", "dragonfly manager --config manager.yaml",
               "dragonfly.manager.config", ("Config", "ManagerConfig")),
)  # fmt: skip

# Dragonfly's key, default and meaning for our keys that have a counterpart: file → our dotted key →
# (Dragonfly key or None for the same key, Dragonfly's default, what the key does). The description is used when the
# code has no comment above the field. Keys absent here are ours alone.
DRAGONFLY: dict[str, dict[str, tuple[str | None, str, str]]] = {
    "dfdaemon.yaml": {
        "host.hostname": (None, "`socket.gethostname()` at start", "the host name announced to schedulers"),
        "host.ip": (None, "unset", "the address peers and schedulers connect to; unset: the first non-loopback IPv4"),
        "host.idc": (None, "unset", "data center, for IDC affinity in parent scoring"),
        "host.location": (None, "unset", "`|`-separated location, for location affinity in parent scoring"),
        "download.server.socketPath": (None, "/var/run/dragonfly/dfdaemon.sock", "the local API (dfget) socket"),
        "download.protocol": (None, "tcp", "piece transfer protocol between peers (only `tcp` here)"),
        "download.bandwidthLimit": (None, "50GB/s", "all piece downloads, from peers and from the origin"),
        "download.backToSourceBandwidthLimit": (None, "50GB/s", "downloads from the origin"),
        "download.pieceTimeout": (None, "6m", "bound on one piece (origin GET or Vortex request)"),
        "download.collectedPieceTimeout": (None, "6m", "longest silence on a parent's SyncPieces stream"),
        "download.concurrentPieceCount": (None, "8", "pieces in flight per task"),
        "upload.server.ip": (None, "0.0.0.0", "listen address of the peer gRPC server"),
        "upload.server.caCert": (None, "unset (no TLS)", ""),
        "upload.server.cert": (None, "unset (no TLS)", ""),
        "upload.server.key": (None, "unset (no TLS)", ""),
        "upload.client.caCert": (None, "unset (no TLS)", ""),
        "upload.client.cert": (None, "unset (no TLS)", ""),
        "upload.client.key": (None, "unset (no TLS)", ""),
        "scheduler.caCert": (None, "unset (no TLS)", ""),
        "scheduler.cert": (None, "unset (no TLS)", ""),
        "scheduler.key": (None, "unset (no TLS)", ""),
        "security.enable": (None, "false (an unused placeholder in Dragonfly's client)", ""),
        "upload.server.port": (None, "4000", "port of the peer gRPC server (SyncPieces, SyncHost, DownloadTask)"),
        "upload.disableShared": (None, "false", "never serve pieces to other peers"),
        "upload.bandwidthLimit": (None, "50GB/s", "serving pieces; also caps the bandwidth announced"),
        "scheduler.addrs": (
            "scheduler.addrs in dynconfig.yaml, or the manager",
            "dragonfly-scheduler:8002",
            "static scheduler list (`host:port`); each task goes to one by consistent hashing",
        ),
        "scheduler.announceInterval": (None, "5m", "period of AnnounceHost"),
        "scheduler.scheduleTimeout": (None, "3h", "bound on one AnnouncePeer conversation"),
        "scheduler.maxScheduleCount": (None, "5", "scheduler answers tolerated before the rest comes from the origin"),
        "seedPeer.enable": (None, "false", "run as a seed peer"),
        "seedPeer.type": (None, "super", "the host type announced when seed mode is on"),
        "storage.server.ip": (None, "0.0.0.0", "listen address of the Vortex piece server"),
        "storage.server.tcpPort": (None, "4005", "port of the Vortex piece server"),
        "storage.dir": (None, "/var/lib/dragonfly/", "task content and metadata"),
        "storage.keep": (None, "false", "keep stored tasks across restarts (false wipes them at start)"),
        "storage.writePieceTimeout": (None, "6m", "bound on writing one piece"),
        "storage.writeBufferSize": (None, "512KiB", "write buffer of piece writes"),
        "storage.readBufferSize": (None, "512KiB", "read buffer of piece reads"),
        "backend.requestHeader": (None, "unset", "headers added to every origin request"),
        "backend.maxRetries": (None, "1", "retries of transient origin errors"),
        "backend.enableCacheTemporaryRedirect": (None, "true", "remember an origin's 307 redirect per URL"),
        "backend.cacheTemporaryRedirectTTL": (None, "10m", "how long a remembered redirect is used"),
        "gc.interval": (None, "15m", "period of the storage garbage collector"),
        "gc.policy.taskTTL": (None, "30d", "tasks not used for this long are deleted"),
        "gc.policy.diskThreshold": (None, "0", "size the percentages apply to; 0: the whole disk"),
        "gc.policy.diskHighThresholdPercent": (None, "80", "eviction starts at this disk usage"),
        "gc.policy.diskLowThresholdPercent": (None, "60", "eviction stops at this disk usage"),
        "gc.policy.pageCacheIdleTimeout": (None, "40m", "finished tasks idle this long leave the page cache"),
        "metrics.server.ip": (None, "0.0.0.0", "listen address of `GET /metrics`"),
        "metrics.server.port": (None, "4002", "port of `GET /metrics`"),
        "health.server.ip": (None, "0.0.0.0", "listen address of `GET /healthy`"),
        "health.server.port": (None, "4003", "port of `GET /healthy`"),
        "proxy.server.ip": (None, "0.0.0.0", "listen address of the HTTP proxy and registry mirror"),
        "proxy.server.port": (None, "4001", "port of the HTTP proxy and registry mirror"),
        "proxy.server.requestRateLimit": (None, "4000", "proxy requests per second; beyond: 429"),
        "proxy.server.caCert": (None, "unset (a throwaway self-signed certificate)", "CA of intercepted hosts"),
        "proxy.server.caKey": (None, "unset", "key of that CA"),
        "proxy.server.basicAuth.username": (None, "unset", "proxy user name"),
        "proxy.server.basicAuth.password": (None, "unset", "proxy password"),
        "proxy.rules": (None, "none (Helm chart: `blobs/sha256.*`)", "URLs that go through the swarm"),
        "proxy.registryMirror.cert": (None, "unset", "extra CA trusted for the registry"),
        "proxy.hijackHTTPS.hosts": (
            "proxy.hijackHTTPS.hosts (Go dfdaemon; the Rust client intercepts every host)",
            "none",
            "HTTPS hosts whose TLS is terminated",
        ),
        "proxy.registryMirror.addr": (None, "https://index.docker.io", "default upstream registry"),
        "proxy.registryMirror.enableTaskIDBasedBlobDigest": (None, "false", "task id = the blob digest"),
        "proxy.disableBackToSource": (None, "false", "proxied downloads never go to the origin"),
        "proxy.prefetch": (None, "false", "on a ranged request, fetch the whole object in the background"),
        "proxy.prefetchBandwidthLimit": (None, "10GB/s", "bandwidth of prefetches"),
        "proxy.readBufferSize": (None, "512KiB", "read buffer when streaming a response"),
    },
    "scheduler.yaml": {
        "server.host": ("server.listenIP", "0.0.0.0", "listen address of the gRPC server"),
        "server.port": (None, "8002", "port of the gRPC server"),
        "server.tls.caCert": (None, "unset (no TLS)", ""),
        "server.tls.cert": (None, "unset (no TLS)", ""),
        "server.tls.key": (None, "unset (no TLS)", ""),
        "seedPeer.tls.caCert": (None, "unset (no TLS)", ""),
        "seedPeer.tls.cert": (None, "unset (no TLS)", ""),
        "seedPeer.tls.key": (None, "unset (no TLS)", ""),
        "server.advertiseIP": (None, "unset", "address announced to the manager; unset: the first local IP"),
        "scheduler.algorithm": (
            None,
            "default",
            "evaluator: `default` only (Dragonfly's `plugin` and `ml` are refused)",
        ),
        "scheduler.backToSourceCount": (None, "200", "peers of one task allowed to fetch from the origin"),
        "scheduler.retryBackToSourceLimit": (None, "4", "scheduling attempts before a peer is sent to the origin"),
        "scheduler.retryLimit": (None, "5", "scheduling attempts before the registration fails"),
        "scheduler.retryInterval": (None, "500ms", "pause between scheduling attempts"),
        "scheduler.candidateParentLimit": (
            "scheduler cluster config candidate_parent_limit (manager)",
            "3",
            "parents handed to a peer at once",
        ),
        "scheduler.filterParentLimit": (
            "scheduler cluster config filter_parent_limit (manager)",
            "15",
            "peers of the task sampled as candidates",
        ),
        "scheduler.peerConcurrentUploadLimit": (
            "scheduler cluster client config load_limit (manager)",
            "200",
            "children a normal host serves at once",
        ),
        "scheduler.seedPeerConcurrentUploadLimit": (
            "seed peer cluster config load_limit (manager)",
            "2000",
            "children a seed host serves at once",
        ),
        "scheduler.gc.pieceDownloadTimeout": (None, "30m", "a running peer without a piece for this long leaves"),
        "scheduler.gc.peerGCInterval": (None, "10s", "period of peer GC"),
        "scheduler.gc.peerTTL": (None, "1d", "an idle peer leaves after this"),
        "scheduler.gc.taskGCInterval": (None, "30m", "period of task GC (tasks without peers are deleted)"),
        "scheduler.gc.hostGCInterval": (None, "5m", "period of host GC"),
        "scheduler.gc.hostTTL": (None, "1h", "peers of a host silent for this long leave"),
        "seedPeer.enable": (None, "true", "trigger seed peers for new tasks"),
        "seedPeer.taskDownloadTimeout": (None, "10h", "bound on a triggered seed download"),
        "seedPeer.refreshInterval": ("built in (SeedPeerRefreshInterval)", "30s", "period of seed health checks"),
        "metrics.enable": (None, "false", "serve Prometheus metrics"),
        "metrics.port": ("metrics.addr", ":8000", "port of `GET /metrics`"),
    },
    "manager.yaml": {
        "job.preheat.tls.caCert": (None, "", "CA certificates of registries with a private CA"),
        "job.preheat.tls.insecureSkipVerify": (None, "false", "skip verifying registries' certificates"),
    },
}


# -- describing types and values ------------------------------------------------------------------------------------


def type_name(tp: Any) -> str:
    """Return how the YAML value of this annotation is written, in words."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in rest) + (", optional" if len(rest) < len(typing.get_args(tp)) else "")
    if origin in (list, tuple):
        (item, *_) = typing.get_args(tp) or (Any,)
        return f"list of {plural(item)}"
    if origin is dict:
        _, value = typing.get_args(tp) or (str, Any)
        return f"map of string to {type_name(value)}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in tp)
    simple = {Size: "size", Duration: "duration", Rate: "rate", bool: "boolean", int: "integer", float: "number"}
    return simple.get(tp, "string" if tp is str else getattr(tp, "__name__", str(tp)))


def plural(tp: Any) -> str:
    name = type_name(tp)
    return {"mapping": "mappings", "string": "strings", "integer": "integers", "number": "numbers"}.get(name, name)


def _exact(value: float, units: list[tuple[str, float]]) -> str | None:
    for unit, scale in units:
        if value >= scale and value % scale == 0:
            amount = value / scale
            return f"{int(amount) if amount == int(amount) else amount}{unit}"
    return None


def format_value(value: Any, *, octal: bool = False) -> str:
    """Render a default the way an operator would write it in YAML (``octal`` for permission modes)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        if float(value) == 0:
            return "0s"
        millis = round(float(value) * 1000)
        if abs(millis / 1000 - float(value)) > 1e-9:
            return f"{float(value)}s"
        units = [("d", 86_400_000.0), ("h", 3_600_000.0), ("m", 60_000.0), ("s", 1000.0), ("ms", 1.0)]
        return _exact(float(millis), units) or f"{float(value)}s"
    if isinstance(value, Rate):
        if float(value) == 0:
            return "0 (unlimited)"
        units = [("GB/s", 1e9), ("MB/s", 1e6), ("GiB/s", 1024.0**3), ("MiB/s", 1024.0**2), ("KiB/s", 1024.0)]
        return _exact(float(value), units) or f"{float(value):g}"
    if isinstance(value, Size):
        if value == 0:
            return "0"
        units = [("TiB", 1024.0**4), ("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0)]
        return _exact(float(value), units) or str(int(value))
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list | tuple | dict):
        return "empty" if not value else str(value)
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    if octal and isinstance(value, int):
        return oct(value)
    return str(value)


# -- comments above fields --------------------------------------------------------------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """Return each field's comment: the ``#`` lines right above its declaration, or the one on its line."""
    try:
        source_lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(source_lines))
    lines = source.splitlines()
    tree = ast.parse(source)
    comments: dict[str, str] = {}
    class_def = tree.body[0]
    assert isinstance(class_def, ast.ClassDef)
    for node in class_def.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        index = node.lineno - 2
        while index >= 0 and lines[index].strip().startswith("#"):
            above.insert(0, lines[index].strip().lstrip("#").strip())
            index -= 1
        line = lines[node.lineno - 1]
        inline = line.split("  # ", 1)[1].strip() if "  # " in line else ""
        text = " ".join(part for part in (*above, inline) if part)
        if text:
            comments[node.target.id] = text
    return comments


def docstring(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split())


# -- walking a config tree --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    aliases: tuple[str, ...]
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class Section:
    key: str
    description: str
    rows: tuple[Row, ...]


def _is_computed(f: dataclasses.Field[Any]) -> Callable[[], Any] | None:
    """Return the default factory when it computes a value at start (e.g. the host name), not a section or list."""
    factory = f.default_factory
    if factory is dataclasses.MISSING:
        return None
    if factory in (list, dict, tuple, set) or (isinstance(factory, type) and dataclasses.is_dataclass(factory)):
        return None
    produced = factory()
    if dataclasses.is_dataclass(produced) or isinstance(produced, list | dict | tuple | set):
        return None
    return factory


def walk(cls: type, instance: Any, prefix: str) -> Iterator[Section]:
    """Yield one section per dataclass in the tree, depth first, in field order."""
    hints = typing.get_type_hints(cls)
    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # inherited fields (e.g. the TLS file keys) keep their base's comments
        if dataclasses.is_dataclass(base):
            comments.update(field_comments(base))
    rows: list[Row] = []
    nested: list[tuple[type, Any, str]] = []
    for f in dataclasses.fields(cls):
        key = f.metadata.get("key", camel_case(f.name))
        aliases = tuple(f.metadata.get("aliases", ()))
        dotted = f"{prefix}.{key}" if prefix else key
        tp = hints[f.name]
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(tp):
            nested.append((typing.cast(type, tp), value, dotted))
            continue
        item = (typing.get_args(tp) or (None,))[0]
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(item):
            nested.append((typing.cast(type, item), typing.cast(type, item)(), f"{dotted}[]"))
        computed = _is_computed(f)
        default = f"`{computed.__module__.lstrip('_')}.{computed.__qualname__}()` at start" if computed else None
        rows.append(
            Row(
                dotted,
                aliases,
                type_name(tp),
                default or f"`{format_value(value, octal=f.name.endswith('_mode'))}`",
                comments.get(f.name, ""),
            )
        )
    yield Section(prefix, docstring(cls), tuple(rows))
    for sub_cls, sub_instance, dotted in nested:
        yield from walk(sub_cls, sub_instance, dotted)


def root_class(config: ConfigFile) -> type | None:
    try:
        module = importlib.import_module(config.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and config.module.startswith(exc.name):
            return None  # that binary does not exist (yet)
        raise
    for name in config.classes:
        cls = getattr(module, name, None)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return cls
    raise SystemExit(f"{config.module} defines none of {', '.join(config.classes)}: update FILES in {__file__}")


# -- rendering --------------------------------------------------------------------------------------------------------


def dragonfly_column(file: str, key: str, default: str) -> str:
    known = DRAGONFLY.get(file, {}).get(key)
    if known is None:
        return "ours"
    their_key, their_default, _ = known
    if their_key is None:
        same = default.strip("`") == their_default.strip("`")
        return "same" if same else f"same key, default `{their_default}`"
    return f"{their_key}, default `{their_default}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the config dataclasses; do not edit by hand. -->",
        "",
        "Every key each binary reads from its YAML file, with its type, default and Dragonfly counterpart. The keys",
        "are camelCase and follow Dragonfly's where the concept exists, so Dragonfly's files load: keys this",
        "implementation does not know are logged and ignored, never fatal. A bad value stops the process with an",
        "error that names the file and the dotted key.",
        "",
        "Value formats:",
        "",
        "- **size**: a byte count, `4MiB`, `1.5GB`, `512KB` or a plain integer (KiB/MiB/GiB are powers of 1024,",
        "  KB/MB/GB of 1000);",
        "- **duration**: `250ms`, `30s`, `5m`, `1h30m`, `2d`, or a number of seconds;",
        "- **rate**: bytes per second, `20MiB/s`, `50GB/s`, or bits with `800Mbit`; `0` means unlimited.",
        "",
        "The **Dragonfly** column says whether Dragonfly's own file has the same key with the same default",
        "(`same`), the same key with another default, a different home for the setting, or nothing of the kind",
        "(`ours`). Dragonfly's defaults are listed in the [protocol reference]"
        "(reference/protocol.md#dfdaemon-configuration-defaults) and the [scheduler reference]"
        "(reference/scheduler.md#configuration-defaults).",
        "",
    ]
    for config in FILES:
        cls = root_class(config)
        if cls is None:
            continue
        out += [f"## {config.file}", "", f"The {config.title}: `{config.command}`.", ""]
        for section in walk(cls, cls(), ""):
            if not section.rows:
                continue
            title = f"`{section.key}`" if section.key else "top level"
            out += [f"### {config.file}: {title}", ""]
            if section.description:
                out += [section.description, ""]
            out += ["| key | type | default | Dragonfly | description |", "|---|---|---|---|---|"]
            for row in section.rows:
                key = f"`{row.key}`" + "".join(f" (alias `{a}`)" for a in row.aliases)
                dragonfly = dragonfly_column(config.file, row.key, row.default)
                description = row.description or DRAGONFLY.get(config.file, {}).get(row.key, (None, "", ""))[2]
                out.append(
                    f"| {key} | {cell(row.type)} | {cell(row.default)} | {cell(dragonfly)} | {cell(description)} |"
                )
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the reference is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where the reference lives (default: %(default)s)")
    args = parser.parse_args()
    output: Path = args.output
    text = render()
    current = output.read_text(encoding="utf-8") if output.exists() else ""
    if args.check:
        if current != text:
            print(f"{output} is stale; regenerate it with: {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

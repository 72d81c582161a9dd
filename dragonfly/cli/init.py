"""``dragonfly init containerd|docker|crio|podman``: point a container runtime at the local dfdaemon proxy.

Like Dragonfly's dfinit (docs/proxy.md), but every write keeps the user's other settings, running it twice changes
nothing, ``--dry-run`` prints the diff instead of writing, and ``--config-dir`` redirects everything (for tests and
non-standard layouts):

- containerd: one ``<config-dir>/<registry>/hosts.toml`` per ``--registry`` (its ``server`` plus our proxy as the
  first mirror host, with ``X-Dragonfly-Registry`` naming the upstream) and a catch-all ``_default/hosts.toml``
  (the proxy then takes the upstream from containerd's ``ns=`` parameter); with the default layout also
  ``config_path`` in ``/etc/containerd/config.toml``;
- docker: ``daemon.json`` gets our proxy in ``registry-mirrors`` (Docker Hub) and as ``proxies.http-proxy`` /
  ``https-proxy`` (every other registry, through CONNECT: tunnelled, or intercepted for ``hijackHTTPS`` hosts);
- crio / podman: ``registries.conf`` gets a ``[[registry]]`` per ``--registry`` with our proxy as a mirror.

The runtime must be restarted (or reloaded) afterwards; the command says so.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomlkit
from tomlkit.items import Table

DEFAULT_PROXY = "http://127.0.0.1:4001"
DOCKER_HUB = "docker.io"
_DOCKER_HUB_SERVER = "https://registry-1.docker.io"
_CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
_CERTS_D = Path("/etc/containerd/certs.d")
_DOCKER_DIR = Path("/etc/docker")
_CONTAINERS_DIR = Path("/etc/containers")
_CAPABILITIES = ["pull", "resolve"]


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file's content before (None: absent) and after."""

    path: Path
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                (self.old or "").splitlines(keepends=True),
                self.new.splitlines(keepends=True),
                fromfile=str(self.path) if self.old is not None else "/dev/null",
                tofile=str(self.path),
            )
        )

    def write(self) -> None:
        """Replace the file atomically, keeping its permissions (0644 for a new file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = self.path.stat().st_mode & 0o7777 if self.path.exists() else 0o644
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.new)
            os.chmod(temp, mode)
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def _toml_change(path: Path, old: str | None, doc: tomlkit.TOMLDocument) -> FileChange:
    """Return the change to ``doc``, or none when ``old`` already holds the same settings (idempotence)."""
    if old is not None and tomlkit.parse(old).unwrap() == doc.unwrap():
        return FileChange(path, old, old)
    text = tomlkit.dumps(doc)
    return FileChange(path, old, text if text.endswith("\n") else text + "\n")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def registry_server(registry: str) -> tuple[str, str]:
    """Return ``(host namespace, server URL)`` of a registry given as ``host[:port]`` or ``http(s)://host[:port]``."""
    text = registry.strip().rstrip("/")
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"registry {registry!r} must be host[:port] or http(s)://host[:port]")
        return parts.netloc, f"{parts.scheme}://{parts.netloc}"
    if not text or "/" in text:
        raise ValueError(f"registry {registry!r} must be host[:port] or http(s)://host[:port]")
    if text == DOCKER_HUB:
        return DOCKER_HUB, _DOCKER_HUB_SERVER
    return text, f"https://{text}"


def _proxy_url(proxy: str) -> str:
    parts = urlsplit(proxy)
    if parts.scheme != "http" or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"--proxy must be http://host:port, got {proxy!r}")
    return f"http://{parts.netloc}"


# ------------------------------------------------------------------------------------------------ containerd


def _hosts_toml(path: Path, proxy: str, server: str | None) -> FileChange:
    old = _read(path)
    doc = tomlkit.parse(old) if old is not None else tomlkit.document()
    if server is not None and "server" not in doc:
        doc["server"] = server
    ours = tomlkit.table()
    ours["capabilities"] = _CAPABILITIES
    if server is not None:
        header = tomlkit.table()
        header["X-Dragonfly-Registry"] = [server]
        ours["header"] = header
    existing = doc.get("host")
    hosts = tomlkit.table(is_super_table=True)
    # Our proxy is the first host: containerd tries them in order and falls back to the server after the last.
    hosts[proxy] = ours
    if isinstance(existing, Table):
        for name, table in existing.items():
            if name != proxy:
                hosts[name] = table
        del doc["host"]
    doc["host"] = hosts
    if old is None:
        doc.body.insert(
            0, (None, tomlkit.comment("Written by `dragonfly init containerd`: pulls try the proxy first."))
        )
    return _toml_change(path, old, doc)


def _containerd_config(path: Path, config_dir: Path) -> FileChange:
    old = _read(path) or ""
    doc = tomlkit.parse(old)
    version = int(doc.get("version", 2))
    plugin = "io.containerd.cri.v1.images" if version >= 3 else "io.containerd.grpc.v1.cri"
    if "version" not in doc:
        doc["version"] = version
    plugins = doc.setdefault("plugins", tomlkit.table(is_super_table=True))
    cri = plugins.setdefault(plugin, tomlkit.table(is_super_table=True))
    registry = cri.setdefault("registry", tomlkit.table())
    if "mirrors" in registry:
        print(
            f"dragonfly init: warning: {path} sets registry.mirrors, which containerd ignores once config_path is "
            "set; move those mirrors into hosts.toml files",
            file=sys.stderr,
        )
    registry["config_path"] = str(config_dir.resolve())
    return _toml_change(path, _read(path), doc)


def containerd_changes(
    config_dir: Path, registries: list[str], proxy: str, *, catch_all: bool, containerd_config: Path | None
) -> list[FileChange]:
    """Return the files ``dragonfly init containerd`` writes."""
    changes = []
    for registry in registries:
        namespace, server = registry_server(registry)
        changes.append(_hosts_toml(config_dir / namespace / "hosts.toml", proxy, server))
    if catch_all:
        changes.append(_hosts_toml(config_dir / "_default" / "hosts.toml", proxy, None))
    if containerd_config is not None:
        changes.append(_containerd_config(containerd_config, config_dir))
    return changes


# ------------------------------------------------------------------------------------------------ docker


def docker_changes(daemon_json: Path, proxy: str, *, proxies: bool) -> list[FileChange]:
    """Return the ``daemon.json`` that sends Docker Hub pulls to the mirror and other registries via the proxy."""
    old = _read(daemon_json)
    try:
        data: dict[str, Any] = json.loads(old) if old and old.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{daemon_json} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{daemon_json} must hold a JSON object")
    mirrors = data.get("registry-mirrors", [])
    if proxy not in mirrors:
        data["registry-mirrors"] = [proxy, *mirrors]
    if proxies:
        section = data.setdefault("proxies", {})
        section["http-proxy"] = proxy
        section["https-proxy"] = proxy
    if old is not None and old.strip() and json.loads(old) == data:
        return [FileChange(daemon_json, old, old)]
    return [FileChange(daemon_json, old, json.dumps(data, indent=2) + "\n")]


# ------------------------------------------------------------------------------------------------ crio, podman


def registries_conf_changes(path: Path, registries: list[str], proxy: str) -> list[FileChange]:
    """Return ``registries.conf`` with our proxy as the first mirror of each registry."""
    old = _read(path)
    doc = tomlkit.parse(old) if old is not None else tomlkit.document()
    mirror_location = urlsplit(proxy).netloc
    entries = doc.get("registry")
    if entries is None:
        entries = tomlkit.aot()
        doc["registry"] = entries
    for registry in registries:
        namespace, _server = registry_server(registry)
        entry = next((e for e in entries if e.get("prefix", e.get("location")) == namespace), None)
        if entry is None:
            entry = tomlkit.table()
            entry["prefix"] = namespace
            entry["location"] = namespace
            entries.append(entry)
        mirrors = entry.get("mirror")
        if mirrors is None:
            mirrors = tomlkit.aot()
            entry["mirror"] = mirrors
        if not any(m.get("location") == mirror_location for m in mirrors):
            ours = tomlkit.table()
            ours["location"] = mirror_location
            ours["insecure"] = True
            mirrors.insert(0, ours)
    return [_toml_change(path, old, doc)]


# ------------------------------------------------------------------------------------------------ command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dragonfly init",
        description="Point a container runtime's registry configuration at the local dfdaemon proxy.",
        epilog="Exit status: 0 on success (also when nothing had to change), 1 when a file cannot be read or "
        "written, 2 for a malformed command line. Restart the runtime afterwards.",
    )
    parser.add_argument("runtime", choices=("containerd", "docker", "crio", "podman"))
    parser.add_argument("--proxy", default=DEFAULT_PROXY, help=f"the dfdaemon proxy (default {DEFAULT_PROXY})")
    parser.add_argument(
        "--registry",
        action="append",
        default=None,
        help="a registry to pull through the proxy, host[:port] or http(s)://host[:port] (repeatable; "
        "default docker.io)",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        help="write here instead of the runtime's directory (containerd: /etc/containerd/certs.d; docker: "
        "/etc/docker; crio/podman: /etc/containers)",
    )
    parser.add_argument(
        "--containerd-config",
        type=Path,
        help="containerd's config.toml to point config_path at the hosts directory (default "
        f"{_CONTAINERD_CONFIG} unless --config-dir is given)",
    )
    parser.add_argument(
        "--no-default", action="store_true", help="containerd: no catch-all _default/hosts.toml for other registries"
    )
    parser.add_argument(
        "--no-proxies", action="store_true", help="docker: only registry-mirrors, no http-proxy/https-proxy"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the diff of every file, write nothing")
    return parser


def plan(args: argparse.Namespace) -> list[FileChange]:
    """Return the file changes the arguments ask for."""
    proxy = _proxy_url(args.proxy)
    registries = args.registry or [DOCKER_HUB]
    if args.runtime == "containerd":
        config_dir = args.config_dir or _CERTS_D
        containerd_config = args.containerd_config or (None if args.config_dir else _CONTAINERD_CONFIG)
        return containerd_changes(
            config_dir, registries, proxy, catch_all=not args.no_default, containerd_config=containerd_config
        )
    if args.runtime == "docker":
        return docker_changes((args.config_dir or _DOCKER_DIR) / "daemon.json", proxy, proxies=not args.no_proxies)
    return registries_conf_changes((args.config_dir or _CONTAINERS_DIR) / "registries.conf", registries, proxy)


def main(argv: list[str] | None = None) -> int:
    """Run ``dragonfly init``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        changes = plan(args)
    except ValueError as exc:
        parser.error(str(exc))
    except (OSError, tomlkit.exceptions.TOMLKitError) as exc:
        print(f"dragonfly init: error: {exc}", file=sys.stderr)
        return 1
    changed = [c for c in changes if c.changed]
    for change in changed:
        if args.dry_run:
            sys.stdout.write(change.diff())
            continue
        try:
            change.write()
        except OSError as exc:
            print(f"dragonfly init: error: cannot write {change.path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"dragonfly init: wrote {change.path}", file=sys.stderr)
    if not changed:
        print(f"dragonfly init: {args.runtime} already points at {args.proxy}; nothing changed", file=sys.stderr)
    elif not args.dry_run:
        print(f"dragonfly init: restart {args.runtime} to apply the changes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

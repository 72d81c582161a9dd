"""A local OCI registry for tests, benchmarks and demos: Debian's ``docker-registry`` plus an image built here.

``build_image`` writes an OCI image layout (uncompressed tar layers of random bytes, a config with their diff ids,
a manifest, ``index.json``) without Docker; ``RegistryProcess`` runs ``docker-registry serve`` on 127.0.0.1 (plain
HTTP, or TLS with a given certificate, optionally with htpasswd basic auth) and counts from its access log the body
bytes it sent per request path, so callers can tell how often each blob left the registry; ``push`` copies a layout
into it with ``skopeo``. Install the tools with ``apt-get install docker-registry skopeo`` (scripts/system-deps.sh).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from dragonfly.cli.cluster import ManagedProcess, ProcessStartError, free_ports

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
# Apache combined log lines of docker-registry: "GET /v2/... HTTP/1.1" 200 12345
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')


@dataclass(frozen=True, slots=True)
class Blob:
    """One blob of an image: digest (``sha256:<hex>``), size and media type."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image written as an OCI layout: its manifest, config and layers."""

    layout: Path
    tag: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def size(self) -> int:
        """Return the bytes of all blobs (what a pull moves)."""
        return self.manifest.size + self.config.size + sum(layer.size for layer in self.layers)

    @property
    def largest_layer(self) -> Blob:
        return max(self.layers, key=lambda layer: layer.size)


def _write_blob(layout: Path, data: bytes, media_type: str) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return Blob(f"sha256:{digest}", len(data), media_type)


def _write_layer(layout: Path, size: int, index: int) -> Blob:
    """Write an uncompressed tar holding one file of ``size`` random bytes; return it as a blob."""
    temp = layout / "blobs" / f"layer-{index}.tmp"
    info = tarfile.TarInfo(f"data/layer-{index}.bin")
    info.size = size
    info.mtime = 0
    with open(temp, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BufferedReader(_RandomReader(size)))
    digest = hashlib.sha256()
    with open(temp, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 1024 * 1024), b""):
            digest.update(chunk)
    total = temp.stat().st_size
    temp.rename(layout / "blobs" / "sha256" / digest.hexdigest())
    return Blob(f"sha256:{digest.hexdigest()}", total, OCI_LAYER)


class _RandomReader(io.RawIOBase):
    """``size`` random bytes as a readable stream (a layer's file)."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._left, 4 * 1024 * 1024)
        if count:
            buffer[:count] = os.urandom(count)
            self._left -= count
        return count


def _write_manifest(
    layout: Path, layer_sizes: list[int], platform: str, first_index: int
) -> tuple[Blob, Blob, tuple[Blob, ...]]:
    """Write the layers, config and manifest of one platform's image; return (manifest, config, layers)."""
    os_name, _, rest = platform.partition("/")
    architecture, _, variant = rest.partition("/")
    layers = tuple(_write_layer(layout, size, first_index + i) for i, size in enumerate(layer_sizes))
    config_doc: dict[str, Any] = {
        "architecture": architecture,
        "os": os_name,
        "config": {},
        # Uncompressed layers: the diff id of each is its own digest.
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }
    if variant:
        config_doc["variant"] = variant
    config = _write_blob(layout, json.dumps(config_doc, sort_keys=True).encode(), OCI_CONFIG)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in layers],
    }
    manifest = _write_blob(layout, json.dumps(manifest_doc, sort_keys=True).encode(), OCI_MANIFEST)
    return manifest, config, layers


def _start_layout(layout: Path) -> None:
    if layout.exists():
        shutil.rmtree(layout)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def _write_index_json(layout: Path, top: Blob, tag: str) -> None:
    entry = {
        "mediaType": top.media_type,
        "digest": top.digest,
        "size": top.size,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def build_image(layout: Path, layer_sizes: list[int], *, tag: str = "latest") -> Image:
    """Write an OCI image layout (linux/amd64) with one layer per size (each a tar of one random file)."""
    _start_layout(layout)
    manifest, config, layers = _write_manifest(layout, layer_sizes, "linux/amd64", 0)
    _write_index_json(layout, manifest, tag)
    return Image(layout, tag, manifest, config, layers)


@dataclass(frozen=True, slots=True)
class MultiPlatformImage:
    """An image index written as an OCI layout: the index blob and one Image per platform (``os/arch[/variant]``)."""

    layout: Path
    tag: str
    index: Blob
    images: dict[str, Image]


def build_multi_platform_image(
    layout: Path, layer_sizes: dict[str, list[int]], *, tag: str = "latest"
) -> MultiPlatformImage:
    """Write an OCI layout holding an image index with one image per platform, each with its own random layers.

    Push it with ``push(..., all_platforms=True)``.
    """
    _start_layout(layout)
    images: dict[str, Image] = {}
    entries = []
    first = 0
    for platform, sizes in layer_sizes.items():
        manifest, config, layers = _write_manifest(layout, sizes, platform, first)
        first += len(sizes)
        images[platform] = Image(layout, tag, manifest, config, layers)
        os_name, _, rest = platform.partition("/")
        architecture, _, variant = rest.partition("/")
        spec = {"os": os_name, "architecture": architecture} | ({"variant": variant} if variant else {})
        entries.append({"mediaType": OCI_MANIFEST, "digest": manifest.digest, "size": manifest.size, "platform": spec})
    index_doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    index = _write_blob(layout, json.dumps(index_doc, sort_keys=True).encode(), OCI_INDEX)
    _write_index_json(layout, index, tag)
    return MultiPlatformImage(layout, tag, index, images)


class RegistryProcess(ManagedProcess):
    """``docker-registry serve`` on 127.0.0.1 with its own config, storage and log (which it counts from)."""

    def __init__(
        self,
        workdir: Path,
        *,
        storage: Path | None = None,
        name: str = "registry",
        tls: tuple[Path, Path] | None = None,
        htpasswd: Path | None = None,
        port: int | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise ProcessStartError("docker-registry is not installed (apt-get install docker-registry)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.storage = storage or workdir / "storage"
        self.port = port or free_ports(1)[0]
        self.tls = tls
        http: dict[str, Any] = {"addr": f"127.0.0.1:{self.port}", "secret": os.urandom(16).hex()}
        if tls is not None:
            http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "formatter": "json"},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": http,
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "dragonfly-test", "path": str(htpasswd)}}
        config_path = workdir / f"{name}.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        super().__init__(
            name, [binary, "serve", str(config_path)], workdir / f"{name}.log", ready_timeout=ready_timeout
        )

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.addr}"

    def wait_ready(self, timeout: float) -> None:
        """Wait until ``GET /v2/`` answers (any status: 401 with auth is an answer)."""
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context(cafile=None)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=context).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                pass
            if not self.running:
                raise ProcessStartError(f"{self.name} exited with status {self.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ProcessStartError(f"{self.name} did not answer within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def served(self) -> list[tuple[str, str, int, int]]:
        """Return ``(method, path, status, body bytes)`` for every request answered so far."""
        result = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_path.read_text("utf-8", "replace").splitlines():
                match = _ACCESS.search(line)
                if match:
                    sent = 0 if match["bytes"] == "-" else int(match["bytes"])
                    result.append((match["method"], match["path"], int(match["status"]), sent))
        return result

    def blob_bytes(self) -> Counter[str]:
        """Return body bytes sent per blob digest (GETs of ``/v2/<repo>/blobs/<digest>``)."""
        counts: Counter[str] = Counter()
        for method, path, _status, sent in self.served():
            if method == "GET" and "/blobs/" in path:
                counts[path.rsplit("/blobs/", 1)[1].split("?")[0]] += sent
        return counts

    def __enter__(self) -> Self:
        super().__enter__()
        return self


def push(
    image: Image | MultiPlatformImage, registry: RegistryProcess, repository: str, *, all_platforms: bool = False
) -> str:
    """Copy ``image`` into ``registry`` as ``repository:tag`` with skopeo; return the reference.

    ``all_platforms`` copies every image of an index (skopeo's ``--all``), not just the local platform's.
    """
    binary = shutil.which("skopeo")
    if binary is None:
        raise ProcessStartError("skopeo is not installed (apt-get install skopeo)")
    reference = f"{registry.addr}/{repository}:{image.tag}"
    subprocess.run(
        [
            binary,
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
            *(["--all"] if all_platforms else []),
            f"oci:{image.layout}:{image.tag}",
            f"docker://{reference}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return reference

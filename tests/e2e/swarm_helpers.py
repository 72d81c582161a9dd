"""Helpers shared by the end-to-end tests: random files, concurrent dfget runs, daemon metrics."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dragonfly.cli.cluster import DfgetResult, LocalCluster, OriginProcess, run_dfget
from dragonfly.cli.up import generate_file

MiB = 1024 * 1024


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def make_file(origin: OriginProcess, name: str, size: int) -> str:
    """Write a random file into the origin's directory and return its sha256."""
    return generate_file(origin.directory / name, size)


def dfget_on(
    cluster: LocalCluster, peer: str, url: str, output: Path, *extra: str, timeout: float = 240
) -> DfgetResult:
    """Run dfget against one daemon of the cluster."""
    return run_dfget(cluster.socket_path(peer), url, output, *extra, timeout=timeout)


@contextlib.contextmanager
def dfget_in_background(
    cluster: LocalCluster, peers: list[str], url: str, out_dir: Path, *extra: str, timeout: float = 240
) -> Iterator[dict[str, Future[DfgetResult]]]:
    """Start dfget on several daemons at once; yield a future per peer (all joined on exit)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(peers)) as pool:
        yield {
            peer: pool.submit(dfget_on, cluster, peer, url, out_dir / peer, *extra, timeout=timeout) for peer in peers
        }


def dfget_all(
    cluster: LocalCluster, peers: list[str], url: str, out_dir: Path, *extra: str, timeout: float = 240
) -> dict[str, DfgetResult]:
    """Run dfget on several daemons at the same time and return every result."""
    with dfget_in_background(cluster, peers, url, out_dir, *extra, timeout=timeout) as futures:
        return {peer: future.result() for peer, future in futures.items()}


def describe(results: dict[str, DfgetResult]) -> str:
    """Summarise results for assertion messages."""
    return "; ".join(
        f"{peer}: exit {r.returncode} in {r.seconds:.1f}s traffic {r.traffic} error {r.error}"
        for peer, r in results.items()
    )


def daemon_metric(cluster: LocalCluster, name: str, metric: str, labels: str = "") -> float:
    """Return one sample of a daemon's Prometheus metrics (0 when absent); ``labels`` like ``kind="x"``."""
    addr = cluster.process(name).listening["metrics"]
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
        text = response.read().decode()
    selector = re.escape(f"{metric}{{{labels}}}" if labels else metric)
    match = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def uploaded_bytes(cluster: LocalCluster, name: str) -> float:
    """Return the piece bytes a daemon has served to other peers, from its Prometheus metrics."""
    return daemon_metric(cluster, name, "dragonfly_client_upload_traffic")


def failures(cluster: LocalCluster, name: str, kind: str) -> float:
    """Return a daemon's failure counter of one kind (dragonfly_dfdaemon_failures_total)."""
    return daemon_metric(cluster, name, "dragonfly_dfdaemon_failures_total", f'kind="{kind}"')


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a size-limited tmpfs at ``path``; return why not if mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return "the mount command is not installed"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        return f"mount -t tmpfs is not permitted here: {result.stderr.decode().strip()}"
    return None


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)

"""`python -m bench pull`: 3 hosts pull the same image at once, straight from the registry vs through their mirrors.

One run, two phases on the same machine, registry and image (an OCI image of ≥ 100 MiB built here and pushed with
skopeo into Debian's docker-registry, plain HTTP on 127.0.0.1):

- direct: 3 clients pull the image from the registry at the same time;
- ours: a scheduler, a seed peer and 3 peers (fresh storage); each client pulls through its own peer's registry
  mirror (`/v2/...` to the peer's proxy) at the same time.

A client is a registry client in this process, as a runtime pulls: the manifest, then the config and the layers,
3 blobs at a time (containerd's default), each body read to the end and its sha256 checked against its digest.
Reported per phase: the registry's egress (blob body bytes from its access log) as a multiple of the image size,
the time to first byte of the largest layer (from sending its GET to its first body byte; median and worst of the
3 clients) and the total pull time (all 3 clients done). Targets (docs/benchmarks.md#targets): egress ≤ 1.05 ×
image for ours (direct is 3 ×), first byte of the largest layer ≤ 1.5 × the direct pull's.

``--repeat N`` runs the two phases N times in turn (direct, ours, direct, ours, ...; the same registry, a new cluster
with empty caches each time), so that each ratio compares two pulls made moments apart on a machine whose load
varies: every run's ratios are reported, and the ratios the limits apply to are their medians (the egress ratio:
the largest of the runs).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import image_bench_main
from dragonfly.cli.cluster import LocalCluster
from dragonfly.cli.registry import OCI_MANIFEST, Blob, Image, RegistryProcess, build_image, push

MIB = 1024 * 1024
REPOSITORY = "bench/app"
CLIENTS = 3
BLOBS_AT_ONCE = 3


def pull(addr: str, image: Image) -> dict[str, float]:
    """Pull ``image`` from the registry API at ``addr``; return seconds and the largest layer's first byte."""
    host, _, port = addr.rpartition(":")
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    conn.request("GET", f"/v2/{REPOSITORY}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
    response = conn.getresponse()
    manifest = response.read()
    conn.close()
    if response.status != 200 or hashlib.sha256(manifest).hexdigest() != image.manifest.digest[7:]:
        raise RuntimeError(f"manifest from {addr}: HTTP {response.status}")
    first_byte: dict[str, float] = {}

    def fetch(blob: Blob) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        try:
            sent = time.perf_counter()
            conn.request("GET", f"/v2/{REPOSITORY}/blobs/{blob.digest}")
            response = conn.getresponse()
            digest = hashlib.sha256()
            chunk = response.read(64 * 1024)
            first_byte[blob.digest] = time.perf_counter() - sent
            while chunk:
                digest.update(chunk)
                chunk = response.read(1024 * 1024)
            if response.status != 200 or "sha256:" + digest.hexdigest() != blob.digest:
                raise RuntimeError(f"blob {blob.digest} from {addr}: HTTP {response.status} or wrong bytes")
        finally:
            conn.close()

    # Largest first, as runtimes start the layers in manifest order and the big one dominates.
    blobs = sorted((image.config, *image.layers), key=lambda b: -b.size)
    with ThreadPoolExecutor(BLOBS_AT_ONCE) as pool:
        list(pool.map(fetch, blobs))
    return {"seconds": time.perf_counter() - started, "largest_layer_ttfb": first_byte[image.largest_layer.digest]}


def pull_all(addrs: list[str], image: Image) -> tuple[list[dict[str, float]], float]:
    """Pull on every address at once (a barrier starts them together); return the results and the makespan."""
    barrier = threading.Barrier(len(addrs))
    results: list[dict[str, float]] = [{} for _ in addrs]

    def one(i: int) -> None:
        barrier.wait()
        results[i] = pull(addrs[i], image)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(addrs)) as pool:
        list(pool.map(one, range(len(addrs))))
    return results, time.perf_counter() - started


def egress(registry: RegistryProcess, image: Image, before: int) -> int:
    digests = {b.digest for b in (image.config, *image.layers)}
    return sum(sent for digest, sent in registry.blob_bytes().items() if digest in digests) - before


def summarize(results: list[dict[str, float]], makespan: float, served: int, image: Image) -> dict[str, Any]:
    ttfb = [r["largest_layer_ttfb"] for r in results]
    return {
        "registry_egress_bytes": served,
        "egress_ratio": round(served / image.size, 4),
        "largest_layer_ttfb_median": round(statistics.median(ttfb), 4),
        "largest_layer_ttfb_max": round(max(ttfb), 4),
        "total_seconds": round(makespan, 3),
        "client_seconds": [round(r["seconds"], 3) for r in results],
    }


def ratios(direct: dict[str, Any], ours: dict[str, Any]) -> dict[str, float]:
    """One run's ratios: ours against the image (egress) and against the direct pull made just before it."""
    return {
        "egress_ours_over_image": ours["egress_ratio"],
        "ttfb_ours_over_direct": round(ours["largest_layer_ttfb_median"] / direct["largest_layer_ttfb_median"], 3),
        "total_ours_over_direct": round(ours["total_seconds"] / direct["total_seconds"], 3),
    }


def overall(runs: list[dict[str, float]]) -> dict[str, float]:
    """The ratios the limits apply to: the runs' medians, the egress ratio's worst (every run must bound it)."""
    return {
        "egress_ours_over_image": max(r["egress_ours_over_image"] for r in runs),
        "ttfb_ours_over_direct": round(statistics.median(r["ttfb_ours_over_direct"] for r in runs), 3),
        "total_ours_over_direct": round(statistics.median(r["total_ours_over_direct"] for r in runs), 3),
    }


def run(workdir: Path, layer_sizes: list[int], origin_head: str | None = None, repeat: int = 1) -> dict[str, Any]:
    image = build_image(workdir / "layout", layer_sizes)
    report: dict[str, Any] = {
        "origin_head": origin_head or "default",
        "image_bytes": image.size,
        "layers": [layer.size for layer in image.layers],
        "largest_layer_bytes": image.largest_layer.size,
        "clients": CLIENTS,
        "runs": [],
    }
    with RegistryProcess(workdir / "registry") as registry:
        push(image, registry, REPOSITORY)
        config: dict[str, Any] = {"proxy": {"registryMirror": {"addr": registry.url}}}
        if origin_head is not None:
            config["proxy"]["originHead"] = origin_head
        for i in range(repeat):
            before = egress(registry, image, 0)
            results, makespan = pull_all([registry.addr] * CLIENTS, image)
            direct = summarize(results, makespan, egress(registry, image, before), image)
            # A new cluster each run: nothing of the previous runs' pulls is cached in its peers.
            with LocalCluster(workdir / f"cluster-{i}", peers=CLIENTS, daemon_config=config) as cluster:
                before = egress(registry, image, 0)
                addrs = [cluster.process(name).listening["proxy"] for name in cluster.peer_names]
                results, makespan = pull_all(addrs, image)
                ours = summarize(results, makespan, egress(registry, image, before), image)
            report["runs"].append({"direct": direct, "ours": ours, "ratios": ratios(direct, ours)})
    report["ratios"] = overall([r["ratios"] for r in report["runs"]])
    return report


def format_report(report: dict[str, Any]) -> str:
    size = report["image_bytes"] / MIB
    runs = report["runs"]
    lines = [
        f"image {size:.1f} MiB ({', '.join(f'{s / MIB:.1f}' for s in report['layers'])} MiB layers), "
        f"{report['clients']} clients at once, proxy.originHead {report['origin_head']}, {len(runs)} run(s)",
        "",
        f"{'':12}{'registry egress':>22}{'TTFB largest (med/max)':>26}{'total pull':>12}",
    ]
    for i, one in enumerate(runs, 1):
        for name in ("direct", "ours"):
            r = one[name]
            label = name if len(runs) == 1 else f"{i}: {name}"
            lines.append(
                f"{label:12}{r['registry_egress_bytes'] / MIB:>12.1f} MiB ({r['egress_ratio']:.2f}x)"
                f"{r['largest_layer_ttfb_median']:>16.3f} / {r['largest_layer_ttfb_max']:.3f} s"
                f"{r['total_seconds']:>10.2f} s"
            )
        if len(runs) > 1:
            r = one["ratios"]
            lines.append(
                f"{'':12}ours/direct: first byte {r['ttfb_ours_over_direct']:.2f} x, "
                f"total {r['total_ours_over_direct']:.2f} x"
            )
    ratios = report["ratios"]
    how = "" if len(runs) == 1 else f" (median of {len(runs)} runs; egress: the largest)"
    lines += [
        "",
        f"ours{how}: registry egress {ratios['egress_ours_over_image']:.2f} x image (target <= 1.05), first byte of "
        f"the largest layer {ratios['ttfb_ours_over_direct']:.2f} x direct (target <= 1.5), total pull "
        f"{ratios['total_ours_over_direct']:.2f} x direct",
    ]
    return "\n".join(lines)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def main(argv: list[str] | None = None) -> int:
    head = argparse.ArgumentParser(add_help=False)
    head.add_argument("--origin-head", metavar="SIZE", help="the peers' proxy.originHead (default: the daemon's)")
    head.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        metavar="N",
        help="run direct and ours N times in turn (a new cluster each time); the limits apply to the runs' medians",
    )
    known, _rest = head.parse_known_args(argv)
    return image_bench_main(
        "bench pull",
        argv,
        functools.partial(run, origin_head=known.origin_head, repeat=known.repeat),
        format_report,
        layers="64,32,8,0.001",
        layers_help="layer sizes in MiB, comma separated (default 64,32,8,0.001)",
        description=__doc__.splitlines()[0],
        parents=[head],
        limits={
            "--max-ttfb-ratio": (
                "ttfb_ours_over_direct",
                "exit 1 when the largest layer's first byte through the mirrors takes more than R times the direct "
                "pull's (the median of the --repeat runs' ratios, each of one run's client medians); catches a return "
                "of a poll or a round trip on the path to it",
            ),
            "--max-egress-ratio": (
                "egress_ours_over_image",
                "exit 1 when the registry sends more than R times the image through the mirrors",
            ),
        },
    )


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench preheat`: from submitting a preheat job to SUCCESS, a 256 MiB image on 1 seed + 3 peers.

One run on this machine, all real processes on 127.0.0.1 with mutual TLS: a manager, a scheduler registered with
it, a seed peer and 3 peers (each on a loopback address of its own), Debian's docker-registry holding an OCI image
built here (4 layers of 64 MiB by default) pushed with skopeo.

- preheat: `POST /oapi/v1/jobs` (`type: image`, `scope: all_peers`) with a personal access token, then
  `GET /oapi/v1/jobs/<id>` every 100 ms until the job leaves PENDING. Reported: seconds from the POST to the
  answer that says SUCCESS, the scheduler's own seconds for the fan-out (the job's `job_states[].seconds`), and
  the registry's egress (blob body bytes from its access log) as a multiple of the image size;
- baseline, same run: the 3 peers' hosts pulling every blob straight from the registry at once (3 clients, 3
  blobs at a time each, bodies read to the end): seconds and egress.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import image_bench_main
from dragonfly.cli.cluster import LocalCluster
from dragonfly.cli.registry import Image, RegistryProcess, build_image, push

MIB = 1024 * 1024
ROOT_PASSWORD = "bench-preheat-root"
IPS = {"peer-1": "127.0.0.2", "peer-2": "127.0.0.3", "peer-3": "127.0.0.4"}


def _rest(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def _token(cluster: LocalCluster) -> str:
    session = _rest(cluster.manager_url, "POST", "/api/v1/users/signin", {"name": "root", "password": ROOT_PASSWORD})
    deadline = time.monotonic() + 60
    while not any(
        s["state"] == "active" for s in _rest(cluster.manager_url, "GET", "/api/v1/schedulers", token=session["token"])
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the scheduler did not become active in the manager within 60 s")
        time.sleep(0.2)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    body = {"name": "bench", "scopes": ["job"], "expired_at": expires}
    token: str = _rest(cluster.manager_url, "POST", "/api/v1/personal-access-tokens", body, session["token"])["token"]
    return token


def _egress(registry: RegistryProcess, image: Image) -> int:
    counts = registry.blob_bytes()
    return sum(counts[blob.digest] for blob in (image.config, *image.layers))


def preheat(cluster: LocalCluster, registry: RegistryProcess, image: Image, repository: str) -> dict[str, Any]:
    token = _token(cluster)
    body = {
        "type": "preheat",
        "args": {"type": "image", "url": f"{registry.url}/v2/{repository}/manifests/{image.tag}", "scope": "all_peers"},
    }
    started = time.perf_counter()
    job = _rest(cluster.manager_url, "POST", "/oapi/v1/jobs", body, token)
    while job["state"] == "PENDING":
        time.sleep(0.1)
        job = _rest(cluster.manager_url, "GET", f"/oapi/v1/jobs/{job['id']}", token=token)
    seconds = time.perf_counter() - started
    if job["state"] != "SUCCESS":
        raise RuntimeError(f"the preheat job ended {job['state']}: {json.dumps(job['result'])[:2000]}")
    [state] = job["result"]["job_states"]
    [entry] = state["results"]
    hosts = sorted({task["hostname"] for task in entry["success_tasks"]})
    return {
        "seconds": seconds,
        "scheduler_seconds": state.get("seconds"),
        "hosts": hosts,
        "blobs": len({task["url"] for task in entry["success_tasks"]}),
        "failures": len(entry["failure_tasks"]),
        "egress": _egress(registry, image),
    }


def direct(registry: RegistryProcess, image: Image, repository: str, clients: int = 3) -> dict[str, Any]:
    host, _, port = registry.addr.rpartition(":")
    blobs = [image.config, *image.layers]

    def fetch(digest: str) -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        try:
            conn.request("GET", f"/v2/{repository}/blobs/{digest}")
            response = conn.getresponse()
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
            if response.status != 200:
                raise RuntimeError(f"blob {digest}: HTTP {response.status}")
            return total
        finally:
            conn.close()

    def client(_: int) -> int:
        with ThreadPoolExecutor(3) as pool:
            return sum(pool.map(fetch, [blob.digest for blob in blobs]))

    before = _egress(registry, image)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        received = sum(pool.map(client, range(clients)))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "received": received, "egress": _egress(registry, image) - before}


def run(workdir: Path, layer_sizes: list[int]) -> dict[str, Any]:
    image = build_image(workdir / "image", layer_sizes, tag="v1")
    size = image.config.size + sum(layer.size for layer in image.layers)
    with RegistryProcess(workdir / "registry") as registry:
        push(image, registry, "bench/preheat")
        push(image, registry, "bench/direct")
        with LocalCluster(
            workdir / "cluster",
            peers=3,
            daemon_ips=IPS,
            manager=True,
            manager_config={"auth": {"rootPassword": ROOT_PASSWORD}},
        ) as cluster:
            ours = preheat(cluster, registry, image, "bench/preheat")
        baseline = direct(registry, image, "bench/direct")
    return {
        "image_bytes": size,
        "layers": len(image.layers),
        "preheat": ours,
        "direct": baseline,
        "ratios": {
            "preheat_egress_over_image": ours["egress"] / size,
            "direct_egress_over_image": baseline["egress"] / size,
            "preheat_seconds_over_direct": ours["seconds"] / baseline["seconds"],
        },
    }


def format_report(report: dict[str, Any]) -> str:
    mib = report["image_bytes"] / MIB
    ours, baseline, ratios = report["preheat"], report["direct"], report["ratios"]
    return "\n".join(
        [
            f"image: {mib:.0f} MiB in {report['layers']} layers + config; 1 seed peer + 3 peers (scope all_peers)",
            f"{'':<34}{'seconds':>9}{'registry egress':>18}",
            f"{'preheat job: POST -> SUCCESS':<34}{ours['seconds']:>9.2f}"
            f"{ratios['preheat_egress_over_image']:>16.2f} x",
            f"{'  of which scheduler fan-out':<34}{ours['scheduler_seconds'] or 0:>9.2f}",
            f"{'direct: 3 hosts pull every blob':<34}{baseline['seconds']:>9.2f}"
            f"{ratios['direct_egress_over_image']:>16.2f} x",
            f"hosts holding all {ours['blobs']} blobs: {', '.join(ours['hosts'])}; failures: {ours['failures']}",
            f"preheat / direct: {ratios['preheat_seconds_over_direct']:.2f} x the time, "
            f"{ratios['preheat_egress_over_image'] / max(ratios['direct_egress_over_image'], 1e-9):.2f} x the egress",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    return image_bench_main(
        "bench preheat",
        argv,
        run,
        format_report,
        layers="64,64,64,64",
        layers_help="layer sizes in MiB, comma separated (default 4 x 64)",
        description=__doc__.splitlines()[0],
    )


if __name__ == "__main__":
    sys.exit(main())

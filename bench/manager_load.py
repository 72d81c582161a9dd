"""`python -m bench manager`: the manager's gRPC discovery and REST API under load, from another process.

A real manager process (`python -m dragonfly.cli.manager`, SQLite in a temp dir, plaintext) and this process as the
client:

0. `--clusters` scheduler clusters (each scoped by a /16 CIDR), `--schedulers` schedulers in each, registered with
   UpdateScheduler and kept alive (KeepAlive streams open for the whole run);
1. "ListSchedulers": `--hosts` distinct hosts (hostname, IP in one of the CIDRs or none) each ask for their
   schedulers, `--concurrency` calls in flight, `--rounds` times; latency per call, client side;
2. "REST": `GET /api/v1/scheduler-clusters?per_page=100` with a personal access token, `--concurrency` in flight.

Baselines in the same run: a bare grpc.aio server answering ListSchedulers with a fixed list (`--serve-baseline`;
the transport and this client's ceiling), and the manager's own `GET /healthy` (no database, no auth) for REST.
The issue's figure: ListSchedulers p99 with 1,000 registered hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import release_builds_missing
from bench.scheduler_load import REPO, ServerProcess

ROOT_PASSWORD = "bench-root-password"
_LISTENING = re.compile(r"^dragonfly: (.+?) listening on (\S+)$")


class Process(ServerProcess):
    """A server subprocess; records every ``listening on`` line it prints before ``ready``."""

    def start(self, timeout: float = 60.0) -> None:
        self._log = self._log_path.open("w")
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            self._command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        assert self.proc.stdout is not None
        self.listening: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self._command[2]} exited early: {self._log_path.read_text()[-2000:]}")
            line = line.strip()
            if match := _LISTENING.match(line):
                self.listening[match.group(1)] = match.group(2)
                self.addr = self.addr or match.group(2)
            elif line.endswith(" ready"):
                return
        raise TimeoutError(f"{self._command} did not become ready within {timeout} s")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(latencies: list[float], seconds: float) -> dict[str, float]:
    return {
        "calls": len(latencies),
        "per_second": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


async def serve_baseline() -> int:
    """Answer ListSchedulers with a fixed list (no database) until SIGTERM."""
    import grpc
    from dragonfly_api import manager_pb2, manager_pb2_grpc

    response = manager_pb2.ListSchedulersResponse(
        schedulers=[
            manager_pb2.Scheduler(id=i, hostname=f"s-{i}", ip="10.0.0.1", port=8002, state="active") for i in range(3)
        ]
    )

    class Fixed(manager_pb2_grpc.ManagerServicer):  # type: ignore[misc]
        async def ListSchedulers(self, request: Any, context: Any) -> Any:
            return response

    server = grpc.aio.server()
    manager_pb2_grpc.add_ManagerServicer_to_server(Fixed(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"dragonfly: baseline listening on 127.0.0.1:{port}", flush=True)
    print("dragonfly: baseline ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    return 0


async def _list_schedulers(addr: str, args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    from dragonfly_api import manager_pb2, manager_pb2_grpc

    requests = [
        manager_pb2.ListSchedulersRequest(
            source_type=manager_pb2.PEER_SOURCE,
            hostname=f"host-{i}",
            ip=f"10.{i % (args.clusters + 1)}.{(i // 250) % 250}.{i % 250 + 1}",
            idc="idc-1",
            location="cn|hz",
        )
        for i in range(args.hosts)
    ]
    latencies: list[float] = []
    empty = 0
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = manager_pb2_grpc.ManagerStub(channel)
        await stub.ListSchedulers(requests[0], wait_for_ready=True)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(args.rounds):
            for request in requests:
                queue.put_nowait(request)

        async def worker() -> None:
            nonlocal empty
            while not queue.empty():
                request = queue.get_nowait()
                began = time.perf_counter()
                response = await stub.ListSchedulers(request, timeout=30)
                latencies.append(time.perf_counter() - began)
                empty += not response.schedulers

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seconds = time.perf_counter() - began
    return {**_summary(latencies, seconds), "empty_answers": empty}


async def _register(addr: str, args: argparse.Namespace, rest: str) -> tuple[list[Any], str]:
    """Create the clusters (REST), register and keep alive the schedulers (gRPC); return the streams and a PAT."""
    import grpc
    import httpx
    from dragonfly_api import manager_pb2, manager_pb2_grpc

    async with httpx.AsyncClient(base_url=rest, timeout=30) as client:
        signin = await client.post("/api/v1/users/signin", json={"name": "root", "password": ROOT_PASSWORD})
        root = {"Authorization": f"Bearer {signin.json()['token']}"}
        ids = [1]
        for c in range(1, args.clusters):
            body = {"name": f"bench-{c}", "scopes": {"cidrs": [f"10.{c}.0.0/16"], "idc": f"idc-{c}"}}
            response = await client.post("/api/v1/scheduler-clusters", headers=root, json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
        response = await client.post(
            "/api/v1/personal-access-tokens",
            headers=root,
            json={"name": "bench", "scopes": ["cluster"], "expired_at": expires},
        )
        token = response.json()["token"]
    channel = grpc.aio.insecure_channel(addr)
    stub = manager_pb2_grpc.ManagerStub(channel)
    calls = []
    for cluster_id in ids:
        for s in range(args.schedulers):
            hostname, ip = f"sched-{cluster_id}-{s}", f"10.{cluster_id}.255.{s + 1}"
            await stub.UpdateScheduler(
                manager_pb2.UpdateSchedulerRequest(
                    source_type=manager_pb2.SCHEDULER_SOURCE, hostname=hostname, ip=ip, port=8002,
                    scheduler_cluster_id=cluster_id, features=["schedule", "preheat"],
                )
            )  # fmt: skip
            message = manager_pb2.KeepAliveRequest(
                source_type=manager_pb2.SCHEDULER_SOURCE, hostname=hostname, ip=ip, cluster_id=cluster_id
            )

            async def beats(message: Any = message) -> Any:
                while True:
                    yield message
                    await asyncio.sleep(5)

            calls.append(stub.KeepAlive(beats()))
    await asyncio.sleep(1)
    return [channel, *calls], token


async def _rest(rest: str, path: str, headers: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    # aiohttp rather than httpx: httpx's own overhead capped this client near 120 requests/s here.
    import aiohttp

    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(base_url=rest, connector=connector, headers=headers) as client:
        async with client.get(path) as response:
            response.raise_for_status()
        remaining = args.rest_calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                began = time.perf_counter()
                async with client.get(path) as response:
                    await response.read()
                    response.raise_for_status()
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seconds = time.perf_counter() - began
    return _summary(latencies, seconds)


async def _drive_manager(grpc_addr: str, rest_addr: str, args: argparse.Namespace) -> dict[str, Any]:
    rest = f"http://{rest_addr}"
    streams, token = await _register(grpc_addr, args, rest)
    try:
        result = {"list_schedulers": await _list_schedulers(grpc_addr, args)}
        pat = {"Authorization": f"Bearer {token}"}
        result["rest_clusters"] = await _rest(rest, "/api/v1/scheduler-clusters?per_page=100", pat, args)
        result["rest_healthy"] = await _rest(rest, "/healthy", {}, args)
    finally:
        for call in streams[1:]:
            call.cancel()
        await streams[0].close()
    return result


def _manager_config(workdir: Path) -> Path:
    path = workdir / "manager.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {
                    "dataDir": str(workdir / "data"),
                    "rest": {"addr": "127.0.0.1:0"},
                    "grpc": {"listenIP": "127.0.0.1", "port": {"start": 0, "end": 0}},
                },
                "auth": {"rootPassword": ROOT_PASSWORD},
                "security": {"enable": False},
            }
        )
    )
    return path


def format_table(result: dict[str, Any]) -> str:
    """Render the result as a table with the baselines beside."""
    rows = [("what", "calls/s", "p50 ms", "p99 ms", "max ms")]
    for label, row in (
        ("ListSchedulers, manager", result["manager"]["list_schedulers"]),
        ("ListSchedulers, fixed-answer baseline", result["baseline"]),
        ("REST GET scheduler-clusters (PAT)", result["manager"]["rest_clusters"]),
        ("REST GET /healthy (baseline)", result["manager"]["rest_healthy"]),
    ):
        rows.append(
            (label, f"{row['per_second']:.0f}", f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['max_ms']:.1f}")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)) for r in rows]
    ls = result["manager"]["list_schedulers"]
    lines.append(
        f"\n{result['args']['hosts']} hosts x {result['args']['rounds']} rounds, {result['args']['clusters']} clusters"
        f" x {result['args']['schedulers']} schedulers; concurrency {result['args']['concurrency']};"
        f" answers without schedulers: {ls['empty_answers']}; ListSchedulers rate vs baseline"
        f" {ls['per_second'] / result['baseline']['per_second']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when it ran fully."""
    parser = argparse.ArgumentParser(prog="python -m bench manager", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000, help="distinct hosts asking ListSchedulers")
    parser.add_argument("--rounds", type=int, default=3, help="ListSchedulers calls per host")
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--schedulers", type=int, default=3, help="schedulers per cluster")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rest-calls", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="1 round, 1,000 REST calls")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if release_builds_missing("bench manager"):
        return 2
    if args.serve_baseline:
        return asyncio.run(serve_baseline())
    if args.quick:
        args.rounds, args.rest_calls = 1, 1000
    workdir = Path(tempfile.mkdtemp(prefix="dfbench-manager-"))
    manager = Process(
        [sys.executable, "-m", "dragonfly.cli.manager", "--config", str(_manager_config(workdir)),
         "--log-level", "warning"],
        workdir / "manager.log",
    )  # fmt: skip
    baseline = Process([sys.executable, "-m", "bench.manager_load", "--serve-baseline"], workdir / "b.log")
    result: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "serve_baseline"}}
    try:
        baseline.start()
        result["baseline"] = asyncio.run(_list_schedulers(baseline.addr, args))
        baseline.stop()
        manager.start()
        addrs = manager.listening
        result["manager"] = asyncio.run(_drive_manager(addrs["manager gRPC"], addrs["manager REST"], args))
        result["manager"]["rss_mib"] = manager.rss() / 2**20
    finally:
        baseline.stop()
        manager.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench pair`: one parent → one child over loopback, page cache, three ways, in one run.

- native loop: ``native.sendfile`` → ``native.recv_to_file`` on one TCP connection, no protocol: the practical
  limit of this machine;
- nginx → curl: nginx (sendfile) serving the file, curl writing it (tmpfs);
- ours: a parent dfdaemon that already holds the task, a child dfdaemon that fetches it over Vortex, timed
  as the child's ``dfget`` (process start included), with mutual TLS (the default);
- ours (plaintext): the same with ``security.enable: false``, so the cost of TLS is a ratio of one run.

Besides wall-clock seconds (meaningful only as ratios within one run on a shared machine), each method reports the
CPU seconds (user + system) its processes consumed per GiB moved, which machine load does not distort: the native
loop's two threads; nginx's worker and curl; our parent dfdaemon, child dfdaemon, dfget and scheduler.

Each method also reports the page reclaim going on during its timed runs and the lowest free memory seen
(``/proc/vmstat``, ``/proc/meminfo``, machine-wide): a process that allocates pages while free memory is short pays
for it in system time. The child writes a new content file on tmpfs from several threads, so in a row that ran short
of free memory the child's CPU per GiB grows several-fold (bench/RESULTS.md §2 "The bimodal child"); the report
names such rows, and rows whose child got bytes from elsewhere than its parent. To keep the run's own footprint
small, each cluster's storage and the reference runs' output are removed as soon as they are done; ``--drop-caches``
also drops the clean page cache before a run when memory is short.

Every method writes over memory it has just freed. The loop and curl truncate their sink before each run; ours
deletes the previous run's task from the parent just before the parent fetches the next one, and from the child
just before the child's timed run (``forget_task``), so neither daemon keeps a new GiB per run. On this machine kind
(a VM that reports free pages to its host) a page not used for a while faults on the host at its first write, ~3 s of
the writer's system time per GiB (bench/RESULTS.md §2 "The bimodal child"): a method that kept every run's output
measured that instead of itself.

Each of our rows also reports the child's timeline (median over the runs), read from the child's piece records
after each run: dfget's start to the task's record, to the first piece's request, the stretch while pieces were in
flight and how much of it had none in flight (idle), the last piece's bytes to the task's end, and to dfget's exit.
Idle time inside the stretch means the parent's socket waited for the child between pieces.

Targets (``docs/benchmarks.md#targets``; this harness reports against the first, looser ones): ours ≥ 0.8 × the
native loop and ≥ 1.0 × nginx → curl. ``--min-native-ratio 0.8`` turns the first into an exit status, as
``--max-cpu-ratio`` does for CPU per GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import release_builds_missing
from bench.swarm.hosts import Host, Topology, free_port
from bench.swarm.origin import nginx_config
from bench.swarm.services import PYTHON, Service, python_env
from bench.swarm.units import format_size, parse_size

#: CPU seconds by process, summed over the runs of one method.
Cpu = dict[str, float]


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    """Return the CPU seconds of this process's waited-for children (dfget, curl)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _system_cpu(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).cpu_times().system)


#: A child's system CPU per GiB above this is not the daemon's: its writes went into pages this VM had not used
#: lately, whose first write faults on the host (bench/RESULTS.md §2 "The bimodal child"); 0.7-1.2 is usual.
COLD_PAGES_SYSTEM_PER_GIB = 2.5


def _add(total: Cpu, name: str, seconds: float) -> None:
    total[name] = total.get(name, 0.0) + seconds


def reclaim_counters(vmstat: str | None = None) -> dict[str, int]:
    """Return the machine's page-reclaim counters (``/proc/vmstat``): pages kswapd scanned, pages scanned by
    allocating processes themselves (direct reclaim) and their allocation stalls.

    Empty when the kernel does not expose them. ``vmstat`` is the file's text (read here when None).
    """
    if vmstat is None:
        try:
            vmstat = Path("/proc/vmstat").read_text()
        except OSError:
            return {}
    counters: dict[str, int] = {}
    for line in vmstat.splitlines():
        name, _, value = line.partition(" ")
        if name == "pgscan_kswapd":
            counters["kswapd_pages_scanned"] = int(value)
        elif name == "pgscan_direct":
            counters["pages_scanned"] = int(value)
        elif name.startswith("allocstall"):
            counters["stalls"] = counters.get("stalls", 0) + int(value)
    return counters


def free_memory(meminfo: str | None = None) -> int | None:
    """Return the machine's free memory in bytes (``MemFree`` of ``/proc/meminfo``), or None when unknown."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name == "MemFree":
            return int(value.split()[0]) * 1024
    return None


def drop_clean_caches(needed: int) -> bool:
    """Write back dirty pages and drop the clean page cache when free memory is below ``needed`` bytes (root only).

    Return whether it dropped. Files on tmpfs (the benchmark's own) are not page cache and stay.
    """
    free = free_memory()
    if free is None or free >= needed:
        return False
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")
    return True


class Reclaim:
    """Sums the page reclaim seen while timed runs were going on (``reclaim_counters``) and keeps the lowest free
    memory seen at their starts and ends (``totals["min_free_mib"]``).

    With ``room`` (bytes), each run first drops the clean page cache if less than that is free
    (``drop_clean_caches``), and ``totals["caches_dropped"]`` counts how often it did.
    """

    def __init__(self, room: int = 0) -> None:
        self.totals: dict[str, int] = {"caches_dropped": 0} if room else {}
        self._room = room
        self._before: dict[str, int] = {}

    def __enter__(self) -> Reclaim:
        if self._room and drop_clean_caches(self._room):
            self.totals["caches_dropped"] += 1
        self._free()
        self._before = reclaim_counters()
        return self

    def __exit__(self, *exc: object) -> None:
        after = reclaim_counters()
        for name, value in after.items():
            self.totals[name] = self.totals.get(name, 0) + max(value - self._before.get(name, value), 0)
        self._free()

    def _free(self) -> None:
        free = free_memory()
        if free is not None:
            mib = free >> 20
            self.totals["min_free_mib"] = min(self.totals.get("min_free_mib", mib), mib)


def native_loop(source: Path, sink: Path, size: int, cpu: Cpu | None = None, reclaim: Reclaim | None = None) -> float:
    """Return seconds to move `size` bytes from `source` to `sink` with native sendfile → recv_to_file.

    The CPU seconds of both threads (this process does nothing else meanwhile) are added to ``cpu["loop"]``.
    """
    from dragonfly.common import native

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def send() -> None:
        try:
            conn, _ = listener.accept()
            with conn, source.open("rb") as f:
                native.sendfile(conn.fileno(), f.fileno(), 0, size, 30.0)
        except BaseException as exc:  # reported by the receiving side
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    buffer = bytearray(4 << 20)
    fd = os.open(sink, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    cpu_before = _self_cpu()
    try:
        with reclaim or contextlib.nullcontext():
            started = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                native.recv_to_file(conn.fileno(), fd, 0, size, buffer, 30.0)
            elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        sender.join(timeout=30)
        listener.close()
    if cpu is not None:
        _add(cpu, "loop", _self_cpu() - cpu_before)
    if errors:
        raise RuntimeError(f"native sender failed: {errors[0]!r}")
    return elapsed


def nginx_curl(
    topology: Topology,
    workdir: Path,
    source: Path,
    sink: Path,
    cpu: Cpu | None = None,
    reclaim: Reclaim | None = None,
) -> Callable[[], float]:
    """Start nginx serving `source`; return a function timing one `curl` of it into `sink` (wall seconds).

    Each call adds the CPU seconds of nginx (master and worker) and of curl to ``cpu``.
    """
    if not shutil.which("nginx") or not shutil.which("curl"):
        raise RuntimeError("nginx or curl is not installed; run scripts/bench-deps.sh")
    prefix = workdir / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    (prefix / "nginx.conf").write_text(nginx_config(source.parent, f"127.0.0.1:{port}", prefix))
    host = Host("origin", "127.0.0.1")
    master = topology.popen(
        host, ["nginx", "-c", str(prefix / "nginx.conf"), "-p", str(prefix), "-e", str(prefix / "e.log")]
    )
    _wait_port(port, 15)
    url = f"http://127.0.0.1:{port}/{source.name}"

    def nginx_cpu() -> float:
        import psutil

        process = psutil.Process(master.pid)
        pids = [process.pid, *(child.pid for child in process.children(recursive=True))]
        return sum(_process_cpu(pid) for pid in pids)

    def once() -> float:
        server_before, curl_before = nginx_cpu(), _children_cpu()
        with reclaim or contextlib.nullcontext():
            started = time.perf_counter()
            subprocess.run(["curl", "-sS", "--fail", "-o", str(sink), url], check=True, timeout=300)
            elapsed = time.perf_counter() - started
        if cpu is not None:
            _add(cpu, "nginx", nginx_cpu() - server_before)
            _add(cpu, "curl", _children_cpu() - curl_before)
        return elapsed

    return once


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.05)


def ours(
    topology: Topology,
    workdir: Path,
    source: Path,
    repeat: int,
    *,
    tls: bool = True,
    cpu: Cpu | None = None,
    copy_output: bool = False,
    native_tls: bool | None = None,
    server_native_tls: bool | None = None,
    concurrent_pieces: int | None = None,
    label: str | None = None,
    reclaim: Reclaim | None = None,
    timelines: list[dict[str, float]] | None = None,
    child_system: list[float] | None = None,
) -> tuple[list[float], dict[str, int]]:
    """Return the child's dfget times (a fresh task each time, already on the parent) and its bytes by source.

    Each run's child timeline (``child_timeline``) is appended to ``timelines``, and the child dfdaemon's system CPU
    seconds per GiB in that run to ``child_system``.

    The CPU seconds the parent and child dfdaemons, the scheduler and dfget spend on the child's runs are added to
    ``cpu``. ``copy_output`` sets the child's ``download.hardLinkOutput`` false (docs/output-and-cache.md),
    ``native_tls`` its ``download.nativeTls`` (None: the default, rustls; docs/security.md#vortex-over-tls) and
    ``server_native_tls`` the parent's ``storage.server.nativeTls`` (None: the default), ``concurrent_pieces`` the
    child's ``download.concurrentPieceCount`` (None: the default). Each run's task is deleted from both daemons
    before the next run writes (``forget_task``); the cluster's directory (both daemons' storage) is removed when it
    stops.
    """
    from bench.swarm.ours import OursCluster

    origin_host = Host("origin", "127.0.0.1")
    origin = Service(
        topology, origin_host,
        [PYTHON, "-m", "bench.swarm.origin", "--dir", str(source.parent), "--port", "0"],
        workdir / "origin.log", env=python_env(),
    )  # fmt: skip
    origin.wait_for("origin listening on", 30)
    base = "http://" + origin.lines[0].rsplit(" ", 1)[-1]
    hosts = [Host("seed", "127.0.0.1"), Host("child", "127.0.0.1")]
    times: list[float] = []
    by_source: dict[str, int] = {}
    label = label or ("ours" if tls else "ours-plaintext")
    child: dict[str, bool | int] = {"hardLinkOutput": False} if copy_output else {}
    if native_tls is not None:
        child["nativeTls"] = native_tls
    if concurrent_pieces is not None:
        child["concurrentPieceCount"] = concurrent_pieces
    overrides: dict[str, dict[str, Any]] = {"child": {"download": child}}
    if server_native_tls is not None:
        overrides["seed"] = {"storage": {"server": {"nativeTls": server_native_tls}}}
    cluster_dir = workdir / label
    with OursCluster(
        topology, cluster_dir, Host("ctl", "127.0.0.1"), hosts, tls=tls, daemon_overrides=overrides
    ) as cluster:
        previous: str | None = None
        for i in range(repeat):
            # A distinct query string makes a distinct task, so each child run really crosses the wire.
            url = f"{base}/{source.name}?run={i}&{label}"
            if previous is not None:
                forget_task(cluster.sockets["seed"], previous)
            cluster.dfget("seed", url, workdir / f"parent-{i}")
            os.unlink(workdir / f"parent-{i}")
            if previous is not None:
                forget_task(cluster.sockets["child"], previous)
            previous = url
            output = workdir / f"child-{i}"
            pids = {"parent dfdaemon": cluster.pid("seed"), "child dfdaemon": cluster.pid("child")}
            pids["scheduler"] = cluster.scheduler.proc.pid
            before = {name: _process_cpu(pid) for name, pid in pids.items()}
            system_before = _system_cpu(pids["child dfdaemon"])
            dfget_before = _children_cpu()
            with reclaim or contextlib.nullcontext():
                started = time.time()
                elapsed, by_source = cluster.dfget("child", url, output)
                exited = time.time()
            if child_system is not None:
                child_system.append(
                    (_system_cpu(pids["child dfdaemon"]) - system_before) / (source.stat().st_size / (1 << 30))
                )
            if cpu is not None:
                _add(cpu, "dfget", _children_cpu() - dfget_before)
                for name, pid in pids.items():
                    _add(cpu, name, _process_cpu(pid) - before[name])
            _check(output, source)
            output.unlink()
            times.append(elapsed)
            if timelines is not None:
                db_path = cluster_dir / "child" / "storage" / "metadata" / "dfdaemon.db"
                timelines.append(child_timeline(db_path, started, exited))
    shutil.rmtree(cluster_dir, ignore_errors=True)
    return times, by_source


def forget_task(daemon_socket: Path, url: str) -> None:
    """Delete the task of ``url`` (as dfget names it) from the dfdaemon listening on ``daemon_socket``: its metadata
    and its content file, so the pages it held are free for the next run. Raises RuntimeError when it fails (a task
    left behind would make the next run write into cold pages and measure the host instead of the daemon)."""
    import grpc
    from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc

    from dragonfly.common import ids

    task = ids.task_id(url)
    with grpc.insecure_channel(f"unix:{daemon_socket}") as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
        try:
            stub.DeleteLocalTask(dfdaemon_pb2.DeleteLocalTaskRequest(task_id=task), timeout=30)
        except grpc.RpcError as exc:
            raise RuntimeError(f"could not delete task {task} of {url} from {daemon_socket}: {exc.details()}") from None


def _check(path: Path, source: Path) -> None:
    with path.open("rb") as a, source.open("rb") as b:
        if hashlib.file_digest(a, "sha256").digest() != hashlib.file_digest(b, "sha256").digest():
            raise RuntimeError(f"{path} differs from {source}")


#: The phases of the child's timeline, in order, with how the report names each.
TIMELINE_PHASES = {
    "start": "dfget start → task",
    "first_piece": "→ first piece requested",
    "pieces": "→ last piece's bytes",
    "idle": "of which no piece in flight",
    "finish": "→ task done",
    "exit": "→ dfget exit",
}


def child_timeline(db_path: Path, started: float, exited: float) -> dict[str, float]:
    """Return the phases (``TIMELINE_PHASES``, seconds) of the newest finished task in a dfdaemon's metadata
    database, for a dfget that ran from ``started`` to ``exited`` (wall clock, ``time.time()``).

    A piece is in flight from its record's ``created_at`` for ``cost`` seconds (its bytes arriving); ``idle`` is the
    time between the first piece and the last piece's bytes when no piece was in flight. The record has no transfer
    start: ``created_at`` is taken after the rate limit's reservation but before the piece's receive buffer is free
    and ``cost`` counts from then, so a wait for a buffer moves a piece's interval earlier by that wait, overstating
    ``idle`` and understating the stretch. With two buffers per piece in flight (``ParentDownloader``) a
    one-parent download does not wait for one.
    """
    # A database that cannot be read is this row's error (RuntimeError), not the end of the whole run.
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT id, created_at, finished_at FROM tasks WHERE finished_at IS NOT NULL ORDER BY created_at DESC"
            ).fetchone()
            if row is None:
                raise RuntimeError(f"no finished task in {db_path}")
            task_id, created, finished = row
            pieces = db.execute("SELECT created_at, cost FROM pieces WHERE task_id = ?", (task_id,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise RuntimeError(f"cannot read the child's pieces from {db_path}: {exc}") from None
    if not pieces:
        raise RuntimeError(f"task {task_id} in {db_path} has no piece records")
    # +1 when a piece is requested, -1 when its bytes are in; ends sort before starts at the same instant.
    events = sorted([(start, 1) for start, _ in pieces] + [(start + cost, -1) for start, cost in pieces])
    first, last = events[0][0], max(start + cost for start, cost in pieces)
    idle, in_flight, since = 0.0, 0, first
    for at, step in events:
        if in_flight == 0:
            idle += at - since
        in_flight += step
        since = at
    return {
        "start": created - started,
        "first_piece": first - created,
        "pieces": last - first,
        "idle": idle,
        "finish": finished - last,
        "exit": exited - finished,
    }


def timeline_notes(methods: dict[str, Any]) -> list[str]:
    """Return a line with the child's timeline (median phases) for each of our methods that has one."""
    notes = []
    for name, entry in methods.items():
        timeline = entry.get("timeline")
        if timeline:
            phases = ", ".join(f"{label} {timeline[key]:.3f} s" for key, label in TIMELINE_PHASES.items())
            notes.append(f"{name}: the child's timeline (median): {phases}")
    return notes


#: One of our rows: its name, its cluster's directory (None: from the name), TLS, the parent's
#: storage.server.nativeTls and the child's download.concurrentPieceCount (None: the defaults).
OurRow = tuple[str, str | None, bool, bool | None, int | None]


def our_rows(*, python_tls_server: bool = False, pieces_in_flight: list[int] | None = None) -> list[OurRow]:
    """Return our rows in the order they run: the default (mutual TLS), the variants asked for, plaintext."""
    rows: list[OurRow] = [("ours", None, True, None, None)]
    if python_tls_server:
        rows.append(("ours (parent on Python ssl)", "ours-python-server", True, False, None))
    for count in pieces_in_flight or []:
        rows.append((f"ours ({count} pieces in flight)", f"ours-pieces-{count}", True, None, count))
    rows.append(("ours (plaintext)", None, False, None, None))
    return rows


def _counts(text: str) -> list[int]:
    """Parse ``--pieces-in-flight``: positive integers separated by commas."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"each count must be at least 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    """Run the pair benchmark; print a table (or --json); exit 0 only if every method ran."""
    parser = argparse.ArgumentParser(prog="python -m bench pair")
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (the median is reported)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--max-cpu-ratio",
        type=float,
        default=None,
        metavar="R",
        help="exit 1 when ours uses more than R times the native loop's CPU seconds per GiB, in either mode "
        "(a regression check that machine load does not make flaky the way wall-clock ratios are)",
    )
    parser.add_argument(
        "--min-native-ratio",
        type=float,
        default=None,
        metavar="R",
        help="exit 1 when ours is slower than R times the native loop's speed (its seconds over ours), in either "
        "mode; issue 14 asks for 0.8. Wall clock: meaningful on a quiet machine, use --max-cpu-ratio under load",
    )
    parser.add_argument(
        "--copy-output",
        action="store_true",
        help="run ours with download.hardLinkOutput: false on the child (its output a copy of the cache instead "
        "of a hard link to it; docs/output-and-cache.md)",
    )
    parser.add_argument(
        "--python-tls",
        action="store_true",
        help="run ours with download.nativeTls: false on the child (its Vortex TLS in Python's ssl, not rustls)",
    )
    parser.add_argument(
        "--python-tls-server",
        action="store_true",
        help="also run ours with storage.server.nativeTls: false on the parent (its Vortex TLS in Python's ssl, "
        "not rustls), as the row 'ours (parent on Python ssl)', side by side with the default",
    )
    parser.add_argument(
        "--pieces-in-flight",
        type=_counts,
        default=[],
        metavar="N[,N...]",
        help="also run ours (mutual TLS) with download.concurrentPieceCount N on the child, one row 'ours (N pieces "
        "in flight)' per N, side by side with the default (8) in the same run",
    )
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="before each timed run of every method, write back and drop the machine's clean page cache when less "
        "than twice --size is free (root; machine-wide, so only on a machine you have to yourself): the child then "
        "does not pay the kernel's reclaim for its new pages (bench/RESULTS.md §2 'The bimodal child')",
    )
    args = parser.parse_args(argv)
    if release_builds_missing("bench pair"):
        return 2
    workdir = Path("/dev/shm") / f"dfbench{os.getpid()}-pair"
    topology = Topology([], Path("/dev/shm"))
    results: dict[str, Any] = {
        "size": args.size,
        "repeat": args.repeat,
        "copy_output": args.copy_output,
        "native_tls": not args.python_tls,
        "methods": {},
    }
    try:
        workdir.mkdir()
        source = workdir / "data" / "blob"
        source.parent.mkdir()
        with source.open("wb") as f:
            for _ in range(0, args.size, 16 << 20):
                f.write(os.urandom(min(16 << 20, args.size - f.tell())))
        sink = workdir / "sink"

        cpu: dict[str, Cpu] = {}
        reclaim: dict[str, Reclaim] = {}
        room = 2 * args.size if args.drop_caches else 0

        def run_nginx() -> list[float]:
            once = nginx_curl(
                topology, workdir, source, sink, cpu.setdefault("nginx → curl", {}),
                reclaim.setdefault("nginx → curl", Reclaim(room)),
            )  # fmt: skip
            return [once() for _ in range(args.repeat)]

        def run_native() -> list[float]:
            row_cpu, row_reclaim = cpu.setdefault("native loop", {}), reclaim.setdefault("native loop", Reclaim(room))
            return [native_loop(source, sink, args.size, row_cpu, row_reclaim) for _ in range(args.repeat)]

        methods: dict[str, Callable[[], list[float]]] = {"native loop": run_native, "nginx → curl": run_nginx}
        for name, run in methods.items():
            try:
                times = run()
                _check(sink, source)
                results["methods"][name] = {"seconds": statistics.median(times), "runs": times}
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results["methods"][name] = {"error": str(exc)}
        sink.unlink(missing_ok=True)
        for label, directory, tls, server_native_tls, concurrent_pieces in our_rows(
            python_tls_server=args.python_tls_server, pieces_in_flight=args.pieces_in_flight
        ):
            timelines: list[dict[str, float]] = []
            child_system: list[float] = []
            try:
                times, by_source = ours(
                    topology, workdir, source, args.repeat, tls=tls, cpu=cpu.setdefault(label, {}),
                    copy_output=args.copy_output, native_tls=False if args.python_tls else None,
                    server_native_tls=server_native_tls, concurrent_pieces=concurrent_pieces, label=directory,
                    reclaim=reclaim.setdefault(label, Reclaim(room)), timelines=timelines,
                    child_system=child_system,
                )  # fmt: skip
                entry = {"seconds": statistics.median(times), "runs": times, "by_source": by_source}
                entry["child_system_per_gib"] = [round(seconds, 3) for seconds in child_system]
                entry["timeline"] = {key: statistics.median(t[key] for t in timelines) for key in TIMELINE_PHASES}
                results["methods"][label] = entry
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results["methods"][label] = {"error": str(exc)[:1000]}
        gib_moved = args.size * args.repeat / (1 << 30)
        for name, entry in results["methods"].items():
            if "seconds" in entry and cpu.get(name):
                entry["cpu_seconds_per_gib"] = {proc: round(s / gib_moved, 3) for proc, s in cpu[name].items()}
            if "seconds" in entry and name in reclaim:
                entry["memory"] = reclaim[name].totals
    finally:
        topology.close()
        shutil.rmtree(workdir, ignore_errors=True)
    methods_done = results["methods"]
    for entry in methods_done.values():
        if "seconds" in entry:
            entry["gbytes_per_second"] = args.size / entry["seconds"] / 1e9
    limit = methods_done.get("native loop", {}).get("seconds")
    nginx = methods_done.get("nginx → curl", {}).get("seconds")
    if ours_s := methods_done.get("ours", {}).get("seconds"):
        results["ours_vs_native"] = limit / ours_s if limit else None
        results["ours_vs_nginx"] = nginx / ours_s if nginx else None
        plain = methods_done.get("ours (plaintext)", {}).get("seconds")
        # The cost of mutual TLS: plaintext time over TLS time (1.0 = free, 0.9 = 10 % slower).
        results["tls_vs_plaintext"] = plain / ours_s if plain else None
    if args.json:
        print(json.dumps(results))
    else:
        output = "a copy of the cache" if args.copy_output else "hard-linked to the cache (the default)"
        child_tls = "Python ssl (download.nativeTls: false)" if args.python_tls else "rustls (the default)"
        print(
            f"pair: one parent → one child, {format_size(args.size)} over loopback (tmpfs), median of {args.repeat}; "
            f"ours' output: {output}; child TLS: {child_tls}; parent TLS: storage.server.nativeTls's default"
        )
        print("| method | seconds | GB/s | relative to native loop | CPU s per GiB | CPU by process |")
        print("|---|---|---|---|---|---|")
        for name, entry in methods_done.items():
            if "seconds" in entry:
                rel = f"{limit / entry['seconds']:.2f}" if limit else "—"
                by_process = entry.get("cpu_seconds_per_gib", {})
                total = f"{sum(by_process.values()):.2f}" if by_process else "—"
                parts = ", ".join(f"{proc} {s:.2f}" for proc, s in by_process.items())
                speed = f"{entry['seconds']:.3f} | {entry['gbytes_per_second']:.2f}"
                print(f"| {name} | {speed} | {rel} | {total} | {parts} |")
            else:
                print(f"| {name} | — | — | error: {entry['error'][:200]} | | |")
        if results.get("tls_vs_plaintext"):
            print(f"mutual TLS: {results['tls_vs_plaintext']:.2f} × the plaintext speed (ours vs ours (plaintext))")
        notes = [*timeline_notes(methods_done), *source_notes(methods_done), *reclaim_notes(methods_done)]
        for line in [*notes, *cold_page_notes(methods_done)]:
            print(line)
    if not all("seconds" in e for e in methods_done.values()):
        return 1
    failed = []
    if args.max_cpu_ratio is not None:
        failed += cpu_regressions(methods_done, args.max_cpu_ratio)
        if failed and any(reclaim_notes(methods_done)):
            failed.append(
                "the kernel was reclaiming memory during the run (above): the child's CPU includes its share of that"
            )
    if args.min_native_ratio is not None:
        failed += speed_regressions(methods_done, args.min_native_ratio)
    for message in failed:
        print(f"bench pair: {message}", file=sys.stderr)
    return 1 if failed else 0


def source_notes(methods: dict[str, Any]) -> list[str]:
    """Return a line for each of our methods whose child got bytes from elsewhere than its parent (the seed)."""
    notes = []
    for name, entry in methods.items():
        by_source = entry.get("by_source") or {}
        total = sum(by_source.values())
        others = {source: count for source, count in by_source.items() if source != "seed" and count}
        if total and others:
            shares = ", ".join(f"{count / total:.0%} from {source}" for source, count in others.items())
            notes.append(f"{name}: the child did not get every byte from its parent: {shares}")
    return notes


def reclaim_notes(methods: dict[str, Any]) -> list[str]:
    """Return a line for each method during whose timed runs the kernel was reclaiming memory (and for each whose
    runs had the page cache dropped first, ``--drop-caches``)."""
    notes = []
    for name, entry in methods.items():
        memory = entry.get("memory") or {}
        if memory.get("caches_dropped"):
            notes.append(f"{name}: the clean page cache was dropped before {memory['caches_dropped']} of its runs")
        if memory.get("kswapd_pages_scanned") or memory.get("pages_scanned") or memory.get("stalls"):
            notes.append(
                f"{name}: the kernel was reclaiming memory during its runs (machine-wide: kswapd scanned "
                f"{memory.get('kswapd_pages_scanned', 0)} pages, allocating processes {memory.get('pages_scanned', 0)} "
                f"in {memory.get('stalls', 0)} stalls; free memory down to {memory.get('min_free_mib', '?')} MiB): "
                "the system time of whoever allocates new pages (the child writing its content file) grows with it"
            )
    return notes


def cold_page_notes(methods: dict[str, Any]) -> list[str]:
    """Return a line for each of our methods with runs whose child spent more than ``COLD_PAGES_SYSTEM_PER_GIB``
    system CPU seconds per GiB. When the row also has a run under the bound, the slow ones are this VM's host faults
    on cold pages; when every run is over it, the line says it may as well be a regression of the child's system
    time, which the same figure would show."""
    notes = []
    for name, entry in methods.items():
        per_run = entry.get("child_system_per_gib") or []
        cold = [(run, seconds) for run, seconds in enumerate(per_run) if seconds > COLD_PAGES_SYSTEM_PER_GIB]
        if not cold:
            continue
        runs = ", ".join(f"run {run} {seconds:.2f}" for run, seconds in cold)
        line = f"{name}: the child's system CPU per GiB was {runs} s (usually 0.7-1.2): "
        if len(cold) < len(per_run):
            line += (
                "its writes went into pages this VM had not used lately, which fault on the host (bench/RESULTS.md "
                "§2 'The bimodal child'); such runs measure that, not the daemon"
            )
        else:
            line += (
                "every run, so either this VM's cold pages (run scripts/bench-warm-memory.sh first; bench/RESULTS.md "
                "§0) or a regression of the child's system time: compare with the memory warm, or `perf record` the "
                "child"
            )
        notes.append(line)
    return notes


def speed_regressions(methods: dict[str, Any], min_ratio: float) -> list[str]:
    """Return a message for each of our methods slower than ``min_ratio`` × the native loop's speed (same run)."""
    native = methods.get("native loop", {}).get("seconds")
    if not native:
        return ["no time for the native loop to compare with"]
    messages = []
    for name in ("ours", "ours (plaintext)"):
        seconds = methods.get(name, {}).get("seconds")
        if not seconds:
            messages.append(f"no time for {name}")
        elif native / seconds < min_ratio:
            messages.append(
                f"{name} took {seconds:.3f} s, {native / seconds:.2f} x the native loop's speed ({native:.3f} s; "
                f"required {min_ratio:g} x)"
            )
    return messages


def cpu_regressions(methods: dict[str, Any], max_ratio: float) -> list[str]:
    """Return a message for each of our methods whose CPU per GiB exceeds ``max_ratio`` × the native loop's."""
    native = sum(methods.get("native loop", {}).get("cpu_seconds_per_gib", {}).values())
    if not native:
        return ["no CPU figure for the native loop to compare with"]
    messages = []
    for name in ("ours", "ours (plaintext)"):
        ours = sum(methods.get(name, {}).get("cpu_seconds_per_gib", {}).values())
        if not ours:
            messages.append(f"no CPU figure for {name}")
        elif ours > max_ratio * native:
            messages.append(
                f"{name} used {ours:.2f} CPU s per GiB, {ours / native:.2f} x the native loop's {native:.2f} "
                f"(allowed {max_ratio:g} x)"
            )
    return messages


if __name__ == "__main__":
    sys.exit(main())

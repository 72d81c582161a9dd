"""Swarm results: per-host timelines, per-system summaries against the bound, Markdown, JSON and a PNG."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.swarm.bound import Bound, efficiency
from bench.swarm.timeline import summary_lines
from bench.swarm.units import format_rate, format_size

#: Bytes a host must have received before its counter growth counts as its first byte (control traffic is less).
FIRST_BYTE_THRESHOLD = 256 * 1024
SOURCES = ("origin", "seed", "peers", "local")


@dataclass
class HostResult:
    """One host's download: times in seconds since the system's common start."""

    host: str
    start: float
    first_byte: float | None
    finish: float | None
    ok: bool
    bytes: int
    by_source: dict[str, int] = field(default_factory=dict)
    wire_bytes_in: int | None = None
    error: str = ""


@dataclass
class SystemResult:
    """One system's run: its hosts, and the origin's egress as measured at the origin."""

    system: str
    hosts: list[HostResult]
    origin_bytes: int | None
    origin_bytes_method: str
    error: str = ""
    note: str = ""
    #: User + system CPU seconds of every process the system ran (and the origin) during the run.
    cpu_seconds: float | None = None
    #: The same by process (``CpuMeter.by_process``): scheduler, dfdaemon, agent (with its dfget/curl/aria2c), ...
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    #: Cores each process used per half second (``CpuSampler``): label -> [[seconds since the start, cores], ...].
    cpu_timeline: dict[str, list[list[float]]] = field(default_factory=dict)
    #: Ours only: per-piece timeline summary (``bench.swarm.timeline.analyse``), None when not read.
    timeline: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.hosts) and all(h.ok for h in self.hosts)

    def finish_times(self) -> list[float]:
        return sorted(h.finish for h in self.hosts if h.ok and h.finish is not None)

    def cpu_per_gib(self) -> float | None:
        """Return CPU seconds per GiB delivered to the peers (None when either is unknown)."""
        delivered = sum(h.bytes for h in self.hosts if h.ok)
        if self.cpu_seconds is None or not delivered:
            return None
        return self.cpu_seconds / (delivered / (1 << 30))

    def summary(self, size: int, bound: Bound) -> dict[str, Any]:
        """Return makespan, p50, efficiency = bound / makespan, origin bytes / F, and failures."""
        finishes = self.finish_times()
        makespan = finishes[-1] if self.ok and finishes else None
        first_bytes = [h.first_byte for h in self.hosts if h.first_byte is not None]
        return {
            "system": self.system,
            "ok": self.ok,
            "completed": f"{len(finishes)}/{len(self.hosts)}",
            "makespan": makespan,
            "p50": statistics.median(finishes) if finishes else None,
            "first_byte_p50": statistics.median(first_bytes) if first_bytes else None,
            "efficiency": efficiency(bound.seconds, makespan) if makespan else None,
            "origin_bytes": self.origin_bytes,
            "origin_ratio": self.origin_bytes / size if self.origin_bytes is not None else None,
            "origin_bytes_method": self.origin_bytes_method,
            "cpu_seconds": self.cpu_seconds,
            "cpu_seconds_per_gib": self.cpu_per_gib(),
            "cpu_by_process": self.cpu_by_process,
            "error": self.error or "; ".join(sorted({h.error for h in self.hosts if h.error}))[:300],
        }


@dataclass
class SwarmRun:
    """One invocation: its parameters, the bound and every system's result."""

    mode: str
    peers: int
    size: int
    origin_rate: float
    peer_rate: float
    delay_ms: float
    storage: str
    bound: Bound
    systems: list[SystemResult] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    #: Busy processes that competed for the CPU during each system's run (``--cpu-hogs``).
    cpu_hogs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "peers": self.peers,
            "size": self.size,
            "origin_rate_bytes_per_second": self.origin_rate,
            "peer_rate_bytes_per_second": self.peer_rate,
            "delay_ms": self.delay_ms,
            "storage": self.storage,
            "cpu_hogs": self.cpu_hogs,
            "command": self.command,
            "machine": self.machine,
            "bound": {**asdict(self.bound), "seconds": self.bound.seconds, "binding": self.bound.binding},
            "summary": [s.summary(self.size, self.bound) for s in self.systems],
            "systems": [asdict(s) for s in self.systems],
        }

    def markdown(self) -> str:
        """Return the results table with the conditions above it."""
        label = (
            "network namespaces, tc-shaped links"
            if self.mode == "netns"
            else ("LOOPBACK FALLBACK (application-level rate limits; lower fidelity than shaped namespaces)")
        )
        lines = [
            f"Swarm: {self.peers} peers × {format_size(self.size)}, origin {format_rate(self.origin_rate)}, "
            f"peers {format_rate(self.peer_rate)} up and down, delay {self.delay_ms:g} ms, storage {self.storage}; "
            f"{label}{self._competition()}.",
            f"Kumar–Ross bound {self.bound.seconds:.2f} s (binding term {self.bound.binding}; "
            f"F/u_s {self.bound.origin_term:.2f} s, F/d_min {self.bound.download_term:.2f} s, "
            f"N·F/(u_s+Σu_i) {self.bound.swarm_term:.2f} s).",
            "",
            "| system | done | makespan s | p50 s | first byte p50 s | efficiency | origin bytes / F "
            "| makespan ÷ ours | CPU s / GiB delivered |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        summaries = [s.summary(self.size, self.bound) for s in self.systems]
        ours = next((s["makespan"] for s in summaries if s["system"] == "ours" and s["makespan"]), None)
        for s in summaries:
            speedup = f"{s['makespan'] / ours:.2f}" if ours and s["makespan"] and s["system"] != "ours" else ""
            lines.append(
                f"| {s['system']} | {s['completed']} | {_num(s['makespan'])} | {_num(s['p50'])} | "
                f"{_num(s['first_byte_p50'])} | {_num(s['efficiency'], 3)} | {_num(s['origin_ratio'], 3)} | "
                f"{speedup} | {_num(s['cpu_seconds_per_gib'])} |"
            )
        errors = [f"- {s['system']}: {s['error']}" for s in summaries if s["error"]]
        notes = [f"- {s.system}: {s.note}" for s in self.systems if s.note]
        methods = [f"- {s['system']}: origin bytes from {s['origin_bytes_method']}" for s in summaries]
        methods += [
            f"- {s['system']}: CPU seconds by process: "
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(s["cpu_by_process"].items()))
            for s in summaries
            if s["cpu_by_process"]
        ]
        timelines = [line for s in self.systems if s.timeline for line in summary_lines(s.system, s.timeline)]
        return "\n".join([*lines, "", *methods, *timelines, *notes, *errors]) + "\n"

    def _competition(self) -> str:
        if not self.cpu_hogs:
            return ""
        cores = "one core" if self.cpu_hogs == 1 else f"{self.cpu_hogs} cores"
        return f"; {cores} kept busy by competing processes throughout each run"


def target_misses(
    run: SwarmRun, *, min_efficiency: float | None = None, max_origin_ratio: float | None = None
) -> list[str]:
    """Return why ours misses the limits given (``--min-efficiency``, ``--max-origin-ratio``); [] if it does not."""
    misses = []
    for summary in (s.summary(run.size, run.bound) for s in run.systems if s.system == "ours"):
        efficiency, origin = summary["efficiency"], summary["origin_ratio"]
        if min_efficiency is not None and (efficiency is None or efficiency < min_efficiency):
            shown = "no makespan (a peer failed)" if efficiency is None else f"{efficiency:.3f}"
            misses.append(f"ours: efficiency {shown} is below --min-efficiency {min_efficiency:g}")
        if max_origin_ratio is not None and (origin is None or origin > max_origin_ratio):
            shown = "unmeasured" if origin is None else f"{origin:.3f} F"
            misses.append(f"ours: origin bytes {shown} exceed --max-origin-ratio {max_origin_ratio:g}")
    return misses


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def host_result_from_events(
    host: str, t0: float, events: list[dict[str, Any]], wire_first_byte: float | None = None
) -> HostResult:
    """Build a HostResult from one agent's event lines; times become seconds since `t0`."""
    by_kind = {e["event"]: e for e in events}
    start = by_kind.get("start", {}).get("t")
    finish = by_kind.get("finish")
    first = by_kind.get("first_byte", {}).get("t", wire_first_byte)
    if first is None:
        first = wire_first_byte
    return HostResult(
        host=host,
        start=(start - t0) if start is not None else 0.0,
        first_byte=(first - t0) if first is not None else None,
        finish=(finish["t"] - t0) if finish and finish.get("ok") else None,
        ok=bool(finish and finish.get("ok")),
        bytes=int(finish.get("bytes", 0)) if finish else 0,
        by_source=dict(finish.get("by_source") or {}) if finish else {},
        error=(finish.get("error", "") if finish else "no result (timed out or crashed)"),
    )


def wire_first_bytes(samples: list[dict[str, Any]], veths: dict[str, str]) -> dict[str, float]:
    """Return {host: wall time its received bytes first grew by FIRST_BYTE_THRESHOLD} from monitor samples.

    The router's veth end transmits what the host receives, so a host's download is that end's tx counter.
    """
    if not samples:
        return {}
    base = samples[0]["c"]
    found: dict[str, float] = {}
    for sample in samples[1:]:
        for host, veth in veths.items():
            if host in found or veth not in sample["c"] or veth not in base:
                continue
            if sample["c"][veth][1] - base[veth][1] >= FIRST_BYTE_THRESHOLD:
                found[host] = sample["t"]
    return found


def counter_delta(samples: list[dict[str, Any]], veth: str) -> tuple[int, int] | None:
    """Return (rx, tx) growth of `veth` between the first and last monitor sample."""
    if len(samples) < 2 or veth not in samples[0]["c"] or veth not in samples[-1]["c"]:
        return None
    (rx0, tx0), (rx1, tx1) = samples[0]["c"][veth], samples[-1]["c"][veth]
    return rx1 - rx0, tx1 - tx0


def write_plot(run: SwarmRun, path: Path) -> None:
    """Write the finish-time CDF of every system and, for ours, each peer's bytes by source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = next((s for s in run.systems if s.system == "ours"), None)
    panels = 2 if ours and any(h.by_source for h in ours.hosts) else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    cdf = axes[0][0]
    for system in run.systems:
        finishes = system.finish_times()
        if finishes:
            fractions = [(i + 1) / len(system.hosts) for i in range(len(finishes))]
            cdf.step([0.0, *finishes], [0.0, *fractions], where="post", label=system.system)
    cdf.axvline(run.bound.seconds, color="grey", linestyle="--", label=f"bound {run.bound.seconds:.1f} s")
    cdf.set_xlabel("finish time since start (s)")
    cdf.set_ylabel("fraction of peers done")
    cdf.set_ylim(0, 1.05)
    cdf.set_title(f"{run.peers} peers × {format_size(run.size)} ({run.mode})")
    cdf.legend(loc="lower right")
    if panels == 2 and ours:
        bars = axes[0][1]
        present = {k for h in ours.hosts for k, v in h.by_source.items() if v}
        sources = [s for s in SOURCES if s in present] + sorted(present - set(SOURCES))
        bottoms = [0.0] * len(ours.hosts)
        names = [h.host for h in ours.hosts]
        for source in sources:
            values = [h.by_source.get(source, 0) / 2**20 for h in ours.hosts]
            bars.bar(names, values, bottom=bottoms, label=source)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        bars.set_ylabel("MiB")
        bars.set_title("ours: bytes by source per peer")
        bars.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dump_json(run: SwarmRun) -> str:
    return json.dumps(run.to_json(), indent=2)

"""bench scheduler's figures: latency quantiles, the scheduler's /metrics histograms, and the printed tables."""

from __future__ import annotations

import re
import statistics
import urllib.request
from typing import Any

TARGET_REPORTS_PER_SECOND = 5000.0
TARGET_P99_SECONDS = 0.010
_BUCKET = re.compile(r'^dragonfly_scheduler_schedule_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)
_GC_BUCKET = re.compile(
    r'^dragonfly_scheduler_python_gc_pause_seconds_bucket\{generation="2",le="([^"]+)"\} (\S+)$', re.M
)
_GC_COLLECTED = re.compile(r'^dragonfly_scheduler_python_gc_collected_objects_total\{generation="(\d)"\} (\S+)$', re.M)
_GC_SUM = re.compile(r'^dragonfly_scheduler_python_gc_pause_seconds_sum\{generation="2"\} (\S+)$', re.M)


def quantiles(samples: list[float]) -> dict[str, float]:
    """Return p50/p99/max in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "count": 0}
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": ordered[-1] * 1000,
        "count": len(ordered),
    }


def histogram_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    """Return the q-quantile (ms) of the observations between two scrapes, interpolated within its bucket."""
    buckets = [(bound, a - b) for (bound, a), (_, b) in zip(after, before, strict=True)]
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return 0.0
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound * 1000
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return (lower_bound + (bound - lower_bound) * share) * 1000
        lower_bound, lower_count = bound, count
    return lower_bound * 1000


def scrape(metrics_addr: str) -> str:
    """Return the scheduler's metrics text."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=30) as response:
        text: str = response.read().decode()
    return text


def scrape_histogram(metrics_addr: str) -> list[tuple[float, float]]:
    """Return the scheduler's cumulative decision-duration buckets [(upper bound, count)]."""
    return decision_buckets(scrape(metrics_addr))


def decision_buckets(text: str) -> list[tuple[float, float]]:
    """Return the cumulative decision-duration buckets [(upper bound, count)] of a metrics text."""
    return [(float(bound), float(count)) for bound, count in _BUCKET.findall(text)]


def collected_objects(text: str) -> list[float]:
    """Return the objects the scheduler's cyclic collector freed so far, by generation 0, 1, 2."""
    found = {int(generation): float(value) for generation, value in _GC_COLLECTED.findall(text)}
    return [found.get(generation, 0.0) for generation in range(3)]


def full_collections(text: str) -> dict[str, float]:
    """Return the scheduler's full garbage collections so far: count, total and longest pause (bucket bound)."""
    buckets = [(float(bound), float(count)) for bound, count in _GC_BUCKET.findall(text)]
    total = buckets[-1][1] if buckets else 0.0
    longest = next((bound for bound, count in buckets if count >= total), 0.0) if total else 0.0
    seconds = _GC_SUM.search(text)
    return {"count": total, "seconds": float(seconds.group(1)) if seconds else 0.0, "longest_le_s": longest}


def stage(figures: dict[str, Any] | None, first: str, second: str) -> str:
    """Return "a/b MiB" of two RSS stages, or "-"."""
    if not figures:
        return "-"
    rss = figures["rss_mib"]
    return f"{rss[first]:.0f}/{rss[second]:.0f} MiB"


def print_table(result: dict[str, Any], args: dict[str, Any]) -> None:
    ours, base = result["scheduler"], result.get("baseline")

    def baseline(key: str) -> str:
        return f"{base[key]:,.0f}" if base else "-"

    def probe(quantile: str) -> str:
        return f"{base['decision_probe'][quantile]:.2f} ms" if base else "-"

    rss = ours["rss_mib"]
    gc = ours["full_gc"]
    gc_probe = ours["full_gc_probe"]
    rows = [
        ("piece reports/s", f"{ours['piece_reports_per_second']:,.0f}", baseline("piece_reports_per_second")),
        (
            "CPU per message (flood)",
            f"{ours['cpu_us_per_flood_message']:.0f} us",
            f"{base['cpu_us_per_flood_message']:.0f} us" if base else "-",
        ),
        (
            f"CPU per message (trickle {args.get('trickle_rate', 0):,.0f}/s)",
            f"{ours['cpu_us_per_trickle_message']:.0f} us" if ours.get("cpu_us_per_trickle_message") else "-",
            f"{base['cpu_us_per_trickle_message']:.0f} us" if base and base.get("cpu_us_per_trickle_message") else "-",
        ),
        (
            "CPU per registration",
            f"{ours['cpu_ms_per_registration']:.2f} ms",
            f"{base['cpu_ms_per_registration']:.2f} ms" if base else "-",
        ),
        ("decision p50 (probe, client)", f"{ours['decision_probe']['p50_ms']:.2f} ms", probe("p50_ms")),
        ("decision p99 (probe, client)", f"{ours['decision_probe']['p99_ms']:.2f} ms", probe("p99_ms")),
        ("decision max (probe, client)", f"{ours['decision_probe']['max_ms']:.2f} ms", probe("max_ms")),
        ("decision p50 (probe, server)", f"{ours['server_decision_probe']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (probe, server)", f"{ours['server_decision_probe']['p99_ms']:.2f} ms", "-"),
        ("churned peers / p99 decision", f"{ours['churned_peers']} / {ours['decision_churn']['p99_ms']:.2f} ms", "-"),
        ("full GCs during the probe", f"{gc_probe['count']:.0f} / {gc_probe['seconds']:.2f} s", "-"),
        ("cyclic garbage freed, gen 0/1/2", "/".join(f"{n:.0f}" for n in ours["gc_collected_probe"]), "-"),
        (
            "RSS before/after the probe",
            f"{rss['registered']:.0f}/{rss['probed']:.0f} MiB",
            stage(base, "registered", "probed"),
        ),
        ("decision p50 (idle, client)", f"{ours['decision_idle']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (idle, client)", f"{ours['decision_idle']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (flood, client)", f"{ours['decision_under_flood']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (flood, client)", f"{ours['decision_under_flood']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (idle, server)", f"{ours['server_decision_idle']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (idle, server)", f"{ours['server_decision_idle']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (flood, server)", f"{ours['server_decision_under_flood']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (flood, server)", f"{ours['server_decision_under_flood']['p99_ms']:.2f} ms", "-"),
        ("RSS ready/hosts", f"{rss['ready']:.0f}/{rss['hosts']:.0f} MiB", stage(base, "ready", "hosts")),
        ("RSS registered/end", f"{rss['registered']:.0f}/{rss['end']:.0f} MiB", stage(base, "registered", "end")),
        ("RSS per host", f"{ours['rss_kib_per_host']:.1f} KiB", "-"),
        ("RSS per 1,000 peers", f"{ours['rss_mib_per_1000_peers']:.2f} MiB", "-"),
        ("full GCs: count / total", f"{gc['count']:.0f} / {gc['seconds']:.2f} s", "-"),
        ("longest full GC", f"<= {gc['longest_le_s']:g} s", "-"),
        ("exit after SIGTERM", f"{ours['exit_seconds']:.1f} s", "-"),
    ]
    print(
        f"scheduler load: {ours['hosts']} hosts, {ours['peers']} peers, {ours['tasks']} tasks, "
        f"{args['pieces']} pieces/peer, {args['clients']} client processes, {args['connections']} connections"
    )
    print(f"{'figure':<32}{'scheduler':>18}{'no-op baseline':>18}")
    for name, value, base_value in rows:
        print(f"{name:<32}{value:>18}{base_value:>18}")
    ratio = f"ratio to baseline: {result['ratio_to_baseline']:.2f}; " if "ratio_to_baseline" in result else ""
    print(f"{ratio}targets: >= {TARGET_REPORTS_PER_SECOND:,.0f} reports/s, p99 <= {TARGET_P99_SECONDS * 1000:.0f} ms")


def growth(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Return how the scheduler's figures grow from the smallest size to the largest."""
    small, large = sizes[0]["scheduler"], sizes[-1]["scheduler"]
    extra_hosts = (large["hosts"] - small["hosts"]) / 1000
    figures: dict[str, Any] = {"hosts": [small["hosts"], large["hosts"]]}
    for key in (
        "server_decision_idle",
        "server_decision_under_flood",
        "server_decision_probe",
        "decision_idle",
        "decision_under_flood",
        "decision_probe",
    ):
        for quantile in ("p50_ms", "p99_ms"):
            a, b = small[key][quantile], large[key][quantile]
            figures[f"{key}.{quantile}"] = {
                "ratio": b / a if a else None,
                "us_per_1000_hosts": (b - a) * 1000 / extra_hosts if extra_hosts else None,
            }
    figures["rss_end_ratio"] = large["rss_mib"]["end"] / small["rss_mib"]["end"]
    return figures


def print_growth(sizes: list[dict[str, Any]], figures: dict[str, Any]) -> None:
    print()
    print("growth (largest size against the smallest, one run, side by side):")
    columns = "".join(f"{s['scheduler']['hosts']:>9,}/{s['scheduler']['peers']:<9,}" for s in sizes)
    print(f"{'hosts / peers':<18}{columns}{'ratio':>9}{'µs per 1k hosts':>17}")
    for key, label in (
        ("server_decision_idle", "server idle"),
        ("server_decision_under_flood", "server flood"),
        ("decision_idle", "client idle"),
        ("decision_under_flood", "client flood"),
        ("server_decision_probe", "server probe"),
        ("decision_probe", "client probe"),
    ):
        for quantile in ("p50_ms", "p99_ms"):
            grown = figures[f"{key}.{quantile}"]
            ratio = f"{grown['ratio']:.2f}" if grown["ratio"] is not None else "-"
            values = "".join(f"{s['scheduler'][key][quantile]:>16.2f} ms" for s in sizes)
            print(f"{label + ' ' + quantile[:3]:<18}{values}{ratio:>9}{grown['us_per_1000_hosts']:>17.1f}")
    if all("baseline" in s for s in sizes):
        print(f"{'no-op RSS end MiB':<18}" + "".join(f"{s['baseline']['rss_mib']['end']:>19,.2f}" for s in sizes))
    for label, pick in (
        ("full GCs", lambda s: s["full_gc"]["count"]),
        ("full GC seconds", lambda s: s["full_gc"]["seconds"]),
        ("RSS end MiB", lambda s: s["rss_mib"]["end"]),
        ("RSS/1k peers MiB", lambda s: s["rss_mib_per_1000_peers"]),
        ("RSS/host KiB", lambda s: s["rss_kib_per_host"]),
        ("piece reports/s", lambda s: s["piece_reports_per_second"]),
    ):
        print(f"{label:<18}" + "".join(f"{pick(s['scheduler']):>19,.2f}" for s in sizes))

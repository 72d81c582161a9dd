#!/usr/bin/env bash
# Make a VM's memory warm for benchmarks (as root); safe to run again.
#   scripts/bench-warm-memory.sh [GiB]      default: all free memory but 2 GiB
#
# Some VMs (virtio-balloon with free page reporting, as on this project's CI and bench machines) hand every page the
# guest frees back to the host, and the next first write to such a page faults on the host: ~3 s of the writer's
# system time per GiB against ~0.4 s into a warm page (bench/RESULTS.md §0 and §2 "The bimodal child"). A benchmark
# then measures which of its methods happened to get warm pages, not the methods. This stops the reporting
# (page_reporting_order above the largest block the kernel has) and touches the memory once, so every method writes
# into backed pages. The machine keeps the setting until it reboots; nothing here is needed outside benchmarks.
set -euo pipefail
params=/sys/module/page_reporting/parameters
if [ ! -d "$params" ]; then
    echo "bench-warm-memory.sh: no free page reporting on this kernel; nothing to do"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "bench-warm-memory.sh: run as root" >&2; exit 1; }
echo 11 >"$params/page_reporting_order"
# A kernel with the min_free_ms knob: keep freed pages at least 2 minutes (its largest accepted value here).
[ -w "$params/min_free_ms" ] && { echo 120000 >"$params/min_free_ms" 2>/dev/null || true; }
free_gib=$(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo)
gib=${1:-$((free_gib - 2))}
[ "$gib" -gt 0 ] || { echo "bench-warm-memory.sh: less than 3 GiB available; nothing touched"; exit 0; }
scratch=$(mktemp -d /dev/shm/bench-warm.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
started=$(date +%s)
for i in $(seq 1 "$gib"); do
    dd if=/dev/zero of="$scratch/$i" bs=4M count=256 status=none || break
done
echo "bench-warm-memory.sh: page_reporting_order=$(cat "$params/page_reporting_order"), touched $gib GiB in $(($(date +%s) - started)) s"

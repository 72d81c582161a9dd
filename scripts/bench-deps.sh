#!/usr/bin/env bash
# Install the Debian packages the benchmarks (bench/) need; safe to run again.
#   scripts/bench-deps.sh            (as root, or with sudo available)
# iproute2: ip netns / veth / bridge / tc (sch_htb, sch_netem); aria2 + opentracker: the BitTorrent baseline;
# nginx + curl: the direct-download baseline and the pair benchmark.
set -euo pipefail
packages=(iproute2 aria2 opentracker nginx-light curl)
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "bench-deps.sh: run as root or install sudo" >&2; exit 1; }
    sudo=sudo
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "bench-deps.sh: all present: ${packages[*]}"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# The packaged nginx/opentracker services would listen on this host's ports; the benchmarks start their own
# instances, so keep the maintainer scripts from starting them (policy-rc.d exit 101 = "not allowed").
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    made_policy=1
fi
trap '[ -n "$made_policy" ] && $sudo rm -f "$policy"' EXIT
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "bench-deps.sh: installed ${missing[*]}"

#!/usr/bin/env bash
# Build every distribution into dist/: manylinux wheels and sdists of dragonfly-p2p, dragonfly-native-hashing and
# dragonfly-native-piece-io, then check them (auditwheel for the platform tag, twine for PyPI's metadata rules) and
# prove each sdist builds.
#   scripts/build-dist.sh [OUT_DIR]          default: dist/ in the repository (emptied first)
# Environment: VENV (default .venv; the release tools are pip-installed into it), MANYLINUX (default
# manylinux_2_28), CARGO_TARGET_DIR (shared with scripts/install.sh's builds, so unchanged crates are not rebuilt).
# Needs what scripts/install.sh needs (Python >= 3.11, cc, cargo) and PyPI for the build tools. The native wheels
# are linked with zig (the `ziglang` wheel) against the manylinux glibc, so no manylinux container is needed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$repo/dist}")
venv=${VENV:-$repo/.venv}
policy=${MANYLINUX:-manylinux_2_28}
arch=$(uname -m)
py="$venv/bin/python"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
export PATH="$venv/bin:$PATH"   # maturin finds zig (python -m ziglang) through the venv's python

[ -x "$py" ] || { echo "build-dist.sh: no virtual environment at $venv; run scripts/install.sh first" >&2; exit 1; }
cd "$repo"

echo "build-dist.sh: release tools"
mapfile -t tools < <("$py" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["release"]))')
"$py" -m pip install --quiet "${tools[@]}"

rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for crate in hashing piece_io; do
    echo "build-dist.sh: ext/$crate (wheel for $policy, sdist)"
    "$venv/bin/maturin" build --quiet --release --zig --compatibility "$policy" -m "ext/$crate/Cargo.toml" -o "$out"
    "$venv/bin/maturin" sdist -m "ext/$crate/Cargo.toml" -o "$out"
done

echo "build-dist.sh: the web console (packaged as data of dragonfly-p2p)"
scripts/build-console.sh
[ -f dragonfly/manager/console/dist/index.html ] || { echo "build-dist.sh: the web console is not built (needs node and npm)" >&2; exit 1; }

echo "build-dist.sh: dragonfly-p2p (sdist, then the wheel built from that sdist, repaired to $policy)"
# `python -m build` without --wheel/--sdist builds the wheel from the sdist it just made: the sdist is proven whole.
"$py" -m build --quiet --outdir "$work/main" .
"$venv/bin/auditwheel" repair --plat "${policy}_$arch" --wheel-dir "$out" "$work"/main/*.whl
cp "$work"/main/*.tar.gz "$out"/

echo "build-dist.sh: checks"
for wheel in "$out"/*.whl; do
    case "$wheel" in
        *"${policy}_$arch"*) ;;
        *) echo "build-dist.sh: $(basename "$wheel") does not carry the ${policy}_$arch tag" >&2; exit 1 ;;
    esac
    # auditwheel reads the glibc symbol versions the binaries need: the tag must not promise more than they allow.
    "$venv/bin/auditwheel" show "$wheel" >"$work/show.txt" 2>&1 || { cat "$work/show.txt" >&2; exit 1; }
    "$py" - "$work/show.txt" "$policy" "$(basename "$wheel")" <<'CHECK'
import re, sys
text, policy, name = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
found = re.search(r'consistent with\s+the following platform tag:\s+"manylinux_(\d+)_(\d+)_', text)
wanted = tuple(map(int, re.match(r"manylinux_(\d+)_(\d+)", policy).groups()))
if found is None or tuple(map(int, found.groups())) > wanted:
    sys.exit(f"build-dist.sh: {name} is not {policy} compliant:\n{text}")
print(f"build-dist.sh: {name}: binaries need at most manylinux_{found.group(1)}_{found.group(2)}")
CHECK
done
"$venv/bin/twine" check --strict "$out"/*
# The manager serves the console from the installed package: the wheel must carry it.
"$py" - "$out" <<'CONSOLE'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("dragonfly_p2p-*.whl"))
names = zipfile.ZipFile(wheel).namelist()
if "dragonfly/manager/console/dist/index.html" not in names or not any(n.endswith(".js") and "/console/dist/assets/" in n for n in names):
    sys.exit(f"build-dist.sh: {wheel.name} does not carry the web console")
print(f"build-dist.sh: {wheel.name} carries the web console")
CONSOLE

# The native sdists compile in a clean virtual environment with only what their pyproject.toml declares (maturin
# comes from PyPI into pip's isolated build environment); the compiled crates are reused from CARGO_TARGET_DIR.
echo "build-dist.sh: native sdists build in a clean venv"
"$py" -m venv "$work/clean"
for sdist in "$out"/dragonfly_native_*.tar.gz; do
    "$work/clean/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/from-sdist" "$sdist"
done
[ "$(find "$work/from-sdist" -name '*.whl' | wc -l)" -eq 2 ] || { echo "build-dist.sh: a native sdist built no wheel" >&2; exit 1; }

echo "build-dist.sh: built into $out"
ls -l "$out"

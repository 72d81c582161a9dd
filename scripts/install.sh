#!/usr/bin/env bash
# Build everything (release profile) and install it into a virtual environment.
#   scripts/install.sh [VENV_DIR]      default: .venv in the repository
# Needs only Python >= 3.11, a C compiler and a Rust toolchain (cargo) on PATH. Re-running it is cheap: the
# native modules are rebuilt only when their sources changed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$repo/.venv}
python=${PYTHON:-python3}

command -v cargo >/dev/null || { echo "install.sh: cargo not found; install Rust (https://rustup.rs) first" >&2; exit 1; }
command -v cc >/dev/null || { echo "install.sh: no C compiler (cc) found; install gcc first" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
pip=("$venv/bin/python" -m pip install --quiet)

# The stamp records what the last successful build was made from, so an unchanged tree skips the Rust builds.
stamp="$venv/.dragonfly-build-stamp"
sources=$(cd "$repo" && { find Cargo.toml Cargo.lock pyproject.toml setup.py ext -type f \
    \( -name '*.rs' -o -name '*.toml' -o -name '*.lock' -o -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' \) \
    2>/dev/null || true; } | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sources" ]; then
    echo "install.sh: native extensions up to date in $venv"
else
    # One resolver run: the two maturin-built native modules, then this package (setuptools + Cython) in editable
    # mode so tests and benchmarks run against this checkout.
    "${pip[@]}" "$repo/ext/hashing" "$repo/ext/piece_io" -e "$repo[test,dev]"
    echo "$sources" >"$stamp"
fi
"$venv/bin/python" -c "from dragonfly.common import native; print('install.sh: native build profiles:', native.build_profiles())"

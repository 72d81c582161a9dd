#!/usr/bin/env bash
# Build the manager's web console (console/: TypeScript, React, Vite) into dragonfly/manager/console/dist, where the
# manager serves it and the wheel picks it up. Called by scripts/install.sh and scripts/build-dist.sh.
#   scripts/build-console.sh [--force]
# Needs Node.js >= 20.19 and npm (the npm registry for `npm ci`). Without node it says so and builds nothing: the
# manager then answers / with a page that says the console is not built. Re-running is cheap: the stamp records the
# sources of the last build.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src=$repo/console
out=$repo/dragonfly/manager/console/dist
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "build-console.sh: node/npm not found; the web console is NOT built (install Node.js >= 20.19 and npm, then rerun)" >&2
    exit 0
fi
cd "$src"
# Dependencies: reinstalled only when the lockfile changed.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f node_modules/.lock-sum ] || [ "$(cat node_modules/.lock-sum)" != "$lock_sum" ]; then
    echo "build-console.sh: npm ci"
    nice -n 10 npm ci --no-audit --no-fund --loglevel=error
    echo "$lock_sum" >node_modules/.lock-sum
fi
sources=$(find index.html package.json package-lock.json tsconfig.json vite.config.ts src -type f | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
stamp=$src/node_modules/.build-stamp
if [ "${1:-}" != "--force" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sources" ] && [ -f "$out/index.html" ]; then
    echo "build-console.sh: web console up to date in ${out#"$repo"/}"
    exit 0
fi
nice -n 10 npx vite build --logLevel warn
echo "$sources" >"$stamp"
echo "build-console.sh: web console built into ${out#"$repo"/}"

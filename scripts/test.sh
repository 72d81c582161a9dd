#!/usr/bin/env bash
# Install what the tests need, then run the whole suite twice: with the compiled extensions and with their
# pure-Python twins (DRAGONFLY_NO_EXTENSIONS=1). Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/system-deps.sh
scripts/install.sh
py=.venv/bin/python
echo "== tests with the native extensions"
"$py" -m pytest "$@"
echo "== tests with the pure-Python twins (DRAGONFLY_NO_EXTENSIONS=1)"
DRAGONFLY_NO_EXTENSIONS=1 "$py" -m pytest tests/unit tests/native "$@"

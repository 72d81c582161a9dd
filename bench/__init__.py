"""Benchmarks: never part of the test run; every figure is a ratio against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Where a kernel with free page reporting (virtio-balloon) keeps its settings.
PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")
#: The largest block order the buddy allocator forms: a reporting order above it reports nothing.
_MAX_PAGE_ORDER = 10


def freed_pages_go_to_host(params: Path = PAGE_REPORTING) -> bool:
    """Whether this VM hands the pages it frees back to its host, so the next first write to each faults there (~3 s
    of system time per GiB against ~0.4 into a warm page; bench/RESULTS.md §0). scripts/bench-warm-memory.sh stops
    it."""
    try:
        return int((params / "page_reporting_order").read_text()) <= _MAX_PAGE_ORDER
    except (OSError, ValueError):
        return False


def release_builds_missing(prog: str) -> bool:
    """Say why and return True unless the native extensions are release builds: only those are measured. Also warn
    (without refusing) when the VM reports freed pages to its host: which method gets warm pages then decides."""
    from dragonfly.common import native

    if freed_pages_go_to_host():
        print(f"{prog}: warning: this VM reports freed pages to its host, so first writes fault there and figures "
              "depend on which method gets warm pages; run scripts/bench-warm-memory.sh first (as root)",
              file=sys.stderr)  # fmt: skip
    profiles = native.build_profiles()
    if native.USING_EXTENSIONS and all(p == "release" for p in profiles.values()):
        return False
    print(f"{prog}: needs release builds of the native extensions, found {profiles}; run scripts/install.sh",
          file=sys.stderr)  # fmt: skip
    return True


def image_bench_main(
    prog: str,
    argv: list[str] | None,
    run: Callable[[Path, list[int]], dict[str, Any]],
    format_report: Callable[[dict[str, Any]], str],
    *,
    layers: str,
    layers_help: str,
    description: str,
    limits: dict[str, tuple[str, str]] | None = None,
    parents: list[argparse.ArgumentParser] | None = None,
) -> int:
    """The command line of the registry benchmarks (pull, preheat): layer sizes in MiB, a work directory, --json.

    ``limits`` maps an option (``--max-ttfb-ratio``) to the key of ``report["ratios"]`` it bounds and its help: the
    command exits 1 when a ratio of the run is above the limit given (a regression check). ``parents``: options of
    one benchmark (listed in its help; it reads them itself).
    """
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description, parents=parents or [])
    parser.add_argument("--layers", default=layers, help=layers_help)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    parser.add_argument("--json", action="store_true")
    for option, (_key, help_text) in (limits or {}).items():
        parser.add_argument(option, type=float, default=None, metavar="R", help=help_text)
    args = parser.parse_args(argv)
    if release_builds_missing(prog):
        return 2
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            print(f"{prog}: {tool} is not installed (scripts/system-deps.sh)", file=sys.stderr)
            return 2
    sizes = [int(float(s) * 1024 * 1024) for s in args.layers.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"dfbench-{prog.split()[-1]}-"))
    try:
        report = run(workdir, sizes)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report) if args.json else format_report(report))
    status = 0
    for option, (key, _help) in (limits or {}).items():
        limit = getattr(args, option.lstrip("-").replace("-", "_"))
        if limit is not None and report["ratios"][key] > limit:
            print(f"{prog}: {key} {report['ratios'][key]:g} is above {option} {limit:g}", file=sys.stderr)
            status = 1
    return status

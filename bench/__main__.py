"""`python -m bench <suite> [--json] ...`: run one benchmark suite, or `all [--quick]`.

Suites: swarm, pair, dfget-latency, memory, scheduler (bench/scheduler_load.py), pull (image pulls through the
proxy, bench/pull.py), pcache (dfcache export over a shaped link, zstd against raw, bench/pcache.py),
manager (ListSchedulers and REST against a manager process, bench/manager_load.py), preheat (a 256 MiB image
preheated on 1 seed + 3 peers through the manager's Open API, bench/preheat.py), small-files (many 1 MiB files to
several peers, ours against each peer pulling from the origin, bench/small_files.py), origin (a seed peer's
origin path against curl, CPU per GiB, bench/origin_path.py), serve (a parent's serving path, TLS against
plaintext, CPU per GiB, bench/serve_path.py), micro
(pytest-benchmark files in bench/micro), all. Each suite compares against a baseline measured in the same run;
exit 0 only if it ran fully.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SUITES: dict[str, str] = {
    "swarm": "bench.swarm.runner",
    "pair": "bench.pair",
    "dfget-latency": "bench.dfget_latency",
    "memory": "bench.memory",
    "scheduler": "bench.scheduler_load",
    "pull": "bench.pull",
    "pcache": "bench.pcache",
    "manager": "bench.manager_load",
    "preheat": "bench.preheat",
    "small-files": "bench.small_files",
    "origin": "bench.origin_path",
    "serve": "bench.serve_path",
}

#: `all --quick`: small enough for 2 shared cores in under 10 minutes, large enough to show the ratios.
QUICK_ARGS: dict[str, list[str]] = {
    "swarm": ["--peers", "4", "--size", "64MiB", "--origin-rate", "400Mbit", "--peer-rate", "800Mbit"],
    "pair": ["--size", "256MiB"],
    "dfget-latency": ["--repeat", "5"],
    "memory": ["--size", "256MiB", "--tasks", "30"],
    "scheduler": ["--quick"],
    "pull": [],
    "pcache": ["--size", "64MiB"],
    "manager": ["--quick"],
    "preheat": ["--layers", "16,16,16,16"],
    "small-files": ["--peers", "4", "--files", "40"],
    "origin": ["--size", "64MiB", "--repeat", "3"],
    "serve": ["--size", "256MiB", "--repeat", "3"],
    "micro": [],
}


def run_micro(argv: list[str]) -> int:
    """Run the pytest-benchmark micro benchmarks under bench/micro."""
    command = [sys.executable, "-m", "pytest", str(REPO / "bench" / "micro"), "--benchmark-enable", "-q",
               "-p", "no:cacheprovider", "-o", "testpaths=bench/micro", *argv]  # fmt: skip
    return subprocess.run(command, cwd=REPO, check=False).returncode


def byte_compile_checkout() -> None:
    """Byte-compile this checkout's packages in place (their ``__pycache__``, which git ignores), as pip does at
    install.

    Every suite starts processes that import the checkout (dfget once per file, daemons, schedulers, agents). With
    ``PYTHONDONTWRITEBYTECODE=1`` in the environment, as in this machine's sessions, a checkout without byte code
    made each of them compile every module it imports from source at every start: a dfget local hit took 1.56 x
    its CPU (+27 ms, bench/RESULTS.md §3), paid per file in every swarm, pull and small-files row. Up-to-date
    files are only stat()ed, so a second run costs a fraction of a second.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "dragonfly"), str(REPO / "bench")],
        stdout=subprocess.DEVNULL,
        check=False,
        timeout=600,
    )


def suite_main(name: str) -> Callable[[list[str]], int]:
    """Return the `main(argv) -> int` of suite `name`; a missing suite module is a clear SystemExit."""
    if name == "micro":
        return run_micro
    module_name = SUITES[name]
    if importlib.util.find_spec(module_name) is None:
        owner = "the scheduler issue" if name == "scheduler" else "this checkout"
        raise SystemExit(f"bench {name}: {module_name.replace('.', '/')}.py does not exist yet (it comes with {owner})")
    byte_compile_checkout()
    module = importlib.import_module(module_name)
    return module.main  # type: ignore[no-any-return]


def run_all(argv: list[str]) -> int:
    """Run every suite in turn (with --quick: the small sizes of QUICK_ARGS); report each suite's status."""
    quick = "--quick" in argv
    extra = [a for a in argv if a != "--quick"]
    statuses: dict[str, str] = {}
    for name in [*SUITES, "micro"]:
        args = [*(QUICK_ARGS[name] if quick else []), *extra]
        print(f"\n== bench {name} {' '.join(args)}", flush=True)
        started = time.monotonic()
        try:
            code = suite_main(name)(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        statuses[name] = f"exit {code} in {time.monotonic() - started:.0f} s"
    print("\n== bench all: " + "; ".join(f"{k}: {v}" for k, v in statuses.items()))
    return 0 if all(v.startswith("exit 0 ") for v in statuses.values()) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [*SUITES, "micro", "all"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in names:
        print(__doc__, file=sys.stderr)
        print(f"usage: python -m bench {{{','.join(names)}}} [--json] ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        return run_all(rest)
    return suite_main(name)(rest)


if __name__ == "__main__":
    sys.exit(main())

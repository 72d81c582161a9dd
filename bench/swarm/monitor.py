"""Sample interface byte counters of the namespace it runs in: one JSON line per sample on stdout.

Run inside the router namespace (``ip netns exec NS python -m bench.swarm.monitor``) so that the runner gets
wire-level per-host counters without forking once per sample. Stops after ``--duration`` seconds or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Print {"t": wall time, "c": {iface: [rx, tx]}} every --interval seconds."""
    parser = argparse.ArgumentParser(prog="python -m bench.swarm.monitor")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--duration", type=float, default=3600.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + args.duration
    with open("/proc/net/dev") as f:
        while time.monotonic() < deadline:
            f.seek(0)
            counters = {}
            for line in f.read().splitlines()[2:]:
                name, _, fields = line.partition(":")
                values = fields.split()
                counters[name.strip()] = [int(values[0]), int(values[8])]
            sys.stdout.write(json.dumps({"t": time.time(), "c": counters}) + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())

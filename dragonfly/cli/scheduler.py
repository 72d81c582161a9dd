"""``dragonfly scheduler --config scheduler.yaml [--port N] [--host IP] [--log-level L]``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from dragonfly.common import process
from dragonfly.common.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dragonfly scheduler", description="Run the scheduler (scheduler.v2 gRPC).")
    parser.add_argument("--config", help="scheduler.yaml (default: built-in defaults)")
    parser.add_argument("--port", type=int, help="gRPC port (overrides server.port; 0 = any free port)")
    parser.add_argument("--host", help="listen address (overrides server.host)")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error (default: info)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the scheduler until SIGTERM/SIGINT; return the exit status."""
    args = _parser().parse_args(argv)
    from dragonfly.scheduler import config as scheduler_config

    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    try:
        process.setup_logging(args.log_level, component="scheduler")
        config = scheduler_config.load(args.config, overrides={"server": overrides} if overrides else None)
        config.tls()
    except (ConfigError, ValueError) as exc:
        print(f"dragonfly scheduler: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        from dragonfly.scheduler.server import SchedulerServer

        server = SchedulerServer(config)
        try:
            await server.start()
        except OSError as exc:
            print(f"dragonfly scheduler: {exc}", file=sys.stderr)
            await server.stop()
            return 1
        process.announce_listening("scheduler", server.address)
        if server.metrics_address:
            process.announce_listening("scheduler metrics", server.metrics_address)
        process.announce_ready("scheduler")
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(server.stop())
        return 0

    return process.run_async(run)


if __name__ == "__main__":
    sys.exit(main())

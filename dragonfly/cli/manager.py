"""``dragonfly manager --config manager.yaml [--port N] [--data-dir DIR] [--log-level L]``."""

from __future__ import annotations

import argparse
import sys

from dragonfly.cli.arguments import add_log_level, parse_args
from dragonfly.common import process
from dragonfly.common.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dragonfly manager", description="Run the manager (REST /api/v1, console, gRPC manager.v2)."
    )
    parser.add_argument("--config", help="manager.yaml (default: built-in defaults)")
    parser.add_argument("--rest-addr", help="REST listen address HOST:PORT (overrides server.rest.addr)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (overrides server.grpc.port; 0 = any free port)")
    parser.add_argument("--data-dir", help="data directory (overrides server.dataDir)")
    add_log_level(parser, "--log-level")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the manager until SIGTERM/SIGINT; return the exit status."""
    args = parse_args(_parser(), argv)
    from dragonfly.manager import config as manager_config

    server_overrides: dict[str, object] = {}
    if args.rest_addr is not None:
        server_overrides["rest"] = {"addr": args.rest_addr}
    if args.grpc_port is not None:
        server_overrides["grpc"] = {"port": {"start": args.grpc_port, "end": args.grpc_port}}
    if args.data_dir is not None:
        server_overrides["dataDir"] = args.data_dir
    try:
        process.setup_logging(args.log_level, component="manager")
        config = manager_config.load(args.config, overrides={"server": server_overrides} if server_overrides else None)
    except (ConfigError, ValueError) as exc:
        print(f"dragonfly manager: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        from dragonfly.manager.server import ManagerServer

        server = ManagerServer(config)

        def listening() -> list[tuple[str, str]]:
            return [("manager REST", server.rest_address), ("manager gRPC", server.grpc_address)]

        return await process.serve("manager", server, listening, (OSError, ValueError, ConfigError))

    return process.run_async(run)


if __name__ == "__main__":
    sys.exit(main())

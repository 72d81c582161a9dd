"""``dragonfly scheduler --config scheduler.yaml [--port N] [--host IP] [--log-level L]``."""

from __future__ import annotations

import argparse
import sys

from dragonfly.cli.arguments import add_log_level, parse_args
from dragonfly.common import process
from dragonfly.common.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dragonfly scheduler", description="Run the scheduler (scheduler.v2 gRPC).")
    parser.add_argument("--config", help="scheduler.yaml (default: built-in defaults)")
    parser.add_argument("--port", type=int, help="gRPC port (overrides server.port; 0 = any free port)")
    parser.add_argument("--host", help="listen address (overrides server.host)")
    add_log_level(parser, "--log-level")
    return parser


def _check_own_certificate(config: object) -> None:
    """Refuse a certificate without the scheduler role: seed peers would refuse the scheduler's download orders."""
    from dragonfly.common.errors import ConfigError
    from dragonfly.common.identity import ROLE_SCHEDULER, identity_from_pem
    from dragonfly.scheduler.config import Config

    assert isinstance(config, Config)
    files = config.tls().server
    if files is None:
        return
    _ca, chain, _key = files.read()
    try:
        identity = identity_from_pem(chain)
    except ValueError as exc:
        raise ConfigError(f"cannot parse the certificate {files.cert}: {exc}") from None
    if not identity.has_role(ROLE_SCHEDULER):
        raise ConfigError(
            f"certificate {files.cert} of {identity.describe()} lacks the scheduler role (subject OU): seed peers "
            "would refuse its orders; `dragonfly certs issue --role scheduler` mints one"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the scheduler until SIGTERM/SIGINT; return the exit status."""
    args = parse_args(_parser(), argv)
    from dragonfly.scheduler import config as scheduler_config

    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.host is not None:
        overrides["host"] = args.host
    try:
        process.setup_logging(args.log_level, component="scheduler")
        config = scheduler_config.load(args.config, overrides={"server": overrides} if overrides else None)
        _check_own_certificate(config)
    except (ConfigError, ValueError) as exc:
        print(f"dragonfly scheduler: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        from dragonfly.scheduler.server import SchedulerServer

        server = SchedulerServer(config)

        def listening() -> list[tuple[str, str]]:
            out = [("scheduler", server.address)]
            if server.metrics_address:
                out.append(("scheduler metrics", server.metrics_address))
            return out

        return await process.serve("scheduler", server, listening)

    return process.run_async(run)


if __name__ == "__main__":
    sys.exit(main())

"""The ``dfdaemon`` command: run the peer (or, with ``seedPeer.enable``, the seed peer) until SIGTERM.

Prints one ``dragonfly: <service> listening on <addr>`` line per listener (vortex, metrics, health, upload,
download) and then ``dragonfly: dfdaemon ready``. SIGTERM or SIGINT finishes in-flight pieces, tells the
schedulers the host leaves (DeleteHost) and exits 0.
"""

from __future__ import annotations

import argparse
import sys

import dragonfly
from dragonfly.cli.arguments import add_log_level, parse_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfdaemon", description="Dragonfly peer daemon")
    parser.add_argument("--config", default="/etc/dragonfly/dfdaemon.yaml", help="dfdaemon.yaml (default: %(default)s)")
    add_log_level(parser)
    parser.add_argument("-V", "--version", action="version", version=f"dfdaemon {dragonfly.__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the daemon; return its exit status."""
    parser = build_parser()
    args = parse_args(parser, argv)

    from dragonfly.common.errors import ConfigError, DragonflyError
    from dragonfly.common.process import announce_ready, run_async, setup_logging
    from dragonfly.daemon.config import load_dfdaemon_config

    setup_logging(args.log_level, component="dfdaemon")
    try:
        config = load_dfdaemon_config(args.config)
        config.tls()
        if not config.manager.addr and not config.scheduler.addrs:
            raise ConfigError(
                "neither manager.addr nor scheduler.addrs is set: this daemon would never use P2P; set manager.addr "
                "(the manager names the schedulers) or scheduler.addrs",
                path=args.config,
            )
    except ConfigError as exc:
        print(f"dfdaemon: error: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        import asyncio

        from dragonfly.daemon.server import Dfdaemon

        daemon = Dfdaemon(config)
        try:
            try:
                await daemon.start()
            except (OSError, DragonflyError) as exc:
                print(f"dfdaemon: error: cannot start: {exc}", file=sys.stderr)
                return 1
            announce_ready("dfdaemon")
            await asyncio.Event().wait()
        finally:
            # Cancellation (SIGTERM) lands here: shut down without being interrupted again.
            await asyncio.shield(daemon.stop())
        return 0

    return run_async(run)


if __name__ == "__main__":
    sys.exit(main())

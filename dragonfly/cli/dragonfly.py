"""The ``dragonfly`` command: dispatches to ``scheduler``, ``manager``, ``up`` and the other subcommands.

Subcommand modules are imported only when chosen, so ``dragonfly --help`` and ``dragonfly --version`` stay fast.
"""

from __future__ import annotations

import importlib
import sys

import dragonfly

SUBCOMMANDS = {
    "scheduler": ("dragonfly.cli.scheduler", "run the scheduler (--config scheduler.yaml)"),
    "up": ("dragonfly.cli.up", "run a scheduler, a seed peer and N peers on 127.0.0.1 (--demo to try it)"),
    "certs": ("dragonfly.cli.certs", "mint a cluster CA and host certificates for mutual TLS"),
    "init": ("dragonfly.cli.init", "point containerd, docker, crio or podman at the dfdaemon proxy"),
    "manager": ("dragonfly.cli.manager", "run the manager: clusters, schedulers, users (--config manager.yaml)"),
    "preheat": ("dragonfly.cli.preheat", "warm a file or image on seed peers through the manager, show who holds it"),
}

USAGE = (
    "usage: dragonfly [--version] <command> [<args>]\n\ncommands:\n"
    + "".join(f"  {name:<10} {summary}\n" for name, (_, summary) in SUBCOMMANDS.items())
    + "\nRun `dragonfly <command> --help` for the options of one command."
)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"dragonfly {dragonfly.__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"dragonfly: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[command][0]
    if module_name is None:
        print(f"dragonfly: error: `dragonfly {command}` is not available yet in this version", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name)
    status: int = module.main(rest)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""``python -m dragonfly.cli.dfget``."""

from dragonfly.cli.dfget.command import run

run()

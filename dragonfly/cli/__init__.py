"""Command-line entry points: ``dfget``, ``dfdaemon`` and ``dragonfly`` (scheduler, up), plus the local launcher.

Each command module exposes ``main(argv: list[str] | None = None) -> int``; heavy imports happen inside ``main``
after the arguments are parsed, so start-up stays light.
"""

"""Command-line conventions shared by every command: one set of log levels, unknown options named as such."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

#: What every command's --log-level takes ("warn" and "warning" are the same level).
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


def description(docstring: str | None) -> str:
    """Return the first line of a module docstring as help text: without reStructuredText's ``literal`` marks."""
    return (docstring or "").strip().splitlines()[0].replace("``", "") if docstring else ""


def terminal_formatter(prog: str) -> argparse.HelpFormatter:
    """Return argparse's formatter at the width ``shutil.get_terminal_size`` gives, without importing shutil.

    argparse builds a formatter for every ``add_argument`` and its default one imports shutil (and with it bz2,
    lzma and zlib) for the terminal width: ~2 ms of every start of a client (dfget, dfcache).
    """
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return argparse.HelpFormatter(prog, width=(columns or 80) - 2)


def add_log_level(parser: argparse.ArgumentParser, *flags: str) -> None:
    """Add the --log-level option (with ``flags``, default ``-l/--log-level``)."""
    parser.add_argument(
        *(flags or ("-l", "--log-level")),
        dest="log_level",
        default="info",
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="debug, info, warn or error (default: info)",
    )


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, reporting an unknown option as such.

    argparse takes the value after an unknown option for the next positional argument, so ``dfget --bogus 1 URL``
    would be reported as a bad URL ``1``.
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    known = _option_strings(parser)
    for token in args:
        if token == "--":
            break
        if not token.startswith("-") or token == "-" or _is_number(token):
            continue
        name = token.split("=", 1)[0]
        if name.startswith("--"):
            # argparse accepts unambiguous prefixes of long options.
            if not any(option.startswith(name) for option in known if option.startswith("--")):
                parser.error(f"unrecognized option {name}")
        elif name[:2] not in known:
            parser.error(f"unrecognized option {name[:2]}")
    return parser.parse_args(args)


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Return every option string of ``parser`` and of its subcommands' parsers."""
    known: list[str] = []
    for action in parser._actions:
        known += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                known += _option_strings(subparser)
    return known


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True

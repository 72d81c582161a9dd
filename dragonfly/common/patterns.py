"""Regular expressions written by operators and users, matched against what the network sends.

Proxy rules and hijacked hosts (``dfdaemon.yaml``), the scheduler's block lists, cluster scopes and application
priorities (the manager's REST API) are patterns someone configures once and matches against request URLs,
CONNECT targets and host names that anyone may craft. Python's ``re`` backtracks: ``(a+)+$`` against thirty ``a``
and a ``b`` takes minutes, and one request would stall a daemon's event loop that long. These patterns are
compiled with RE2 instead (Google's ``google-re2``), whose matching time is linear in the input whatever the
pattern. RE2 is the syntax of Go's ``regexp`` and close to Rust's ``regex``, which Dragonfly's own components use,
so patterns written for Dragonfly keep their meaning; what RE2 does not have (backreferences, lookaround) is
refused with an error that says so.

``re2`` is imported on first use: it costs ~20 ms, and ``import dragonfly`` (dfget's start-up) must not pay it.
"""

from __future__ import annotations

import functools
from typing import Protocol


class Pattern(Protocol):
    """What callers use of a compiled RE2 pattern."""

    def search(self, text: str) -> object | None:
        """Return a match object when the pattern matches somewhere in ``text``, else None."""


#: Largest pattern accepted, in characters; the REST API allows 1,024 per pattern.
MAX_PATTERN_LENGTH = 4096


def compile_pattern(pattern: str) -> Pattern:
    """Compile ``pattern`` with RE2; raise ValueError that says why RE2 refuses it."""
    try:
        import re2
    except ImportError as exc:
        raise ImportError("google-re2 is not installed: rerun scripts/install.sh (or pip install google-re2)") from exc

    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"regular expression longer than {MAX_PATTERN_LENGTH} characters")
    options = re2.Options()
    # RE2 would also print each refusal on stderr through absl; the ValueError carries it.
    options.log_errors = False
    try:
        compiled: Pattern = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(
            f"{pattern[:200]!r} is not a regular expression RE2 accepts ({reason}); RE2 has Go's syntax: no "
            "backreferences or lookaround"
        ) from None
    return compiled


@functools.lru_cache(maxsize=1024)
def cached_pattern(pattern: str) -> Pattern:
    """Return ``pattern`` compiled, once per process (for patterns kept as text in frozen configs)."""
    return compile_pattern(pattern)

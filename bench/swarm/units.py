"""Parse and format the sizes and link rates the benchmark command line takes."""

from __future__ import annotations

from dragonfly.common import config


def parse_size(text: str | int) -> int:
    """Return the byte count of "256MiB", "1GiB", "1GB" or a plain integer."""
    try:
        return config.parse_size(text)
    except ValueError:
        raise ValueError(f"bad size {text!r}: use e.g. 1GiB, 256MiB, 100MB or a byte count") from None


def parse_rate(text: str | float) -> float:
    """Return bytes per second for "400Mbit", "1Gbit", "50MiB/s"; "0" means unlimited.

    Stricter than the config parser: a link rate must say whether it counts bits ("Mbit") or bytes ("MiB/s"),
    since "400" or "400MB" on a benchmark command line is more likely a mistake than a byte rate.
    """
    if isinstance(text, str):
        lowered = text.strip().lower()
        if lowered != "0" and not lowered.endswith(("bit", "/s")):
            raise ValueError(f"bad rate {text!r}: use e.g. 400Mbit, 1Gbit or 50MiB/s")
    try:
        return config.parse_rate(text)
    except ValueError:
        raise ValueError(f"bad rate {text!r}: use e.g. 400Mbit, 1Gbit or 50MiB/s") from None


def format_size(n: float) -> str:
    """Return a short binary-unit size ("1.00 GiB")."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_rate(bytes_per_second: float) -> str:
    """Return a rate in Mbit/s, the unit the command line uses."""
    return f"{bytes_per_second * 8 / 1e6:.0f} Mbit/s"

"""Parse and format the sizes and link rates the benchmark command line takes."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# Link rates are bits per second, as tc and network engineers write them; "/s" byte rates are accepted too.
_RATE_UNITS = {
    "bit": 1 / 8,
    "kbit": 1000 / 8,
    "mbit": 1000**2 / 8,
    "gbit": 1000**3 / 8,
    "b/s": 1,
    "kb/s": 1000,
    "mb/s": 1000**2,
    "gb/s": 1000**3,
    "kib/s": 1024,
    "mib/s": 1024**2,
    "gib/s": 1024**3,
}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z/]*)\s*$")


def parse_size(text: str | int) -> int:
    """Return the byte count of "256MiB", "1GiB", "1GB" or a plain integer."""
    if isinstance(text, int):
        return text
    match = _NUMBER.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r}: use e.g. 1GiB, 256MiB, 100MB or a byte count")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_rate(text: str | float) -> float:
    """Return bytes per second for "400Mbit", "1Gbit", "50MiB/s"; "0" means unlimited."""
    if isinstance(text, int | float):
        return float(text)
    match = _NUMBER.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or (unit not in _RATE_UNITS and not (unit == "" and float(match.group(1)) == 0)):
        raise ValueError(f"bad rate {text!r}: use e.g. 400Mbit, 1Gbit or 50MiB/s")
    return float(match.group(1)) * _RATE_UNITS.get(unit, 0)


def format_size(n: float) -> str:
    """Return a short binary-unit size ("1.00 GiB")."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_rate(bytes_per_second: float) -> str:
    """Return a rate in Mbit/s, the unit the command line uses."""
    return f"{bytes_per_second * 8 / 1e6:.0f} Mbit/s"

"""Memory sizes in and out: "24GiB", "24GB", "24e9" parse; bytes print in binary units.

GiB and GB differ by 7%, which is exactly the size of error a planner must not make, so a
unit is read as written (GB = 10^9, GiB = 2^30) and never guessed.
"""

from __future__ import annotations

import re

from latlab.errors import ConfigError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
}

# Sizes beyond this are typos ("1e400" is infinity); 1 EiB is far above any machine.
MAX_BYTES = float(1 << 60)
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float) -> int:
    """Bytes from "24GiB", "24GB", "1.5 GiB", "24e9" or a number; ConfigError otherwise."""
    if isinstance(text, bool):
        raise ConfigError(f"memory size must be a number of bytes or like '24GiB', not {text!r}")
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ConfigError(
                f"cannot read memory size {text!r}: write it like '24GiB', '80GB' or '24e9'"
            )
        value, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise ConfigError(
            f"unknown memory unit {unit!r} in {text!r}: use B, KB, MB, GB, TB (powers of 10) "
            "or KiB, MiB, GiB, TiB (powers of 2)"
        )
    if value < 0:
        raise ConfigError(f"memory size must not be negative, got {text!r}")
    size = value * _UNITS[unit]
    if not size <= MAX_BYTES:  # also inf and nan ("1e400")
        raise ConfigError(f"memory size {text!r} is beyond any machine (over 1 EiB)")
    return round(size)


def format_bytes(num_bytes: float) -> str:
    """Binary units with two decimals, e.g. 131072 -> '128.00 KiB'; small values stay in B."""
    value = float(num_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{sign}{value:.0f} B" if unit == "B" else f"{sign}{value:.2f} {unit}"
        value /= 1024
    return f"{sign}{value:.2f} TiB"


def format_count(value: float) -> str:
    """Large counts readable: 8030261248 -> '8.03B', 131072 -> '131,072'."""
    if abs(value) >= 1e9:
        return f"{value / 1e9:.2f}B"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value:,.0f}"

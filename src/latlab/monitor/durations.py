"""Durations as Prometheus writes them ('30s', '5m', '1h', '30d'), parsed and formatted.

Rule windows, the watch interval and its SLO window are all given this way, so a user can
copy a window from a rule file into a ``latlab watch`` flag and back.
"""

from __future__ import annotations

import re

from latlab.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """'90s', '5m', '1h30m', '1.5' (seconds) -> seconds; ConfigError naming ``what`` if bad."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        seconds = _parse_text(raw, what)
    if not seconds > 0:
        raise ConfigError(f"{what} must be longer than zero, got {text!r}")
    return seconds


def _parse_text(raw: str, what: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or not raw:
        raise ConfigError(
            f"{what} {raw!r} is not a duration: use e.g. 30s, 5m, 1h, 1h30m, 7d or plain seconds"
        )
    return total


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest Prometheus duration: 300 -> '5m', 5400 -> '1h30m', 0.5 -> '500ms'."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ConfigError(f"a duration must be at least 1 ms, got {seconds!r} s")
    parts = []
    for unit, size in (("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)

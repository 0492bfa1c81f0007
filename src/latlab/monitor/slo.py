"""Service-level objectives and the multi-window multi-burn-rate scheme that alerts on them.

A latency SLO "p99 TTFT <= 500 ms" is a ratio objective: at least 99% of requests have a TTFT
of at most 500 ms, so 1% of requests is the error budget. Burning it ``b`` times faster than
the period allows, sustained over a long window and still true over a short one, pages or
opens a ticket (Google SRE workbook, ch. 5; the layout Sloth and Pyrra generate). With the
default 30-day period: 2% of the budget in 1 h (burn 14.4) or 5% in 6 h (6) pages; 10% in a
day (3) or in three days (1) opens a ticket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from latlab.errors import ConfigError
from latlab.monitor.durations import format_duration, parse_duration

SEVERITIES = ("page", "ticket")
LATENCY_ROLES = ("ttft", "tpot", "e2e")


@dataclass(kw_only=True, frozen=True, slots=True)
class LatencySLO:
    """``target`` of requests have ``role`` latency at most ``threshold_s``."""

    role: str  # ttft | tpot | e2e
    threshold_s: float
    target: float  # e.g. 0.99

    def __post_init__(self) -> None:
        if self.role not in LATENCY_ROLES:
            raise ConfigError(f"latency SLO role must be one of {LATENCY_ROLES}, not {self.role}")
        if not self.threshold_s > 0:
            raise ConfigError(f"the {self.role.upper()} SLO threshold must be positive")
        _check_target(self.target, "--percentile")

    @property
    def budget(self) -> float:
        return 1.0 - self.target


@dataclass(kw_only=True, frozen=True, slots=True)
class BurnWindow:
    """Alert at ``severity`` when the error ratio over both windows exceeds burn x budget."""

    severity: str
    long_s: float
    short_s: float
    burn_rate: float

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ConfigError(f"window severity must be page or ticket, not {self.severity!r}")
        if not self.short_s < self.long_s:
            raise ConfigError(
                f"the short window ({format_duration(self.short_s)}) must be shorter than the "
                f"long one ({format_duration(self.long_s)})"
            )
        if not self.burn_rate > 0:
            raise ConfigError(f"burn rate must be positive, got {self.burn_rate}")

    @property
    def label(self) -> str:
        return f"{format_duration(self.long_s)}/{format_duration(self.short_s)}"


def default_windows(period_s: float = 30 * 86400) -> tuple[BurnWindow, ...]:
    """The workbook's four windows; burn rates follow from the budget share each may consume."""
    shares = (
        ("page", 3600, 300, 0.02),
        ("page", 6 * 3600, 1800, 0.05),
        ("ticket", 86400, 7200, 0.10),
        ("ticket", 3 * 86400, 6 * 3600, 0.10),
    )
    return tuple(
        BurnWindow(
            severity=sev, long_s=long, short_s=short, burn_rate=round(share * period_s / long, 4)
        )
        for sev, long, short, share in shares
    )


_WINDOW = re.compile(r"^(page|ticket)=([^/@]+)/([^/@]+)@([0-9.]+)$")


def parse_windows(spec: str) -> tuple[BurnWindow, ...]:
    """'page=1h/5m@14.4,ticket=1d/2h@3' -> BurnWindows (SEVERITY=LONG/SHORT@BURN, ...)."""
    windows = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        match = _WINDOW.match(part)
        if not match:
            raise ConfigError(
                f"--windows entry {part!r}: write SEVERITY=LONG/SHORT@BURN, e.g. page=1h/5m@14.4"
            )
        sev, long, short, burn = match.groups()
        windows.append(
            BurnWindow(
                severity=sev,
                long_s=parse_duration(long, "--windows long window"),
                short_s=parse_duration(short, "--windows short window"),
                burn_rate=float(burn),
            )
        )
    if not windows:
        raise ConfigError("--windows: give at least one SEVERITY=LONG/SHORT@BURN window")
    return tuple(windows)


def check_fireable(windows: tuple[BurnWindow, ...], budget: float, what: str) -> None:
    """Refuse windows whose threshold (burn x budget) is 100% or more: they could never fire."""
    for w in windows:
        if w.burn_rate * budget >= 1.0:
            raise ConfigError(
                f"{what}: burn rate {w.burn_rate:g} x error budget {budget:.4g} = "
                f"{w.burn_rate * budget:.3g} >= 1, so the {w.severity} alert over {w.label} "
                "could never fire; lower that burn rate or tighten the objective"
            )


def parse_target(text: str | float, what: str) -> float:
    """'99.5%', '99.5' or '0.995' -> 0.995."""
    raw = str(text).strip().rstrip("%")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a percentage like 99.5%") from None
    if value > 1 or str(text).strip().endswith("%"):
        value /= 100.0
    _check_target(value, what)
    return value


def _check_target(value: float, what: str) -> None:
    if not 0.5 <= value < 1.0:
        raise ConfigError(f"{what} must be between 50% and 100% (exclusive), got {value:.6g}")

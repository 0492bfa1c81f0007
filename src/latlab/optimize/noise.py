"""When a measured change counts: repeated measurements, median and spread.

On a shared machine one run can be 20% off the next for no reason. Every configuration is
measured several times; a change counts only when the medians differ by more than the spread
(max - min, relative to the median) seen within either side's repetitions. A change inside the
noise is reported as "no change", never as a win.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Repeats:
    """Median and spread of one figure over repetitions."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent; 0 for a single value."""
        med = self.median
        if len(self.values) < 2 or med == 0:
            return 0.0
        return 100.0 * (max(self.values) - min(self.values)) / abs(med)


@dataclass(slots=True, frozen=True)
class Change:
    """Candidate vs baseline for one figure, with whether the change beats the noise."""

    metric: str
    baseline: float
    candidate: float
    change_pct: float
    noise_pct: float
    lower_is_better: bool

    @property
    def significant(self) -> bool:
        return abs(self.change_pct) > self.noise_pct

    @property
    def improved(self) -> bool:
        better = self.change_pct < 0 if self.lower_is_better else self.change_pct > 0
        return self.significant and better

    @property
    def worsened(self) -> bool:
        return self.significant and not self.improved


def compare(
    metric: str,
    baseline: Sequence[float],
    candidate: Sequence[float],
    lower_is_better: bool,
    min_noise_pct: float = 2.0,
) -> Change:
    """Change of the medians in percent, and the noise band it must beat.

    The band is the larger relative spread of the two sides, never below ``min_noise_pct``:
    with three repetitions a lucky trio can look tight, and a 1% "win" is not one.
    """
    if not baseline or not candidate:
        raise ValueError(f"{metric}: need at least one measurement on each side")
    base, cand = Repeats(tuple(baseline)), Repeats(tuple(candidate))
    if base.median == 0:
        change = 0.0 if cand.median == 0 else float("inf")
    else:
        change = 100.0 * (cand.median / base.median - 1.0)
    noise = max(base.spread_pct, cand.spread_pct, min_noise_pct)
    return Change(metric, base.median, cand.median, change, noise, lower_is_better)

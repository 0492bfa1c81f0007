"""``bench --repeats N``: how much each figure moved between repeats of a level, its pooled
estimate with a bootstrap interval (repeats resampled first), and how many requests a
percentile needs for a given interval width."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from latlab.bootstrap import Interval, Sample, estimate, interval, requests_for_tail
from latlab.compare.figures import Figure, parse_figure
from latlab.compare.samples import LevelSamples, levels_of

SPREAD_FIGURES = ("ttft_p50", "ttft_p99", "tpot_p50", "e2e_p50", "throughput")


@dataclass(kw_only=True, slots=True)
class Spread:
    """One figure at one level over its repeats."""

    level: str
    figure: Figure
    per_repeat: list[float]
    pooled: Interval  # repeats resampled, then requests: between-repeat variation included
    sampling: Interval  # requests resampled as one sample: the part more requests shrink
    requests: int

    @property
    def cv_pct(self) -> float | None:
        """Coefficient of variation between repeats (sample std / mean)."""
        vals = self.per_repeat
        if len(vals) < 2 or not statistics.fmean(vals):
            return None
        return 100 * statistics.stdev(vals) / statistics.fmean(vals)

    @property
    def half_width_pct(self) -> float | None:
        est = self.pooled.estimate
        return None if not est else 100 * self.pooled.half_width / abs(est)

    def requests_for(self, half_width_pct: float) -> int | None:
        """Requests that bring the sampling interval to +-``half_width_pct`` (its width goes as
        1/sqrt(n)), and at least enough to put 5 beyond a percentile. Variation between
        repeats is not sampling error: more repeats, not more requests, narrow that part."""
        est = self.sampling.estimate
        now = 100 * self.sampling.half_width / abs(est) if est else None
        if now is None or now <= 0 or not self.sampling.reliable:
            return None
        needed = math.ceil(self.requests * (now / half_width_pct) ** 2)
        if self.figure.stat.kind == "percentile":
            needed = max(needed, requests_for_tail(self.figure.stat.q))
        return needed

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "figure": self.figure.name,
            "unit": self.figure.unit,
            "per_repeat": self.per_repeat,
            "cv_pct": self.cv_pct,
            "pooled": self.pooled.to_dict(),
            "half_width_pct": self.half_width_pct,
            "requests": self.requests,
            "requests_for_5pct": self.requests_for(5.0),
            "requests_for_2pct": self.requests_for(2.0),
        }


def _level_spreads(
    level: LevelSamples, figures: list[Figure], confidence: float, seed: int
) -> list[Spread]:
    out = []
    for i, figure in enumerate(figures):
        sample = level.sample(figure)
        if sample.n < 2:
            continue
        per_repeat = []
        for block in level.repeats:
            one = LevelSamples(load=level.load, repeats=[block], slo=level.slo).sample(figure)
            if one.n:
                per_repeat.append(estimate(one, figure.stat))
        pooled = interval(sample, figure.stat, confidence=confidence, seed=seed + i)
        one = Sample(blocks=[[v for b in sample.blocks for v in b]], ordered=sample.ordered)
        sampling = interval(one, figure.stat, confidence=confidence, seed=seed + i)
        out.append(
            Spread(
                level=level.label,
                figure=figure,
                per_repeat=per_repeat,
                pooled=pooled,
                sampling=sampling,
                requests=level.requests,
            )
        )
    return out


def spreads(
    result: dict[str, Any],
    names: tuple[str, ...] = SPREAD_FIGURES,
    *,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Spread]:
    """Every figure at every level of a result (its repeats gathered)."""
    figures = [parse_figure(n) for n in names]
    if (result.get("config") or {}).get("slo"):
        figures.append(parse_figure("goodput"))
    out = []
    for level in levels_of(result).values():
        out.extend(_level_spreads(level, figures, confidence, seed))
    return out


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def spread_table(rows: list[Spread], confidence: float = 0.95) -> Any:
    from rich.table import Table

    t = Table(title="repeats: spread and pooled intervals", title_justify="left")
    for col in (
        "load",
        "figure",
        "per repeat",
        "CV",
        f"pooled [{confidence:.0%} CI]",
        "+-",
        "requests for +-5% / +-2%",
    ):
        t.add_column(col, justify="left" if col in ("load", "figure", "per repeat") else "right")
    for s in rows:
        iv = s.pooled
        need5, need2 = s.requests_for(5.0), s.requests_for(2.0)
        t.add_row(
            s.level,
            f"{s.figure.label} ({s.figure.unit})",
            " / ".join(f"{v:,.2f}" for v in s.per_repeat),
            "-" if s.cv_pct is None else f"{s.cv_pct:.1f}%",
            f"{iv.estimate:,.2f} [{iv.low:,.2f}, {iv.high:,.2f}]",
            "-" if s.half_width_pct is None else f"{s.half_width_pct:.1f}%",
            "too few" if not iv.reliable else f"{_count(need5)} / {_count(need2)}",
        )
    t.caption = (
        "CV = std/mean between repeats; pooled = all repeats, bootstrap resampling "
        "repeats then requests; requests for +-x%: where the sampling interval (requests "
        "only) reaches it, as width ~ 1/sqrt(n), with >= 5 requests beyond a percentile; "
        "a high CV needs more repeats, not more requests"
    )
    return t

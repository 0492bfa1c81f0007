"""Bootstrap confidence intervals of latency percentiles, means and rates, and of differences.

Pure Python (the base install has no numpy), and fast because it never materialises a resample
for a percentile: in a resample of ``n`` values drawn with replacement from sorted ``x``, the
``k``-th smallest is ``x[ceil(n * U) - 1]`` with ``U ~ Beta(k, n - k + 1)`` (the ``k``-th order
statistic of ``n`` uniforms), and the next one follows from ``U + (1 - U) * Beta(1, n - k)``.
So each replicate of an interpolated percentile costs two beta draws, and its distribution is
exactly that of resampling requests. Means resample values; rates (throughput over time bins)
resample blocks of consecutive bins, so autocorrelation in time is kept.

A sample may hold several *blocks* (the repeats of a level): each replicate first resamples the
blocks, then the values inside them, so variation between repeats widens the interval.

Intervals are BCa where it is well defined, with the acceleration taken from the statistic's
influence function (the jackknife BCa uses takes at most three distinct values for a
percentile). They fall back to the percentile interval, and say why, when BCa degenerates: all
replicates on one side of the estimate (typical of a high percentile over few requests), or an
adjusted level beyond the outermost replicate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from latlab.metrics import percentile

_NORMAL = NormalDist()
_MEAN_WORK = 2_000_000  # values drawn per mean interval at most: bounds the time of big runs
MIN_TAIL = 5  # fewer requests than this beyond a percentile make its interval unreliable


@dataclass(kw_only=True, slots=True, frozen=True)
class Statistic:
    """What to estimate: ``percentile`` (with ``q`` in 0-100), ``mean``, or ``rate`` (the mean
    of per-time-bin values, resampled in blocks)."""

    kind: str
    q: float = 50.0

    def __post_init__(self) -> None:
        if self.kind not in ("percentile", "mean", "rate"):
            raise ValueError(f"unknown statistic {self.kind!r}")
        if self.kind == "percentile" and not 0 <= self.q <= 100:
            raise ValueError("percentile q must be in 0..100")


@dataclass(kw_only=True, slots=True)
class Sample:
    """Values of one figure, in blocks (one per repeat); each block is sorted on creation
    unless it is a time series (``rate``)."""

    blocks: list[list[float]]
    ordered: bool = False  # True for time series: keep the order (rates)
    _pooled: dict[tuple[int, ...], list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.blocks = [list(b) for b in self.blocks if len(b)]
        if not self.ordered:
            self.blocks = [sorted(b) for b in self.blocks]

    @classmethod
    def of(cls, values: Sequence[float], *, ordered: bool = False) -> Sample:
        return cls(blocks=[list(values)], ordered=ordered)

    @property
    def n(self) -> int:
        return sum(len(b) for b in self.blocks)

    def pooled(self, choice: tuple[int, ...] | None = None) -> list[float]:
        """All values of the chosen blocks (with multiplicity), sorted; cached per choice."""
        key = choice if choice is not None else tuple(range(len(self.blocks)))
        got = self._pooled.get(key)
        if got is None:
            got = sorted(v for i in key for v in self.blocks[i])
            self._pooled[key] = got
        return got


@dataclass(kw_only=True, slots=True, frozen=True)
class Interval:
    """An estimate and its two-sided interval; ``method`` says how it was computed."""

    estimate: float
    low: float
    high: float
    confidence: float
    method: str  # "BCa" | "percentile" | "none"
    note: str = ""
    replicates: int = 0
    reliable: bool = True  # False: too few requests beyond a percentile to trust the interval

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float | str | int]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "method": self.method,
            "note": self.note,
            "replicates": self.replicates,
        }


# ------------------------------------------------------------------ point estimates


def estimate(sample: Sample, stat: Statistic) -> float:
    if sample.n == 0:
        raise ValueError("no values to estimate from")
    if stat.kind == "percentile":
        return percentile(sample.pooled(), stat.q)
    values = [v for b in sample.blocks for v in b]
    return math.fsum(values) / len(values)


# ------------------------------------------------------------------ replicates


def _percentile_draw(x: list[float], q: float, rng: random.Random) -> float:
    """One bootstrap replicate of numpy's linear percentile of sorted ``x``, via order stats."""
    n = len(x)
    if n == 1:
        return x[0]
    pos = (n - 1) * q / 100.0
    lo = min(math.floor(pos), n - 1)
    frac = pos - lo
    k = lo + 1  # 1-based rank of the lower order statistic
    u = rng.betavariate(k, n - k + 1)
    first = x[min(n, max(1, math.ceil(n * u))) - 1]
    if frac <= 0 or k >= n:
        return first
    u2 = u + (1 - u) * rng.betavariate(1, n - k)
    second = x[min(n, max(1, math.ceil(n * u2))) - 1]
    return first + (second - first) * frac


def _mean_draw(values: list[float], rng: random.Random) -> float:
    return math.fsum(rng.choices(values, k=len(values))) / len(values)


def _block_draw(series: list[float], rng: random.Random) -> list[float]:
    """A moving-block resample of a time series (block length ~ n^(1/3), at least 2)."""
    n = len(series)
    length = max(2, round(n ** (1 / 3))) if n > 3 else 1
    out: list[float] = []
    while len(out) < n:
        start = rng.randrange(n - length + 1)
        out.extend(series[start : start + length])
    return out[:n]


def _choose_blocks(sample: Sample, rng: random.Random) -> tuple[int, ...]:
    count = len(sample.blocks)
    if count == 1:
        return (0,)
    return tuple(sorted(rng.choices(range(count), k=count)))


def replicates(sample: Sample, stat: Statistic, count: int, rng: random.Random) -> list[float]:
    """``count`` bootstrap replicates of ``stat`` (blocks first, then values within)."""
    out = []
    for _ in range(count):
        choice = _choose_blocks(sample, rng)
        if stat.kind == "percentile":
            out.append(_percentile_draw(sample.pooled(choice), stat.q, rng))
        elif stat.kind == "mean":
            out.append(_mean_draw([v for i in choice for v in sample.blocks[i]], rng))
        else:
            values = [v for i in choice for v in _block_draw(sample.blocks[i], rng)]
            out.append(math.fsum(values) / len(values))
    return out


def replicate_count(sample: Sample, stat: Statistic, wanted: int) -> int:
    """Means of big samples get fewer replicates (each one costs ``n`` draws)."""
    if stat.kind != "mean":
        return wanted
    return max(400, min(wanted, _MEAN_WORK // max(1, sample.n)))


# ------------------------------------------------------------------ intervals


def _skew_terms(sample: Sample, stat: Statistic, variance: float) -> tuple[float, float]:
    """(sum U^2, sum U^3) of the influence values U of ``stat`` on ``sample``.

    Percentile: U_i = (q - 1[x_i <= xi]) / (n f), whose sums depend on f only through the
    estimator's variance, taken from the replicates. Mean and rate: U_i = (x_i - mean) / n.
    """
    n = sample.n
    if stat.kind == "percentile":
        p = stat.q / 100
        if p <= 0 or p >= 1 or variance <= 0:
            return variance, 0.0
        return variance, (2 * p - 1) * variance**1.5 / math.sqrt(n * p * (1 - p))
    values = [v for b in sample.blocks for v in b]
    mean = math.fsum(values) / n
    return (
        math.fsum((v - mean) ** 2 for v in values) / n**2,
        math.fsum((v - mean) ** 3 for v in values) / n**3,
    )


def _variance(values: list[float]) -> float:
    m = math.fsum(values) / len(values)
    return math.fsum((v - m) ** 2 for v in values) / max(1, len(values) - 1)


def _sorted_quantile(sorted_values: list[float], level: float) -> float:
    return percentile(sorted_values, 100 * min(1.0, max(0.0, level)))


def _bca_levels(
    reps: list[float], theta: float, accel: float, confidence: float
) -> tuple[float, float] | str:
    """BCa-adjusted quantile levels of the replicates, or why BCa does not apply here."""
    below = sum(1 for r in reps if r < theta) + 0.5 * sum(1 for r in reps if r == theta)
    share = below / len(reps)
    if share <= 0 or share >= 1:
        return "every replicate on one side of the estimate"
    z0 = _NORMAL.inv_cdf(share)
    levels = []
    for alpha in ((1 - confidence) / 2, (1 + confidence) / 2):
        z = z0 + _NORMAL.inv_cdf(alpha)
        denominator = 1 - accel * z
        if denominator <= 0:
            return "acceleration too large"
        levels.append(_NORMAL.cdf(z0 + z / denominator))
    floor = 1 / len(reps)
    if levels[0] < floor or levels[1] > 1 - floor:
        return "adjusted level beyond the outermost replicate"
    return levels[0], levels[1]


def _from_replicates(
    reps: list[float], theta: float, accel: float, confidence: float, tail: str
) -> Interval:
    """BCa when it is well defined, else the percentile interval; ``tail`` flags an unreliable
    percentile (too few requests beyond it)."""
    note = tail
    ordered = sorted(reps)
    levels = _bca_levels(ordered, theta, accel, confidence)
    if isinstance(levels, tuple):
        low, high = (_sorted_quantile(ordered, lv) for lv in levels)
        method = "BCa"
    else:
        low = _sorted_quantile(ordered, (1 - confidence) / 2)
        high = _sorted_quantile(ordered, (1 + confidence) / 2)
        method = "percentile"
        note = "; ".join(x for x in (note, f"BCa degenerate: {levels}") if x)
    return Interval(
        estimate=theta,
        low=min(low, theta),
        high=max(high, theta),
        confidence=confidence,
        method=method,
        note=note,
        replicates=len(reps),
        reliable=not tail,
    )


def _point(theta: float, confidence: float) -> Interval:
    """No interval: too few values to resample."""
    return Interval(
        estimate=theta,
        low=theta,
        high=theta,
        confidence=confidence,
        method="none",
        note="fewer than 2 values",
    )


def tail_note(sample: Sample, stat: Statistic) -> str:
    if stat.kind != "percentile":
        return ""
    beyond = sample.n * (1 - stat.q / 100)
    if beyond >= MIN_TAIL:
        return ""
    return (
        f"only {beyond:.1f} requests above p{stat.q:g}: the interval is unreliable, "
        f"measure >= {requests_for_tail(stat.q)} requests"
    )


def requests_for_tail(q: float) -> int:
    """Requests that put ``MIN_TAIL`` of them above percentile ``q``."""
    return math.ceil(MIN_TAIL / (1 - q / 100)) if q < 100 else 0


def interval(
    sample: Sample,
    stat: Statistic,
    *,
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> Interval:
    """The estimate of ``stat`` with its bootstrap interval."""
    theta = estimate(sample, stat)
    if sample.n < 2:
        return _point(theta, confidence)
    rng = random.Random(seed)
    reps = replicates(sample, stat, replicate_count(sample, stat, resamples), rng)
    s2, s3 = _skew_terms(sample, stat, _variance(reps))
    accel = s3 / (6 * s2**1.5) if s2 > 0 else 0.0
    return _from_replicates(reps, theta, accel, confidence, tail_note(sample, stat))


def difference(
    a: Sample,
    b: Sample,
    stat: Statistic,
    *,
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> Interval:
    """``stat(b) - stat(a)`` for two independent samples, with its bootstrap interval."""
    theta = estimate(b, stat) - estimate(a, stat)
    if a.n < 2 or b.n < 2:
        return _point(theta, confidence)
    rng = random.Random(seed)
    count = min(replicate_count(a, stat, resamples), replicate_count(b, stat, resamples))
    reps_a = replicates(a, stat, count, rng)
    reps_b = replicates(b, stat, count, rng)
    a2, a3 = _skew_terms(a, stat, _variance(reps_a))
    b2, b3 = _skew_terms(b, stat, _variance(reps_b))
    # Influence values of a enter the difference with a minus sign.
    accel = (b3 - a3) / (6 * (a2 + b2) ** 1.5) if a2 + b2 > 0 else 0.0
    note = tail_note(a if a.n <= b.n else b, stat)
    diffs = [rb - ra for ra, rb in zip(reps_a, reps_b, strict=True)]
    return _from_replicates(diffs, theta, accel, confidence, note)

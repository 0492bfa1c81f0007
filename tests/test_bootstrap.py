"""Bootstrap intervals: the order-statistic shortcut equals resampling, intervals cover."""

from __future__ import annotations

import random
import statistics

import pytest

from latlab.bootstrap import (
    Sample,
    Statistic,
    _percentile_draw,
    difference,
    interval,
    requests_for_tail,
)
from latlab.metrics import percentile


def lognormal(n, seed, scale=50.0):
    rng = random.Random(seed)
    return [scale * rng.lognormvariate(0, 0.3) for _ in range(n)]


@pytest.mark.parametrize("q", [50, 90, 99, 37.5])
def test_order_statistic_draws_match_brute_force_resampling(q):
    x = sorted(lognormal(40, 1))
    rng = random.Random(2)
    fast = [_percentile_draw(x, q, rng) for _ in range(20000)]
    brute = [percentile(sorted(rng.choices(x, k=len(x))), q) for _ in range(20000)]
    assert statistics.fmean(fast) == pytest.approx(statistics.fmean(brute), rel=0.01)
    assert statistics.stdev(fast) == pytest.approx(statistics.stdev(brute), rel=0.05)
    for level in (5, 50, 95):
        assert percentile(sorted(fast), level) == pytest.approx(
            percentile(sorted(brute), level), rel=0.02
        )


@pytest.mark.parametrize("stat", [Statistic(kind="percentile", q=50),
                                  Statistic(kind="percentile", q=90),
                                  Statistic(kind="mean")])  # fmt: skip
def test_difference_intervals_cover_a_zero_difference_about_95_percent(stat):
    trials, covered, n = 100, 0, 100 if stat.kind == "mean" else 200
    for t in range(trials):
        a, b = Sample.of(lognormal(n, 2 * t)), Sample.of(lognormal(n, 2 * t + 1))
        covered += not difference(a, b, stat, resamples=500, seed=t).excludes_zero()
    assert 0.88 <= covered / trials <= 0.995


def test_a_ten_percent_shift_is_detected_in_both_directions():
    a = Sample.of(lognormal(300, 1))
    b = Sample.of([v * 1.1 for v in lognormal(300, 2)])
    up = difference(a, b, Statistic(kind="percentile", q=50))
    down = difference(b, a, Statistic(kind="percentile", q=50))
    assert up.low > 0 and down.high < 0
    assert up.estimate == pytest.approx(-down.estimate)
    assert up.method in ("BCa", "percentile") and up.replicates == 4000


def test_bca_degenerates_at_a_high_percentile_of_few_requests_and_says_so():
    few = Sample.of(lognormal(60, 3))
    iv = interval(few, Statistic(kind="percentile", q=99))
    assert iv.method == "percentile"
    assert "BCa degenerate" in iv.note and "only 0.6 requests above p99" in iv.note
    assert requests_for_tail(99) == 500
    many = interval(Sample.of(lognormal(2000, 3)), Statistic(kind="percentile", q=50))
    assert many.method == "BCa" and many.note == ""


def test_an_interval_contains_its_estimate_and_narrows_with_more_requests():
    stat = Statistic(kind="percentile", q=90)
    small = interval(Sample.of(lognormal(100, 4)), stat)
    large = interval(Sample.of(lognormal(1600, 4)), stat)
    for iv in (small, large):
        assert iv.low <= iv.estimate <= iv.high
    assert large.half_width < small.half_width / 2  # ~1/sqrt(n): 16x the requests, ~4x narrower


def test_variation_between_repeats_widens_the_interval():
    stat = Statistic(kind="percentile", q=50)
    repeats = [[v + shift for v in lognormal(200, 10 + i)] for i, shift in enumerate((0, 8, -8))]
    pooled = interval(Sample.of([v for r in repeats for v in r]), stat)
    blocked = interval(Sample(blocks=repeats), stat)
    assert blocked.estimate == pytest.approx(pooled.estimate)
    assert blocked.half_width > 1.5 * pooled.half_width


def test_rates_resample_time_blocks_and_keep_their_mean():
    rng = random.Random(5)
    series = [100 + 10 * rng.random() for _ in range(40)]
    iv = interval(Sample.of(series, ordered=True), Statistic(kind="rate"))
    assert iv.estimate == pytest.approx(statistics.fmean(series))
    assert iv.low < iv.estimate < iv.high and iv.high - iv.low < 6


def test_too_few_values_give_no_interval():
    iv = interval(Sample.of([3.0]), Statistic(kind="percentile", q=50))
    assert (iv.method, iv.low, iv.high) == ("none", 3.0, 3.0)
    with pytest.raises(ValueError):
        interval(Sample.of([]), Statistic(kind="mean"))

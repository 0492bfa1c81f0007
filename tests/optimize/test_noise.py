import pytest

from latlab.optimize.noise import Repeats, compare


def test_repeats_median_and_spread():
    r = Repeats((10.0, 12.0, 11.0))
    assert r.median == 11.0
    assert r.spread_pct == pytest.approx(100 * 2 / 11)
    assert Repeats((5.0,)).spread_pct == 0.0


def test_change_smaller_than_spread_does_not_count():
    # 5% faster on the median, but the repetitions themselves spread by 20%.
    change = compare("ttft", [100, 90, 110], [95, 86, 104], lower_is_better=True)
    assert change.change_pct == pytest.approx(-5.0)
    assert change.noise_pct == pytest.approx(20.0)
    assert not change.significant and not change.improved and not change.worsened


def test_change_beyond_spread_counts_with_direction():
    faster = compare("ttft", [100, 101, 99], [80, 81, 79], lower_is_better=True)
    assert faster.improved and not faster.worsened
    slower = compare("throughput", [100, 101, 99], [80, 81, 79], lower_is_better=False)
    assert slower.worsened and not slower.improved


def test_noise_floor():
    # Perfectly tight repetitions still need to beat the floor.
    change = compare("itl", [10, 10, 10], [9.9, 9.9, 9.9], lower_is_better=True)
    assert change.noise_pct == 2.0 and not change.significant


def test_empty_side_is_an_error():
    with pytest.raises(ValueError):
        compare("ttft", [], [1.0], lower_is_better=True)

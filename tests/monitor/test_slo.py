import pytest

from latlab.errors import ConfigError
from latlab.monitor.slo import (
    BurnWindow,
    LatencySLO,
    check_fireable,
    default_windows,
    parse_target,
    parse_windows,
)


def test_default_windows_are_the_workbooks_for_30_days():
    got = [(w.severity, w.label, w.burn_rate) for w in default_windows()]
    assert got == [("page", "1h/5m", 14.4), ("page", "6h/30m", 6.0),
                   ("ticket", "1d/2h", 3.0), ("ticket", "3d/6h", 1.0)]  # fmt: skip


def test_burn_rates_follow_the_period():
    # The same budget shares over 28 days: 2% in 1h is 13.44x.
    assert [w.burn_rate for w in default_windows(28 * 86400)] == [13.44, 5.6, 2.8, 0.9333]


def test_parse_windows():
    ws = parse_windows("page=30s/6s@14.4, ticket=1h/5m@3")
    assert [(w.severity, w.long_s, w.short_s, w.burn_rate) for w in ws] == [
        ("page", 30, 6, 14.4), ("ticket", 3600, 300, 3.0)]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "why"),
    [("page=1h/5m", "SEVERITY=LONG/SHORT@BURN"), ("alarm=1h/5m@2", "SEVERITY"),
     ("page=5m/1h@2", "must be shorter"), ("page=1h/5m@0", "burn rate must be positive"),
     ("page=1x/5m@2", "not a duration"), (",", "at least one")],
)  # fmt: skip
def test_parse_windows_rejects(spec, why):
    with pytest.raises(ConfigError, match=why):
        parse_windows(spec)


def test_a_window_that_could_never_fire_is_refused():
    # 10% budget x 14.4 = 1.44: more than every request bad.
    with pytest.raises(ConfigError, match="could never fire"):
        check_fireable((BurnWindow(severity="page", long_s=3600, short_s=300,
                                   burn_rate=14.4),), 0.10, "TTFT SLO")  # fmt: skip
    check_fireable(default_windows(), 0.01, "TTFT SLO")  # 1% budget: fine


@pytest.mark.parametrize(("text", "value"), [("99.5%", 0.995), ("99", 0.99), ("0.999", 0.999)])
def test_parse_target(text, value):
    assert parse_target(text, "--objective") == pytest.approx(value)


@pytest.mark.parametrize("text", ["100%", "42", "ninety", "0.2", "100"])
def test_parse_target_rejects(text):
    with pytest.raises(ConfigError, match="--objective"):
        parse_target(text, "--objective")


def test_latency_slo_checks():
    assert LatencySLO(role="ttft", threshold_s=0.5, target=0.99).budget == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="role"):
        LatencySLO(role="itl", threshold_s=0.5, target=0.99)
    with pytest.raises(ConfigError, match="positive"):
        LatencySLO(role="ttft", threshold_s=0, target=0.99)

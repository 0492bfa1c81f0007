import pytest

from latlab.errors import ConfigError
from latlab.monitor.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("30d", 2592000), ("1.5", 1.5), (2, 2),
     ("500ms", 0.5), ("1w", 604800), (" 2H ", 7200)],
)  # fmt: skip
def test_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "1h30", "-5s", "0s", "5x", "1h 30m"])
def test_parse_rejects_and_names_the_flag(text):
    with pytest.raises(ConfigError, match="--window"):
        parse_duration(text, "--window")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300, "5m"), (5400, "1h30m"), (86400 * 3, "3d"), (0.5, "500ms"), (90, "1m30s"), (6, "6s")],
)
def test_format_is_the_shortest_prometheus_duration(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_format_refuses_zero():
    with pytest.raises(ConfigError):
        format_duration(0.0001)
